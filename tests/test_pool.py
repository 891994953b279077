"""cnnlab pool: the pooling loop equals torch; shifting digits measures translation invariance."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

import cnnlab
from cnnlab import load
from cnnlab.engine import data
from cnnlab.lecture import pool
from cnnlab.runs.inference import accuracy
from cnnlab.see import invariance
from conftest import assert_usage_error, run_main


def test_lecture_example():
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]])
    steps = []
    assert pool.pool2d(x, 2, mode="max", steps=steps).tolist() == [[6, 8], [3, 4]]
    assert steps[0].window.tolist() == [[1, 1], [5, 6]] and steps[0].value == 6
    assert pool.pool2d(x, 2, mode="avg").tolist() == [[3.25, 5.25], [2, 2]]


@settings(max_examples=150, deadline=None)
@given(x=arrays(np.float64, st.tuples(st.integers(1, 9), st.integers(1, 9)),
                elements=st.floats(-100, 100, allow_nan=False, width=32)),
       size=st.integers(1, 4), stride=st.integers(1, 4), mode=st.sampled_from(["max", "avg"]))
def test_loop_equals_torch(x, size, stride, mode):
    assume(size <= min(x.shape))
    fn = F.max_pool2d if mode == "max" else F.avg_pool2d
    ref = fn(torch.tensor(x)[None, None], size, stride)[0, 0].numpy()
    np.testing.assert_allclose(pool.pool2d(x, size, stride, mode), ref, rtol=1e-12, atol=1e-12)


def test_cli_step_by_step(capsys):
    code, out, _ = run_main(capsys, "pool")
    assert code == 0
    assert "out[0][0] = max(1, 1, 5, 6) = 6" in out and "out[0][1] = (2 + 4 + 7 + 8) / 4 = 5.25" in out
    code, out, _ = run_main(capsys, "pool", "1 2 3; 4 5 6; 7 8 9", "--size", "2", "--stride", "1", "--mode", "max",
                            "--json")
    data = json.loads(out)
    assert data["max"]["output"] == [[5, 6], [8, 9]] and "avg" not in data
    code, _, err = run_main(capsys, "pool", "1 2; 3 4", "--size", "3")
    assert code == 2 and "does not fit the 2x2 input" in err


def test_shift_images():
    img = torch.arange(1, 10, dtype=torch.uint8).reshape(1, 3, 3)
    assert invariance.shift_images(img, 1, 0)[0].tolist() == [[0, 1, 2], [0, 4, 5], [0, 7, 8]]
    assert invariance.shift_images(img, 0, -2)[0].tolist() == [[7, 8, 9], [0, 0, 0], [0, 0, 0]]


# A pooled run small enough to shift-test with a freshly trained baseline in a few seconds.
SMALL = dict(epochs=1, limit_train=1500, limit_test=500, batch_size=8, lr=0.002, schedule="onecycle", seed=0,
             threads=1)


@pytest.fixture(scope="module")
def small_pooled(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "pooled"
    cnnlab.train(model="simple_cnn", data_dir=data_dir, out=out, progress=False, log=None, **SMALL)
    return out


def test_invariance_pooled_versus_no_pool(small_pooled, data_dir, tmp_path, capsys):
    plot = tmp_path / "inv.png"
    # The baseline no_pool_cnn is trained here with the run's recipe on the run's 1,500 images.
    code, out, err = run_main(capsys, "pool", "--invariance", small_pooled, "--limit", "500", "--out", plot,
                              "--data-dir", data_dir, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert "training no_pool_cnn (206,922 parameters) on mnist: 1,500 train / 500 test images, 1 epoch" in err
    assert result["training"]["limit_train"] == 1500 and result["training"]["epochs"] == 1
    rows = {(r["model"], r["shift"]): r for r in result["rows"]}
    assert set(rows) == {(m, k) for m in ("simple_cnn", "no_pool_cnn") for k in range(5)}
    # Unshifted: nothing changes, and the accuracy is the model's own on these 500 images.
    test = data.load("mnist", "test", data_dir).subset(500)
    acc = accuracy(load(small_pooled).model, test, 0.5, 0.5)
    assert rows[("simple_cnn", 0)]["prediction_changed"] == 0 and rows[("simple_cnn", 0)]["feature_change"] == 0
    assert rows[("simple_cnn", 0)]["accuracy"] == pytest.approx(acc)
    for m in ("simple_cnn", "no_pool_cnn"):
        # Bigger shifts move the features further and change more predictions.
        assert 0 < rows[(m, 1)]["feature_change"] < rows[(m, 4)]["feature_change"]
        assert rows[(m, 1)]["prediction_changed"] < rows[(m, 4)]["prediction_changed"]
        assert rows[(m, 4)]["accuracy"] < rows[(m, 0)]["accuracy"]
    with Image.open(plot) as im:
        assert im.size[0] > im.size[1] > 100  # two panels side by side


def test_invariance_refuses_a_baseline_trained_otherwise(small_pooled, data_dir, tmp_path, capsys):
    plot = tmp_path / "inv.png"
    # Fewer images for the baseline than the run had: refused before anything is trained or written.
    code, _, err = run_main(capsys, "pool", "--invariance", small_pooled, "--limit-train", "1000", "--out", plot,
                            "--data-dir", data_dir)
    assert_usage_error(code, err, "--limit-train 1,000 would train the baseline on the first 1,000 images "
                                  f"but {small_pooled} was trained on the first 1,500 training images")
    assert not plot.exists()
    # A no_pool_cnn run trained on other images, or for more epochs, is refused as --baseline ...
    for name, change, says in (("fewer", {"limit_train": 1000}, "the first 1,000 training images but the run "
                                                                 "with the first 1,500 training images"),
                               ("longer", {"epochs": 2}, "--epochs 2 but the run with --epochs 1")):
        other = cnnlab.train(model="no_pool_cnn", data_dir=data_dir, out=tmp_path / name, progress=False, log=None,
                             **{**SMALL, **change})
        code, _, err = run_main(capsys, "pool", "--invariance", small_pooled, "--baseline", other.run_dir,
                                "--out", plot, "--data-dir", data_dir)
        assert_usage_error(code, err, f"--baseline {other.run_dir} was trained with {says}")
        assert not plot.exists()
    # ... and one trained alike is used as it is (nothing is trained).
    alike = cnnlab.train(model="no_pool_cnn", data_dir=data_dir, out=tmp_path / "alike", progress=False, log=None,
                         **SMALL)
    code, out, err = run_main(capsys, "pool", "--invariance", small_pooled, "--baseline", alike.run_dir,
                              "--limit-train", "1500", "--limit", "200", "--out", plot, "--data-dir", data_dir)
    assert code == 0, err
    assert "training no_pool_cnn" not in out + err
    assert "both trained alike: mnist, the first 1,500 training images, 1 epoch, batch 8, adam lr 0.002" in out
    assert plot.exists()


def test_invariance_needs_a_convolutional_run(tmp_path, data_dir, capsys):
    mlp = cnnlab.train(model="mlp", epochs=1, limit_train=200, limit_test=100, data_dir=data_dir,
                       out=tmp_path / "mlp", progress=False, log=None)
    code, _, err = run_main(capsys, "pool", "--invariance", mlp.run_dir, "--data-dir", data_dir)
    assert code == 2 and "model 'mlp' has no .features block" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(capsys, "pool", "--invariance", tmp_path / "nothing")
    assert code == 2 and "does not exist" in err
