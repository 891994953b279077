"""Time to accuracy: the lecture's own code against cnnlab's recipes, on this machine, in one run.

    python benchmarks/time_to_accuracy.py            # lecture code + lecture/fast/best, 3 seeds each
    python benchmarks/time_to_accuracy.py --quick    # 1 seed each, best cut to 3 epochs
    python benchmarks/time_to_accuracy.py --only lecture-code,fast --seeds 3 --dataset fashion-mnist
    python benchmarks/time_to_accuracy.py --cli lecture,fast   # also the whole `cnnlab train` processes

Each run is a fresh child process, so its peak RSS is its own and nothing is warm from another
run. Wall time is measured inside the child around everything the run does after the imports
every row needs: reading the dataset, training, and computing the test accuracy. The imports are
`import torch`, `import torchvision` and `import torch._dynamo`, which torch.optim does on its
first use (1.1 s on the project machine, the same in every row: it is library start-up, like
`import torch`, not pipeline work). The table also shows each child's whole process time, Python
start and imports included. Prints one table (and --json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("CNNLAB_DATA_DIR") or str(ROOT.parent / "shared" / "datasets")
if not Path(DATA_DIR, "MNIST", "raw").is_dir():
    raise SystemExit(f"datasets not found in {DATA_DIR}; set CNNLAB_DATA_DIR to the folder holding MNIST/raw")

CHILD = r"""
import json, resource, sys, time
sys.path[:0] = [{src!r}, {bench!r}]
import torch, torchvision, torch._dynamo
kind, dataset, seed, data_dir, extra = {kind!r}, {dataset!r}, {seed!r}, {data_dir!r}, {extra!r}
start = time.perf_counter()
if kind == "lecture-code":
    import lecture_code
    acc = lecture_code.run(data_dir, dataset=dataset, seed=seed, verbose=False)
    extra_out = {{}}
else:
    import cnnlab
    from cnnlab.engine import config as recipes
    r = cnnlab.train(recipes.config(kind, dataset=dataset, seed=seed, **extra), data_dir=data_dir, save=False,
                     progress=False, log=None)
    acc = r.test_accuracy
    extra_out = {{"train_seconds": r.train_seconds, "precision": r.precision, "epochs": len(r.epochs)}}
wall = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
if {tta!r} and kind != "lecture-code":  # after the clock: the same network, test-time augmented
    from cnnlab.engine import data
    from cnnlab.runs.inference import TTA, accuracy
    info, test = data.dataset_info(dataset), data.load(dataset, "test", data_dir)
    started = time.perf_counter()
    extra_out["tta_accuracy"] = accuracy(TTA(r.model.eval()), test, info.mean, info.std)
    extra_out["tta_seconds"] = time.perf_counter() - started
print("RESULT " + json.dumps({{"wall": wall, "accuracy": acc, "rss_mib": rss, **extra_out}}))
"""


def run_child(kind: str, dataset: str, seed: int, extra: dict, threads: int | None, tta: bool = False) -> dict:
    code = CHILD.format(src=str(ROOT / "src"), bench=str(ROOT / "benchmarks"), kind=kind, dataset=dataset,
                        seed=seed, data_dir=DATA_DIR, extra=extra, tta=tta)
    # The same OpenMP setting for every row (the cnnlab CLI sets it; the lecture's code would
    # not), so the table compares pipelines, not spin policies.
    env = {**os.environ, "GOMP_SPINCOUNT": os.environ.get("GOMP_SPINCOUNT", "10000")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    process = time.perf_counter() - started
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode or not lines:
        raise SystemExit(f"{kind} seed {seed} failed:\n{p.stderr[-2000:]}")
    return {**json.loads(lines[-1][7:]), "process": process}


def run_cli(kind: str, dataset: str, seed: int, extra: dict, threads: int | None) -> float:
    """Seconds a user waits for `cnnlab train --recipe KIND` (shell prompt to prompt), saving a run folder."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in extra.items()]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "cnnlab", "train", "--recipe", kind, "--dataset", dataset,
                            "--seed", str(seed), "--data-dir", DATA_DIR, "--out", str(Path(tmp) / "run"), *flags],
                           capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - started
    if p.returncode:
        raise SystemExit(f"cnnlab train --recipe {kind} seed {seed} failed:\n{p.stderr[-2000:]}")
    return seconds


