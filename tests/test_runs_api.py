"""The run browser, page training's checks and the robustness routes, in-process (FastAPI's TestClient)."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
import torch

import cnnlab
import cnnlab.engine.data
from cnnlab.runs import folder
from cnnlab.see.explain import match_kernels
from cnnlab.see.robustness import transform
from cnnlab.web.serve import create_app, training_allowed

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def root(quick_run, data_dir, tmp_path_factory):
    """A folder of runs: the session's quick run, a smaller one, a stopped one and a folder that is no run."""
    root = tmp_path_factory.mktemp("runs-folder")
    shutil.copytree(quick_run.run_dir, root / "quick")
    cnnlab.train(data_dir=data_dir, out=root / "small", progress=False, log=None, model="simple_cnn", epochs=1,
                 limit_train=1000, limit_test=500, batch_size=50, seed=1, threads=1)
    shutil.copytree(root / "small", root / "stopped")
    (root / "stopped" / folder.WEIGHTS).unlink()
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("not a run")
    return root


@pytest.fixture(scope="module")
def client(root, data_dir):
    return TestClient(create_app(root, data_dir=data_dir))


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return cnnlab.engine.data.load("mnist", "test", data_dir)


def test_the_browser_lists_the_runs_of_the_folder(client, root, quick_run):
    r = client.get("/api/runs").json()
    rows = {x["name"]: x for x in r["runs"]}
    assert set(rows) == {"quick", "small", "stopped"}
    quick = rows["quick"]
    assert (quick["model"], quick["dataset"], quick["recipe"], quick["parameters"]) == ("simple_cnn", "mnist", "lecture", 206_922)
    assert quick["test_accuracy"] == quick_run.test_accuracy and quick["test_images"] == 2000
    assert (quick["epochs_done"], quick["epochs"], quick["finished"]) == (1, 1, True)
    assert quick["train_seconds"] == pytest.approx(quick_run.epochs[0].seconds)
    assert (rows["stopped"]["finished"], rows["stopped"]["resumable"]) == (False, True)
    # `cnnlab serve RUNS_DIR` opens the newest finished run.
    # (The page names the run by its folder's name: /api/model never shows a server path.)
    assert r["loaded"] == str(root / "small") and client.get("/api/model").json()["source"] == "small"


def test_the_confusion_matrix_is_the_runs_own_evaluation(client, root):
    ev = client.get("/api/runs/quick/evaluation").json()
    expected = cnnlab.evaluate(root / "quick", limit=2000)
    assert ev["confusion_matrix"] == expected["confusion_matrix"] and ev["test_images"] == 2000
    assert ev["accuracy"] == pytest.approx(expected["accuracy"])
    assert ev["per_class_accuracy"] == pytest.approx(expected["per_class_accuracy"])


def test_a_confusion_cell_opens_its_test_images(client, root, mnist_test):
    cm = np.array(client.get("/api/runs/quick/evaluation").json()["confusion_matrix"])
    off = cm - np.diag(np.diag(cm))
    t, p = np.unravel_index(off.argmax(), off.shape)
    cell = client.get("/api/runs/quick/cell", params={"true": int(t), "predicted": int(p)}).json()
    assert cell["count"] == cm[t, p] and len(cell["images"]) == min(cm[t, p], 24)
    assert cell["explanation"] == "Grad-CAM at features.5"  # simple_cnn's last spatial map (after pooling)
    probs = [im["probabilities"][p] for im in cell["images"]]
    assert probs == sorted(probs, reverse=True)  # the most confident mistakes first
    trained = cnnlab.load(root / "quick")
    for im in cell["images"]:
        assert mnist_test.labels[im["index"]] == t
        assert im["image"] == mnist_test.images[im["index"]].flatten().tolist()
        assert int(trained.predict(mnist_test.images[im["index"]][None])) == p
        assert max(im["heat"]) == 255 and min(im["heat"]) >= 0 and len(im["heat"]) == 28 * 28
    diagonal = client.get("/api/runs/quick/cell", params={"true": 1, "predicted": 1, "limit": 100}).json()
    assert diagonal["count"] == cm[1, 1] and len(diagonal["images"]) == 100


@pytest.mark.parametrize("url, status, message", [
    ("/api/runs/nope/evaluation", 404, "no run 'nope'"),
    ("/api/runs/notes/history", 404, "no run 'notes'"),
    ("/api/runs/..%2Fquick/history", 404, ""),
    ("/api/runs/quick/cell?true=10&predicted=0", 422, "classes are 0..9"),
    ("/api/runs/quick/cell?true=1&predicted=1&limit=0", 422, "limit must be 1 to 100"),
    ("/api/runs/stopped/evaluation", 409, "finish it with 'cnnlab train --resume"),
    ("/api/compare?a=quick&b=quick", 422, "two different runs"),
])
def test_bad_browser_requests_are_json_errors(client, url, status, message):
    r = client.get(url)
    assert r.status_code == status
    assert message in r.json().get("error", r.json().get("detail", ""))


