"""docs/lecture.md: a walk that runs top to bottom, whose outputs and prose docs/build_lecture.py regenerates."""

from __future__ import annotations

import importlib.util
import re
import shlex

import pytest

from conftest import ROOT, run_main

spec = importlib.util.spec_from_file_location("build_lecture", ROOT / "docs" / "build_lecture.py")
build = importlib.util.module_from_spec(spec)
spec.loader.exec_module(build)

PAGE = ROOT / "docs" / "lecture.md"


def made_and_used(step: str) -> tuple[set, set]:
    """(run folders a step makes, run folders it reads) - paths under runs/."""
    if step.startswith("python:"):
        return set(), set(re.findall(r"""["'](runs/[^"']+)["']""", step))
    words = shlex.split(step)
    paths = {w.rstrip("/") for w in words if w.startswith("runs/")}
    made = set()
    if "--out" in words and words[words.index("--out") + 1].startswith("runs/"):
        out = words[words.index("--out") + 1].rstrip("/")
        made.add(out)
        if words[1] == "compare":  # one run folder per model inside --out
            made |= {f"{out}/{m}" for m in words[words.index("--models") + 1].split(",")}
    return made, paths - made


def test_the_walk_makes_every_run_before_it_uses_it():
    steps = build.commands(build.parse(PAGE.read_text()))
    assert len(steps) >= 15 and any(s.startswith("python:") for s in steps)
    made: set = set()
    for step in steps:
        new, used = made_and_used(step)
        missing = sorted(used - made)
        assert not missing, f"'{step.splitlines()[0][:80]}' uses {missing} before any step makes it"
        made |= new
    assert "runs/lecture/simple_cnn" in made


QUICK = ("conv", "pool", "params", "code", "kernels")  # commands that train nothing


def test_outputs_of_the_quick_commands_are_what_they_print(capsys, monkeypatch):
    """Not pasted once: each output block is what its command prints now (the trained ones are
    rewritten by docs/build_lecture.py, like these)."""
    monkeypatch.setenv("COLUMNS", "120")  # as the build runs them
    checked = 0
    for s in build.parse(PAGE.read_text()):
        words = shlex.split(s.get("command", "")) or [""]
        if s["kind"] != "command" or words[1:2] == [] or words[1] not in QUICK or "--invariance" in words \
                or "--out" in words:
            continue
        code, out, err = run_main(capsys, *words[1:])
        assert code == 0, err
        assert build.shown((out + err).rstrip("\n"), s["option"]) == s["lines"], f"stale output of: {s['command']}"
        checked += 1
    assert checked >= 10


def test_build_reruns_commands_and_python_and_rewrites_their_blocks(tmp_path):
    page = tmp_path / "page.md"
    page.write_text('''# A page

```
$ cnnlab pool "1 2; 3 4" --mode max
an output pasted long ago
```

<!-- run: python -->
```python
print(6 * 7)
```

```
41
```
''')
    segments = build.parse(page.read_text())
    outputs = build.run_all(build.commands(segments), tmp_path, log=lambda s: None)
    text = build.render(segments, outputs)
    assert "an output pasted long ago" not in text and "41" not in text
    assert 'out[0][0] = max(1, 2, 3, 4) = 4' in text
    assert "```python\nprint(6 * 7)\n```\n\n```\n42\n```" in text
    assert text.startswith("# A page\n\n```\n$ cnnlab pool")


COMPARE = """│ mlp          │    669,706 │    668,672 │     10.4 s │    94.44% │   90.32% │ +4.12 pts │
│ simple_cnn   │    206,922 │  1,218,048 │     16.6 s │    96.71% │   94.70% │ +2.01 pts │
│ lenet5       │     61,706 │    416,520 │     14.8 s │    93.96% │   90.62% │ +3.34 pts │
│ alexnet_mini │    347,274 │ 10,843,136 │     57.9 s │    93.59% │   {acc}% │ +3.15 pts │"""


@pytest.mark.parametrize("acc, says", [("90.44", "not more accurate (90.44% against 94.70%)"),
                                       ("96.10", "more accurate (96.10% against 94.70%)")])
def test_the_prose_follows_the_numbers(acc, says):
    text = build.prose_compare({"cnnlab compare --models": COMPARE.format(acc=acc)})
    assert f"after 2 epochs it is {says}" in text
    assert "mlp has the most parameters (3.2x simple_cnn's) and the largest train-test gap (4.12 points)" in text
    assert "LeNet-5 matches the MLP's test accuracy (90.62% against 90.32%) with 11x fewer parameters" in text
    best = "alexnet_mini is the most accurate (96.10%) with 1.9x" if acc == "96.10" else \
        "simple_cnn is the most accurate (94.70%) with 3.2x"
    assert f"{best} fewer parameters than the MLP" in text
