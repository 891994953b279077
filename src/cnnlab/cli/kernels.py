"""cnnlab kernels: the classic hand-designed kernels, printed or drawn as the lecture's gallery."""

from __future__ import annotations

import sys
from pathlib import Path

import cnnlab

from ..errors import CnnlabError
from ..lecture import kernels
from ..lecture.conv import matrix_text, parse_matrix
from ..lecture.kernels import NAMED
from . import COMMANDS, add_data_dir_flag, add_force_flag, add_json_flag, positive_float, positive_int, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("kernels", help=COMMANDS["kernels"],
                       description="Print kernels, or with --out draw the lecture's gallery: one row per image, "
                                   "columns Original, Prewitt X, Prewitt Y, Sobel X, Sobel Y, Laplacian, "
                                   "Gaussian Blur, Sharpening (plus any KERNEL given).")
    p.add_argument("kernels", nargs="*", metavar="KERNEL",
                   help=f"a named kernel ({', '.join(NAMED)}) or a matrix like \"0 1 0; 1 -4 1; 0 1 0\", "
                        f"optionally titled: \"ridge=0 -1 0; -1 4 -1; 0 -1 0\" (default: print all named kernels)")
    p.add_argument("--size", type=positive_int, default=None,
                   help="size of the gaussian (odd, default 5) and box-blur (default 3) kernels")
    p.add_argument("--sigma", type=positive_float, default=1.0, help="standard deviation of the gaussian (default 1.0)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="draw the gallery into FILE (.png, .jpg, .svg or .pdf)")
    add_force_flag(p)
    p.add_argument("--image", nargs="+", default=None, metavar="PATH",
                   help="images for the gallery rows (default: sample MNIST digits and, when scikit-image is "
                        "installed, its photographs camera, coins, astronaut)")
    add_data_dir_flag(p, "dataset folder for the sample digits")
    add_json_flag(p)
    p.set_defaults(func=run)


def parse_kernels(texts: list, size, sigma) -> list[tuple[str, object]]:
    """Each KERNEL as (title, matrix): a name, a matrix, or TITLE=matrix."""
    out = []
    for i, text in enumerate(texts, 1):
        name = text.strip().lower()
        if name in kernels.NAMED:
            out.append((name, kernels.get(name, size, sigma)))
        elif "=" in text:
            title, matrix = text.split("=", 1)
            out.append((title.strip() or f"custom {i}", parse_matrix(matrix, f"kernel '{title.strip()}'")))
        elif Path(text).is_file():
            out.append((Path(text).stem, parse_matrix(text, "kernel")))
        elif any(ch.isdigit() for ch in text):
            out.append((f"custom {i}", parse_matrix(text, "kernel")))
        else:
            kernels.get(name)  # unknown name: the error lists the known ones
    return out


def run(args) -> int:
    chosen = parse_kernels(args.kernels, args.size, args.sigma)
    if args.out is None:
        if args.image:
            raise CnnlabError("--image draws a gallery: add --out FILE.png to say where")
        if not chosen:
            chosen = [(name, kernels.get(name, args.size, args.sigma)) for name in kernels.NAMED]
        if args.json:
            print_json({"kernels": {title: k.tolist() for title, k in chosen}})
            return 0
        for title, k in chosen:
            print(f"{title} ({k.shape[0]}x{k.shape[1]}):\n{matrix_text(k)}")
        return 0

    g = cnnlab.gallery(args.out, args.image, extra=chosen, size=args.size, sigma=args.sigma, data_dir=args.data_dir,
                       force=args.force, inputs=args.kernels)
    for _, message in g.errors:
        print(f"cnnlab kernels: error: {message}", file=sys.stderr)
    for note in g.notes:
        print(f"cnnlab kernels: note: {note}", file=sys.stderr)
    if args.json:
        print_json({"out": str(g.out), "columns": g.columns,
                    "rows": [{"name": p.name, "height": p.pixels.shape[0], "width": p.pixels.shape[1]} for p in g.rows],
                    "errors": [{"path": p, "error": m} for p, m in g.errors], "notes": g.notes})
    else:
        print(f"gallery of {len(g.rows)} image{'s' if len(g.rows) != 1 else ''} x {len(g.columns)} columns "
              f"({', '.join(g.columns)}) saved to {g.out}")
    # The gallery is drawn from the readable images, but a file the user named was skipped.
    return 2 if g.errors else 0
