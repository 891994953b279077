"""cnnlab visualize: PNG figures of what a trained run learned."""

from __future__ import annotations

import argparse
from pathlib import Path

import cnnlab

from . import COMMANDS, add_data_dir_flag, add_force_flag, add_json_flag, add_preprocess_flag, positive_int, print_json


def index_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected test image numbers separated by commas, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one test image number")
    return values


def add_common(p) -> None:
    """Options shared with `cnnlab report`, which draws the same figures."""
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'cnnlab train'")
    p.add_argument("--index", type=int, default=0, metavar="N",
                   help="test image whose feature maps are drawn (default 0)")
    p.add_argument("--image", default=None, metavar="PATH",
                   help="draw the feature maps (and saliency) of your own image file instead")
    add_preprocess_flag(p, "the --image file")
    p.add_argument("--explain", type=index_list, default=None, metavar="I,J,...",
                   help="test images for saliency and Grad-CAM (default: --index and the 3 most confident mistakes)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="use the first N test images for the confusion matrix and the mistakes (default: all)")
    p.add_argument("--mistakes", type=positive_int, default=16, metavar="N",
                   help="how many confident mistakes to draw (default 16)")
    add_data_dir_flag(p)
    add_json_flag(p)


def add_parser(sub) -> None:
    p = sub.add_parser("visualize", help=COMMANDS["visualize"],
                       description="Draw what a trained run learned: first-layer filters beside the closest "
                                   "hand-designed kernels, feature maps, training curves, the confusion matrix, "
                                   "the most confident mistakes, saliency and Grad-CAM.")
    add_common(p)
    p.add_argument("--out", default=None, metavar="DIR", help="folder for the PNG files (default RUN_DIR/figures)")
    add_force_flag(p, "figure files already in the --out folder")
    p.set_defaults(func=run)


def render_args(args):
    return cnnlab.visualize(args.run_dir, index=args.index, image=args.image, explain=args.explain, limit=args.limit,
                            mistakes=args.mistakes, data_dir=args.data_dir, progress=not args.json,
                            preprocess=args.preprocess)


def inputs(args) -> list:
    """The files visualize and report read, which none of their outputs may replace."""
    return [*cnnlab.run_files(args.run_dir), *([args.image] if args.image else [])]


def run(args) -> int:
    out = cnnlab.check_figures_out(Path(args.out) if args.out else Path(args.run_dir) / "figures", args.force, inputs(args))
    v = render_args(args)
    paths = cnnlab.write_figures(v, out, args.force, inputs(args))
    if args.json:
        print_json(v.to_json(paths))
        return 0
    print(f"{v.model} on {v.dataset}: accuracy {v.summary['accuracy']:.2%} on {v.summary['test_images']:,} test "
          f"images, {v.summary['misclassified']:,} misclassified")
    if "mean_filter_similarity" in v.summary:
        print(f"first-layer filters: {len(v.summary['filters'])}, mean |cosine| with the closest hand-designed "
              f"kernel {v.summary['mean_filter_similarity']:.2f}")
    for f in v.figures:
        print(f"  wrote {paths[f.name]}  ({f.title})")
    for na in v.not_applicable:
        print(f"  not drawn: {na['figure']} - {na['reason']}")
    return 0
