"""cnnlab kernels: named kernels filter exactly like scipy.ndimage; the gallery is drawn per file."""

import json

import numpy as np
import pytest
import skimage.data
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from scipy import ndimage

from cnnlab.lecture import kernels
from cnnlab.see import gallery
from conftest import run_main


@pytest.fixture(scope="module")
def photo():
    return gallery.to_gray(skimage.data.camera())[100:164, 200:264]  # a 64x64 crop with edges


def test_named_kernels_equal_scipy_filters(photo):
    # scipy's sobel/prewitt(axis=1) differentiate along x (columns), smoothing along y.
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("sobel-x")), ndimage.sobel(photo, axis=1, mode="nearest"), atol=1e-12)
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("sobel-y")), ndimage.sobel(photo, axis=0, mode="nearest"), atol=1e-12)
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("prewitt-x")), ndimage.prewitt(photo, axis=1, mode="nearest"), atol=1e-12)
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("prewitt-y")), ndimage.prewitt(photo, axis=0, mode="nearest"), atol=1e-12)
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("laplacian")), ndimage.laplace(photo, mode="nearest"), atol=1e-12)
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("identity")), photo, atol=1e-12)
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("box-blur")), ndimage.uniform_filter(photo, 3, mode="nearest"), atol=1e-12)


@pytest.mark.parametrize("size, sigma", [(3, 0.8), (5, 1.0), (7, 2.0)])
def test_gaussian_equals_scipy(photo, size, sigma):
    k = kernels.get("gaussian", size, sigma)
    assert k.shape == (size, size) and k.sum() == pytest.approx(1.0) and np.allclose(k, k.T)
    ref = ndimage.gaussian_filter(photo, sigma, mode="nearest", truncate=(size // 2) / sigma)
    np.testing.assert_allclose(kernels.apply(photo, k), ref, atol=1e-12)


def test_sharpen_is_identity_minus_laplacian(photo):
    np.testing.assert_allclose(kernels.apply(photo, kernels.get("sharpen")),
                               photo - ndimage.laplace(photo, mode="nearest"), atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(img=arrays(np.float64, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.floats(-5, 5, width=32)),
       k=arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=st.floats(-5, 5, width=32)))
def test_any_kernel_equals_ndimage_correlate(img, k):
    np.testing.assert_allclose(kernels.apply(img, k), ndimage.correlate(img, k, mode="nearest"), atol=1e-9)


def test_bad_gaussian_options(capsys):
    code, _, err = run_main(capsys, "kernels", "gaussian", "--size", "4")
    assert code == 2 and "odd" in err


def test_cli_prints_named_and_custom_kernels(capsys):
    code, out, _ = run_main(capsys, "kernels", "sobel-x", "ridge=0 -1 0; -1 4 -1; 0 -1 0", "--json")
    data = json.loads(out)["kernels"]
    assert data["sobel-x"] == [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
    assert data["ridge"] == [[0, -1, 0], [-1, 4, -1], [0, -1, 0]]
    code, out, _ = run_main(capsys, "kernels", "--json")
    assert set(json.loads(out)["kernels"]) == set(kernels.NAMED)
    code, _, err = run_main(capsys, "kernels", "blurry")
    assert code == 2 and "unknown kernel 'blurry'" in err


def test_gallery_skips_unreadable_files(tmp_path, capsys):
    good = tmp_path / "big.png"
    Image.fromarray((np.random.default_rng(0).random((600, 900, 3)) * 255).astype("uint8")).save(good)
    junk = tmp_path / "notes.png"
    junk.write_text("not an image")
    out = tmp_path / "gallery.png"
    code, stdout, err = run_main(capsys, "kernels", "--image", junk, good, tmp_path / "missing.jpg", "--out", out, "--json")
    assert code == 2  # a named file was skipped...
    assert f"{junk}: not an image" in err and "missing.jpg: no such file" in err
    data = json.loads(stdout)  # ...but the gallery of the rest was drawn
    assert data["columns"] == ["Original", "Prewitt X", "Prewitt Y", "Sobel X", "Sobel Y", "Laplacian",
                               "Gaussian Blur", "Sharpening"]
    assert [(r["name"], r["height"], r["width"]) for r in data["rows"]] == [("big.png", 171, 256)]  # colour, downscaled
    assert [e["path"] for e in data["errors"]] == [str(junk), str(tmp_path / "missing.jpg")]
    with Image.open(out) as im:
        assert im.size[0] > 4 * im.size[1]  # one row of eight panels


def test_default_gallery_digits_and_photos(tmp_path, data_dir, capsys):
    out = tmp_path / "g.png"
    code, stdout, err = run_main(capsys, "kernels", "--out", out, "--data-dir", data_dir, "--json")
    assert code == 0, err
    names = [r["name"] for r in json.loads(stdout)["rows"]]
    assert names == ["MNIST test #0 (a 7)", "MNIST test #1 (a 2)", "skimage camera", "skimage coins", "skimage astronaut"]
    with Image.open(out) as im:
        assert im.size[1] > 400  # five rows


def test_kernel_from_a_file_becomes_a_gallery_column(tmp_path, capsys):
    f = tmp_path / "ridge.txt"
    f.write_text("0 -1 0\n-1 4 -1\n0 -1 0\n")
    img = tmp_path / "digit.png"
    Image.fromarray(np.kron(np.eye(4), np.ones((7, 7))).astype("uint8") * 255).save(img)
    code, out, err = run_main(capsys, "kernels", f, "--image", img, "--out", tmp_path / "g.png", "--json")
    assert code == 0, err
    assert json.loads(out)["columns"][-1] == "ridge"
