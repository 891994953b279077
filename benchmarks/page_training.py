"""Training from the page against the terminal, and how live the page is, as a table.

    python benchmarks/page_training.py [--model simple_cnn] [--epochs 1] [--limit-train 10000]
                                       [--snapshots 10] [--repeats 2]

Rows: `cnnlab train` in a terminal (with the default single snapshot per epoch and with the page's
--snapshots), and the same training started with POST /api/train on `cnnlab serve` and followed
through GET /api/train/events, as the page does. For each: the whole time a user waits (process
start to the result), the engine's training seconds and images per second (metrics.jsonl), and
for the page: the time to the first live update, live updates per second (server-sent events
carrying new history lines) and /api/predict latency while the training runs (a request every
0.2 s) against the same server idle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


def settings(args) -> dict:
    return {"model": args.model, "epochs": args.epochs, "limit_train": args.limit_train}


def engine_numbers(run_dir: Path) -> tuple[float, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(r["seconds"] for r in rows)
    return seconds, sum(r["images_per_second"] * r["seconds"] for r in rows) / seconds


def terminal(args, out: Path, snapshots: int) -> dict:
    flags = [x for k, v in {**settings(args), "snapshots": snapshots}.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cnnlab", "train", *flags, "--out", str(out), "--json"], env=ENV,
                   check=True, capture_output=True)
    whole = time.perf_counter() - start
    seconds, ips = engine_numbers(out)
    return {"how": f"terminal, --snapshots {snapshots}", "whole": whole, "train": seconds, "ips": ips}


def predictions(url: str, stop: threading.Event, into: list) -> None:
    image = np.zeros((28, 28), int)
    image[6:22, 13:15] = 255
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            t = time.perf_counter()
            client.post("/api/predict", json={"image": image.tolist()}).raise_for_status()
            into.append(time.perf_counter() - t)
            time.sleep(0.2)


def page(args, url: str, root: Path) -> dict:
    idle: list[float] = []
    stop = threading.Event()
    predictions_thread = threading.Thread(target=predictions, args=(url, stop, idle))
    predictions_thread.start()
    time.sleep(3)
    stop.set()
    predictions_thread.join()
    busy: list[float] = []
    stop = threading.Event()
    start = time.perf_counter()
    job = httpx.post(url + "/api/train", json={**settings(args), "snapshots": args.snapshots}).json()
    predictions_thread = threading.Thread(target=predictions, args=(url, stop, busy))
    predictions_thread.start()
    updates, first, last = 0, None, None
    with httpx.stream("GET", url + "/api/train/events", timeout=None) as events:
        kind = None
        for line in events.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "history":
                payload = json.loads(line[6:])
                if any(e["kind"] in ("step", "snapshot", "epoch") for e in payload["events"]):
                    updates += 1
                    first = first or time.perf_counter()
                    last = time.perf_counter()
            elif line.startswith("data: ") and kind == "status" and json.loads(line[6:])["state"] not in ("running", "stopping"):
                break
    whole = time.perf_counter() - start
    stop.set()
    predictions_thread.join()
    seconds, ips = engine_numbers(root / job["run"])
    return {"how": f"page (POST /api/train), --snapshots {args.snapshots}", "whole": whole, "train": seconds, "ips": ips,
            "first_update": first - start, "updates_per_second": updates / max(last - first, 1e-9),
            "predict_idle": np.percentile(idle, [50, 99]) * 1000, "predict_busy": np.percentile(busy, [50, 99]) * 1000}


def serve(root: Path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", str(root), "--port", str(port)], env=ENV,
                              stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("the server did not start")


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="simple_cnn")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=10000)
    ap.add_argument("--snapshots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "runs"
        root.mkdir()
        # A finished run for the explorer to load, so /api/predict answers during the page's training.
        subprocess.run([sys.executable, "-m", "cnnlab", "train", "--epochs", "1", "--limit-train", "2000",
                        "--out", str(root / "base")], env=ENV, check=True, capture_output=True)
        server, url = serve(root)
        try:
            for i in range(args.repeats):
                rows.append(terminal(args, Path(tmp) / f"t1-{i}", 1))
                rows.append(terminal(args, Path(tmp) / f"t{args.snapshots}-{i}", args.snapshots))
                rows.append(page(args, url, root))
        finally:
            server.terminate()
            server.wait()
    print(f"{cpu_name()}, {os.cpu_count()} CPUs, load average {load_before:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after; {args.model}, {args.epochs} epoch(s) on {args.limit_train:,} images")
    print("| how | whole time (s) | training (s) | images/s | first live update (s) | live updates/s | "
          "predict p50 / p99 idle (ms) | ... while training (ms) |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        extra = (f"{r['first_update']:.1f} | {r['updates_per_second']:.1f} | {r['predict_idle'][0]:.0f} / "
                 f"{r['predict_idle'][1]:.0f} | {r['predict_busy'][0]:.0f} / {r['predict_busy'][1]:.0f}"
                 if "first_update" in r else " | | | ")
        print(f"| {r['how']} | {r['whole']:.1f} | {r['train']:.1f} | {r['ips']:,.0f} | {extra} |")


if __name__ == "__main__":
    main()
