"""cnnlab pool: max and average pooling step by step, and the translation-invariance test."""

from __future__ import annotations

import sys

import numpy as np
from rich.table import Table

import cnnlab

from ..lecture import pool
from ..lecture.conv import matrix_text, parse_matrix
from ..lecture.pool import LECTURE_INPUT
from . import COMMANDS, add_data_dir_flag, add_json_flag, positive_int, print_json
from .output import console


def add_parser(sub) -> None:
    p = sub.add_parser("pool", help=COMMANDS["pool"],
                       description="Pool a matrix step by step (default: a 4x4 example), or with --invariance "
                                   "shift test digits by 1-4 pixels and measure how a trained model with pooling "
                                   "and one without (no_pool_cnn) react.")
    p.add_argument("matrix", nargs="?", default=LECTURE_INPUT, metavar="MATRIX",
                   help=f"matrix, rows separated by ';', or a file (default \"{LECTURE_INPUT}\")")
    p.add_argument("--mode", choices=["max", "avg", "both"], default="both", help="which pooling (default both)")
    p.add_argument("--size", type=positive_int, default=2, help="window size (default 2)")
    p.add_argument("--stride", type=positive_int, default=None, help="step between windows (default: the size)")
    g = p.add_argument_group("translation invariance")
    g.add_argument("--invariance", metavar="RUN_DIR", default=None,
                   help="a trained run with pooling (e.g. simple_cnn) to test")
    g.add_argument("--baseline", metavar="RUN_DIR", default=None,
                   help="a no_pool_cnn run trained like RUN_DIR (same data, images, epochs and recipe; refused "
                        "otherwise) to compare with (default: train one now with RUN_DIR's recipe and images)")
    g.add_argument("--limit-train", type=positive_int, default=None, metavar="N",
                   help="the baseline is trained on RUN_DIR's own training images; N must be RUN_DIR's "
                        "--limit-train (another N is refused: the comparison would be unequal)")
    g.add_argument("--limit", type=positive_int, default=1000, metavar="N",
                   help="test on the first N test images (default 1000)")
    g.add_argument("--max-shift", type=positive_int, default=4, help="largest shift in pixels (default 4)")
    g.add_argument("--out", default=None, metavar="FILE.png", help="the plot (default RUN_DIR/invariance.png)")
    g.add_argument("--force", action="store_true", help="replace the plot file if it exists")
    add_data_dir_flag(g)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.invariance:
        return _invariance(args)

    x = parse_matrix(args.matrix, "matrix")
    stride = args.stride or args.size
    modes = ["max", "avg"] if args.mode == "both" else [args.mode]
    d = pool.pool_json(x, args.size, stride, modes)
    if args.json:
        print_json(d)
        return 0
    results = {mode: (np.array(d[mode]["output"]), d[mode]["steps"]) for mode in modes}
    h, w = x.shape
    print(f"input {h}x{w}:\n{matrix_text(x)}")
    oh, ow = next(iter(results.values()))[0].shape
    print(f"{args.size}x{args.size} windows, stride {stride}: output floor(({h} - {args.size}) / {stride}) + 1 = {oh} "
          f"rows, floor(({w} - {args.size}) / {stride}) + 1 = {ow} columns")
    for mode, (out, steps) in results.items():
        print(f"{'max' if mode == 'max' else 'average'} pooling:")
        for n, s in enumerate(steps, 1):
            window = np.array(s["window"])
            vals = " ".join(matrix_text(window, "").split())
            how = f"max({vals.replace(' ', ', ')})" if mode == "max" else f"({vals.replace(' ', ' + ')}) / {window.size}"
            print(f"  step {n}: out[{s['row']}][{s['col']}] = {how} = {matrix_text(s['value'], '')}")
        print(f"{mode} pooled {oh}x{ow}:\n{matrix_text(out)}")
    return 0


def _invariance(args) -> int:
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    r = cnnlab.invariance(args.invariance, baseline_dir=args.baseline, out=args.out, limit=args.limit,
                           max_shift=args.max_shift, limit_train=args.limit_train, data_dir=args.data_dir, log=log,
                           force=args.force)
    rows, out = r["rows"], r["plot"]
    if args.json:
        print_json(r)
        return 0
    t = Table(title=f"Shifted test digits ({r['images']:,} images, each shift right, left, down and up)")
    for col, just in (("model", "left"), ("shift (px)", "right"), ("predictions changed", "right"),
                      ("accuracy", "right"), ("feature change", "right")):
        t.add_column(col, justify=just)
    for row in rows:
        t.add_row(row["model"], str(row["shift"]), f"{row['prediction_changed']:.1%}", f"{row['accuracy']:.1%}",
                  f"{row['feature_change']:.3f}")
    console().print(t)
    k = r["training"]
    images = "all its training images" if k["limit_train"] is None else f"the first {k['limit_train']:,} training images"
    print(f"both trained alike: {k['dataset']}, {images}, {k['epochs']} "
          f"epoch{'s' if k['epochs'] != 1 else ''}, batch {k['batch_size']}, {k['optimizer']} lr {k['lr']}")
    print("feature change = |features(shifted) - features(original)| / |features(original)|, averaged over images")
    print(f"plot saved to {out}")
    return 0
