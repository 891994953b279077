"""cnnlab conv: the sliding-window convolution of a matrix by a kernel, step by step."""

from __future__ import annotations

from pathlib import Path

from ..lecture import conv, kernels
from ..lecture.conv import LECTURE_INPUT, LECTURE_KERNEL, parse_matrix
from . import COMMANDS, add_json_flag, nonnegative_int, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("conv", help=COMMANDS["conv"],
                       description="Convolve (cross-correlate, like every CNN layer) a matrix with a kernel: "
                                   "prints the output-size formula, each window with its element-wise "
                                   "products and sum, and the output matrix. Without arguments: the "
                                   "lecture's 5x5 example.")
    p.add_argument("input", nargs="?", default=LECTURE_INPUT, metavar="INPUT",
                   help=f"matrix, rows separated by ';' (e.g. \"{LECTURE_INPUT}\"), or a file holding one "
                        f"(text rows or .npy); default: the lecture's 5x5 input")
    p.add_argument("kernel", nargs="?", default=LECTURE_KERNEL, metavar="KERNEL",
                   help=f"kernel matrix in the same form, a file, or a named kernel (see 'cnnlab kernels'); "
                        f"default: the lecture's \"{LECTURE_KERNEL}\"")
    p.add_argument("--stride", type=positive_int, default=1, help="step between windows (default 1)")
    p.add_argument("--padding", type=nonnegative_int, default=0, help="rings of zeros around the input (default 0)")
    p.add_argument("--dilation", type=positive_int, default=1, help="spacing between kernel taps (default 1)")
    p.add_argument("--flip", action="store_true",
                   help="flip the kernel 180 degrees first: true convolution instead of cross-correlation")
    p.add_argument("--steps", type=nonnegative_int, default=25, metavar="N",
                   help="print the first N steps (default 25; 0 for none)")
    add_json_flag(p)
    p.set_defaults(func=run)


def load_kernel(text: str):
    name = text.strip().lower()
    if name in kernels.NAMED or (name.replace("-", "").isalpha() and not Path(text).is_file()):
        return kernels.get(name)  # an unknown name gets the list of known ones
    return parse_matrix(text, "kernel")


def run(args) -> int:
    x = conv.parse_matrix(args.input, "input")
    k = load_kernel(args.kernel)
    used = k[::-1, ::-1] if args.flip else k
    steps: list = []
    out = conv.conv2d(x, k, args.stride, args.padding, args.dilation, flip=args.flip, steps=steps)
    (h, w), (kh, kw) = x.shape, k.shape
    sizes = {axis: conv.size_formula(n, m, args.stride, args.padding, args.dilation)
             for axis, n, m in (("height", h, kh), ("width", w, kw))}
    if args.json:
        print_json({
            "input": x.tolist(), "kernel": k.tolist(), "kernel_used": used.tolist(), "flip": args.flip,
            "stride": args.stride, "padding": args.padding, "dilation": args.dilation,
            "output_size": {"height": out.shape[0], "width": out.shape[1], "formula": sizes},
            "output": out.tolist(),
            "steps": [{"row": s.row, "col": s.col, "window": s.window.tolist(), "products": s.products.tolist(),
                       "sum": s.total} for s in steps],
        })
        return 0

    print(f"input {h}x{w}:\n{conv.matrix_text(x)}")
    print(f"kernel {kh}x{kw}:\n{conv.matrix_text(k)}")
    if args.flip:
        print("--flip: the kernel turned 180 degrees (true convolution). Without --flip cnnlab, like "
              "torch's conv2d and every CNN layer, slides the kernel as it is (cross-correlation); "
              "a network learns the flipped weights either way.")
        print(f"kernel used:\n{conv.matrix_text(used)}")
    print("output size = floor((n + 2*padding - dilation*(k-1) - 1) / stride) + 1")
    for axis, formula in sizes.items():
        print(f"  {axis}: {formula}")
    if args.padding:
        print(f"padded input ({args.padding} ring{'s' if args.padding > 1 else ''} of zeros):\n"
              f"{conv.matrix_text(conv.zero_pad(x, args.padding, args.padding))}")
    for n, s in enumerate(steps[:args.steps], 1):
        print(f"step {n}: out[{s.row}][{s.col}], window at row {s.top}, col {s.left} of the "
              f"{'padded ' if args.padding else ''}input:")
        print(conv.matrix_text(s.window, "    "))
        print(f"    {conv.step_text(s, used)}")
    if len(steps) > args.steps:
        print(f"... {len(steps) - args.steps} more steps (--steps {len(steps)} shows all)")
    print(f"output {out.shape[0]}x{out.shape[1]}:\n{conv.matrix_text(out)}")
    return 0
