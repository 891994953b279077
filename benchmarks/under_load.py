"""Training when other jobs share the cores: each recipe quiet and beside busy processes, in one run.

    python benchmarks/under_load.py                      # fast and lecture recipes, 3 rounds, 2 busy processes
    python benchmarks/under_load.py --rounds 5 --busy 2 --json
    python benchmarks/under_load.py --flags "--threads 1" --env OMP_WAIT_POLICY=passive   # try other settings

Every measurement is a fresh `python -m cnnlab train --recipe R --json` process at default settings
(plus --flags and --env when given). The load is a fixed synthetic one: BUSY processes that each
spin one core in a pure-Python loop, started just before a loaded run and stopped right after it
(and bounded in time, so none outlives the benchmark). Quiet and loaded runs alternate, round by
round, so the machine's own background (other users' jobs) falls on both alike; the load average
at each start is printed so a noisy machine shows.

The lecture recipe trains on the first --lecture-limit training images (default 20,000: its 2
epochs take ~10 s quiet on 2 cores instead of ~25 s); the fast recipe on all 60,000. Both test on
the first 2,000 test images (evaluation is not what is measured). Reported: the training loop's
images per second (cnnlab's own number) and the whole process time, quiet and loaded, and their
ratio (loaded / quiet time). With half the cores taken by BUSY=2 on a 2-core machine, 2x is the floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = os.environ.get("CNNLAB_DATA_DIR") or "data"
SPIN = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def busy(n: int, seconds: float) -> list[subprocess.Popen]:
    """n processes that each keep one core busy for at most `seconds`."""
    return [subprocess.Popen([sys.executable, "-c", SPIN.format(seconds=seconds)]) for _ in range(n)]


def train(recipe: str, args, env: dict, out: Path) -> dict:
    cmd = [sys.executable, "-m", "cnnlab", "train", "--recipe", recipe, "--limit-test", "2000", "--json",
           "--data-dir", DATA_DIR, "--out", str(out)]
    if recipe == "lecture" and args.lecture_limit:
        cmd += ["--limit-train", str(args.lecture_limit)]
    cmd += shlex.split(args.flags)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr[-2000:]}")
    result = json.loads(r.stdout)
    seen = sum(e["images_per_second"] * e["seconds"] for e in result["epochs"])
    return {"img_s": seen / sum(e["seconds"] for e in result["epochs"]), "process_s": took,
            "accuracy": result["test_accuracy"], "threads": result.get("threads"), "load_at_start": load}


def measure(args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.update(dict(kv.split("=", 1) for kv in args.env))
    runs = {(r, loaded): [] for r in args.recipes for loaded in (False, True)}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.rounds):
            for recipe in args.recipes:
                for loaded in (False, True):
                    spinners = busy(args.busy, args.max_seconds) if loaded else []
                    try:
                        time.sleep(0.5 if loaded else 0)  # let them take their cores
                        runs[recipe, loaded].append(train(recipe, args, env, Path(tmp) / f"{recipe}-{loaded}-{n}"))
                    finally:
                        for p in spinners:
                            p.kill()
                            p.wait()
                    last = runs[recipe, loaded][-1]
                    print(f"round {n + 1} {recipe:8s} {'loaded' if loaded else 'quiet ':6s} {last['img_s']:8,.0f} img/s "
                          f"{last['process_s']:6.1f} s  {last['threads']} thread(s)  (load average {last['load_at_start']:.1f} at start)",
                          file=sys.stderr)
    return runs


def summary(runs: dict, args) -> list[dict]:
    rows = []
    for recipe in args.recipes:
        quiet, loaded = runs[recipe, False], runs[recipe, True]
        q_ips, l_ips = (statistics.median(r["img_s"] for r in x) for x in (quiet, loaded))
        q_s, l_s = (statistics.median(r["process_s"] for r in x) for x in (quiet, loaded))
        rows.append({"recipe": recipe, "quiet_img_s": round(q_ips), "loaded_img_s": round(l_ips),
                     "slowdown": round(q_ips / l_ips, 2), "quiet_process_s": round(q_s, 1),
                     "loaded_process_s": round(l_s, 1), "process_slowdown": round(l_s / q_s, 2),
                     "quiet_img_s_all": [round(r["img_s"]) for r in quiet],
                     "loaded_img_s_all": [round(r["img_s"]) for r in loaded],
                     "quiet_threads": [r["threads"] for r in quiet], "loaded_threads": [r["threads"] for r in loaded],
                     "load_average_at_starts": [round(r["load_at_start"], 1) for r in quiet + loaded]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipes", type=lambda s: s.split(","), default=["fast", "lecture"])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--busy", type=int, default=2, help="busy background processes for the loaded runs (default 2)")
    ap.add_argument("--lecture-limit", type=int, default=20_000, help="training images for the lecture recipe (0: all)")
    ap.add_argument("--flags", default="", help="extra `cnnlab train` flags for every run, e.g. \"--threads 1\"")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for every run")
    ap.add_argument("--max-seconds", type=float, default=600, help="a busy process stops by itself after this long")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the busy processes are stopped on `kill` too
    if not Path(DATA_DIR, "MNIST", "raw").is_dir():
        raise SystemExit(f"MNIST not found in {DATA_DIR}; set CNNLAB_DATA_DIR (or run `cnnlab train` once)")
    rows = summary(measure(args), args)
    setting = " ".join([*args.env, "cnnlab train", args.flags or "(default settings)"])
    if args.json:
        print(json.dumps({"setting": setting, "busy": args.busy, "cpus": os.cpu_count(), "rows": rows}, indent=2))
        return
    print(f"{setting}; {os.cpu_count()} CPUs; loaded = {args.busy} busy processes; median of {args.rounds} rounds")
    print("| recipe | quiet img/s | loaded img/s | slowdown | quiet process s | loaded process s | process slowdown |")
    print("| --- | --: | --: | --: | --: | --: | --: |")
    for r in rows:
        print(f"| {r['recipe']} | {r['quiet_img_s']:,} | {r['loaded_img_s']:,} | {r['slowdown']:.2f}x | "
              f"{r['quiet_process_s']:.1f} | {r['loaded_process_s']:.1f} | {r['process_slowdown']:.2f}x |")


if __name__ == "__main__":
    main()
