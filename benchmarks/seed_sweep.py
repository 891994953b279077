"""A recipe over many seeds, with and without changes: is a change better on its worst seed?

    python benchmarks/seed_sweep.py fast --seeds 0-7 '{}' '{"batch_size": 128, "lr": 0.01}'
    python benchmarks/seed_sweep.py fast --seeds 8-15 '{"batch_size": 128, "lr": 0.01}' --json

Each JSON argument is a set of TrainConfig overrides ('{}': the recipe as it is). Every setting is
trained on every seed in this one process, in turn, with nothing saved, on the full test set; one
line per setting gives the worst seed, the mean, each seed's accuracy and the mean training
seconds (cnnlab's own clock: the loop and its evaluations, not the imports). Records that depend
on every seed (the `fast` recipe's 99.0% on each) were chosen with it (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as the CLI does (cnnlab.cli.tune_process), before torch loads

import cnnlab  # noqa: E402
from cnnlab.engine import config as recipes  # noqa: E402


def seeds(text: str) -> list[int]:
    """'0-7' or '0,3,5'."""
    if "-" in text:
        low, high = text.split("-")
        return list(range(int(low), int(high) + 1))
    return [int(s) for s in text.split(",")]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe", choices=recipes.recipe_names())
    p.add_argument("settings", nargs="+", help="JSON objects of TrainConfig overrides, '{}' for the recipe itself")
    p.add_argument("--seeds", type=seeds, default=seeds("0-7"))
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the engine's choice)")
    p.add_argument("--json", action="store_true", help="one JSON object per setting instead of a line")
    args = p.parse_args()
    data_dir = os.environ.get("CNNLAB_DATA_DIR") or "data"
    for text in args.settings:
        overrides = json.loads(text)
        accs, secs = [], []
        for seed in args.seeds:
            cfg = recipes.config(args.recipe, seed=seed, threads=args.threads, **overrides)
            r = cnnlab.train(cfg, data_dir=data_dir, save=False, progress=False, log=None)
            accs.append(round(100 * r.test_accuracy, 2))
            secs.append(r.train_seconds)
        row = {"recipe": args.recipe, "overrides": overrides, "seeds": args.seeds, "min": min(accs),
               "mean": round(statistics.mean(accs), 3), "accuracies": accs, "train_seconds": round(statistics.mean(secs), 2)}
        print(json.dumps(row) if args.json else
              f"{args.recipe} {text}: worst {row['min']:.2f}%, mean {row['mean']:.3f}% over seeds "
              f"{args.seeds[0]}-{args.seeds[-1]} ({', '.join(f'{a:.2f}' for a in accs)}), "
              f"{row['train_seconds']:.2f} s training", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
