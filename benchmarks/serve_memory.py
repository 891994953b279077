"""Peak memory of `cnnlab serve` under many big image uploads at once, as a table.

    python benchmarks/serve_memory.py RUN_DIR [--uploads 8] [--sides 4000,8000] [--src DIR]

For each side, a fresh server (python -m cnnlab serve, its sources from --src, default this
checkout's src/) gets `--uploads` uploads at once of one RGBA PNG of side x side pixels,
transparent but for a black bar (tests/photos.py's rgba_png: 8000x8000 is about 300 KB). The
table has the answers' status codes, the wall time and the server's peak resident memory
(VmHWM, Linux), with its resident memory when idle for comparison.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from photos import rgba_png  # noqa: E402


def memory_mb(pid: int, key: str) -> float:
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{key}:")[1].split()[0]) / 1024


def one_server(run_dir: str, src: Path, body: bytes, uploads: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")]))}
    server = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", run_dir, "--port", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        idle = memory_mb(server.pid, "VmRSS")

        def post(_):
            return httpx.post(url + "/api/predict", files={"file": ("big.png", body, "image/png")},
                              timeout=600).status_code

        start = time.perf_counter()
        with ThreadPoolExecutor(uploads) as pool:
            codes = list(pool.map(post, range(uploads)))
        seconds = time.perf_counter() - start
        return {"idle": idle, "peak": memory_mb(server.pid, "VmHWM"), "codes": codes, "seconds": seconds}
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--uploads", type=int, default=8, help="uploads sent at once (default 8)")
    ap.add_argument("--sides", default="4000,8000", help="image sides in pixels (default 4000,8000)")
    ap.add_argument("--src", default=str(ROOT / "src"), help="the cnnlab sources the server runs")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    for side in map(int, args.sides.split(",")):
        body = rgba_png(side, side // 10)
        r = one_server(args.run_dir, Path(args.src), body, args.uploads)
        rows.append((side, len(body), r))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average before {load_before:.1f}; python {platform.python_version()}; server from {args.src}")
    print("| upload (RGBA PNG) | file size | at once | answers | wall s | server idle MB | server peak MB |")
    print("|---|---:|---:|---|---:|---:|---:|")
    for side, size, r in rows:
        answers = ", ".join(f"{r['codes'].count(c)}x {c}" for c in sorted(set(r["codes"])))
        print(f"| {side}x{side} ({side * side / 1e6:.0f} MP) | {size / 1024:.0f} KB | {args.uploads} | {answers} | "
              f"{r['seconds']:.1f} | {r['idle']:.0f} | {r['peak']:.0f} |")


if __name__ == "__main__":
    main()
