"""The shape of the code: imports point one way, functions fit on a screen, each setting and
each recipe is defined once, and importing cnnlab does nothing to the process."""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from cnnlab.cli import build_parser
from cnnlab.engine import augment, config, data, models, optimizers
from cnnlab.engine.config import TrainConfig
from conftest import SRC, assert_usage_error, run_cli

PACKAGE = SRC / "cnnlab"
MAX_FUNCTION_LINES = 80
# Packages from the bottom up. A module may import its own package and those listed before it,
# with one documented exception: the engine's loop writes through runs/folder.py (the one owner of
# the run-folder format) and measures with runs/inference.py.
ORDER = ["errors", "files", "engine.config", "lecture", "engine", "runs", "see", "web", "cli"]
ALLOWED_UP = {("engine.train", "runs.folder"), ("engine.train", "runs.inference"),
              ("engine.train", "runs")}


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        out[name.removesuffix(".__init__") if name != "__init__" else ""] = path
    return out


def imports_of(name: str, path: Path) -> set[str]:
    """Every cnnlab module `name` imports, at the top or inside a function."""
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("cnnlab"):
                target = node.module.removeprefix("cnnlab").lstrip(".")
            else:
                continue
            found.add(target)
            found.update(f"{target}.{a.name}".lstrip(".") for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("cnnlab").lstrip(".") for a in node.names if a.name.startswith("cnnlab."))
    known = modules()
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def test_no_import_cycle_between_modules():
    g = graph()
    # A package's __init__ importing nothing heavy is checked below; cycles are among the rest.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for n in sorted(g[m]):
            if n == "":  # `from .. import __version__`: the package's own __init__ imports nothing of ours
                continue
            if state.get(n) == 1:
                cycle = stack[stack.index(n):] + [n]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in g:
        if m not in state:
            visit(m)
    assert len(g) > 30  # the walk saw the whole package


def rank(module: str) -> int:
    best = -1
    for i, prefix in enumerate(ORDER):
        if module == prefix or module.startswith(prefix + "."):
            best = i if best < 0 or len(prefix) > len(ORDER[best]) else best
    return best


def test_imports_point_down_the_layers():
    wrong = []
    for m, targets in graph().items():
        if rank(m) < 0:
            continue
        for t in targets:
            if t and rank(t) > rank(m) and (m, t) not in ALLOWED_UP and not any(
                    m.startswith(a) and t.startswith(b) for a, b in ALLOWED_UP):
                wrong.append(f"{m} imports {t}")
    assert not wrong, wrong


def test_no_library_module_imports_the_cli_or_the_web_app():
    for m, targets in graph().items():
        if not m.startswith(("cli", "web")) and m:
            assert not [t for t in targets if t.startswith(("cli", "web"))], m


def test_no_function_is_longer_than_a_screen():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, long


def test_importing_cnnlab_changes_nothing_and_loads_no_torch():
    code = ("import os, sys; before = dict(os.environ); import cnnlab; "
            "assert dict(os.environ) == before, set(os.environ) ^ set(before); "
            "assert 'torch' not in sys.modules; print(cnnlab.__version__)")
    r = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"},
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_public_api_resolves_every_name():
    import cnnlab

    for name in cnnlab.__all__:
        assert getattr(cnnlab, name) is not None, name
    assert cnnlab.train.__module__ == "cnnlab.engine.train"
    with pytest.raises(AttributeError):
        cnnlab.no_such_thing  # noqa: B018


def test_choices_named_in_config_are_the_ones_the_engine_has():
    assert set(config.DATASET_NAMES) == set(data.DATASETS)
    assert augment.KINDS == config.AUGMENTATIONS
    assert set(optimizers.OPTIMIZERS) == set(config.OPTIMIZERS)
    for name, entry in config.MODELS.items():
        assert isinstance(models.build_model(name), models.nn.Module), name
        assert hasattr(models, entry.cls)


def train_flags() -> dict[str, argparse.Action]:
    parser = build_parser("train")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {a.dest: a for a in sub.choices["train"]._actions}


def test_every_training_setting_has_one_generated_flag_with_its_help():
    flags = train_flags()
    for f in fields(TrainConfig):
        s = f.metadata["setting"]
        if not s.cli:  # (recipe is --recipe, the named set of settings itself)
            continue
        assert f.name in flags, f"TrainConfig.{f.name} has no `cnnlab train` flag"
        assert s.help.replace("%", "%%") in flags[f.name].help


@pytest.mark.parametrize("flag, value, message", [
    ("--epochs", "0", "argument --epochs: must be in [1, 10000], got 0"),
    ("--lr", "0", "argument --lr: must be in (0, 100], got 0.0"),
    ("--lr", "inf", "argument --lr: must be a finite number, got inf"),
    ("--label-smoothing", "1", "argument --label-smoothing: must be in [0, 1), got 1.0"),
    ("--model", "resnet", "argument --model: unknown model 'resnet'; choose one of: simple_cnn"),
])
def test_a_setting_out_of_bounds_is_one_line_naming_the_flag(flag, value, message):
    r = run_cli("train", flag, value)
    assert_usage_error(r.returncode, r.stderr, message)


def test_the_library_names_the_setting_and_the_cli_names_the_flag():
    with pytest.raises(config.SettingError, match="^patience: needs a validation split"):
        TrainConfig(patience=2).validate()
    r = run_cli("train", "--patience", "2")
    assert_usage_error(r.returncode, r.stderr, "cnnlab train: error: --patience: needs a validation split")


def test_every_recipe_has_one_line_of_evidence():
    source = Path(config.__file__).read_text()
    body = source[source.index("RECIPES: dict"):source.index("def ensemble_models")]
    assert body.count("# Evidence:") == len(config.RECIPES) + 1  # + the ensemble's models
    for name in config.RECIPES:
        config.config(name).validate()
