"""Every run keeps its history (history.jsonl): loss points, epochs, first-layer filter snapshots.
Recording it changes nothing about training, and a resumed run's history is the one an
uninterrupted run has."""

from __future__ import annotations

import json

import pytest
import torch

import cnnlab
from cnnlab.errors import Interrupted
from cnnlab.runs import folder
from conftest import run_main
from test_resume import SignalAfterEpoch

# 1,000 images in batches of 50: 20 steps per epoch, so a loss point at every step (HISTORY_POINTS = 50).
RUN = dict(limit_train=1000, limit_test=200, epochs=2, batch_size=50, lr=0.003, seed=5, threads=1, snapshots=4)
TIMING = ("seconds", "images_per_second")


def without_timing(events: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k not in TIMING} for e in events if e["kind"] != "resume"]


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
    return cnnlab.train(data_dir=data_dir, out=tmp_path_factory.mktemp("history") / "run", progress=False,
                        log=None, **RUN)


def test_every_run_keeps_its_history(straight, data_dir):
    events, _ = folder.read_history(straight.run_dir)
    assert {e["kind"] for e in events} | {"resume"} == set(folder.HISTORY_KINDS)  # (the documented kinds)
    assert events[0] == {"kind": "start", "epoch": 0, "step": 0, "steps_per_epoch": 20, "epochs": 2,
                         "train_images": 1000, "batch_size": 50}
    steps = [e for e in events if e["kind"] == "step"]
    assert [e["step"] for e in steps] == list(range(1, 41))
    # The epoch's running mean at its last step is the epoch's mean loss in metrics.jsonl.
    metrics = folder.read_metrics(straight.run_dir)
    assert [e["epoch_loss"] for e in steps if e["step"] % 20 == 0] == pytest.approx([m["mean_loss"] for m in metrics], abs=1e-5)
    assert [{k: v for k, v in e.items() if k not in ("kind", "step")} for e in events if e["kind"] == "epoch"] == metrics

    # Snapshots: before training, 3 more within each epoch (--snapshots 4) and at each epoch's end.
    snaps = [e for e in events if e["kind"] == "snapshot"]
    assert [(s["epoch"], s["step"]) for s in snaps] == [(0, 0), (1, 5), (1, 10), (1, 15), (1, 20),
                                                         (2, 25), (2, 30), (2, 35), (2, 40)]
    assert snaps[-1]["layer"] == "features.0" and snaps[-1]["shape"] == [16, 1, 3, 3] and snaps[-1]["trained"]
    final = torch.tensor(snaps[-1]["weights"]).reshape(16, 1, 3, 3)
    assert torch.allclose(final, straight.model.features[0].weight.detach(), atol=5e-6)
    assert not torch.allclose(torch.tensor(snaps[0]["weights"]).reshape(16, 1, 3, 3), final, atol=1e-2)
    # The untrained network guesses (~10%); the end-of-epoch snapshots carry the epoch's accuracy.
    assert snaps[0]["test_accuracy"] < 0.3 and snaps[0]["test_images"] == 200
    assert [s["test_accuracy"] for s in snaps if s["step"] % 20 == 0 and s["step"]] == [m["test_accuracy"] for m in metrics]
    assert snaps[-1]["test_accuracy"] > 0.8


def test_recording_the_history_does_not_change_training(straight, data_dir):
    # save=False writes no run folder, so nothing is recorded and no snapshot evaluates mid-epoch.
    plain = cnnlab.train(data_dir=data_dir, save=False, progress=False, log=None, **RUN)
    a, b = straight.model.state_dict(), plain.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e.mean_loss for e in plain.epochs] == [e.mean_loss for e in straight.epochs]


def test_a_resumed_run_has_the_history_of_an_uninterrupted_one(straight, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        cnnlab.train(data_dir=data_dir, out=run_dir, progress=False, log=SignalAfterEpoch(1), **RUN)
    # As if the process had been killed in epoch 2 after its checkpoint of epoch 1: history lines
    # beyond the checkpoint, the last one cut off mid-write.
    later = [e for e in folder.read_history(straight.run_dir)[0] if 20 < e["step"] <= 27]
    with open(run_dir / folder.HISTORY, "a") as f:
        f.writelines(json.dumps(e) + "\n" for e in later)
        f.write('{"kind": "step", "epoch": 2, "st')
    assert max(e["step"] for e in folder.read_history(run_dir)[0]) == 27  # (the cut line is not read)

    cnnlab.train(resume=run_dir, data_dir=data_dir, progress=False, log=None)
    events = folder.read_history(run_dir)[0]
    assert [(e["kind"], e["step"]) for e in events if e["kind"] == "resume"] == [("resume", 20)]
    assert without_timing(events) == without_timing(folder.read_history(straight.run_dir)[0])


def test_snapshots_is_a_checked_training_setting(capsys):
    code, _, err = run_main(capsys, "train", "--snapshots", "0")
    assert code == 2 and "argument --snapshots: must be in [1, 1000], got 0" in err
