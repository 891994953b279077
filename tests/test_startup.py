"""Start-up: the commands that compute nothing with a network never load PyTorch, so they answer at
once (benchmarks/startup.py times them; docs/benchmarks.md has the numbers). Where PyTorch is
needed, a command loads only what it uses: no torchvision when the data files are there."""

from __future__ import annotations

from cnnlab.cli import COMMANDS
from conftest import probe

FAST = [["--help"], *([name, "--help"] for name in COMMANDS), ["conv"], ["conv", "--json"], ["pool"],
        ["pool", "--mode", "max"], ["kernels"], ["kernels", "sobel-x", "laplacian"], ["params", "--lecture"],
        ["params", "--lecture", "--json"]]

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
