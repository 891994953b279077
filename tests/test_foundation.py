"""End to end on the real data: train, save, evaluate, reproduce; and every user error the CLI
can meet gets one line and exit status 2."""

from __future__ import annotations

import json
import os
import re

import pytest
import torch

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.runs import folder
from conftest import QUICK, assert_usage_error, run_cli


def test_one_epoch_on_6000_images_reaches_95_percent(quick_run):
    assert quick_run.test_accuracy >= 0.95
    assert len(quick_run.epochs) == 1
    assert 0 < quick_run.epochs[0].mean_loss < 1.0


def test_run_folder_holds_weights_config_and_metrics(quick_run):
    run_dir = quick_run.run_dir
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.safetensors", "config.json", "history.jsonl",
                                                     "metrics.jsonl", "model.safetensors"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model"] == "simple_cnn" and config["dataset"] == "mnist"
    assert config["normalization"] == {"mean": 0.5, "std": 0.5}
    assert config["recipe"]["batch_size"] == QUICK["batch_size"] and config["seed"] == 0
    assert config["versions"]["torch"] == torch.__version__
    rows = folder.read_metrics(run_dir)
    assert [r["epoch"] for r in rows] == [1]
    umask = os.umask(0)
    os.umask(umask)
    for f in ("config.json", "metrics.jsonl", "model.safetensors"):  # as readable as any file the user writes
        assert (run_dir / f).stat().st_mode & 0o777 == 0o666 & ~umask
    assert rows[0]["test_accuracy"] == pytest.approx(quick_run.test_accuracy)
    assert rows[0]["mean_loss"] == pytest.approx(quick_run.epochs[0].mean_loss)


def test_evaluate_gives_the_same_accuracy_back(quick_run, data_dir):
    result = cnnlab.evaluate(quick_run.run_dir, data_dir=data_dir, limit=2000)
    assert result["accuracy"] == pytest.approx(quick_run.test_accuracy, abs=1e-9)
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and int(cm.sum()) == 2000
    assert int(cm.diag().sum()) == result["correct"]
    test_labels = cnnlab.engine.data.load("mnist", "test", data_dir).labels[:2000]
    assert cm.sum(dim=1).tolist() == torch.bincount(test_labels, minlength=10).tolist()
    for acc, row, k in zip(result["per_class_accuracy"], result["confusion_matrix"], range(10)):
        assert acc == pytest.approx(row[k] / sum(row))


def test_evaluate_cli_json_matches_the_api(quick_run, data_dir):
    proc = run_cli("evaluate", quick_run.run_dir, "--limit", "2000", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["accuracy"] == pytest.approx(quick_run.test_accuracy)
    assert len(out["per_class_accuracy"]) == 10
    assert sum(map(sum, out["confusion_matrix"])) == 2000
    human = run_cli("evaluate", quick_run.run_dir, "--limit", "2000")
    assert human.returncode == 0 and f"{quick_run.test_accuracy:.2%}" in human.stdout


def test_load_returns_a_ready_model_with_its_preprocessing(quick_run, data_dir):
    trained = cnnlab.load(quick_run.run_dir)
    test = cnnlab.engine.data.load("mnist", "test", data_dir)
    preds = trained.predict(test.images[:2000])
    assert float((preds == test.labels[:2000]).float().mean()) == pytest.approx(quick_run.test_accuracy)
    probs = trained.predict_proba(test.images[:5])
    assert torch.allclose(probs.sum(1), torch.ones(5), atol=1e-5)
    assert trained.classes == [str(i) for i in range(10)]


def test_same_seed_gives_identical_runs(data_dir):
    kwargs = dict(epochs=2, limit_train=1500, limit_test=500, seed=7, save=False, progress=False,
                  log=None, data_dir=data_dir)
    # The same seed and thread count (chosen for a, where other jobs may have been using the cores).
    a = cnnlab.train(**kwargs)
    b = cnnlab.train(**kwargs, threads=a.threads)
    assert [e.mean_loss for e in a.epochs] == [e.mean_loss for e in b.epochs]
    assert a.test_accuracy == b.test_accuracy
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)
    c = cnnlab.train(**{**kwargs, "seed": 8})
    assert [e.mean_loss for e in c.epochs] != [e.mean_loss for e in a.epochs]


