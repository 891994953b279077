"""cnnlab export: ONNX and TorchScript files that compute what PyTorch computes, with their metadata."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

import cnnlab
import cnnlab.engine.data
from cnnlab.engine.data import normalize
from conftest import run_cli, run_main


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return cnnlab.engine.data.load("mnist", "test", data_dir)


def test_onnx_export_parity_metadata_dynamic_batch(quick_run, tmp_path, mnist_test):
    out = tmp_path / "digits.onnx"
    r = run_cli("export", quick_run.run_dir, "--format", "onnx", "--out", out)
    assert r.returncode == 0, r.stderr
    assert f"wrote {out}" in r.stdout and "parity: onnxruntime vs PyTorch on 64 mnist test images" in r.stdout
    diff = float(r.stdout.split("max |logit difference| = ")[1].split()[0])
    assert diff <= 1e-4

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["cnnlab"])
    assert meta["normalization"]["mean"] == 0.5 and meta["normalization"]["std"] == 0.5
    assert meta["classes"] == [str(i) for i in range(10)] and meta["model"] == "simple_cnn"
    assert session.get_inputs()[0].shape[0] == "batch"
    trained = cnnlab.load(quick_run.run_dir)
    for n in (1, 7, 300):  # any batch size; other images than the ones export checked
        images = mnist_test.images[1000:1000 + n]
        x = normalize(images, meta["normalization"]["mean"], meta["normalization"]["std"]).numpy()
        got = session.run(None, {"image": x})[0]
        assert got.shape == (n, 10)
        assert np.abs(got - trained.logits(images).numpy()).max() <= 1e-4


def test_predict_accepts_exported_onnx(quick_run, tmp_path, mnist_test, capsys):
    onnx_file = tmp_path / "m.onnx"
    assert run_main(capsys, "export", quick_run.run_dir, "--out", onnx_file)[0] == 0
    for i in range(5):
        Image.fromarray(mnist_test.images[i].numpy()).save(tmp_path / f"{i}.png")
    a = run_cli("predict", onnx_file, tmp_path, "--json")
    code, out, err = run_main(capsys, "predict", quick_run.run_dir, tmp_path, "--json")
    assert a.returncode == 0 and code == 0, a.stderr + err
    ra, rb = json.loads(a.stdout), json.loads(out)
    assert [x["prediction"] for x in ra] == [x["prediction"] for x in rb] == mnist_test.labels[:5].tolist()
    assert np.abs(np.array([x["probabilities"] for x in ra]) - [x["probabilities"] for x in rb]).max() < 1e-4


def test_torchscript_export(quick_run, tmp_path, mnist_test, capsys):
    code, out, err = run_main(capsys, "export", quick_run.run_dir, "--format", "torchscript", "--out", tmp_path / "m.pt", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["max_abs_diff"] <= 1e-4 and info["format"] == "torchscript"
    extra = {"cnnlab.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated; libtorch users still load it
        model = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    meta = json.loads(extra["cnnlab.json"])
    images = mnist_test.images[:5]
    x = cnnlab.engine.data.normalize(images, meta["normalization"]["mean"], meta["normalization"]["std"])
    with torch.no_grad():
        assert torch.allclose(model(x), cnnlab.load(quick_run.run_dir).logits(images), atol=1e-4)


def test_export_errors(quick_run, tmp_path, capsys):
    code, _, err = run_main(capsys, "export", tmp_path / "nope")
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    code, _, err = run_main(capsys, "export", quick_run.run_dir, "--format", "tflite")
    assert code == 2 and "invalid choice" in err
    code, _, err = run_main(capsys, "export", quick_run.run_dir, "--out", tmp_path / "missing" / "m.onnx")
    assert code == 2 and "does not exist" in err
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    code, _, err = run_main(capsys, "predict", tmp_path / "bad.onnx", tmp_path)
    assert code == 2 and "not a readable ONNX model" in err
