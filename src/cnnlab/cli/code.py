"""cnnlab code: the source of a model and of one training step - the code that really runs."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from ..engine import models
from ..engine.models import get_spec, model_names
from ..engine.train import _Run
from . import COMMANDS, add_json_flag, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("code", help=COMMANDS["code"],
                       description="Print the PyTorch code cnnlab runs, read from its own source: a model's "
                                   "class (default simple_cnn, the lecture's CNN) and the training step every "
                                   "recipe runs for each batch (forward, loss, backward, optimiser step).")
    p.add_argument("model", nargs="?", default="simple_cnn", metavar="MODEL",
                   help=f"one of: {', '.join(model_names())} (default simple_cnn)")
    add_json_flag(p)
    p.set_defaults(func=run)


def section(title: str, obj, called: str) -> dict:
    """A class's or function's source as it is in the installed package, with where it is."""
    lines, first = inspect.getsourcelines(obj)
    package = Path(inspect.getsourcefile(models)).parents[1]
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(package.parent.resolve())
    return {"title": title, "file": path.as_posix(), "first_line": first, "last_line": first + len(lines) - 1,
            "name": obj.__qualname__, "called": called, "source": textwrap.dedent("".join(lines))}


def sections(model: str) -> list[dict]:
    cls = getattr(models, get_spec(model).cls)
    return [section(f"The model: {model}", cls, f"cnnlab.build_model('{model}') builds it; its forward() "
                                                  "maps a batch [N, 1, 28, 28] to [N, 10] scores"),
            section("One training step", _Run._step, "the training loop (_Run.loop) calls it for every batch "
                                                    "of every recipe; the optimiser is Adam, AdamW or SGD")]


def run(args) -> int:
    parts = sections(args.model)
    if args.json:
        print_json({"model": args.model, "sections": parts})
        return 0
    for i, s in enumerate(parts):
        print(("\n" if i else "") + f"# {s['title']} - {s['file']}, lines {s['first_line']}-{s['last_line']} "
              f"({s['name']})\n# {s['called']}\n")
        print(s["source"].rstrip())
    return 0
