"""cnnlab code: the source of a model and of one training step - the code that really runs."""

from __future__ import annotations

import cnnlab

from ..engine.config import MODELS
from . import COMMANDS, add_json_flag, print_json


def add_parser(sub) -> None:
    p = sub.add_parser("code", help=COMMANDS["code"],
                       description="Print the PyTorch code cnnlab runs, read from its own source: a model's "
                                   "class (default simple_cnn, the lecture's CNN) and the training step every "
                                   "recipe runs for each batch (forward, loss, backward, optimiser step).")
    p.add_argument("model", nargs="?", default="simple_cnn", metavar="MODEL",
                   help=f"one of: {', '.join(MODELS)} (default simple_cnn)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    parts = cnnlab.code(args.model)
    if args.json:
        print_json({"model": args.model, "sections": parts})
        return 0
    for i, s in enumerate(parts):
        # (No line numbers here: the walk in docs/lecture.md prints this, and must not go stale
        # each time the file is edited; --json has them.)
        print(("\n" if i else "") + f"# {s['title']} - {s['file']} ({s['name']})\n# {s['called']}\n")
        print(s["source"].rstrip())
    return 0
