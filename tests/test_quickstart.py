"""A new user's first hour: the README's Quickstart installs without CUDA where there is no GPU,
and the test suite then finds the datasets where `cnnlab train` put them ($CNNLAB_DATA_DIR, else
./data), so the Quickstart followed by the README's test command works on a fresh clone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

from packaging.requirements import Requirement

from cnnlab.engine import data
from conftest import DATA_DIR, ROOT, SRC, TEST_DATASETS
from test_docs import code_blocks

CPU_INDEX = "https://download.pytorch.org/whl/cpu"

PROBE = '''
from pathlib import Path

from cnnlab.engine import data


def test_the_data_dir_fixture_is_where_the_cli_looks(data_dir):
    assert data_dir == Path.cwd().resolve() / "data"
    assert data.data_dir().resolve() == data_dir        # where `cnnlab train` reads and downloads
    assert len(data.load("mnist", "test", data_dir)) == 10_000
'''


def test_without_cnnlab_data_dir_the_tests_use_dot_data_like_the_cli(tmp_path):
    # A user's checkout after `cnnlab train`: the files in ./data, no CNNLAB_DATA_DIR.
    for name in TEST_DATASETS:
        info = data.dataset_info(name)
        raw = tmp_path / "data" / info.folder / "raw"
        raw.mkdir(parents=True)
        for f in (f for pair in info.files.values() for f in pair):
            (raw / f).symlink_to(DATA_DIR / info.folder / "raw" / f)
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != "CNNLAB_DATA_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), str(ROOT / "tests")])
    # The suite's own conftest (loaded as a plugin) provides the data_dir fixture, run from the checkout's place.
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                        "test_probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout


def test_the_quickstart_gives_the_cpu_only_install_within_cnnlabs_torch_bounds():
    readme = (ROOT / "README.md").read_text()
    quickstart = readme[readme.index("## Quickstart"):readme.index("## A tour")]
    assert re.search(r"about\s+0\.\d+ GB to download.*against [\d.]+ GB", quickstart, re.S), "sizes of both installs"
    blocks = [[line for _, line in block] for info, block in code_blocks(ROOT / "README.md") if info == "bash"]
    cpu = next(block for block in blocks if any(CPU_INDEX in line for line in block))
    first = shlex.split(cpu[0])
    assert first[:2] == ["pip", "install"] and first[first.index("--index-url") + 1] == CPU_INDEX
    assert cpu[1:] == ["pip install -e .", "cnnlab train"]  # then the Quickstart, unchanged
    # Within cnnlab's own bounds, or `pip install -e .` would replace them with PyPI's CUDA build.
    pyproject = (ROOT / "pyproject.toml").read_text()
    reqs = [Requirement(t) for t in first[2:] if not t.startswith("-") and t != CPU_INDEX]
    assert {r.name for r in reqs} == {"torch", "torchvision"}  # together: a PyPI torchvision pins PyPI's torch
    for req in reqs:
        ours = Requirement(re.search(rf'"({req.name}[<>=!~][^"]*)"', pyproject).group(1))
        tops = [s.version for s in req.specifier if s.operator in ("<=", "==")]
        assert tops and all(ours.specifier.contains(v) for v in tops), (str(req), str(ours))
        assert {s.version for s in ours.specifier if s.operator == "<="} <= set(tops), (str(req), str(ours))