def test_train_cli_json_reports_epochs_and_run_dir(tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--limit-train", "1000", "--limit-test", "500", "--epochs", "2",
                   "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["run_dir"] == str(out)
    assert [sorted(e) for e in result["epochs"]] == [["epoch", "images_per_second", "mean_loss", "seconds", "test_accuracy",
                                                       "val_accuracy"]] * 2
    assert 0.5 < result["test_accuracy"] <= 1.0
    assert result["epochs"][1]["mean_loss"] < result["epochs"][0]["mean_loss"]
    assert len(folder.read_metrics(out)) == 2
    assert "epoch 2/2: mean loss" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--epochs", "0"], "argument --epochs: must be in [1, 10000], got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be in [1, 1000000], got 0"),
    (["--lr", "0"], "argument --lr: must be in (0, 100], got 0.0"),
    (["--lr", "-0.1"], "argument --lr: must be in (0, 100], got -0.1"),
    (["--epochs", "two"], "expected a whole number, got 'two'"),
    (["--device", "tpu"], "unknown device 'tpu'; choose one of: auto, cpu, cuda, mps"),
    (["--schedule", "onecycle", "--limit-train", "100"], "--schedule onecycle needs at least 5 training steps, this run has 4"),
    (["--recipe", "fastest"], "invalid choice: 'fastest'"),
    (["--target-accuracy", "99"], "not a percentage"),
    (["--precision", "fp8"], "unknown precision 'fp8'"),
    (["--augment", "blur"], "unknown augment 'blur'"),
])
def test_train_argument_errors_are_one_line_and_exit_2(tmp_path, args, message):
    proc = run_cli("train", *args, "--out", tmp_path / "never")
    assert_usage_error(proc.returncode, proc.stderr, message)
    assert not (tmp_path / "never").exists()  # rejected before any work starts


def test_missing_data_folder_is_a_clear_error(tmp_path):
    proc = run_cli("train", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert_usage_error(proc.returncode, proc.stderr, str(tmp_path / "nowhere" / "MNIST" / "raw"))
    assert "train-images-idx3-ubyte" in proc.stderr and "t10k-labels-idx1-ubyte" in proc.stderr


def test_out_folder_that_holds_a_run_is_never_overwritten(quick_run, tmp_path):
    before = (quick_run.run_dir / "model.safetensors").read_bytes()
    proc = run_cli("train", "--limit-train", "100", "--out", quick_run.run_dir)
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr
    assert (quick_run.run_dir / "model.safetensors").read_bytes() == before


def copy_run(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


@pytest.mark.parametrize("damage, message", [
    (lambda d: None, None),
    (lambda d: (d / "config.json").write_text("{not json"), "is corrupt (not valid JSON)"),
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:5000]),
     "is corrupt or truncated"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"model": "simple_cnn"', '"model": "mlp"')),
     "does not fit model 'mlp'"),
    (lambda d: (d / "config.json").write_text((d / "config.json").read_text().replace('"model": "simple_cnn"', '"model": "vgg99"')),
     "unknown model 'vgg99'"),
])
def test_damaged_run_folders_are_clear_errors(quick_run, tmp_path, damage, message):
    run_dir = copy_run(quick_run.run_dir, tmp_path / "run")
    damage(run_dir)
    if message is None:  # the undamaged copy loads: the errors below are caused by the damage
        assert cnnlab.load(run_dir).name == "simple_cnn"
        return
    with pytest.raises(CnnlabError, match=re.escape(message)):
        cnnlab.load(run_dir)
    proc = run_cli("evaluate", run_dir, "--limit", "10")
    assert_usage_error(proc.returncode, proc.stderr, message.split("'")[0])


def test_evaluate_missing_run_folder(tmp_path):
    proc = run_cli("evaluate", tmp_path / "nope")
    assert proc.returncode == 2 and "does not exist" in proc.stderr
