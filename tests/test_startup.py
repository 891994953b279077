"""Start-up: the commands that compute nothing with a network never load PyTorch, so they answer at
once (benchmarks/startup.py times them; docs/benchmarks.md has the numbers). Where PyTorch is
needed, a command loads only what it uses: no torchvision when the data files are there."""

from __future__ import annotations

import json
import subprocess
import sys

from cnnlab.cli import COMMANDS
from conftest import DATA_DIR, SRC

FAST = [["--help"], *([name, "--help"] for name in COMMANDS), ["conv"], ["conv", "--json"], ["pool"],
        ["pool", "--mode", "max"], ["kernels"], ["kernels", "sobel-x", "laplacian"], ["params", "--lecture"],
        ["params", "--lecture", "--json"]]

# One fresh interpreter runs the commands one after another, as `cnnlab` would, and notes after
# each which heavy libraries have been imported so far (the first command to load one is named).
PROBE = """
import contextlib, io, json, sys
from cnnlab.cli import main
report = []
for args in json.loads(sys.argv[1]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            code = main(args)
        except SystemExit as e:
            code = e.code
    report.append({"args": args, "code": code, "output": len(out.getvalue()),
                   "loaded": [m for m in sys.argv[2].split(",") if m in sys.modules]})
print(json.dumps(report))
"""


def probe(commands: list[list[str]], modules: str) -> list[dict]:
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "CNNLAB_DATA_DIR": str(DATA_DIR)}
    r = subprocess.run([sys.executable, "-c", PROBE, json.dumps(commands), modules], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_help_conv_pool_kernels_and_the_lectures_arithmetic_load_no_torch():
    report = probe(FAST, "torch,torchvision,matplotlib,onnx,fastapi")
    for step in report:
        assert step["code"] in (0, None) and step["output"] > 0, step
    loaded = [(" ".join(step["args"]), step["loaded"]) for step in report if step["loaded"]]
    assert not loaded, f"first to load a heavy library: cnnlab {loaded[0][0]} ({', '.join(loaded[0][1])})"


def test_evaluate_with_the_data_on_disk_loads_no_torchvision(quick_run):
    report = probe([["evaluate", str(quick_run.run_dir), "--limit", "200", "--json"]],
                   "torch,torchvision,matplotlib,onnx,fastapi")
    assert report[0]["code"] == 0 and report[0]["loaded"] == ["torch"], report
