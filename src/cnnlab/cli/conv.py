"""cnnlab conv: the sliding-window convolution of a matrix by a kernel, step by step."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import CnnlabError
from ..lecture import conv, kernels
from ..lecture.conv import LECTURE_INPUT, LECTURE_KERNEL, parse_channels
from . import COMMANDS, add_json_flag, nonnegative_int, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("conv", help=COMMANDS["conv"],
                       description="Convolve (cross-correlate, like every CNN layer) a matrix with a kernel: "
                                   "prints the output-size formula, each window with its element-wise "
                                   "products and sum, and the output matrix. Without arguments: the "
                                   "lecture's 5x5 example. Several channels (C_in x H x W, channels "
                                   "separated by '|') and several kernels (one per output channel, each "
                                   "with C_in channels) work as a Conv2d layer does.")
    p.add_argument("input", nargs="?", default=LECTURE_INPUT, metavar="INPUT",
                   help=f"matrix, rows separated by ';' (e.g. \"{LECTURE_INPUT}\"), channels separated by "
                        f"'|', or a file holding one (text rows or .npy, 2-D or [C, H, W]); default: the "
                        f"lecture's 5x5 input")
    p.add_argument("kernel", nargs="*", default=[LECTURE_KERNEL], metavar="KERNEL",
                   help=f"one or more kernels: a matrix in the same form (with one matrix per input channel, "
                        f"separated by '|'), a file, or a named kernel (see 'cnnlab kernels'); "
                        f"default: the lecture's \"{LECTURE_KERNEL}\"")
    p.add_argument("--bias", default=None, metavar="B[,B...]",
                   help="one bias per kernel, added to its output (default: none)")
    p.add_argument("--stride", type=positive_int, default=1, help="step between windows (default 1)")
    p.add_argument("--padding", type=nonnegative_int, default=0, help="rings of zeros around the input (default 0)")
    p.add_argument("--dilation", type=positive_int, default=1, help="spacing between kernel taps (default 1)")
    p.add_argument("--flip", action="store_true",
                   help="flip the kernel 180 degrees first: true convolution instead of cross-correlation")
    p.add_argument("--steps", type=nonnegative_int, default=25, metavar="N",
                   help="print the first N steps (default 25; 0 for none)")
    add_json_flag(p)
    p.set_defaults(func=run)


def load_kernel(text: str) -> np.ndarray:
    """A named kernel, or a matrix (channels separated by '|') or file -> [C_in, kh, kw]."""
    name = text.strip().lower()
    if name in kernels.NAMED or (name.replace("-", "").isalpha() and not Path(text).is_file()):
        return kernels.get(name)[None]  # an unknown name gets the list of known ones
    return parse_channels(text, "kernel")


def load_kernels(texts: list[str], channels: int) -> np.ndarray:
    """Every KERNEL argument -> [C_out, C_in, kh, kw], each with the input's number of channels."""
    ks = [load_kernel(t) for t in texts]
    for i, k in enumerate(ks, 1):
        if k.shape[0] != channels:
            raise CnnlabError(f"kernel {i} has {k.shape[0]} channel{'s' if k.shape[0] > 1 else ''} but the input has "
                              f"{channels}; give each kernel one matrix per input channel, separated by '|'")
        if k.shape != ks[0].shape:
            raise CnnlabError(f"kernel {i} is {'x'.join(map(str, k.shape[1:]))} but kernel 1 is "
                              f"{'x'.join(map(str, ks[0].shape[1:]))}; the kernels of one layer have one size")
    return np.stack(ks)


def parse_bias(text: str | None, count: int) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise CnnlabError(f"--bias '{text}' must be numbers separated by commas, e.g. 0.5,-1") from None
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise CnnlabError(f"--bias has {len(values)} finite number(s) for {count} kernel(s); give one per kernel")
    return values


def run(args) -> int:
    x = parse_channels(args.input, "input")
    k = load_kernels(args.kernel, x.shape[0])
    bias = parse_bias(args.bias, len(k))
    single = x.shape[0] == 1 and len(k) == 1 and bias is None
    d = conv.conv_json(x[0] if single else x, k[0, 0] if single else k, bias, args.stride, args.padding,
                       args.dilation, args.flip)
    if args.json:
        print_json(d)
        return 0
    if single:
        _print_single(d, args)
    else:
        _print_layer(d, args)
    return 0