def test_two_runs_compared_on_the_test_images_both_saw(client, root, mnist_test):
    c = client.get("/api/compare", params={"a": "quick", "b": "small"}).json()
    assert c["test_images"] == 500  # quick saw 2,000 test images, small the first 500 of them
    images, labels = mnist_test.images[:500], mnist_test.labels[:500]
    ra = cnnlab.load(root / "quick").predict(images) == labels
    rb = cnnlab.load(root / "small").predict(images) == labels
    assert c["accuracy"] == pytest.approx([float(ra.float().mean()), float(rb.float().mean())])
    assert c["a_right_b_wrong"]["count"] == int((ra & ~rb).sum()) and c["b_right_a_wrong"]["count"] == int((rb & ~ra).sum())
    assert c["both_wrong"] == int((~ra & ~rb).sum())
    shown = c["a_right_b_wrong"]["images"]
    assert len(shown) == min(12, c["a_right_b_wrong"]["count"])
    assert all(ra[im["index"]] and not rb[im["index"]] and im["true"] == labels[im["index"]] for im in shown)


def test_the_filters_history_names_the_closest_kernels(client, root):
    h = client.get("/api/runs/small/history").json()
    assert h["steps_per_epoch"] == 20 and len(h["points"]) == 20 and [e["epoch"] for e in h["epochs"]] == [1]
    assert [(s["epoch"], s["step"]) for s in h["snapshots"]] == [(0, 0), (1, 20)]
    w = cnnlab.load(root / "small").model.features[0].weight.detach()[:, 0].numpy()
    expected = match_kernels(w)
    last = h["snapshots"][-1]
    assert [m["match"] for m in last["matches"]] == [m["match"] for m in expected]
    assert last["mean_similarity"] == pytest.approx(np.mean([m["similarity"] for m in expected]), abs=1e-4)
    assert set(h["kernels"]) >= {"sobel-x", "laplacian", "gaussian"} and np.array(h["kernels"]["sobel-x"]).shape == (3, 3)


def test_explore_loads_a_run_into_the_explorer(root, data_dir, mnist_test):
    client = TestClient(create_app(root, data_dir=data_dir))
    image = mnist_test.images[0]
    assert client.post("/api/runs/quick/explore").json()["source"] == "quick"
    assert client.get("/api/model").json()["source"] == "quick"
    got = client.post("/api/predict", json={"image": image.tolist()}).json()["probabilities"]
    expected = cnnlab.load(root / "quick").predict_proba(image[None])[0]
    assert got == pytest.approx(expected.tolist(), abs=1e-5)
    assert client.post("/api/runs/stopped/explore").status_code == 409
    closed = TestClient(create_app(root, data_dir=data_dir, allow_training=False, why_not="training is off here"))
    r = closed.post("/api/runs/quick/explore")
    assert r.status_code == 403 and r.json()["error"] == "training is off here"


