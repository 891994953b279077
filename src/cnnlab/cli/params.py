"""cnnlab params: parameters and multiply-accumulates per layer, and the lecture's arithmetic."""

from __future__ import annotations

from rich.table import Table

import cnnlab

from ..engine.config import MODELS
from ..errors import CnnlabError
from ..lecture import params
from . import COMMANDS, add_json_flag, print_json
from .output import console as stdout_console


def add_parser(sub) -> None:
    p = sub.add_parser("params", help=COMMANDS["params"],
                       description="Without MODEL: one line per registered model. With MODEL: a per-layer "
                                   "table (output shape, parameters, multiply-accumulates, receptive field, "
                                   "jump, activation memory) with totals. "
                                   "--lecture: the lecture's parameter questions with the arithmetic shown.")
    p.add_argument("model", nargs="?", metavar="MODEL",
                   help=f"one of: {', '.join(MODELS)}; or {', '.join(params.REFERENCE)} (torchvision's, "
                        "on its 224x224x3 ImageNet input; counted, not trainable)")
    p.add_argument("--input", default=None, metavar="CxHxW",
                   help="input size, channels x height x width (default: what MODEL was made for, 1x28x28 or "
                        "3x224x224 for alexnet)")
    p.add_argument("--lecture", action="store_true",
                   help="Linear(784,512), the FC nets on MNIST and ImageNet, simple_cnn, and FC versus CNN "
                        "as the resolution grows")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    console = stdout_console()
    shape = params.parse_shape(args.input) if args.input else params.input_for(args.model)
    if args.lecture:
        if args.model:
            raise CnnlabError("--lecture takes no MODEL; run 'cnnlab params MODEL' separately")
        return _lecture(console, args.json)

    if not args.model:
        rows = [cnnlab.summarize(name, shape) for name in MODELS]
        if args.json:
            print_json({"input_shape": list(shape), "models": [
                {"model": s.model, "parameters": s.parameters, "macs": s.macs} for s in rows]})
            return 0
        t = Table(title=f"Registered models, input {'x'.join(map(str, shape))}")
        for col, just in (("model", "left"), ("parameters", "right"), ("MACs", "right"), ("description", "left")):
            t.add_column(col, justify=just)
        for s in rows:
            t.add_row(s.model, f"{s.parameters:,}", f"{s.macs:,}", MODELS[s.model].description)
        console.print(t)
        return 0

    s = cnnlab.summarize(args.model, shape)
    if args.json:
        print_json(s.to_json())
        return 0
    t = Table(title=f"{s.model}, input {'x'.join(map(str, s.input_shape))}")
    for col, just in (("layer", "left"), ("type", "left"), ("output shape", "left"),
                      ("parameters", "right"), ("MACs", "right"), ("RF", "right"), ("jump", "right"),
                      ("memory", "right")):
        t.add_column(col, justify=just)
    for r in s.layers:
        t.add_row(r.name, f"{r.kind}({r.details})" if r.details else r.kind,
                  "x".join(map(str, r.output_shape)), f"{r.parameters:,}", f"{r.macs:,}",
                  _side(r.receptive_field, "all"), _side(r.jump, "-"), _kib(r.activation_bytes))
    t.add_section()
    t.add_row("total", "", "", f"[bold]{s.parameters:,}[/]", f"[bold]{s.macs:,}[/]", "", "",
              f"[bold]{_kib(s.activation_bytes)}[/]")
    console.print(t)
    print("RF: the receptive field, input pixels one unit sees (all: every pixel, a layer without space); "
          "jump: input pixels between neighbouring units (the product of the strides so far); "
          "memory: the layer's output for one image in float32.")
    return 0


def _side(hw: list | None, missing: str) -> str:
    """[5, 5] -> '5', [3, 5] -> '3x5', None -> missing."""
    if hw is None:
        return missing
    return str(hw[0]) if hw[0] == hw[1] else f"{hw[0]}x{hw[1]}"


def _kib(n: int) -> str:
    return f"{n:,} B" if n < 1024 else f"{n / 1024:,.1f} KiB"


def _lecture(console, as_json: bool) -> int:
    L = params.lecture()
    if as_json:
        print_json(L)
        return 0
    one = L["single_layer"]
    console.print("[bold]1. One fully connected layer on a flattened 28x28 image[/]")
    console.print(f"   {one['layer']}: {one['arithmetic']}")
    for key, title in (("mnist_fc", "2. The 3-layer fully connected net on MNIST"),
                       ("imagenet_fc", "3. The same net on ImageNet (224x224x3 = 150,528 inputs, 1,000 classes)")):
        net = L[key]
        console.print(f"[bold]{title}[/] ({'-'.join(f'{n:,}' for n in net['sizes'])})")
        for step in net["layers"]:
            console.print(f"   {step['layer']}: {step['arithmetic']}")
        console.print(f"   total: {net['arithmetic']}")
    cnn = L["simple_cnn"]
    console.print("[bold]4. The lecture's CNN, simple_cnn[/]")
    for step in cnn["layers"]:
        console.print(f"   {step['layer']}: {step['arithmetic']}")
    console.print(f"   total: {cnn['arithmetic']} ({cnn['macs']:,} multiply-accumulates per image)")

    t = Table(title="5. Parameters as the (grayscale) input resolution grows")
    for col in ("pixels per side", "inputs", "FC 3-layer net", "its first layer", "simple_cnn conv layers",
                "simple_cnn total"):
        t.add_column(col, justify="right")
    for r in L["by_resolution"]:
        t.add_row(f"{r['side']}", f"{r['inputs']:,}", f"{r['fc_parameters']:,}", f"{r['fc_first_layer']:,}",
                  f"{r['cnn_conv_parameters']:,}", f"{r['cnn_parameters']:,}")
    console.print(t)
    console.print("   A convolution's parameters do not depend on the image size (the same small kernels "
                  "slide everywhere); a fully connected layer needs one weight per input pixel per unit. "
                  "simple_cnn's total still grows because its flattened feature map feeds a linear layer.")
    return 0
