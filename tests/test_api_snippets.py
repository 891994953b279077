"""The Python in README.md and docs/api.md runs as written, and a loaded run takes what Python
users hold: NumPy arrays, PIL images, tensors, lists of them."""

from __future__ import annotations

import contextlib
import io
from importlib import import_module

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.engine import data
from cnnlab.errors import CnnlabError
from conftest import ROOT
from photos import restyle
from test_docs import code_blocks, rel

DOCS = [ROOT / "README.md", ROOT / "docs" / "api.md"]
SNIPPETS = [(path, block) for path in DOCS for info, block in code_blocks(path) if info == "python"]


# The names the snippets use without importing them: docs/api.md lists the functions behind the
# commands by name (their import paths are not part of the stable API), and an array of images.
SCOPE = {"summarize": "cnnlab.engine.summary", "lecture": "cnnlab.lecture.params", "conv2d": "cnnlab.lecture.conv",
         "conv2d_layer": "cnnlab.lecture.conv", "apply": "cnnlab.lecture.kernels", "get": "cnnlab.lecture.kernels",
         "pool2d": "cnnlab.lecture.pool", "compare": "cnnlab.runs.compare", "render": "cnnlab.see.visualize",
         "write": "cnnlab.see.visualize", "build": "cnnlab.see.report", "load_classifier": "cnnlab.runs.predict",
         "predict_files": "cnnlab.runs.predict", "to_mnist": "cnnlab.runs.predict", "open_image": "cnnlab.runs.predict",
         "conv_json": "cnnlab.lecture.conv", "pool_json": "cnnlab.lecture.pool", "unit_field": "cnnlab.engine.summary",
         "windows": "cnnlab.engine.summary"}


def scope(images: np.ndarray) -> dict:
    return {**{name: getattr(import_module(module), name) for name, module in SCOPE.items()},
            "np": np, "nn": torch.nn, "images_uint8": images}


@pytest.fixture
def workspace(quick_run, data_dir, tmp_path, monkeypatch):
    """A folder holding what the snippets name: runs/lecture and runs/my-run (a trained run),
    seven.png (MNIST's first test digit, a 7) and photos/ (test digits restyled as photos)."""
    (tmp_path / "runs").mkdir()
    for name in ("lecture", "my-run"):
        (tmp_path / "runs" / name).symlink_to(quick_run.run_dir.resolve(), target_is_directory=True)
    test = data.load("mnist", "test", data_dir)
    Image.fromarray(test.images[0].numpy()).save(tmp_path / "seven.png")
    (tmp_path / "photos").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        label = int(test.labels[i])
        (tmp_path / "photos" / f"d{i}_label{label}.jpg").write_bytes(restyle(test.images[i].numpy(), rng))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(data_dir))
    return test


@pytest.mark.parametrize("path, block", SNIPPETS, ids=[f"{rel(p)}:{b[0][0]}" for p, b in SNIPPETS])
def test_python_snippet_runs_as_written(path, block, workspace):
    code = "\n".join(line for _, line in block)
    names = scope(workspace.images[:16].numpy())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"{rel(path)}:{block[0][0]}", "exec"), names)  # noqa: S102 - the docs' own code
    if "probs" in names:  # what the examples promise: one row of class probabilities per image
        probs = torch.as_tensor(names["probs"])
        assert probs.shape[1] == 10 and torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)
    if rel(path) == "README.md":
        assert out.getvalue().startswith("7 "), out.getvalue()


def test_a_loaded_run_takes_numpy_pil_tensors_and_lists(quick_run, data_dir):
    trained = cnnlab.load(quick_run.run_dir)
    test = data.load("mnist", "test", data_dir)
    pixels = test.images[:32]
    expected = trained.predict(pixels)
    assert (expected == test.labels[:32]).float().mean() >= 0.8  # a trained model, not noise
    arrays = pixels.numpy()
    assert torch.equal(trained.predict(arrays), expected)                        # uint8 [N, 28, 28]
    assert torch.equal(trained.predict(arrays[:, None]), expected)               # [N, 1, 28, 28]
    assert torch.equal(trained.predict(arrays.astype(np.float64)), expected)     # any numbers 0-255
    assert torch.equal(trained.predict(arrays[3]), expected[3:4])                # one image [28, 28]
    assert torch.equal(trained.predict([Image.fromarray(a) for a in arrays[:4]]), expected[:4])
    assert torch.equal(trained.predict([arrays[0], Image.fromarray(arrays[1]), pixels[2]]), expected[:3])
    rgb = Image.fromarray(arrays[5]).convert("RGB")                             # converted to grayscale
    assert torch.equal(trained.predict(rgb), expected[5:6])
    np.testing.assert_allclose(trained.predict_proba(arrays[:4]).numpy(), trained.predict_proba(pixels[:4]).numpy())


@pytest.mark.parametrize("images, message", [
    (np.zeros((2, 32, 32), np.uint8), "images must be grayscale 28x28"),
    (np.zeros((2, 3, 28, 28), np.uint8), "got shape [2, 3, 28, 28]"),
    (np.full((28, 28), np.nan), "NaN or infinite"),
    (np.array([["a"] * 28] * 28), "must hold numbers"),
    ("seven.png", "not str"),
    ([], "no images given"),
])
def test_what_a_loaded_run_cannot_take_is_one_clear_error(quick_run, images, message):
    with pytest.raises(CnnlabError) as e:
        cnnlab.load(quick_run.run_dir).predict_proba(images)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_docs_api_md_names_every_public_name():
    text = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in cnnlab.__all__ if name != "__version__" and f"`cnnlab.{name}" not in text]
    assert not missing, f"docs/api.md does not describe cnnlab.{', cnnlab.'.join(missing)}"
