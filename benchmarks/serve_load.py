"""Throughput and latency of `cnnlab serve` and of `cnnlab predict`'s preprocessing, as a table.

    python benchmarks/serve_load.py RUN_DIR [--requests 2000] [--concurrency 1,8,32]

Starts the real server (python -m cnnlab serve) on a free loopback port and sends requests with
httpx: JSON 28x28 arrays (model only) and PNG uploads of a 280x280 drawing (preprocessing +
model). Then times the preprocessing alone on photo-like JPEGs (tests/photos.py).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]


def drawing_png() -> bytes:
    img = Image.new("L", (280, 280), 0)
    ImageDraw.Draw(img).line([(70, 60), (210, 60), (130, 240)], fill=255, width=20)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


async def load(url: str, total: int, concurrency: int, kind: str) -> dict:
    png = drawing_png()
    array = np.asarray(Image.open(io.BytesIO(png)).resize((28, 28))).tolist()
    latencies, failures, queue = [], 0, list(range(total))
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            nonlocal failures
            while queue:
                queue.pop()
                t = time.perf_counter()
                try:
                    if kind == "json":
                        r = await client.post("/api/predict", json={"image": array})
                    else:
                        r = await client.post("/api/predict", files={"file": ("d.png", png, "image/png")})
                    failures += r.status_code != 200
                except httpx.HTTPError:
                    failures += 1
                latencies.append(time.perf_counter() - t)
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    p50, p99 = np.percentile(latencies, [50, 99]) * 1000
    return {"kind": kind, "concurrency": concurrency, "requests": total, "rps": total / elapsed,
            "p50": p50, "p99": p99, "failures": failures}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,8,32")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", args.run_dir, "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        rows = [asyncio.run(load(url, args.requests, int(c), kind))
                for kind in ("json", "upload") for c in args.concurrency.split(",")]
    finally:
        server.terminate()
        server.wait()

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before {load_before:.1f}; python {platform.python_version()}")
    print("| request | concurrent | requests | req/s | p50 ms | p99 ms | failures |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        what = "JSON 28x28 array" if r["kind"] == "json" else "PNG upload 280x280"
        print(f"| {what} | {r['concurrency']} | {r['requests']} | {r['rps']:.0f} | {r['p50']:.1f} | "
              f"{r['p99']:.1f} | {r['failures']} |")

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "src"))
    from cnnlab.runs.predict import open_image, to_mnist
    from photos import restyle
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 12:16] = 255
    photos = [restyle(digit, rng) for _ in range(100)]
    big = io.BytesIO()
    Image.fromarray(np.full((3000, 4000), 220, np.uint8)).save(big, format="JPEG")
    times = {}
    for name, blobs in (("photo-like JPEG, 90-360 px", photos), ("12-megapixel JPEG (4000x3000)", [big.getvalue()] * 5)):
        t = time.perf_counter()
        for b in blobs:
            try:
                to_mnist(open_image(b))
            except Exception:
                pass  # the blank 12 MP page has no digit; the time to find that out is what counts
        times[name] = (time.perf_counter() - t) / len(blobs) * 1000
    print("\n| preprocessing (to_mnist + decode) | ms per image |")
    print("|---|---:|")
    for name, ms in times.items():
        print(f"| {name} | {ms:.1f} |")


if __name__ == "__main__":
    main()
