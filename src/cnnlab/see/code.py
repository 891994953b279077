"""The code that runs, as text: a model's class and the training step, read from cnnlab's own source.

`cnnlab code` prints them, so a student reads the PyTorch code the engine really executes, not a
copy that could drift from it.
"""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from ..engine import models
from ..engine.models import get_spec
from ..engine.train import _Run


def section(title: str, obj, called: str) -> dict:
    """A class's or function's source as it is in the installed package, with where it is."""
    lines, first = inspect.getsourcelines(obj)
    package = Path(inspect.getsourcefile(models)).resolve().parents[1]
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(package.parent)
    return {"title": title, "file": path.as_posix(), "first_line": first, "last_line": first + len(lines) - 1,
            "name": obj.__qualname__, "called": called, "source": textwrap.dedent("".join(lines))}


def sections(model: str = "simple_cnn") -> list[dict]:
    """The model's class and the training step (engine/train.py's _Run._step), each with file and lines."""
    cls = getattr(models, get_spec(model).cls)
    return [section(f"The model: {model}", cls, f"cnnlab.build_model('{model}') builds it; its forward() maps a "
                                                  "batch of images [N, 1, 28, 28] to one score per class"),
            section("One training step", _Run._step, "the training loop (_Run.loop) calls it for every batch "
                                                    "of every recipe; the optimiser is Adam, AdamW or SGD")]