def test_training_requests_are_checked_before_anything_runs(root, tmp_path):
    client = TestClient(create_app(root, data_dir=tmp_path))  # a data folder without any dataset
    assert client.get("/api/train").json()["datasets"] == []
    for body, status, message in [
        ({"model": "resnet"}, 422, "model: unknown model 'resnet'; choose one of: simple_cnn"),
        ({"epochs": 0}, 422, "epochs: must be in [1, 10000], got 0"),
        ({"epochs": "2"}, 422, 'epochs must be a whole number, got "2"'),
        ({"limit_train": 0}, 422, "limit_train: must be at least 1, got 0"),
        ({"recipe": "turbo"}, 422, "recipe: unknown recipe 'turbo'"),
        ({"lr": 1}, 422, "unknown setting lr"),
        ({"dataset": "mnist"}, 422, f"dataset 'mnist' is not on this machine ({tmp_path})"),
        ({"dataset": "folder:/etc"}, 422, "dataset 'folder:/etc' is not on this machine"),
        ([1, 2], 422, "send a JSON object"),
    ]:
        r = client.post("/api/train", json=body)
        assert (r.status_code, message in r.json()["error"]) == (status, True), (body, r.json())
    assert client.post("/api/train", content=b"{", headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/api/train/stop").status_code == 409  # nothing runs
    closed = TestClient(create_app(root, allow_training=False, why_not="training from the page is off"))
    r = closed.post("/api/train", json={"epochs": 1})
    assert r.status_code == 403 and r.json()["error"] == "training from the page is off"
    assert closed.get("/api/train").json()["allowed"] is False
    assert not [p for p in root.iterdir() if p.name not in ("quick", "small", "stopped", "notes")]  # no run folder made


def test_training_is_on_for_loopback_addresses_only_unless_allowed():
    assert [training_allowed(h) for h in ("127.0.0.1", "::1", "localhost", "127.0.0.2")] == [True] * 4
    assert [training_allowed(h) for h in ("0.0.0.0", "::", "192.168.1.20", "myhost")] == [False] * 4
    assert training_allowed("0.0.0.0", allow_training=True)


def test_moving_the_digit_changes_what_the_network_sees(client, root, mnist_test):
    image = mnist_test.images[0].numpy()
    r = client.post("/api/robustness", json={"image": image.tolist(), "angle": 90}).json()
    assert np.array_equal(np.array(r["image"]), np.rot90(image, -1))  # 90 degrees clockwise, exactly
    shifted = client.post("/api/robustness", json={"image": image.tolist(), "dx": 3, "dy": -2}).json()
    assert np.array_equal(np.array(shifted["image"]), np.roll(np.roll(image, 3, 1), -2, 0))  # (its border is black)
    direct = client.post("/api/predict", json={"image": r["image"]}).json()
    assert r["probabilities"] == direct["probabilities"] and r["transform"]["angle"] == 90
    assert [f["channels"] for f in r["features"]] == [16, 32]
    for body, message in [({"image": image.tolist(), "scale": 10}, "scale must be a number from 0.25 to 4, got 10"),
                          ({"image": image.tolist(), "angle": "x"}, "angle must be a number"),
                          ({"image": [[0]]}, "'image' has shape [1, 1]")]:
        bad = client.post("/api/robustness", json=body)
        assert bad.status_code == 422 and message in bad.json()["error"]


@pytest.mark.parametrize("moves", [dict(angle=30), dict(angle=-45, scale=1.2), dict(dx=2.5, dy=-1.5, angle=-40, scale=0.7)])
def test_the_transform_is_torchvisions_affine(mnist_test, moves):
    from torchvision.transforms import InterpolationMode  # (the server avoids importing torchvision: 4 s)
    from torchvision.transforms.v2 import functional as TF

    image = mnist_test.images[0].numpy()
    expected = TF.affine(torch.from_numpy(image.astype(np.float32))[None], angle=moves.get("angle", 0.0),
                         translate=[moves.get("dx", 0.0), moves.get("dy", 0.0)], scale=moves.get("scale", 1.0),
                         shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR, fill=0.0)[0]
    got = transform(image, **moves).astype(int)
    assert np.abs(got - expected.round().numpy().astype(int)).max() <= 1  # (rounding of the same bilinear values)


def test_the_smallest_gradient_sign_step_flips_the_prediction(client, mnist_test):
    image = mnist_test.images[0].numpy()
    r = client.post("/api/robustness/fgsm", json={"image": image.tolist()}).json()
    assert r["found"] and r["predicted"] == 7
    adversarial, delta = np.array(r["adversarial"]["image"]), np.array(r["perturbation"])
    assert np.array_equal(adversarial, image.astype(int) + delta) and np.abs(delta).max() == r["epsilon"]
    flipped = client.post("/api/predict", json={"image": adversarial.tolist()}).json()["prediction"]
    assert flipped == r["adversarial"]["predicted"] != 7
    # One grey level less along the same signs does not flip it: epsilon is the smallest on that line.
    sign = np.sign(delta)  # (pixels already at 0 or 255 stay where they are)
    smaller = np.clip(image.astype(int) + (r["epsilon"] - 1) * sign, 0, 255)
    assert client.post("/api/predict", json={"image": smaller.tolist()}).json()["prediction"] == 7


def test_a_folder_without_a_finished_run_serves_the_page_without_a_model(tmp_path):
    client = TestClient(create_app(tmp_path))
    assert client.get("/api/model").json()["model"] is None
    assert client.get("/api/runs").json()["runs"] == []
    r = client.post("/api/predict", json={"image": np.zeros((28, 28), int).tolist()})
    assert r.status_code == 409 and "train one in the Train tab" in r.json()["error"]
    assert client.post("/api/robustness/fgsm", json={"image": np.zeros((28, 28), int).tolist()}).status_code == 409
    assert client.get("/healthz").json()["status"] == "ok"
