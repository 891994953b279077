"""cnnlab predict: MNIST-style preprocessing of photos and scans, per-file errors, the CLI."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cnnlab
import cnnlab.engine.data
from cnnlab.runs.predict import load_classifier, open_image, predict_files, to_mnist
from conftest import run_cli, run_main
from photos import LIGHTS, lit_by_gradient, restyle

N_PHOTOS = 200


def name_of(path: str) -> str:
    return Path(path).name


def bomb_png(side: int = 100_000) -> bytes:
    """A valid-looking PNG header declaring side x side pixels (10 gigapixels) in ~100 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def mnist_test(data_dir):
    return cnnlab.engine.data.load("mnist", "test", data_dir)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, mnist_test):
    """N_PHOTOS test digits restyled as photos (JPEG files named by index and label)."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(N_PHOTOS):
        (folder / f"{i:03d}_label{int(mnist_test.labels[i])}.jpg").write_bytes(restyle(mnist_test.images[i].numpy(), rng))
    return folder


def test_photos_classified_about_as_well_as_mnist(quick_run, photos, mnist_test):
    labels = mnist_test.labels[:N_PHOTOS].numpy()
    mnist_acc = float((cnnlab.load(quick_run.run_dir).predict(mnist_test.images[:N_PHOTOS]).numpy() == labels).mean())
    results = predict_files(load_classifier(quick_run.run_dir), [photos])
    assert len(results) == N_PHOTOS and not any("error" in r for r in results)
    got = np.array([r["prediction"] for r in results])
    truth = np.array([int(r["file"].split("label")[1][0]) for r in results])
    photo_acc = float((got == truth).mean())
    print(f"\n{N_PHOTOS} restyled photos: accuracy {photo_acc:.1%}; the same digits from MNIST: {mnist_acc:.1%}")
    assert photo_acc >= mnist_acc - 0.04


def test_preprocessing_recovers_the_mnist_digit(mnist_test):
    """A photo of an MNIST digit, preprocessed, looks like the digit: same place, same shape."""

    rng = np.random.default_rng(1)
    for i in range(10):
        digit = mnist_test.images[i].numpy()
        seen = to_mnist(open_image(restyle(digit, rng)))
        assert seen.dtype == np.uint8 and seen.shape == (28, 28)
        # Centre of mass at (14, 14) like MNIST, digit inside the central 20x20-ish box.
        ys, xs = np.nonzero(seen)
        w = seen[ys, xs].astype(float)
        assert abs((ys * w).sum() / w.sum() - 14) < 0.75 and abs((xs * w).sum() / w.sum() - 14) < 0.75
        assert max(np.ptp(ys), np.ptp(xs)) + 1 <= 22
        # Close to the original pixels (correlation), far closer than a different digit.
        corr = np.corrcoef(seen.ravel(), digit.ravel())[0, 1]
        other = np.corrcoef(seen.ravel(), mnist_test.images[i + 100].numpy().ravel())[0, 1]
        assert corr > 0.6 and corr > other + 0.2


def test_light_background_inverted_and_dark_kept():
    dark_on_light = np.full((100, 80), 230, np.uint8)
    dark_on_light[20:80, 35:45] = 30          # a thick "1" in dark ink
    a = to_mnist(Image.fromarray(dark_on_light))
    b = to_mnist(Image.fromarray(255 - dark_on_light))  # the same, white on black
    assert a[14, 14] > 200 and a[0, 0] == 0
    assert np.abs(a.astype(int) - b).max() <= 2
    # Aspect kept: a 60x10 stroke becomes 20 tall and about 3-4 wide.
    rows, cols = np.nonzero(a > 64)
    assert np.ptp(rows) + 1 in (19, 20, 21) and 2 <= np.ptp(cols) + 1 <= 6


def test_uneven_light_and_noise_suppressed():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:200, 0:200]
    page = 250 - 0.4 * x - 0.2 * y + rng.normal(0, 6, (200, 200))   # lamp on the top left
    page[60:140, 95:110] = 40                                         # the digit
    specks = rng.random((200, 200)) < 0.003
    page[specks] = 0                                                  # dust
    seen = to_mnist(Image.fromarray(np.clip(page, 0, 255).astype(np.uint8)))
    cols = np.nonzero(seen.max(axis=0) > 30)[0]
    assert np.ptp(cols) + 1 <= 7, "background or specks survived around the stroke"


def test_smooth_gradient_light_leaves_only_the_digit(mnist_test):
    """Clean paper under a lamp, lit from a corner or vignetted: the dim side of the sheet is no ink."""
    for light in LIGHTS:
        for i in range(6):
            digit = mnist_test.images[i].numpy()
            seen = to_mnist(open_image(lit_by_gradient(digit, light)))
            corr = np.corrcoef(seen.ravel(), digit.ravel())[0, 1]
            assert corr > 0.85, f"{light}-lit digit {i}: the cleaned image differs from the digit (r={corr:.2f})"


def test_gradient_lit_digits_classified_like_the_digits(quick_run, mnist_test, tmp_path):
    model = cnnlab.load(quick_run.run_dir)
    files = []
    for i in range(12):  # four digits under each light
        files.append(tmp_path / f"{i:02d}_{LIGHTS[i % 3]}.png")
        files[-1].write_bytes(lit_by_gradient(mnist_test.images[i].numpy(), LIGHTS[i % 3]))
    got = [r["prediction"] for r in predict_files(load_classifier(quick_run.run_dir), files)]
    expected = model.predict(mnist_test.images[:12]).tolist()
    assert sum(a == b for a, b in zip(got, expected)) >= 11, (got, expected)


def test_cli_text_json_errors_and_saved_images(quick_run, photos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.png").write_text("shopping list")
    jpeg = sorted(photos.iterdir())[0].read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "bomb.png").write_bytes(bomb_png())
    with open(bad / "huge.tif", "wb") as f:  # 300 MB, sparse: nothing is really written
        f.truncate(300 * 2**20)
    good = sorted(photos.iterdir())[:3]
    out = tmp_path / "seen"

    r = run_cli("predict", quick_run.run_dir, *good, bad, "--json", "--save-preprocessed", out, "--top-k", "2")
    assert r.returncode == 1, r.stderr
    results = json.loads(r.stdout)
    assert [name_of(x["file"]) for x in results] == [p.name for p in good] + [
        "bomb.png", "empty.png", "huge.tif", "notes.png", "truncated.jpg"]
    for x in results[:3]:
        assert set(x) >= {"file", "prediction", "probabilities"} and len(x["probabilities"]) == 10
        assert abs(sum(x["probabilities"]) - 1) < 1e-4 and len(x["top_k"]) == 2
        assert x["prediction"] == int(name_of(x["file"]).split("label")[1][0])
    errors = {name_of(x["file"]): x["error"] for x in results[3:]}
    assert set(results[3]) == {"file", "error"}
    assert "megapixels" in errors["bomb.png"]
    assert "300 MB, over the 256 MB limit" in errors["huge.tif"]
    assert "empty" in errors["empty.png"]
    assert "not an image" in errors["notes.png"]
    assert "truncated" in errors["truncated.jpg"]
    saved = sorted(p.name for p in out.iterdir())
    assert saved == sorted(p.stem + ".png" for p in good)
    assert np.asarray(Image.open(out / saved[0])).shape == (28, 28)

    code, stdout, stderr = run_main(capsys, "predict", quick_run.run_dir, good[0])
    assert code == 0
    assert stdout.startswith(f"{good[0]}: ") and "%" in stdout and "1 of 1 image classified" in stderr
    code, stdout, stderr = run_main(capsys, "predict", quick_run.run_dir, bad / "notes.png")
    assert code == 1 and stderr.count("\n") == 2 and "Traceback" not in stderr


def test_cli_usage_errors(quick_run, tmp_path, capsys):
    code, _, err = run_main(capsys, "predict", tmp_path / "no-run", tmp_path)
    assert code == 2 and "does not exist" in err and "Traceback" not in err
    (tmp_path / "empty-dir").mkdir()
    code, _, err = run_main(capsys, "predict", quick_run.run_dir, tmp_path / "empty-dir")
    assert code == 2 and "no image files" in err
    code, _, err = run_main(capsys, "predict", quick_run.run_dir, tmp_path, "--top-k", "0")
    assert code == 2 and "at least 1" in err


def test_transparent_png_and_16_bit():
    rgba = np.zeros((90, 90, 4), np.uint8)
    rgba[15:75, 40:50] = [0, 0, 0, 255]        # black ink on a transparent sheet
    a = to_mnist(Image.fromarray(rgba, "RGBA"))
    assert a[14, 14] > 200
    g16 = np.full((90, 90), 60000, np.uint16)
    g16[15:75, 40:50] = 1000
    b = to_mnist(Image.fromarray(g16))
    # 16 bits are scaled by their full range (x / 257), exactly like the same picture in 8 bits.
    assert np.array_equal(b, to_mnist(Image.fromarray(np.round(g16 / 257).astype(np.uint8))))
    assert b[14].max() == 255 and b.sum() > 0.5 * a.sum()
