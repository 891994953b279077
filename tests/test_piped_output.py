"""Output into a pipe or a file is never wrapped or cut, so grep and logs see whole lines (in a
terminal, tables fit its width)."""

from __future__ import annotations

import re

from cnnlab.engine.config import MODELS
from conftest import run_cli


def test_evaluate_keeps_its_accuracy_line_whole_in_a_pipe(quick_run, tmp_path):
    long = tmp_path / ("a-run-folder-with-a-long-name-" * 3)  # the line is far over 80 columns
    long.symlink_to(quick_run.run_dir, target_is_directory=True)
    r = run_cli("evaluate", long, "--limit", "500", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert re.fullmatch(rf"{re.escape(str(long))} on mnist test: accuracy \d+\.\d\d% \(\d+/500\)", first), first


def test_tables_and_prose_are_not_wrapped_in_a_pipe():
    r = run_cli("params", env={"COLUMNS": "80"})  # every model with its (long) description
    assert r.returncode == 0, r.stderr
    for name, entry in MODELS.items():
        row = next((line for line in r.stdout.splitlines() if f" {name} " in line), "")
        assert entry.description in row, f"{name}'s row is cut or wrapped:\n{r.stdout}"
    r = run_cli("params", "--lecture", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert ("   A convolution's parameters do not depend on the image size (the same small kernels slide everywhere); "
            "a fully connected layer needs one weight per input pixel per unit.") in r.stdout.splitlines()[-1]
