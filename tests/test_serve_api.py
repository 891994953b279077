"""The JSON API in-process (FastAPI's TestClient): answers, error statuses, concurrency."""

from __future__ import annotations

import base64
import io
import json
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
import cnnlab.engine.data
from cnnlab.web.serve import create_app
from photos import restyle
from test_predict import bomb_png

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(quick_run):
    return TestClient(create_app(quick_run.run_dir))


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return cnnlab.engine.data.load("mnist", "test", data_dir)


def png_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_health_and_model(client):
    assert client.get("/healthz").json()["status"] == "ok"
    m = client.get("/api/model").json()
    assert m["model"] == "simple_cnn" and m["classes"] == [str(i) for i in range(10)]
    assert m["normalization"] == {"mean": 0.5, "std": 0.5}
    assert m["parameters"] == 206_922
    assert [c["out_channels"] for c in m["conv_layers"]] == [16, 32]
    assert 0.9 < m["test_accuracy"] <= 1


def test_json_array_matches_python_api(client, quick_run, mnist_test):
    trained = cnnlab.load(quick_run.run_dir)
    images = mnist_test.images[:20]
    expected = trained.predict_proba(images).numpy()
    for img, p in zip(images, expected):
        r = client.post("/api/predict", json={"image": img.tolist()})
        assert r.status_code == 200
        body = r.json()
        assert body["prediction"] == int(p.argmax())
        assert np.allclose(body["probabilities"], p, atol=1e-5)
        assert abs(sum(body["probabilities"]) - 1) < 1e-4
        assert body["image"] == img.tolist()  # a 28x28 array is used as it is


def test_upload_of_photo_is_preprocessed(client, mnist_test):
    rng = np.random.default_rng(5)
    correct = 0
    for i in range(20):
        r = client.post("/api/predict", files={"file": ("p.jpg", restyle(mnist_test.images[i].numpy(), rng), "image/jpeg")})
        assert r.status_code == 200
        seen = np.array(r.json()["image"])
        assert seen.shape == (28, 28) and seen.max() == 255 and seen[0].max() == 0  # white on black, margin
        correct += r.json()["prediction"] == int(mnist_test.labels[i])
    assert correct >= 18
    # A raw image/* body works too.
    r = client.post("/api/predict", content=png_bytes(mnist_test.images[0].numpy()), headers={"content-type": "image/png"})
    assert r.json()["prediction"] == int(mnist_test.labels[0])


def test_feature_maps_and_filters(client, quick_run, mnist_test):
    img = mnist_test.images[0]
    r = client.post("/api/predict?features=1", json={"image": img.tolist()}).json()
    conv1, conv2 = r["features"]
    assert (conv1["channels"], conv1["height"], conv1["width"]) == (16, 28, 28)
    assert (conv2["channels"], conv2["height"], conv2["width"]) == (32, 14, 14)
    # Decoded maps equal ReLU(conv1(x)) computed here, up to the 8-bit quantisation.

    trained = cnnlab.load(quick_run.run_dir)
    with torch.no_grad():
        want = torch.relu(trained.model.features[0](trained.preprocess(img[None])))[0].numpy()
    q = np.frombuffer(base64.b64decode(conv1["data"]), np.uint8).reshape(16, 28, 28)
    got = q / 255.0 * np.array(conv1["max"])[:, None, None]
    assert np.abs(got - want).max() <= np.max(conv1["max"]) / 255 + 1e-4
    f = client.get("/api/filters").json()
    assert f["shape"] == [16, 1, 3, 3]
    assert np.allclose(f["filters"], trained.model.features[0].weight.detach().numpy(), atol=1e-5)


def test_kernel_playground(client, tmp_path):
    img = np.zeros((5, 5))
    img[:, 2:] = 255  # a vertical edge, dark to bright
    r = client.post("/api/kernel", json={"image": img.tolist(), "kernel": "sobel-x"}).json()
    assert r["kernel"] == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    out = np.array(r["output"])
    assert out[2, 1] == pytest.approx(4.0) and out[2, 2] == pytest.approx(4.0) and out[2, 0] == 0
    r = client.post("/api/kernel", json={"image": img.tolist(), "kernel": "0 0 0; 0 2 0; 0 0 0"}).json()
    assert r["kernel_name"] == "custom" and np.allclose(r["output"], img / 255 * 2)
    r = client.post("/api/kernel", data={"kernel": "laplacian"},
                    files={"file": ("big.png", png_bytes(np.full((400, 300), 200, np.uint8)), "image/png")}).json()
    assert np.array(r["input"]).shape == (160, 120)  # uploads are shrunk for the playground
    assert client.post("/api/kernel", json={"image": img.tolist(), "kernel": "1 2; 3 4"}).status_code == 422
    assert client.post("/api/kernel", json={"image": img.tolist(), "kernel": "blur-ish"}).status_code == 422
    # A kernel "matrix" naming a file on the server is refused without reading the file.
    secret = tmp_path / "secret.txt"
    secret.write_text("1 2 3; 4 5 6; 7 8 9")
    r = client.post("/api/kernel", json={"image": img.tolist(), "kernel": str(secret)})
    assert r.status_code == 422 and "neither a name" in r.json()["error"]
    g = client.post("/api/kernel", json={"image": img.tolist(), "kernel": "gaussian"}).json()
    assert np.array(g["kernel"]).shape == (5, 5) and abs(np.sum(g["kernel"]) - 1) < 1e-5


