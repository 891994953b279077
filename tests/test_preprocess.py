"""Image files are prepared the way the run's training images were made: digit, fashion or plain."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.cli import PREPROCESS_CHOICES
from cnnlab.engine import data
from cnnlab.runs.predict import PREPROCESSING, open_image, preprocessing_for, to_fashion, to_mnist
from cnnlab.see import visualize
from cnnlab.web.serve import create_app
from conftest import assert_usage_error, run_main

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette's note about httpx2
    from fastapi.testclient import TestClient

N_PNG = 1000


@pytest.fixture(scope="module")
def fashion_test(data_dir):
    return data.load("fashion-mnist", "test", data_dir)


@pytest.fixture(scope="module")
def fashion_run(data_dir, tmp_path_factory):
    """fast_cnn on 5,000 Fashion-MNIST images, 2 epochs (about 82% on the test images)."""
    out = tmp_path_factory.mktemp("runs") / "fashion"
    cnnlab.train(cnnlab.config("fast"), dataset="fashion-mnist", limit_train=5000, limit_test=1000, epochs=2,
                 threads=1, data_dir=data_dir, out=out, progress=False, log=None)
    return out


@pytest.fixture(scope="module")
def fashion_pngs(fashion_test, tmp_path_factory):
    """The first N_PNG Fashion-MNIST test images saved as PNG files, as a user would export them."""
    folder = tmp_path_factory.mktemp("fashion-png")
    for i in range(N_PNG):
        Image.fromarray(fashion_test.images[i].numpy()).save(folder / f"{i:04d}.png")
    return folder


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_the_choice_follows_the_dataset():
    assert [preprocessing_for(d) for d in ("mnist", "qmnist", "kmnist", "fashion-mnist", "folder:/x")] == \
        ["digit", "digit", "digit", "fashion", "plain"]
    assert PREPROCESS_CHOICES == tuple(PREPROCESSING)  # the CLI's choices (kept torch-free) are these


def test_fashion_pngs_through_predict_score_like_evaluate(fashion_run, fashion_pngs, fashion_test, capsys):
    evaluated = cnnlab.evaluate(fashion_run, limit=N_PNG)["accuracy"]
    code, out, err = run_main(capsys, "predict", fashion_run, fashion_pngs, "--json")
    assert code == 0, err
    results = json.loads(out)
    assert len(results) == N_PNG and {r["preprocessing"] for r in results} == {"fashion"}
    truth = fashion_test.labels[:N_PNG].numpy()
    predicted = float(np.mean([r["prediction"] == truth[int(r["file"][-8:-4])] for r in results]))
    print(f"\nFashion-MNIST test PNGs: predict {predicted:.1%}, evaluate {evaluated:.1%}")
    assert abs(predicted - evaluated) <= 0.01


def test_a_product_photo_becomes_the_fashion_mnist_image(fashion_test):
    """Fashion-MNIST's making undone: negated onto white, 8x larger, off centre on a wide sheet."""
    for i in range(5):
        item = fashion_test.images[i].numpy()
        photo = 255 - np.asarray(Image.fromarray(item).resize((224, 224), Image.BICUBIC))
        sheet = np.full((300, 420), 255, np.uint8)
        sheet[30:254, 60:284] = photo
        seen = to_fashion(open_image(png(sheet)))
        # Centred as Fashion-MNIST centred (to a pixel: an odd margin splits one way or the other).
        corr = max(np.corrcoef(np.roll(seen, (dy, dx), (0, 1)).ravel(), item.ravel())[0, 1]
                   for dy in (-1, 0, 1) for dx in (-1, 0, 1))
        assert corr > 0.9, f"item {i}: r={corr:.2f}"
        # Grey levels kept (no thresholding): as many distinct levels as the item itself has, about.
        assert len(np.unique(seen)) > 0.5 * len(np.unique(item))


def test_preprocess_flag_overrides_the_dataset(fashion_run, fashion_pngs, tmp_path, capsys):
    first = sorted(fashion_pngs.iterdir())[:3]
    original = [np.asarray(Image.open(f)) for f in first]
    for how, expected in (("plain", original), ("digit", [to_mnist(Image.open(f)) for f in first]),
                          ("fashion", [to_fashion(Image.open(f)) for f in first])):
        out = tmp_path / how
        code, stdout, err = run_main(capsys, "predict", fashion_run, *first, "--preprocess", how,
                                     "--save-preprocessed", out)
        assert code == 0, err
        assert f"({how} preprocessing, chosen by --preprocess)" in err
        for f, want in zip(first, expected):
            assert np.array_equal(np.asarray(Image.open(out / f.name)), want)
    code, _, err = run_main(capsys, "predict", fashion_run, first[0])
    assert "(fashion preprocessing, as fashion-mnist was made)" in err
    code, _, err = run_main(capsys, "predict", fashion_run, first[0], "--preprocess", "mnist")
    assert_usage_error(code, err, "invalid choice: 'mnist'")


def test_serve_prepares_uploads_like_the_runs_dataset(fashion_run, fashion_test):
    item = fashion_test.images[0].numpy()
    for preprocess, expected in ((None, to_fashion(item)), ("plain", item), ("digit", to_mnist(item))):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = TestClient(create_app(fashion_run, preprocess=preprocess))
        assert client.get("/api/model").json()["preprocessing"] == (preprocess or "fashion")
        r = client.post("/api/predict", files={"file": ("item.png", png(item), "image/png")})
        assert r.status_code == 200 and np.array_equal(np.array(r.json()["image"], np.uint8), expected)


def test_visualize_image_is_prepared_like_the_runs_dataset(fashion_run, fashion_test, data_dir, tmp_path):
    trained = cnnlab.load(fashion_run)
    path = tmp_path / "item.png"
    for i in range(20):
        item = fashion_test.images[i].numpy()
        if trained.predict(torch.from_numpy(to_mnist(item)[None])).item() != trained.predict(torch.from_numpy(item[None].copy())).item():
            break  # an item whose class changes when it is prepared as a digit
    Image.fromarray(item).save(path)
    v = visualize.render(fashion_run, image=path, limit=50, data_dir=data_dir)
    assert v.summary["image_preprocessing"] == "fashion"
    shown = next(f for f in v.figures if f.name == "saliency").data["images"][0]
    assert shown["predicted"] == trained.predict(torch.from_numpy(to_fashion(item)[None])).item()
    v = visualize.render(fashion_run, image=path, limit=50, data_dir=data_dir, preprocess="digit")
    shown = next(f for f in v.figures if f.name == "saliency").data["images"][0]
    assert v.summary["image_preprocessing"] == "digit"
    assert shown["predicted"] == trained.predict(torch.from_numpy(to_mnist(item)[None])).item()