def machine() -> str:
    import torch
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    sys.path.insert(0, str(ROOT / "src"))  # this checkout's cnnlab, as the child runs use
    from cnnlab.engine.processes import native_bf16  # the engine's own test, so the line says what `auto` uses

    bf16 = "native bf16" if native_bf16(torch.device("cpu")) else "no native bf16"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{cpu}, {os.cpu_count()} cores, {bf16}; {platform.system()} {platform.machine()}; "
            f"Python {platform.python_version()}, torch {torch.__version__}; load average at start {load:.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 seed each, best recipe cut to 3 epochs")
    p.add_argument("--seeds", type=int, default=None, help="seeds per row (default 3, --quick 1)")
    p.add_argument("--only", default="lecture-code,lecture,fast,best",
                   help="comma-separated rows: lecture-code and recipe names (lecture, fast, best, fashion)")
    p.add_argument("--dataset", default="mnist", choices=["mnist", "fashion-mnist"])
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every child")
    p.add_argument("--cli", default="", metavar="ROWS",
                   help="comma-separated cnnlab rows (e.g. lecture,fast) whose whole `cnnlab train` process is "
                        "also timed, shell prompt to prompt (a second run of each seed)")
    p.add_argument("--tta", action="store_true",
                   help="also the test accuracy with test-time augmentation (cnnlab evaluate --tta), after the clock")
    p.add_argument("--json", action="store_true", help="also print all runs as JSON")
    args = p.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 3)
    rows = args.only.split(",")
    cli_rows = [row for row in args.cli.split(",") if row]

    print(f"machine: {machine()}; GOMP_SPINCOUNT={os.environ.get('GOMP_SPINCOUNT', '10000')}, threads {args.threads or 'default'}", flush=True)
    results = {}
    for kind in rows:
        extra = {"epochs": 3} if (kind == "best" and args.quick) else {}
        results[kind] = []
        for seed in range(seeds):
            r = run_child(kind, args.dataset, seed, extra, args.threads, args.tta)
            if kind == "lecture-code":  # its child is its whole process already
                r["cli"] = r["process"]
            elif kind in cli_rows:
                r["cli"] = run_cli(kind, args.dataset, seed, extra, args.threads)
            results[kind].append(r)
            print(f"  {kind:13s} seed {seed}: {r['wall']:7.2f} s ({r['process']:.2f} s process"
                  + (f", {r['cli']:.2f} s cnnlab train" if kind in cli_rows else "")
                  + f")  {r['accuracy']:.2%}"
                  + (f" (TTA {r['tta_accuracy']:.2%} in {r['tta_seconds']:.1f} s)" if "tta_accuracy" in r else "")
                  + f"  {r['rss_mib']:6.0f} MiB", flush=True)

    base = statistics.mean(r["wall"] for r in results["lecture-code"]) if "lecture-code" in results else None
    base_process = statistics.mean(r["process"] for r in results["lecture-code"]) if base else None
    print(f"\n{args.dataset}, {seeds} seed(s) per row{' (--quick: best cut to 3 epochs)' if args.quick else ''}")
    print(f"{'row':14s} {'wall s (mean)':>13s} {'acc mean':>9s} {'acc min':>8s} {'speed-up':>9s} {'peak RSS':>9s} "
          f"{'process s':>10s} {'speed-up':>9s}")
    for kind, rs in results.items():
        wall = statistics.mean(r["wall"] for r in rs)
        process = statistics.mean(r["process"] for r in rs)
        accs = [r["accuracy"] for r in rs]
        speed = f"{base / wall:8.1f}x" if base else "      -"
        speed_process = f"{base_process / process:8.1f}x" if base else "      -"
        print(f"{kind:14s} {wall:13.2f} {statistics.mean(accs):9.2%} {min(accs):8.2%} {speed:>9s} "
              f"{max(r['rss_mib'] for r in rs):6.0f} MiB {process:10.2f} {speed_process:>9s}")
    for kind, rs in results.items():
        if all("tta_accuracy" in r for r in rs):
            ttas = [r["tta_accuracy"] for r in rs]
            print(f"  {kind} with TTA: mean {statistics.mean(ttas):.2%}, min {min(ttas):.2%}")
    if cli_rows and "lecture-code" in results:
        base_cli = statistics.mean(r["cli"] for r in results["lecture-code"])
        print(f"\nwhole process, shell prompt to prompt (lecture's code: {base_cli:.2f} s)")
        for kind, rs in results.items():
            if kind in cli_rows:
                cli = statistics.mean(r["cli"] for r in rs)
                print(f"  cnnlab train --recipe {kind}: {cli:.2f} s (slowest {max(r['cli'] for r in rs):.2f} s), "
                      f"{base_cli / cli:.1f}x")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
