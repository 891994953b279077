"""Ensembles and test-time augmentation: the averages are the averages, views are shifts, the
folder works with every command, and each user error is one line."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import cnnlab
from cnnlab.engine.models import count_parameters
from cnnlab.runs import folder
from cnnlab.runs.inference import SHIFTS, TTA, Ensemble
from cnnlab.web.serve import create_app
from conftest import assert_usage_error, run_cli, run_main

N_TEST = 1000
TINY = ["--model", "simple_cnn", "--epochs", "1", "--limit-train", "3000", "--batch-size", "32", "--lr", "0.003",
        "--schedule", "onecycle", "--threads", "1"]


@pytest.fixture(scope="session")
def ens(tmp_path_factory, data_dir):
    """`cnnlab train --ensemble 2` on 3,000 images, 1 epoch: (ensemble folder, its --json report)."""
    out = tmp_path_factory.mktemp("ensemble") / "ens"
    proc = run_cli("train", *TINY, "--ensemble", "2", "--seed", "3", "--limit-test", N_TEST, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


@pytest.fixture(scope="session")
def test_images(data_dir):
    return cnnlab.engine.data.load("mnist", "test", data_dir).subset(N_TEST)


def softmax_of(trained, images) -> np.ndarray:
    """One member on its own: softmax of its logits, in float64."""
    return trained.logits(images).double().softmax(1).numpy()


def numpy_views(x: np.ndarray) -> list[np.ndarray]:
    """The 5 TTA views built independently: edge-padded by 1 pixel, then a 28x28 window per shift."""
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    return [padded[:, :, 1 - dy:29 - dy, 1 - dx:29 - dx] for dy, dx in SHIFTS]


def tta_proba(trained, images) -> np.ndarray:
    """Mean softmax over the 5 views, each view a separate forward pass of the plain model."""
    x = trained.preprocess(images.unsqueeze(1)).numpy()
    with torch.no_grad():
        return np.mean([trained.model(torch.from_numpy(v.copy())).double().softmax(1).numpy()
                        for v in numpy_views(x)], axis=0)


def test_train_writes_members_and_an_ensemble_config(ens):
    out, report = ens
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "ensemble" and config["members"] == ["member-1", "member-2"]
    assert config["classes"] == [str(i) for i in range(10)] and config["normalization"] == {"mean": 0.5, "std": 0.5}
    seeds = [folder.read_config(out / m)["seed"] for m in config["members"]]
    assert seeds == [3, 4] and [m["seed"] for m in report["members"]] == [3, 4]
    assert report["test_images"] == N_TEST and len(report["members"]) == 2


def test_member_accuracies_in_the_json_are_each_members_own(ens, capsys):
    out, report = ens
    for k, member in enumerate(report["members"], 1):
        assert member["run_dir"] == str(out / f"member-{k}")
        code, stdout, err = run_main(capsys, "evaluate", out / f"member-{k}", "--limit", N_TEST, "--json")
        assert code == 0, err
        assert json.loads(stdout)["accuracy"] == member["test_accuracy"]
        assert member["test_accuracy"] > 0.85


def test_ensemble_probabilities_are_the_mean_of_the_members(ens, test_images):
    out, _ = ens
    members = [cnnlab.load(out / m) for m in ("member-1", "member-2")]
    p1, p2 = (softmax_of(m, test_images.images) for m in members)
    assert np.abs(p1 - p2).max() > 0.1  # two seeds really are two different networks
    ensemble = cnnlab.load(out)
    assert isinstance(ensemble.model, Ensemble) and ensemble.classes == members[0].classes
    np.testing.assert_allclose(ensemble.predict_proba(test_images.images).numpy(), (p1 + p2) / 2, atol=1e-5)


def test_ensemble_of_one_model_repeated_is_that_model(ens, test_images):
    member = cnnlab.load(ens[0] / "member-1")
    x = member.preprocess(test_images.images[:200].unsqueeze(1))
    with torch.no_grad():
        alone = member.model(x).log_softmax(1)
        for copies in (1, 3):
            torch.testing.assert_close(Ensemble([member.model] * copies).eval()(x), alone, atol=1e-5, rtol=0)


def test_evaluate_cli_accuracy_is_that_of_the_mean_member_probabilities(ens, test_images, capsys):
    out, report = ens
    members = [cnnlab.load(out / m) for m in ("member-1", "member-2")]
    mean = np.mean([softmax_of(m, test_images.images) for m in members], axis=0)
    correct = int((mean.argmax(1) == test_images.labels.numpy()).sum())
    code, stdout, err = run_main(capsys, "evaluate", out, "--limit", N_TEST, "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["tta"] is False and result["total"] == N_TEST
    assert result["correct"] == correct and result["accuracy"] == report["test_accuracy"]


def test_tta_accuracy_is_that_of_the_hand_shifted_views(ens, test_images, capsys):
    out, report = ens
    members = [cnnlab.load(out / m) for m in ("member-1", "member-2")]
    mean = np.mean([tta_proba(m, test_images.images) for m in members], axis=0)
    correct = int((mean.argmax(1) == test_images.labels.numpy()).sum())
    code, stdout, err = run_main(capsys, "evaluate", out, "--limit", N_TEST, "--tta", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    assert result["tta"] is True
    assert result["correct"] == correct and result["accuracy"] == report["tta_test_accuracy"]
    # The Python API agrees, with a loaded model too.
    assert cnnlab.evaluate(cnnlab.load(out), limit=N_TEST, tta=True)["accuracy"] == result["accuracy"]


def test_tta_output_is_the_log_mean_softmax_over_five_views(ens, test_images):
    member = cnnlab.load(ens[0] / "member-1", tta=True)
    assert isinstance(member.model, TTA) and member.model.views == 5
    images = test_images.images[:300]
    got = member.predict_proba(images).double().numpy()
    plain = cnnlab.load(ens[0] / "member-1")
    np.testing.assert_allclose(got, tta_proba(plain, images), atol=1e-5)
    assert np.abs(got - softmax_of(plain, images)).max() > 0.01  # the shifts do change predictions


def test_a_shift_moves_a_bright_pixel_by_exactly_one_position():
    x = torch.full((2, 1, 28, 28), -0.4)  # any background value, not only 0
    x[0, 0, 10, 12] = 1.0
    x[1, 0, 5, 0] = 1.0  # on the left edge
    views = TTA(torch.nn.Identity()).shifted(x).reshape(5, 2, 28, 28)
    for view, (dy, dx) in zip(views, SHIFTS):
        bright = (view[0] == 1.0).nonzero().tolist()
        assert bright == [[10 + dy, 12 + dx]]
        assert int((view[0] == -0.4).sum()) == 28 * 28 - 1  # the background stays the background
    # Moving left pushes the edge pixel out; nothing wraps around to column 27 (as torch.roll would).
    left = views[SHIFTS.index((0, -1))][1]
    assert int((left == 1.0).sum()) == 0
    # Moving right repeats the edge column into the gap.
    right = views[SHIFTS.index((0, 1))][1]
    assert (right == 1.0).nonzero().tolist() == [[5, 0], [5, 1]]
    custom = TTA(torch.nn.Identity(), shifts=[(2, -3)]).shifted(x)
    assert (custom[0, 0] == 1.0).nonzero().tolist() == [[12, 9]]


def test_ensemble_command_joins_runs_with_the_same_results(ens, tmp_path, capsys):
    out, report = ens
    joined = tmp_path / "joined"
    code, stdout, err = run_main(capsys, "ensemble", out / "member-1", out / "member-2", "--out", joined,
                                 "--limit", N_TEST, "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert [m["test_accuracy"] for m in r["members"]] == [m["test_accuracy"] for m in report["members"]]
    assert r["test_accuracy"] == report["test_accuracy"] and r["tta_test_accuracy"] == report["tta_test_accuracy"]
    for m in ("member-1", "member-2"):
        assert (joined / m / "model.safetensors").read_bytes() == (out / m / "model.safetensors").read_bytes()
    assert json.loads((joined / "config.json").read_text())["sources"] == [str((out / m).resolve())
                                                                            for m in ("member-1", "member-2")]


def test_serve_shows_the_ensembles_recorded_test_accuracy(ens):
    """An ensemble has no metrics.jsonl: its evaluation is kept in its config, and /api/model shows it."""


    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # starlette's note about httpx2

    out, report = ens
    recorded = json.loads((out / "config.json").read_text())["evaluation"]
    assert recorded == {"dataset": "mnist", "test_images": N_TEST, "test_accuracy": report["test_accuracy"],
                        "tta_test_accuracy": report["tta_test_accuracy"]}
    client = TestClient(create_app(out))
    model = client.get("/api/model").json()
    assert model["model"] == "ensemble" and model["test_accuracy"] == report["test_accuracy"]
    # Its layers are several networks side by side, not one chain: the Network view names a member.
    r = client.post("/api/network", json={"image": [[0] * 28] * 28})
    assert r.status_code == 409 and "member-1" in r.json()["error"]


def test_ensemble_exports_to_onnx_with_parity(ens, tmp_path, capsys):
    code, stdout, err = run_main(capsys, "export", ens[0], "--out", tmp_path / "ens.onnx", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    assert r["max_abs_diff"] <= 1e-4 and r["metadata"]["model"] == "ensemble"


def test_predict_tta_averages_the_views_of_the_preprocessed_image(ens, test_images, tmp_path, capsys):
    Image.fromarray(test_images.images[0].numpy()).save(tmp_path / "digit.png")
    seen = tmp_path / "seen"
    probs = {}
    for flag in ([], ["--tta"]):
        code, stdout, err = run_main(capsys, "predict", ens[0], tmp_path / "digit.png", "--json",
                                     "--save-preprocessed", seen / str(len(flag)), *flag)
        assert code == 0, err
        probs[bool(flag)] = np.array(json.loads(stdout)[0]["probabilities"])
    image = torch.from_numpy(np.array(Image.open(next((seen / "1").iterdir())))).unsqueeze(0)
    members = [cnnlab.load(ens[0] / m) for m in ("member-1", "member-2")]
    expected = np.mean([tta_proba(m, image) for m in members], axis=0)[0]
    np.testing.assert_allclose(probs[True], expected, atol=1e-5)
    assert np.abs(probs[True] - probs[False]).max() > 1e-4


@pytest.mark.parametrize("args, message", [
    (["--ensemble", "1"], "argument --ensemble: must be at least 2"),
    (["--ensemble", "0"], "argument --ensemble: must be at least 2"),
    (["--ensemble", "2", "--resume", "nowhere"], "nowhere holds no member-1/config.json; pass the folder"),
    (["--ensemble", "2", "--resume", "nowhere", "--out", "x"], "--resume continues in the ensemble's own folder"),
])
def test_train_ensemble_usage_errors(args, message, capsys):
    code, _, err = run_main(capsys, "train", *args)
    assert_usage_error(code, err, message)


def test_resume_finishes_an_interrupted_ensemble_identically(ens, tmp_path):
    """An ensemble stopped before member 2: --resume keeps member 1 and trains member 2 with seed 4,
    bit for bit the network the uninterrupted run made."""
    out, report = ens
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    (stopped / "config.json").unlink()
    shutil.rmtree(stopped / "member-2")
    member_1 = (stopped / "member-1" / "model.safetensors").read_bytes()
    proc = run_cli("train", "--ensemble", "2", "--resume", stopped, "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert "member 1/2 (simple_cnn, seed 3): finished before, kept" in proc.stderr
    assert [m["seed"] for m in r["members"]] == [3, 4] and r["members"][0]["train_seconds"] is None
    assert (stopped / "member-1" / "model.safetensors").read_bytes() == member_1
    assert (stopped / "member-2" / "model.safetensors").read_bytes() == (out / "member-2" / "model.safetensors").read_bytes()
    assert r["test_accuracy"] == report["test_accuracy"] and r["test_images"] == N_TEST
    again = run_cli("train", "--ensemble", "2", "--resume", stopped)
    assert_usage_error(again.returncode, again.stderr, "is a finished run or ensemble; nothing to resume")


def test_members_with_other_classes_are_refused_and_nothing_is_written(ens, tmp_path, data_dir, capsys):
    fashion = cnnlab.train(model="simple_cnn", dataset="fashion-mnist", epochs=1, limit_train=500, limit_test=100,
                           batch_size=50, data_dir=data_dir, out=tmp_path / "fashion", progress=False, log=None)
    out = tmp_path / "mixed"
    code, stdout, err = run_main(capsys, "ensemble", ens[0] / "member-1", fashion.run_dir, "--out", out)
    assert_usage_error(code, err, "ensemble members disagree on classes")
    assert "T-shirt/top" in err and not out.exists() and stdout == ""


def test_existing_out_is_never_overwritten(ens, capsys):
    out = ens[0]
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, err = run_main(capsys, "ensemble", out / "member-1", out / "member-2", "--out", out)
    assert_usage_error(code, err, "already exists and is not empty")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_missing_member_folder_is_one_line(ens, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(ens[0], broken)
    shutil.rmtree(broken / "member-2")
    code, _, err = run_main(capsys, "evaluate", broken)
    assert_usage_error(code, err, f"ensemble member {broken / 'member-2'} is missing")


@pytest.mark.parametrize("command", ["visualize", "report"])
def test_visualize_and_report_ask_for_a_member_folder(ens, command, capsys):
    code, _, err = run_main(capsys, command, ens[0], "--limit", "100")
    assert_usage_error(code, err, f"is an ensemble; draw one of its networks by passing a member folder such as "
                                  f"{ens[0] / 'member-1'}")


BEST_TINY = ["--recipe", "best", "--epochs", "1", "--limit-train", "2000", "--batch-size", "64", "--threads", "1"]


@pytest.fixture(scope="session")
def mixed(tmp_path_factory, data_dir):
    """`cnnlab train --recipe best --ensemble 4` on 2,000 images, 1 epoch: (folder, --json report)."""
    out = tmp_path_factory.mktemp("mixed") / "ens"
    proc = run_cli("train", *BEST_TINY, "--ensemble", "4", "--seed", "5", "--limit-test", 300, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(proc.stdout)


def test_best_recipe_ensemble_cycles_through_its_three_networks(mixed, capsys):
    out, report = mixed
    networks = ["kernel5_cnn", "best_cnn", "strided_cnn", "kernel5_cnn"]
    assert [m["model"] for m in report["members"]] == networks and [m["seed"] for m in report["members"]] == [5, 6, 7, 8]
    # Each network learns under the recipe: 81-92% after one epoch of 2,000 images (chance is 10%).
    assert all(m["test_accuracy"] > 0.75 for m in report["members"]), report["members"]
    for k, (name, seed) in enumerate(zip(networks, [5, 6, 7, 8]), 1):
        saved = folder.read_config(out / f"member-{k}")
        assert (saved["model"], saved["seed"], saved["recipe"]["recipe"], saved["recipe"]["augment"]) == \
            (name, seed, "best", "affine")
        assert saved["parameters"] == count_parameters(cnnlab.build_model(name))
    # The ensemble is the mean of these different networks' probabilities, as for one network.
    split = cnnlab.engine.data.load("mnist", "test").subset(300)
    members = [cnnlab.load(out / f"member-{k}") for k in range(1, 5)]
    mean = np.mean([softmax_of(m, split.images) for m in members], axis=0)
    assert report["test_accuracy"] == pytest.approx(float((mean.argmax(1) == split.labels.numpy()).mean()), abs=1e-6)


def test_an_explicit_model_trains_every_member_as_that_model(tmp_path):
    proc = run_cli("train", *BEST_TINY, "--model", "fast_cnn", "--ensemble", "2",
                   "--limit-test", 100, "--out", tmp_path / "e", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [m["model"] for m in json.loads(proc.stdout)["members"]] == ["fast_cnn", "fast_cnn"]


def test_resume_trains_a_missing_member_as_the_network_planned_for_it(mixed, tmp_path):
    """Stopped before member 3 (strided_cnn): --resume trains it as strided_cnn, bit for bit the
    network the uninterrupted run made, and member 4 as kernel5_cnn again."""
    out, report = mixed
    stopped = tmp_path / "stopped"
    shutil.copytree(out, stopped)
    (stopped / "config.json").unlink()
    shutil.rmtree(stopped / "member-3")
    shutil.rmtree(stopped / "member-4")
    proc = run_cli("train", "--ensemble", "4", "--resume", stopped, "--threads", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "ensemble member 3/4 (strided_cnn, seed 7)" in proc.stderr
    r = json.loads(proc.stdout)
    assert [m["model"] for m in r["members"]] == [m["model"] for m in report["members"]]
    for k in (3, 4):
        weights = f"member-{k}/model.safetensors"
        assert (stopped / weights).read_bytes() == (out / weights).read_bytes()
    assert r["test_accuracy"] == report["test_accuracy"]


def test_a_corrupt_ensemble_plan_is_one_line_and_trains_nothing(mixed, tmp_path):
    stopped = tmp_path / "stopped"
    shutil.copytree(mixed[0], stopped)
    (stopped / "config.json").unlink()
    shutil.rmtree(stopped / "member-4")
    (stopped / "ensemble-plan.json").write_text('{"models": "best_cnn"}')
    proc = run_cli("train", "--ensemble", "4", "--resume", stopped)
    assert_usage_error(proc.returncode, proc.stderr, "ensemble-plan.json is corrupt; delete it to train every "
                                                    "missing member as kernel5_cnn")
    assert not (stopped / "member-4").exists()
