"""Why training slows down beside other jobs: training steps per second with 1 thread and with all,
under each OpenMP wait policy, quiet and beside busy processes.

    python benchmarks/wait_policy.py                          # fast_cnn b256 and simple_cnn b64, 3 rounds
    python benchmarks/wait_policy.py --models simple_cnn:64 --rounds 5 --busy 2
    python benchmarks/wait_policy.py --realtime --no-busy     # quiet reference on a shared machine (root)

Each (policy, quiet or loaded) is a fresh process, since libgomp reads its environment once, when
torch loads. Inside it, training steps (forward, backward, Adam; bf16 autocast where native) on
real MNIST batches alternate between the thread counts in blocks of 15, six times, so both counts
see the same moments of the machine; the median block is reported. The load is BUSY processes
spinning a pure-Python loop. --realtime runs the measuring process under SCHED_FIFO (`chrt -f
10`; root only; other jobs get 5% of the CPU for those seconds): the nearest thing to an idle
machine when one is shared. Prints one table (and --json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"spin 10,000 (cnnlab's default)": {"GOMP_SPINCOUNT": "10000"},
            "passive": {"OMP_WAIT_POLICY": "passive"},
            "libgomp's default spin": {}}
SPIN = "import time\nend = time.monotonic() + 300\nwhile time.monotonic() < end:\n    pass\n"

CHILD = r"""
import json, statistics, sys, time
import torch, torch.nn.functional as F
sys.path.insert(0, {src!r})
from cnnlab.engine import data
from cnnlab.engine.models import build_model
from cnnlab.engine.processes import native_bf16
name, batch, data_dir = {name!r}, {batch!r}, {data_dir!r}
train = data.load("mnist", "train", data_dir)
images, labels = train.images[:batch * 8], train.labels[:batch * 8]
torch.manual_seed(0)
model = build_model(name).to(memory_format=torch.channels_last)
if hasattr(model, "init_from_data"):
    model.init_from_data(data.normalize(train.images[:2000], 0.5, 0.5))
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
bf16 = native_bf16(torch.device("cpu"))
def step(i):
    sl = slice((i % 8) * batch, (i % 8 + 1) * batch)
    x = data.normalize(images[sl], 0.5, 0.5).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = F.cross_entropy(model(x), labels[sl])
    opt.zero_grad()
    loss.backward()
    opt.step()
counts = sorted({{1, torch.get_num_threads()}})
rates = {{t: [] for t in counts}}
for block in range(6):
    for t in counts:
        torch.set_num_threads(t)
        for i in range(3):
            step(i)
        start = time.perf_counter()
        for i in range(15):
            step(i)
        rates[t].append(batch * 15 / (time.perf_counter() - start))
print(json.dumps({{t: statistics.median(r) for t, r in rates.items()}}))
"""


def child(name: str, batch: int, env: dict, realtime: bool) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), name=name, batch=batch,
                        data_dir=os.environ.get("CNNLAB_DATA_DIR") or "data")
    cmd = (["chrt", "-f", "10"] if realtime else []) + [sys.executable, "-c", code]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{name} failed:\n{r.stderr[-2000:]}")
    return {int(k): v for k, v in json.loads(r.stdout.splitlines()[-1]).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="fast_cnn:256,simple_cnn:64", help="MODEL:BATCH,... (default: the two recipes')")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2)
    ap.add_argument("--no-busy", action="store_true", help="quiet runs only")
    ap.add_argument("--realtime", action="store_true", help="measure under SCHED_FIFO (root): an idle-machine reference")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    results: dict = {}
    for _ in range(args.rounds):
        for spec in args.models.split(","):
            name, batch = spec.split(":")
            for policy, env in POLICIES.items():
                for loaded in ([False] if args.no_busy else [False, True]):
                    busy = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy if loaded else 0)]
                    try:
                        time.sleep(0.5 if busy else 0)
                        rates = child(name, int(batch), {**base, **env}, args.realtime)
                    finally:
                        for p in busy:
                            p.kill()
                            p.wait()
                    for t, rate in rates.items():
                        results.setdefault((spec, policy, loaded, t), []).append(rate)
    rows = [{"model": spec, "policy": policy, "loaded": loaded, "threads": t, "img_s": round(sorted(v)[len(v) // 2])}
            for (spec, policy, loaded, t), v in results.items()]
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "busy": args.busy, "realtime": args.realtime, "rows": rows}, indent=2))
        return
    print(f"{os.cpu_count()} CPUs; loaded = {args.busy} busy processes; median of {args.rounds} rounds"
          + ("; measured under SCHED_FIFO" if args.realtime else ""))
    print("| model:batch | wait policy | beside busy processes | threads | training img/s |")
    print("| --- | --- | --- | --: | --: |")
    for r in rows:
        print(f"| {r['model']} | {r['policy']} | {'yes' if r['loaded'] else 'no'} | {r['threads']} | {r['img_s']:,} |")


if __name__ == "__main__":
    main()
