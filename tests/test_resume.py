"""Resumable training: real SIGINT/SIGTERM to a real `cnnlab train`, resume, and end with weights
bit-identical to an uninterrupted run; schedules across a resume; early stopping; clear errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import cnnlab
from cnnlab.engine import checkpoint
from cnnlab.errors import CnnlabError, Interrupted, RunError
from cnnlab.runs import folder
from conftest import DATA_DIR, SRC, assert_usage_error, cli_flags, run_cli

RUN = dict(limit_train=2000, limit_test=500, epochs=3, batch_size=32, schedule="onecycle", seed=3, threads=1)


def start_cli(*args) -> subprocess.Popen:
    env = {**os.environ, "CNNLAB_DATA_DIR": str(DATA_DIR), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def interrupt_during(proc: subprocess.Popen, epoch_line: str, sig: int) -> tuple[int, str, str]:
    """Send `sig` as soon as the process has printed `epoch_line` (so it is inside the next epoch)."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith(epoch_line):
            proc.send_signal(sig)
            break
    out, err = proc.communicate(timeout=120)
    return proc.returncode, "".join(seen) + out, err


def same_weights(a, b) -> bool:
    wa, wb = load_file(str(a / folder.WEIGHTS)), load_file(str(b / folder.WEIGHTS))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_sigint_then_sigterm_then_resume_ends_identical_to_an_uninterrupted_run(tmp_path, data_dir):
    straight = cnnlab.train(data_dir=data_dir, out=tmp_path / "straight", progress=False, log=None, **RUN)
    run_dir = tmp_path / "interrupted"

    code, out, err = interrupt_during(start_cli("train", "--out", run_dir, *cli_flags(RUN)), "epoch 1/3", signal.SIGINT)
    assert code == 130, err
    assert f"Resume with: cnnlab train --resume {run_dir}" in err and "Traceback" not in err
    assert "stopped by SIGINT; checkpoint saved at" in err
    assert not (run_dir / folder.WEIGHTS).exists()  # a run that did not finish has no final weights
    assert [r["epoch"] for r in folder.read_metrics(run_dir)] == [1]

    code, out, err = interrupt_during(start_cli("train", "--resume", run_dir), "epoch 2/3", signal.SIGTERM)
    assert code == 143, err
    assert "stopped by SIGTERM" in err and out.startswith(f"resuming {run_dir} at epoch 2")

    resumed = cnnlab.train(resume=run_dir, data_dir=data_dir, progress=False, log=None)
    assert same_weights(straight.run_dir, run_dir)
    assert [e.mean_loss for e in resumed.epochs] == [e.mean_loss for e in straight.epochs]
    assert [r["test_accuracy"] for r in folder.read_metrics(run_dir)] == [e.test_accuracy for e in straight.epochs]
    # A finished run has nothing left to resume.
    with pytest.raises(CnnlabError, match="already finished 3 epochs; nothing to resume"):
        cnnlab.train(resume=run_dir, data_dir=data_dir, log=None)


class SignalAfterEpoch:
    """A log callback that sends this process a real SIGINT when epoch `k` is reported."""

    def __init__(self, k: int):
        self.k = k

    def __call__(self, line: str):
        if line.startswith(f"epoch {self.k}/"):
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("schedule, optimizer, augment", [("cosine", "sgd", "none"), ("step", "adamw", "translate"),
                                                       ("onecycle", "adam", "elastic")])
def test_each_schedule_resumes_exactly_at_an_epoch_boundary(tmp_path, data_dir, schedule, optimizer, augment):
    settings = dict(limit_train=1000, limit_test=200, epochs=4, batch_size=50, schedule=schedule,
                    optimizer=optimizer, augment=augment, lr=0.01, seed=1, threads=1)
    straight = cnnlab.train(data_dir=data_dir, out=tmp_path / "a", progress=False, log=None, **settings)
    with pytest.raises(Interrupted) as stop:
        cnnlab.train(data_dir=data_dir, out=tmp_path / "b", progress=False, log=SignalAfterEpoch(2), **settings)
    assert stop.value.exit_code == 130 and "at the start of epoch 3" in str(stop.value)
    # The learning rate in the checkpoint is the one after 2 of 4 epochs' steps, not the initial one.
    _, state = checkpoint.read(tmp_path / "b" / checkpoint.CHECKPOINT)
    assert state["epoch"] == 2 and state["step"] == 0
    resumed = cnnlab.train(resume=tmp_path / "b", data_dir=data_dir, progress=False, log=None)
    assert same_weights(tmp_path / "a", tmp_path / "b")
    assert [e.mean_loss for e in resumed.epochs] == [e.mean_loss for e in straight.epochs]


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path, data_dir):
    # lr 0.05 with Adam is far too high: validation accuracy peaks early, then stalls.
    result = cnnlab.train(data_dir=data_dir, out=tmp_path / "run", progress=False, log=None, limit_train=1500,
                          limit_test=300, epochs=8, batch_size=50, lr=0.05, val_split=0.2, patience=2, seed=0,
                          threads=1)
    vals = [e.val_accuracy for e in result.epochs]
    best = max(range(len(vals)), key=lambda i: (vals[i], -i)) + 1
    assert len(vals) < 8 and len(vals) == best + 2  # stopped 2 epochs after the best one
    assert result.best_epoch == best and result.test_accuracy == result.epochs[best - 1].test_accuracy
    # The saved model is the best epoch's, not the last one's: evaluate reproduces its accuracy.
    report = cnnlab.evaluate(result.run_dir, data_dir=data_dir, limit=300)
    assert report["accuracy"] == pytest.approx(result.epochs[best - 1].test_accuracy)
    again = run_cli("train", "--resume", result.run_dir)
    assert again.returncode == 2 and f"stopped early at epoch {len(vals)}" in again.stderr


def test_bad_resumes_are_one_line_errors(tmp_path, data_dir):
    with pytest.raises(Interrupted):
        cnnlab.train(data_dir=data_dir, out=tmp_path / "run", progress=False, log=SignalAfterEpoch(1),
                     limit_train=500, limit_test=100, epochs=2, batch_size=50, threads=1)
    run_dir = tmp_path / "run"
    changed = run_cli("train", "--resume", run_dir, "--lr", "0.1", "--batch-size", "10")
    assert changed.returncode == 2
    assert changed.stderr.strip().endswith("drop --batch-size, --lr (only --epochs, --device and --threads may change)")
    with pytest.raises(CnnlabError, match="drop --limit-train"):
        cnnlab.train(resume=run_dir, limit_train=600, log=None)
    ckpt = run_dir / checkpoint.CHECKPOINT
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(RunError, match="checkpoint.safetensors is truncated or corrupt"):
        cnnlab.train(resume=run_dir, log=None)
    flipped = bytearray(raw)
    flipped[-100] ^= 1
    ckpt.write_bytes(bytes(flipped))
    tampered = run_cli("train", "--resume", run_dir)
    assert_usage_error(tampered.returncode, tampered.stderr, "fails its SHA-256 check")
    ckpt.write_bytes(raw)  # intact again: the run resumes and finishes
    assert cnnlab.train(resume=run_dir, data_dir=data_dir, progress=False, log=None).epochs[-1].epoch == 2
    with pytest.raises(RunError, match="does not exist"):
        cnnlab.train(resume=tmp_path / "nowhere", log=None)
    with pytest.raises(RunError, match="has no checkpoint.safetensors"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / folder.CONFIG).write_text('{"model": "simple_cnn"}')
        cnnlab.train(resume=tmp_path / "empty", log=None)
