"""cnnlab compare: train several models the same way and compare size, cost, speed and accuracy."""

from __future__ import annotations

import sys
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

from rich.table import Table

import cnnlab

from ..engine.config import COMPARE_MODELS, DATASET_NAMES, MODELS, TrainConfig, settings
from . import COMMANDS, add_data_dir_flag, add_json_flag, positive_float, positive_int, print_json
from .output import console


def add_parser(sub) -> None:
    d = TrainConfig()
    p = sub.add_parser("compare", help=COMMANDS["compare"],
                       description="Train each model with the same data, seed and settings (the one training "
                                   "engine) and print parameters, multiply-accumulates, train time, train and "
                                   "test accuracy and the train-test gap. Saved as compare.csv and compare.md "
                                   "with the run folders under --out.")
    p.add_argument("--models", default=",".join(COMPARE_MODELS),
                   help=f"comma-separated, from: {', '.join(MODELS)} (default {','.join(COMPARE_MODELS)})")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(DATASET_NAMES)} (default {d.dataset})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed, the same for every model (default {d.seed})")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda", "mps"], help="where to train (default auto)")
    p.add_argument("--threads", type=positive_int, default=None, help=settings()["threads"].help)
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N", help="train on the first N images only")
    p.add_argument("--limit-test", type=positive_int, default=None, metavar="N", help="test on the first N images only")
    p.add_argument("--out", default=None, help="folder for the runs and tables (default runs/compare-<date-time>/)")
    add_data_dir_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    cfg = TrainConfig(epochs=args.epochs, dataset=args.dataset, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, device=args.device, threads=args.threads, limit_train=args.limit_train, limit_test=args.limit_test)
    out = args.out or Path("runs") / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    rows = cnnlab.compare(models, cfg, data_dir=args.data_dir, out=out, log=log)
    if args.json:
        print_json({"out": str(out), "config": asdict(cfg), "rows": [asdict(r) for r in rows]})
        return 0
    t = Table(title=f"{len(rows)} models, same data and seed ({args.epochs} epoch{'s' if args.epochs > 1 else ''})")
    for col in ("model", "parameters", "MACs", "train time", "train acc", "test acc", "gap"):
        t.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        t.add_row(r.model, f"{r.parameters:,}", f"{r.macs:,}", f"{r.train_seconds:.1f} s", f"{r.train_accuracy:.2%}",
                  f"{r.test_accuracy:.2%}", f"{r.gap * 100:+.2f} pts")
    console().print(t)
    print(f"gap = train accuracy - test accuracy (overfitting); tables saved to {out}/compare.csv and compare.md")
    return 0
