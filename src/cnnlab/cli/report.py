"""cnnlab report: one self-contained HTML file with a run's configuration, metrics and figures."""

from __future__ import annotations

import cnnlab

from . import COMMANDS, add_force_flag, print_json
from .visualize import add_common


def add_parser(sub) -> None:
    p = sub.add_parser("report", help=COMMANDS["report"],
                       description="Write one HTML file (images embedded, no network requests) with the run's "
                                   "configuration, metrics table and every figure of 'cnnlab visualize'.")
    add_common(p)
    p.add_argument("--out", default=None, metavar="FILE", help="HTML file to write (default RUN_DIR/report.html)")
    add_force_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    r = cnnlab.report(args.run_dir, args.out, force=args.force, index=args.index, image=args.image, explain=args.explain, limit=args.limit,
              mistakes=args.mistakes, data_dir=args.data_dir, progress=not args.json,
              preprocess=args.preprocess)
    if args.json:
        print_json(r)
        return 0
    print(f"wrote {r['report']} ({r['bytes'] / 1e6:.1f} MB, {len(r['figures'])} figures): {r['model']} on "
          f"{r['dataset']}, test accuracy {r['accuracy']:.2%} on {r['test_images']:,} images")
    for na in r["not_applicable"]:
        print(f"  not drawn: {na['figure']} - {na['reason']}")
    return 0