@pytest.mark.parametrize("kwargs, status, words", [
    (dict(content=b"definitely not an image", headers={"content-type": "image/png"}), 415, "not an image"),
    (dict(files={"file": ("x.txt", b"hello", "text/plain")}), 415, "not an image"),
    (dict(content=b"", headers={"content-type": "image/png"}), 400, "empty"),
    (dict(json={"image": [[0] * 28] * 27}), 422, "shape [27, 28]"),
    (dict(json={"image": [[0] * 28] * 28 + [[1]]}), 422, "2-D array"),
    (dict(json={"image": [[300] * 28] * 28}), 422, "0 to 255"),
    (dict(json={"pixels": []}), 422, '"image"'),
    (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
    (dict(content=b"a=1", headers={"content-type": "application/x-www-form-urlencoded"}), 415, "content type"),
    (dict(content=png_bytes(np.full((50, 50), 255, np.uint8)), headers={"content-type": "image/png"}), 400, "no digit"),
])
def test_bad_input_gets_json_error(client, kwargs, status, words):
    r = client.post("/api/predict", **kwargs)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert client.get("/healthz").status_code == 200  # still serving


def test_truncated_and_oversized_uploads(client, mnist_test):
    full = png_bytes(mnist_test.images[0].numpy())
    r = client.post("/api/predict", files={"file": ("t.png", full[: len(full) // 2], "image/png")})
    assert r.status_code == 400 and "truncated" in r.json()["error"]
    big = b"\0" * (5 * 1024 * 1024 + 1)
    r = client.post("/api/predict", files={"file": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "5 MB" in r.json()["error"]
    r = client.post("/api/predict", content=big, headers={"content-type": "image/png"})
    assert r.status_code == 413
    # Just under the limit is accepted as far as size goes (it is then not an image: 415).
    r = client.post("/api/predict", content=b"\0" * (5 * 1024 * 1024 - 1000), headers={"content-type": "image/png"})
    assert r.status_code == 415
    assert client.post("/api/predict", json={"image": mnist_test.images[0].tolist()}).status_code == 200


def test_decompression_bomb_refused(client):
    r = client.post("/api/predict", files={"file": ("bomb.png", bomb_png(), "image/png")})
    assert r.status_code == 413 and "megapixels" in r.json()["error"]


def test_concurrent_requests_get_their_own_answers(client, mnist_test):
    """64 different digits from 16 threads at once: each answer matches the sequential one."""
    images = [mnist_test.images[i].tolist() for i in range(64)]
    sequential = [client.post("/api/predict?features=1", json={"image": im}).json() for im in images]

    def ask(im):
        return client.post("/api/predict?features=1", json={"image": im}).json()

    with ThreadPoolExecutor(16) as pool:
        parallel = list(pool.map(ask, images))
    for s, p in zip(sequential, parallel):
        assert p["prediction"] == s["prediction"]
        assert np.allclose(p["probabilities"], s["probabilities"], atol=1e-6)
        assert p["features"][0]["data"] == s["features"][0]["data"]


# --- the explaining routes (web/explain.py) --------------------------------------------------------

def test_network_and_unit_equal_the_model(client, quick_run, mnist_test):
    img = mnist_test.images[3]
    r = client.post("/api/network", json={"image": img.tolist()})
    assert r.status_code == 200
    body = r.json()
    trained = cnnlab.load(quick_run.run_dir)
    m = trained.model.eval()
    x = trained.preprocess(img[None])
    with torch.no_grad():
        probs = trained.predict_proba(img[None])[0].numpy()
        after_pool1 = m.features[:3](x)
        conv2 = m.features[3](after_pool1)[0]
    assert [L["name"] for L in body["layers"]] == ["input", *[f"features.{i}" for i in range(6)],
                                                   *[f"classifier.{i}" for i in range(4)], "softmax"]
    assert body["prediction"] == int(probs.argmax()) and np.allclose(body["probabilities"], probs, atol=1e-5)
    assert body["layers"][4]["receptive_field"] == [8, 8] and body["note"] is None
    u = client.post("/api/unit", json={"image": img.tolist(), "layer": 4, "unit": [5, 0, 13]}).json()
    assert u["value"] == pytest.approx(float(conv2[5, 0, 13]), abs=1e-5)
    assert u["rows"] == [-1, 0, 1] and u["cols"] == [12, 13, 14]  # the top row and right column are padding
    window = np.array(u["window"])
    assert window.shape == (16, 3, 3) and (window[:, 0, :] == 0).all() and (window[:, :, 2] == 0).all()
    padded = torch.nn.functional.pad(after_pool1[0], (1, 1, 1, 1))
    assert np.allclose(window, padded[:, 0:3, 13:16].numpy(), atol=1e-6)
    assert u["result"] == pytest.approx(u["value"], abs=1e-4)
    assert u["receptive_field"] == {"top": 0, "left": 23, "bottom": 4, "right": 27, "size": [8, 8],
                                    "unclipped": [-3, 23, 4, 30]}
    assert u["then"][0]["name"] == "features.4" and u["then"][0]["value"] == pytest.approx(max(u["value"], 0))


def test_explaining_routes_refuse_bad_requests(client, tmp_path):
    image = np.zeros((28, 28), int).tolist()
    secret = tmp_path / "secret.txt"
    secret.write_text("1 2 3; 4 5 6; 7 8 9")
    for route, body, status, words in [
        ("/api/network", {}, 422, '"image"'),
        ("/api/unit", {"image": image, "layer": 99, "unit": [0]}, 422, "layer 99 does not exist"),
        ("/api/unit", {"image": image, "layer": 1, "unit": [0, 28, 0]}, 422, "outside layer 1"),
        ("/api/unit", {"image": image, "layer": "1", "unit": [0]}, 422, '"layer"'),
        ("/api/conv", {"input": str(secret)}, 422, "not a matrix"),  # never opens the server's files
        ("/api/conv", {"input": "1 2; 3 4", "kernel": "1 2 3; 4 5 6; 7 8 9"}, 422, "does not fit"),
        ("/api/conv", {"input": [[1] * 17] * 17}, 422, "16x16"),
        ("/api/conv", {"stride": 0}, 422, "stride must be"),
        ("/api/pool", {"size": 9}, 422, "size must be"),
    ]:
        r = client.post(route, json=body)
        assert r.status_code == status and words in r.json()["error"], (route, body, r.text)


@pytest.mark.parametrize("args, body", [
    ([], {}),
    (["2 1 3 1; 0 1 2 4; 1 1 0 2; 3 0 1 1", "1 0 -1; 2 0 -2; 1 0 -1", "--stride", "2", "--padding", "2",
      "--dilation", "2"],
     {"input": "2 1 3 1; 0 1 2 4; 1 1 0 2; 3 0 1 1", "kernel": [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
      "stride": 2, "padding": 2, "dilation": 2}),
    (["1 2 3; 4 5 6; 7 8 9", "sobel-y", "--padding", "1", "--flip"],
     {"input": [[1, 2, 3], [4, 5, 6], [7, 8, 9]], "kernel": "sobel-y", "padding": 1, "flip": True}),
])
def test_conv_route_is_cnnlab_conv_json(client, capsys, args, body):
    from conftest import run_main
    code, out, _ = run_main(capsys, "conv", *args, "--json")
    assert code == 0
    assert client.post("/api/conv", json=body).json() == json.loads(out)


def test_pool_route_is_cnnlab_pool_json(client, capsys):
    from conftest import run_main
    code, out, _ = run_main(capsys, "pool", "1 2 3 4 5; 6 7 8 9 0; 1 3 5 7 9; 2 4 6 8 0; 9 8 7 6 5", "--size",
                            "3", "--stride", "1", "--json")
    r = client.post("/api/pool", json={"input": "1 2 3 4 5; 6 7 8 9 0; 1 3 5 7 9; 2 4 6 8 0; 9 8 7 6 5",
                                       "size": 3, "stride": 1})
    assert r.json() == json.loads(out)


def test_an_onnx_model_cannot_be_looked_inside():
    from cnnlab.runs.predict import Classifier
    onnx = TestClient(create_app(Classifier("model.onnx", [str(i) for i in range(10)], 0.5, 0.5)))
    r = onnx.post("/api/network", json={"image": np.zeros((28, 28), int).tolist()})
    assert r.status_code == 409 and "serve the run folder" in r.json()["error"]
    assert onnx.post("/api/conv", json={}).status_code == 200  # the lessons need no model
