"""Start-up: the whole-process time a user waits for commands that compute little.

    python benchmarks/startup.py                       # this checkout, 7 rounds
    python benchmarks/startup.py --src /tmp/old/src    # another source tree (e.g. `git archive` of an
                                                       # older commit), for a before/after table
    python benchmarks/startup.py --rounds 15 --json
    python benchmarks/startup.py --command "train --recipe fast --out {out}"   # any commands instead

Each command is a fresh `python -m cnnlab ...` process (what the `cnnlab` script does), stdout to
a pipe, timed from spawn to exit: interpreter start, imports and the work. The commands take turns
round by round, so load from other jobs spreads over all of them alike. The table gives the median
and the fastest of the rounds, and whether the process loaded torch (`-X importtime`, one extra run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

COMMANDS = [
    ["--help"],
    ["train", "--help"],
    ["evaluate", "--help"],
    ["serve", "--help"],
    ["conv"],
    ["pool"],
    ["kernels"],
    ["params", "--lecture"],
    ["params", "simple_cnn"],  # needs torch: the price of `import torch`, for reference
]


def timed(args: list[str], env: dict) -> float:
    with tempfile.TemporaryDirectory() as tmp:  # {out}: a folder of its own for each run
        args = [a.replace("{out}", str(Path(tmp) / "out")) for a in args]
        start = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "cnnlab", *args], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        took = time.perf_counter() - start
    if r.returncode:
        raise SystemExit(f"cnnlab {' '.join(args)} exited {r.returncode}:\n{r.stderr.decode()[-2000:]}")
    return took


def loads_torch(args: list[str], env: dict) -> bool:
    if any("{out}" in a for a in args):  # (a command that writes: it computes, so it loads torch)
        return True
    r = subprocess.run([sys.executable, "-X", "importtime", "-m", "cnnlab", *args], env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return any(re.search(r"\|\s*torch$", line.rstrip()) for line in r.stderr.splitlines())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=str(ROOT / "src"), help="source tree holding cnnlab/ (default: this checkout's)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--command", action="append", default=None, metavar="ARGS",
                    help="a cnnlab command line to time instead of the default list (repeatable; "
                         "{out} becomes a fresh folder for each run)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    commands = [shlex.split(c) for c in args.command] if args.command else COMMANDS
    env = {**os.environ, "PYTHONPATH": args.src}
    env.pop("COLUMNS", None)
    times: dict[str, list[float]] = {" ".join(c): [] for c in commands}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for c in commands:
            times[" ".join(c)].append(timed(c, env))
    rows = [{"command": f"cnnlab {name}", "median_s": round(statistics.median(t), 3), "min_s": round(min(t), 3),
             "torch": loads_torch(name.split(), env)} for name, t in times.items()]
    info = {"src": args.src, "rounds": args.rounds, "cpus": os.cpu_count(),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if args.json:
        print(json.dumps({**info, "rows": rows}, indent=2))
        return
    print(f"source {args.src}; {args.rounds} rounds; {info['cpus']} CPUs; load average "
          f"{info['load_average'][0]} at start, {info['load_average'][1]} at end")
    print("| command | median s | fastest s | loads torch |")
    print("| --- | --: | --: | --- |")
    for r in rows:
        print(f"| `{r['command']}` | {r['median_s']:.2f} | {r['min_s']:.2f} | {'yes' if r['torch'] else 'no'} |")


if __name__ == "__main__":
    main()
