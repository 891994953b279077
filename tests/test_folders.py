"""`--dataset folder:PATH`: ImageFolder trees of any image size and mode, read into the usual split."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.engine import data
from cnnlab.errors import DataError
from cnnlab.runs import folder
from cnnlab.runs.predict import load_classifier, predict_files, predict_images
from conftest import run_cli, run_main

NAMES = ["zero", "one", "two"]


def write_digits(root, mnist, per_class: int, start: int = 0, classes=NAMES) -> dict:
    """Save the first `per_class` MNIST digits 0..k-1 from `start` under root/<name>/, in mixed
    formats: a third as 28x28 grayscale PNG, a third 64x64 RGB JPEG, a third 20x20 RGBA PNG.
    Returns {name: [28x28 uint8 originals saved losslessly at native size]}."""
    exact = {c: [] for c in classes}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        idx = (mnist.labels[start:] == k).nonzero().flatten()[:per_class] + start
        for j, i in enumerate(idx.tolist()):
            img = Image.fromarray(mnist.images[i].numpy())
            if j % 3 == 0:
                img.save(root / name / f"{i}.png")
                exact[name].append(mnist.images[i])
            elif j % 3 == 1:
                img.resize((64, 64)).convert("RGB").save(root / name / f"{i}.jpg")
            else:
                img.resize((20, 20)).convert("RGBA").save(root / name / f"{i}.png")
    return exact


@pytest.fixture(scope="module")
def mnist(data_dir):
    return data.load("mnist", "train", data_dir)


def test_flat_folder_is_split_per_class_and_resized_to_28x28_gray(tmp_path, mnist):
    exact = write_digits(tmp_path, mnist, per_class=10)
    (tmp_path / "two" / "notes.txt").write_text("not an image, not counted")
    (tmp_path / "one" / "broken.png").write_bytes(b"\x89PNG but truncated")
    (tmp_path / "zero" / "empty.jpg").write_bytes(b"")
    name = f"folder:{tmp_path}"
    assert data.dataset_info(name).classes == ["one", "two", "zero"]  # sorted folder names
    train = data.load(name, "train", test_split=0.2)
    test = data.load(name, "test", test_split=0.2)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (28, 28)
    assert torch.bincount(train.labels).tolist() == [8, 8, 8]
    assert torch.bincount(test.labels).tolist() == [2, 2, 2]
    assert len(train.skipped) == 2 and data.skipped_warning(train).startswith("warning: skipped 2 unreadable image(s)")
    # Same 28x28 grayscale PNGs come back pixel for pixel, wherever the hold-out put them.
    both = torch.cat([train.images, test.images])
    for img in exact["one"]:
        assert any(torch.equal(img, x) for x in both)
    # The hold-out is fixed (evaluate must find the same test images later) and disjoint.
    again = data.hold_out(data.Split(both, torch.cat([train.labels, test.labels]), train.classes), 0.2)[1]
    assert len(again) == 6
    flat = {x.numpy().tobytes() for x in train.images}
    assert not any(x.numpy().tobytes() in flat for x in test.images)


def test_train_and_test_subfolders_share_the_training_class_indices(tmp_path, mnist):
    write_digits(tmp_path / "train", mnist, per_class=6)
    write_digits(tmp_path / "test", mnist, per_class=3, start=30000, classes=["two", "zero"])  # no "one"
    name = f"folder:{tmp_path}"
    train, test = data.load(name, "train"), data.load(name, "test")
    assert train.classes == test.classes == ["one", "two", "zero"]
    assert torch.bincount(train.labels).tolist() == [6, 6, 6]
    assert torch.bincount(test.labels, minlength=3).tolist() == [0, 3, 3]
    # Colour and size are gone: every image is 28x28 gray with real ink (MNIST digits are bright).
    assert test.images.shape == (6, 28, 28) and all(int(x.max()) > 100 for x in test.images)


@pytest.mark.parametrize("layout, flags, message", [
    ("flat", {}, "has no train/ and test/ sub-folders; pass --test-split FRACTION"),
    ("one-class", {"test_split": 0.2}, "has 1 class sub-folder(s); a classifier needs at least 2"),
    ("missing", {"test_split": 0.2}, "is not a folder"),
    ("extra-test-class", {}, "has class folder(s) three that the training folder lacks"),
    ("only-junk", {"test_split": 0.5}, "holds no readable images (2 unreadable)"),
])
def test_folder_problems_are_one_clear_line(tmp_path, mnist, layout, flags, message):
    if layout == "flat":
        write_digits(tmp_path, mnist, per_class=2)
    elif layout == "one-class":
        write_digits(tmp_path, mnist, per_class=2, classes=["zero"])
    elif layout == "extra-test-class":
        write_digits(tmp_path / "train", mnist, per_class=2)
        write_digits(tmp_path / "test", mnist, per_class=2, classes=NAMES + ["three"])
    elif layout == "only-junk":
        for c in ("a", "b"):
            (tmp_path / c).mkdir()
            (tmp_path / c / "x.png").write_bytes(b"junk")
    name = f"folder:{tmp_path / 'nope' if layout == 'missing' else tmp_path}"
    with pytest.raises(DataError) as err:
        data.load(name, "test", **flags)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_train_on_a_folder_saves_class_names_used_by_evaluate_and_load(tmp_path, mnist, data_dir):
    write_digits(tmp_path / "digits", mnist, per_class=60)
    (tmp_path / "digits" / "two" / "bad.png").write_bytes(b"oops")
    out = tmp_path / "run"
    proc = run_cli("train", "--dataset", f"folder:{tmp_path / 'digits'}", "--val-split", "0.25", "--epochs", "6",
                   "--batch-size", "16", "--lr", "0.003", "--threads", "1", "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning: skipped 1 unreadable image(s), e.g. " in proc.stdout and "bad.png" in proc.stdout
    # 60 per class: 12 held out as test images (--test-split 0.2, the default), 12 of the other 48
    # for validation (--val-split 0.25), 36 to train on; each number says where it comes from.
    assert ("108 train / 36 validation / 36 test images (20% of each class held out by --test-split, never "
            "trained or stopped on)") in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == ["one", "two", "zero"]
    assert config["dataset"] == f"folder:{(tmp_path / 'digits').resolve()}"
    final = folder.read_metrics(out)[-1]
    assert final["test_accuracy"] >= 0.85  # 0, 1, 2 from 36 images each
    assert cnnlab.load(out).classes == ["one", "two", "zero"]
    report = cnnlab.evaluate(out)  # finds the same 36 held-out images from the saved settings
    assert report["total"] == 36 and report["accuracy"] == pytest.approx(final["test_accuracy"])
    assert report["classes"] == ["one", "two", "zero"]
    # The digit "1" images sit in class 0 ("one"): the confusion matrix rows follow folder order.
    assert sum(report["confusion_matrix"][0]) == 12
    # Prediction answers with the folder names, and agrees with evaluate on the held-out images.

    _, test = folder.test_split(config)
    answers = [p["label"] for p in predict_images(load_classifier(out), test.images.numpy())]
    truth = [test.classes[i] for i in test.labels.tolist()]
    assert set(answers) <= {"one", "two", "zero"}
    assert sum(a == t for a, t in zip(answers, truth)) == report["correct"]

    # Image files given to predict are prepared the way training prepared them (only resized),
    # not MNIST-style (cropped and re-centred), so predict sees exactly what training saw.

    files = sorted((tmp_path / "digits" / "one").glob("*.jpg"))[:5]
    saved = tmp_path / "seen"
    results = predict_files(load_classifier(out), files, save_preprocessed=saved)
    for f, r in zip(files, results):
        as_trained = data.resize_gray(Image.open(f))
        assert np.array_equal(np.asarray(Image.open(r["preprocessed"])), as_trained)
        assert r["prediction"] == predict_images(load_classifier(out), as_trained[None])[0]["prediction"]


def test_a_flat_folder_run_works_with_every_command_that_tests_it(tmp_path, mnist):
    """Every command asks runs.folder.test_split for a run's test images, so a run trained on a flat
    folder (tested on its held-out share) can be evaluated, drawn, reported, shift-tested and exported."""
    write_digits(tmp_path / "digits", mnist, per_class=40)
    run = tmp_path / "run"
    r = run_cli("train", "--dataset", f"folder:{tmp_path / 'digits'}", "--val-split", "0.25", "--epochs", "1",
                "--batch-size", "8", "--lr", "0.002", "--out", run, "--json")
    assert r.returncode == 0, r.stderr
    trained_acc = json.loads(r.stdout)["test_accuracy"]
    ev = run_cli("evaluate", run, "--json")
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["total"] == 24 and json.loads(ev.stdout)["accuracy"] == trained_acc
    vis = run_cli("visualize", run, "--out", tmp_path / "figs", "--json")
    assert vis.returncode == 0, vis.stderr
    assert json.loads(vis.stdout)["test_images"] == 24
    rep = run_cli("report", run, "--out", tmp_path / "report.html", "--json")
    assert rep.returncode == 0, rep.stderr
    assert json.loads(rep.stdout)["accuracy"] == trained_acc
    inv = run_cli("pool", "--invariance", run, "--out", tmp_path / "inv.png", "--json")
    assert inv.returncode == 0, inv.stderr
    assert json.loads(inv.stdout)["images"] == 24
    exp = run_cli("export", run, "--out", tmp_path / "model.onnx", "--json")
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["checked_on"] == f"24 folder:{(tmp_path / 'digits').resolve()} test images"


def test_test_images_are_never_trained_or_validated_on(tmp_path, mnist, data_dir, capsys):
    """A folder without train/ and test/: the test share is held out before validation is taken from
    the rest, so the test accuracy is measured on images neither training nor early stopping saw."""
    write_digits(tmp_path / "digits", mnist, per_class=30)
    name = f"folder:{tmp_path / 'digits'}"
    out = tmp_path / "run"
    code, stdout, err = run_main(capsys, "train", "--dataset", name, "--val-split", "0.25", "--test-split", "0.3",
                                 "--patience", "1", "--epochs", "3", "--batch-size", "8", "--threads", "1",
                                 "--out", out)
    assert code == 0, err
    # 30 per class: 9 test (30%), 21 left, of which 5 validation (25%) and 16 training.
    assert ("48 train / 15 validation / 27 test images (30% of each class held out by --test-split, never "
            "trained or stopped on)") in stdout
    config = json.loads((out / "config.json").read_text())
    _, test = folder.test_split(config)
    rest = data.load(config["dataset"], "train", test_split=0.3)
    train, val = data.hold_out(rest, 0.25)
    as_bytes = lambda split: {x.numpy().tobytes() for x in split.images}  # noqa: E731
    assert (len(test), len(val), len(train)) == (27, 15, 48)
    assert not as_bytes(test) & as_bytes(rest) and not as_bytes(val) & as_bytes(train)
    code, stdout, _ = run_main(capsys, "evaluate", out)
    said = " ".join(stdout.split())
    assert "test (30% of each class held out by --test-split, never trained or stopped on): accuracy" in said
    assert "/27)" in said


def test_runs_from_before_the_test_split_are_tested_where_they_were(tmp_path, mnist, capsys):
    """A run trained when the --val-split share was also the test share (no test_split in its
    recipe) is still evaluated on those images, and says so."""
    write_digits(tmp_path / "digits", mnist, per_class=20)
    out = tmp_path / "run"
    code, _, err = run_main(capsys, "train", "--dataset", f"folder:{tmp_path / 'digits'}", "--val-split", "0.25",
                            "--epochs", "1", "--batch-size", "8", "--threads", "1", "--out", out)
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    del config["recipe"]["test_split"]
    (out / "config.json").write_text(json.dumps(config))
    code, stdout, err = run_main(capsys, "evaluate", out, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["total"] == 15  # 25% of 20 per class, as before
    assert result["test_images_from"].startswith("25% of each class held out by --val-split, also the validation")
