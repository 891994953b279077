"""cnnlab export: write a run as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import cnnlab

from ..engine.config import EXPORT_FORMATS, EXPORT_TOLERANCE
from . import COMMANDS, add_force_flag, add_json_flag, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("export", help=COMMANDS["export"],
                       description="Export a run's model with a dynamic batch size and its preprocessing "
                                   "(normalisation, classes) in the file's metadata, then check that the "
                                   f"exported model's logits match PyTorch's within {EXPORT_TOLERANCE:g} on real test images.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'cnnlab train'")
    p.add_argument("--format", default="onnx", choices=list(EXPORT_FORMATS), help="onnx (default) or torchscript")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="file to write (default RUN_DIR/model.onnx or RUN_DIR/model.pt)")
    add_force_flag(p)
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    r = cnnlab.export(args.run_dir, args.format, args.out, force=args.force)
    if args.json:
        print_json(r)
        return 0
    runtime = "onnxruntime" if r["format"] == "onnx" else "TorchScript"
    print(f"wrote {r['path']} ({r['format']}, {r['bytes']:,} bytes, dynamic batch size)")
    print(f"parity: {runtime} vs PyTorch on {r['checked_on']}: max |logit difference| = "
          f"{r['max_abs_diff']:.2e} (tolerance {r['tolerance']:g}); batch of 1 checked too")
    norm = r["metadata"]["normalization"]
    print(f"metadata 'cnnlab': classes {', '.join(r['metadata']['classes'])}; input x = (pixel/255 - "
          f"{norm['mean']}) / {norm['std']}, shape [batch, 1, 28, 28]")
    return 0