def _print_formula(d: dict) -> None:
    print("output size = floor((n + 2*padding - dilation*(k-1) - 1) / stride) + 1")
    for axis, formula in d["output_size"]["formula"].items():
        print(f"  {axis}: {formula}")


def _print_single(d: dict, args) -> None:
    x, k, used = (np.array(d[key]) for key in ("input", "kernel", "kernel_used"))
    (h, w), (kh, kw) = x.shape, k.shape
    print(f"input {h}x{w}:\n{conv.matrix_text(x)}")
    print(f"kernel {kh}x{kw}:\n{conv.matrix_text(k)}")
    if args.flip:
        print("--flip: the kernel turned 180 degrees (true convolution). Without --flip cnnlab, like "
              "torch's conv2d and every CNN layer, slides the kernel as it is (cross-correlation); "
              "a network learns the flipped weights either way.")
        print(f"kernel used:\n{conv.matrix_text(used)}")
    _print_formula(d)
    if args.padding:
        print(f"padded input ({args.padding} ring{'s' if args.padding > 1 else ''} of zeros):\n"
              f"{conv.matrix_text(conv.zero_pad(x, args.padding, args.padding))}")
    steps = d["steps"]
    for n, s in enumerate(steps[:args.steps], 1):
        step = conv.Step(s["row"], s["col"], s["top"], s["left"], np.array(s["window"]), np.array(s["products"]),
                         s["sum"])
        print(f"step {n}: out[{s['row']}][{s['col']}], window at row {s['top']}, col {s['left']} of the "
              f"{'padded ' if args.padding else ''}input:")
        print(conv.matrix_text(step.window, "    "))
        print(f"    {conv.step_text(step, used)}")
    _print_rest(len(steps), args.steps)
    out = np.array(d["output"])
    print(f"output {out.shape[0]}x{out.shape[1]}:\n{conv.matrix_text(out)}")


def _print_layer(d: dict, args) -> None:
    x, k = np.array(d["input"]), np.array(d["kernels"])
    used = k[..., ::-1, ::-1] if args.flip else k
    print(f"input {'x'.join(map(str, x.shape))} (channels x height x width):")
    for c, m in enumerate(x):
        print(f"  channel {c}:\n{conv.matrix_text(m, '    ')}")
    print(f"{len(k)} kernel{'s' if len(k) > 1 else ''} of {'x'.join(map(str, k.shape[1:]))}"
          f"{' (flipped 180 degrees: true convolution)' if args.flip else ''}, one output channel each:")
    for o, kern in enumerate(used):
        bias = f", bias {conv.fmt(d['bias'][o])}" if d["bias"] else ""
        print(f"  kernel {o}{bias}:")
        for c, m in enumerate(kern):
            print(f"    channel {c}:\n{conv.matrix_text(m, '      ')}")
    _print_formula(d)
    if args.padding:
        print(f"each channel padded with {args.padding} ring{'s' if args.padding > 1 else ''} of zeros; "
              f"windows start at rows and columns of the padded channels")
    steps = d["steps"]
    for n, s in enumerate(steps[:args.steps], 1):
        print(f"step {n}: out[{s['kernel']}][{s['row']}][{s['col']}], window at row {s['top']}, col {s['left']}:")
        for c, ch in enumerate(s["channels"]):
            step = conv.Step(s["row"], s["col"], s["top"], s["left"], np.array(ch["window"]),
                             np.array(ch["products"]), ch["sum"])
            print(f"    channel {c}: {conv.step_text(step, used[s['kernel'], c])}")
        terms = " + ".join(conv.fmt(ch["sum"]) for ch in s["channels"])
        bias = f" + bias {conv.fmt(s['bias'])}" if d["bias"] else ""
        print(f"    {terms}{bias} = {conv.fmt(s['sum'])}")
    _print_rest(len(steps), args.steps)
    out = np.array(d["output"])
    for o, m in enumerate(out):
        print(f"output channel {o} ({m.shape[0]}x{m.shape[1]}):\n{conv.matrix_text(m)}")


def _print_rest(total: int, shown: int) -> None:
    if total > shown:
        print(f"... {total - shown} more steps (--steps {total} shows all)")
