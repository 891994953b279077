"""The command line: a thin layer over the Python API. One module per command.

Each command module defines add_parser(subparsers) and run(args) -> exit status. Errors a user
can cause (cnnlab.errors.CnnlabError) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Order here is the order in `cnnlab --help`.
COMMANDS = ["train", "ensemble", "evaluate", "params", "conv", "kernels", "pool", "compare", "visualize", "report",
            "predict", "export", "serve"]


class Parser(argparse.ArgumentParser):
    def error(self, message):
        # One line that says what is wrong and where to look, instead of argparse's usage dump.
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def bounded(cast, ok, rule: str, kind: str = "a number"):
    """An argparse type: parse the text with cast, then require ok(value). Both failures are one
    line saying what was expected (argparse prefixes the flag's name)."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got '{text}'") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {value}")
        return value
    return parse


positive_int = bounded(int, lambda v: v >= 1, "at least 1", "a whole number")
nonnegative_int = bounded(int, lambda v: v >= 0, "0 or more", "a whole number")
positive_float = bounded(float, lambda v: v > 0, "greater than 0")
fraction = bounded(float, lambda v: 0 < v <= 1, "a fraction in (0, 1] such as 0.99 (not a percentage)",
                   "a fraction such as 0.99")
share = bounded(float, lambda v: 0 <= v < 1, "a fraction in [0, 1) such as 0.1", "a fraction such as 0.1")
port = bounded(int, lambda v: 1 <= v <= 65535, "a port number 1-65535", "a port number")


def add_json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON object on stdout")


def add_data_dir_flag(p: argparse.ArgumentParser, what: str = "dataset folder") -> None:
    p.add_argument("--data-dir", default=None, help=f"{what} (default $CNNLAB_DATA_DIR, else ./data)")


def add_tta_flag(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average each image's prediction over the image and its "
                        f"four 1-pixel shifts (5x the compute{note})")


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2))


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = Parser(prog="cnnlab", description="Convolutional neural networks on MNIST-style images.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from ..errors import CnnlabError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CnnlabError as e:
        print(f"cnnlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cnnlab ... | head` is not an error
        return 0
