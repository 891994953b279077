"""cnnlab evaluate: test accuracy, per-class accuracy and the confusion matrix of a run."""

from __future__ import annotations

import sys

from rich.table import Table

import cnnlab

from . import COMMANDS, add_data_dir_flag, add_json_flag, add_tta_flag, positive_int, print_json
from .output import console as stdout_console


def add_parser(sub) -> None:
    p = sub.add_parser("evaluate", help=COMMANDS["evaluate"],
                       description="Evaluate a run folder on its dataset's test split.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'cnnlab train' or 'cnnlab ensemble'")
    p.add_argument("--dataset", default=None, help="evaluate on another dataset's test split (default: the run's)")
    add_data_dir_flag(p)
    p.add_argument("--limit", type=positive_int, default=None, metavar="N", help="the first N test images only")
    add_tta_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    r = cnnlab.evaluate(args.run_dir, dataset=args.dataset, data_dir=args.data_dir, limit=args.limit, tta=args.tta)
    if r["skipped_images"]:
        print(f"warning: skipped {r['skipped_images']} unreadable image(s) in {r['dataset']}", file=sys.stderr)
    if args.json:
        print_json(r)
        return 0
    console = stdout_console()
    console.print(f"[bold]{r['run_dir']}[/] on {r['dataset']} test{' with TTA' if r['tta'] else ''}"
                  + (f" ({r['test_images_from']})" if r["dataset"].startswith("folder:") else "")
                  + f": accuracy [bold]{r['accuracy']:.2%}[/] ({r['correct']:,}/{r['total']:,})")
    per = Table(title="Per-class accuracy")
    per.add_column("class")
    per.add_column("accuracy", justify="right")
    per.add_column("images", justify="right")
    for name, acc, row in zip(r["classes"], r["per_class_accuracy"], r["confusion_matrix"]):
        per.add_row(name, f"{acc:.2%}", f"{sum(row):,}")
    console.print(per)
    cm = Table(title="Confusion matrix (rows: true class, columns: predicted)")
    cm.add_column("true \\ pred")
    for i in range(len(r["classes"])):
        cm.add_column(str(i), justify="right")
    for i, row in enumerate(r["confusion_matrix"]):
        name = r["classes"][i]
        cm.add_row(name if name == str(i) else f"{i} {name}", *[f"[bold]{v}[/]" if j == i else (str(v) if v else ".")
                                                 for j, v in enumerate(row)])
    console.print(cm)
    return 0
