"""The command line: a thin layer over the Python API. One module per command.

Each command module defines add_parser(subparsers) and run(args) -> exit status. Only the module
of the command being run is imported (so `cnnlab conv` never loads PyTorch). Errors a user can
cause (cnnlab.errors.CnnlabError) become one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import sys
from importlib import import_module

import cnnlab

from .. import __version__
from ..engine.config import SettingError
from ..errors import CnnlabError

# Every command with its one-line help; the order is the order in `cnnlab --help`.
COMMANDS = {
    "train": "train a model and save a run folder",
    "ensemble": "join trained runs into an ensemble that averages their probabilities",
    "evaluate": "accuracy, per-class accuracy and confusion matrix of a run",
    "params": "parameters and multiply-accumulates per layer; the lecture's arithmetic",
    "code": "print the PyTorch code that runs: a model's class and one training step",
    "conv": "slide a kernel over a matrix, step by step",
    "kernels": "named kernels (Sobel, Prewitt, Laplacian, Gaussian...) and the gallery figure",
    "pool": "max/average pooling step by step; --invariance measures shift invariance",
    "compare": "train several models identically; table of params, MACs, time, accuracy, gap",
    "visualize": "draw filters, feature maps, curves, mistakes and saliency as PNGs",
    "report": "write one self-contained HTML report of a run",
    "predict": "classify your own images (photos, scans, drawings)",
    "export": "export a run to ONNX or TorchScript (with a parity check)",
    "serve": "web app: draw a digit, see the prediction and inside the network",
}


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


def add_force_flag(p: argparse.ArgumentParser, what: str = "the output file") -> None:
    p.add_argument("--force", action="store_true",
                   help=f"replace {what} if it exists (never a folder, link, device or one of the command's inputs)")


def add_data_dir_flag(p: argparse.ArgumentParser, what: str = "dataset folder") -> None:
    p.add_argument("--data-dir", default=None, help=f"{what} (default $CNNLAB_DATA_DIR, else ./data)")


# The commands that train in their own process. None of them compiles an optimiser (--compile
# compiles the network's forward), so torch.optim's compile guards need not import torch._dynamo:
# 1.1 s of a 3.7 s `cnnlab train --recipe fast` (docs/benchmarks.md).
TRAINING_COMMANDS = ("train", "compare")


# The names of runs/predict.py's PREPROCESSING (kept here so that --help loads no torch).
PREPROCESS_CHOICES = ("digit", "fashion", "plain")


def add_preprocess_flag(p: argparse.ArgumentParser, what: str = "image files") -> None:
    p.add_argument("--preprocess", choices=PREPROCESS_CHOICES, default=None,
                   help=f"how {what} become the model's 28x28 input (default: as the run's dataset was made): "
                        "digit = handwriting the MNIST way (ink thresholded, cropped, fit in 20x20, centred by "
                        "mass); fashion = the Fashion-MNIST way (trimmed, longer side 28, padded, light "
                        "background negated, grey levels kept); plain = only resized to 28x28 gray (folder datasets)")


def add_tta_flag(p: argparse.ArgumentParser, note: str = "") -> None:
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average each image's prediction over the image and its "
                        f"four 1-pixel shifts (5x the compute{note})")


def print_json(obj) -> None:
    """One JSON object on stdout. NaN and infinity are not JSON: refused, never printed."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False)
    except ValueError:
        raise CnnlabError("the result holds an infinite or NaN number, which JSON cannot carry (an overflow: "
                          "use smaller values)") from None
    print(text)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command` (when given) gets its flags, from its own module."""
    parser = Parser(prog="cnnlab", description="Convolutional neural networks on MNIST-style images.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name, help in COMMANDS.items():
        if name == command:
            import_module(f"{__name__}.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=help)
    return parser


def tune_process() -> None:
    """Process-wide settings for the command line; Python API users may set them the same way.

    PyTorch's OpenMP threads (libgomp) spin ~300,000 iterations before sleeping; on cores shared
    with other jobs that starves everyone (2-core VM at load ~8: 200-400 img/s by default,
    1,600-2,500 img/s with a spin count of 10,000; on idle cores the short spin costs 10-25% at 2
    threads, sleeping at once more: docs/benchmarks.md). It must be set before torch is first
    imported; a value the user set wins.
    """
    os.environ.setdefault("GOMP_SPINCOUNT", "10000")


def entry() -> None:
    """The `cnnlab` script and `python -m cnnlab`: main(), then an exit without the interpreter's teardown.

    Python's teardown frees every module one by one: 0.6 s once torch is loaded, 1.1 s once torch.optim
    has loaded torch._dynamo, a fifth of the whole `cnnlab train --recipe fast` (docs/benchmarks.md).
    Every file is closed by then; what registered for the exit (atexit) still runs."""
    code = main()
    if "torch" not in sys.modules:  # (nothing to gain)
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except OSError:  # (a reader that went away: nothing left to say)
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    tune_process()
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    if args.command in TRAINING_COMMANDS:
        cnnlab.leave_dynamo_unloaded()
    try:
        return int(args.func(args) or 0)
    except SettingError as e:  # the library names the setting; the user typed a flag
        print(f"cnnlab {args.command}: error: --{e.name.replace('_', '-')}: {e.detail}", file=sys.stderr)
        return e.exit_code
    except CnnlabError as e:
        print(f"cnnlab {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"cnnlab {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cnnlab ... | head` is not an error
        return 0
