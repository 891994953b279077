"""cnnlab visualize: the numbers behind every figure are the model's real numbers."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.cli import main
from cnnlab.engine import data as data_mod
from cnnlab.engine.config import MODELS as REGISTRY
from cnnlab.engine.models import build_model
from cnnlab.runs.folder import TrainedModel
from cnnlab.see import explain
from cnnlab.see import visualize as V
from conftest import assert_usage_error, run_cli

LIMIT = 500


@pytest.fixture(scope="module")
def visuals(quick_run, data_dir):
    return V.render(quick_run.run_dir, index=3, limit=LIMIT, data_dir=data_dir)


@pytest.fixture(scope="module")
def test_images(data_dir):
    return data_mod.load("mnist", "test", data_dir)


def fig(v, name):
    return next(f for f in v.figures if f.name == name)


def untrained(name: str) -> TrainedModel:
    torch.manual_seed(0)
    config = {"model": name, "dataset": "mnist", "classes": data_mod.DIGITS, "input_size": [1, 28, 28],
              "normalization": {"mean": 0.5, "std": 0.5}}
    return TrainedModel(build_model(name).eval(), config, None, torch.device("cpu"))


def test_one_filter_panel_per_first_layer_filter_each_with_its_best_kernel(visuals, quick_run):
    f = fig(visuals, "filters")
    conv = quick_run.model.features[0]
    assert f.data["layer"] == "features.0"
    assert len(f.data["matches"]) == len(f.data["filters"]) == conv.out_channels == 16
    np.testing.assert_allclose(f.data["filters"], conv.weight.detach()[:, 0].numpy(), rtol=1e-6)
    bank = explain.hand_kernels(3)
    for m, w in zip(f.data["matches"], np.array(f.data["filters"])):
        scores = {n: explain.cosine(w, k) for n, k in bank.items()}
        best = max(scores, key=lambda n: abs(scores[n]))
        assert m["match"].lstrip("-") == best
        assert m["match"].startswith("-") == (scores[best] < 0)
        assert m["similarity"] == pytest.approx(abs(scores[best]), abs=1e-4)
    assert PNG_SIZE(f.png)[0] > 500


def PNG_SIZE(png: bytes):
    return Image.open(io.BytesIO(png)).size


def test_planted_kernels_are_recognised_with_their_sign():
    bank = explain.hand_kernels(3)
    rng = np.random.default_rng(0)
    filters = np.stack([2.5 * bank["sobel-x"], -0.3 * bank["prewitt-y"],
                        bank["laplacian"] + 0.3 * rng.standard_normal((3, 3))])
    got = explain.match_kernels(filters)
    assert [m["match"] for m in got] == ["sobel-x", "-prewitt-y", "laplacian"]
    assert got[0]["similarity"] == pytest.approx(1.0) and got[1]["similarity"] == pytest.approx(1.0)
    assert 0.9 < got[2]["similarity"] < 0.999
    # 5x5 filters are compared with 5x5 kernels: the same 3x3 operator centred, or a 5x5 blur.
    five = explain.match_kernels(np.stack([np.pad(bank["sobel-y"], 1), np.full((5, 5), 0.04)]))
    assert [m["match"] for m in five] == ["sobel-y", "box-blur"]


def test_feature_maps_are_each_layers_real_output(visuals, quick_run, test_images):
    f = fig(visuals, "feature_maps")
    assert f.data["index"] == 3
    assert [(l["layer"], l["kind"], l["shape"]) for l in f.data["layers"]] == [
        ("features.0", "conv", [16, 28, 28]), ("features.2", "pool", [16, 14, 14]),
        ("features.3", "conv", [32, 14, 14]), ("features.5", "pool", [32, 7, 7])]
    feats = quick_run.model.features.eval()
    x = data_mod.normalize(test_images.images[3:4], 0.5, 0.5)
    with torch.no_grad():
        expected = [feats[:1](x), feats[:3](x), feats[:4](x), feats[:6](x)]
    for got, want in zip(f.arrays, expected):
        torch.testing.assert_close(got, want[0])


def test_confusion_matrix_counts_every_test_image_once(visuals, quick_run, data_dir):
    f = fig(visuals, "confusion")
    cm = np.array(f.data["confusion_matrix"])
    assert cm.shape == (10, 10)
    assert cm.sum() == f.data["total"] == visuals.summary["test_images"] == LIMIT
    ev = cnnlab.evaluate(quick_run.run_dir, data_dir=data_dir, limit=LIMIT)
    assert cm.tolist() == ev["confusion_matrix"]
    assert visuals.summary["misclassified"] == LIMIT - ev["correct"]


def test_mistakes_shown_are_really_misclassified_most_confident_first(visuals, quick_run, test_images):
    items = fig(visuals, "mistakes").data["mistakes"]
    assert len(items) == min(16, visuals.summary["misclassified"]) > 0
    idx = torch.tensor([it["index"] for it in items])
    assert (idx < LIMIT).all()
    trained = cnnlab.load(quick_run.run_dir)
    probs = trained.predict_proba(test_images.images[idx])
    for it, p in zip(items, probs):
        assert it["true"] == int(test_images.labels[it["index"]])
        assert it["predicted"] == int(p.argmax()) != it["true"]
        assert it["confidence"] == pytest.approx(float(p.max()), abs=1e-4)
    confidences = [it["confidence"] for it in items]
    assert confidences == sorted(confidences, reverse=True)
    # No misclassified image left out is more confident than the least confident one shown.
    all_p = trained.predict_proba(test_images.images[:LIMIT])
    wrong = all_p.argmax(1) != test_images.labels[:LIMIT]
    assert float(all_p.max(1).values[wrong].sort(descending=True).values[len(items) - 1]) == \
        pytest.approx(confidences[-1], abs=1e-4)


def test_training_curves_are_the_runs_metrics(visuals, quick_run):
    f = fig(visuals, "curves")
    assert f.data["epochs"] == [e.epoch for e in quick_run.epochs]
    assert f.data["test_accuracy"] == [e.test_accuracy for e in quick_run.epochs]
    assert f.data["mean_loss"] == pytest.approx([e.mean_loss for e in quick_run.epochs])
    assert f.data["val_accuracy"] == [e.val_accuracy for e in quick_run.epochs]


def test_saliency_marks_the_pixels_that_move_the_score(visuals, quick_run, test_images):
    f = fig(visuals, "saliency")
    assert f.data["gradcam_layer"] == "features.5"  # the last spatial map: conv -> ReLU -> pool
    rows = f.arrays
    assert [r["index"] for r in rows][0] == 3 and len(rows) == 4  # --index and 3 confident mistakes
    trained = cnnlab.load(quick_run.run_dir)
    drops_top, drops_low = [], []
    for r in rows:
        assert r["saliency"].shape == (28, 28) and (r["saliency"] >= 0).all()
        cam = r["gradcam"]
        assert cam.shape == (28, 28) and cam.min() >= 0 and cam.max() == pytest.approx(1.0)
        img = test_images.images[r["index"]].clone()
        base = float(trained.logits(img[None])[0, r["predicted"]])
        order = np.argsort(r["saliency"].ravel())
        for pixels, drops in ((order[-30:], drops_top), (order[:30], drops_low)):
            changed = img.clone().flatten()
            changed[pixels] = 255 - changed[pixels]
            drops.append(base - float(trained.logits(changed.reshape(1, 28, 28))[0, r["predicted"]]))
    # Changing the 30 most salient pixels hurts the predicted class far more than the 30 least salient.
    assert np.mean(drops_top) > 3 * abs(np.mean(drops_low))


def _conv_out(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _expected_shape(module, in_shape):
    c, h, w = in_shape
    pair = torch.nn.modules.utils._pair
    if isinstance(module, torch.nn.Conv2d):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = map(pair, (module.kernel_size, module.stride,
                                                            module.padding, module.dilation))
        return [module.out_channels, _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)]
    if isinstance(module, (torch.nn.AdaptiveAvgPool2d, torch.nn.AdaptiveMaxPool2d)):
        oh, ow = pair(module.output_size)
        return [c, oh or h, ow or w]
    (kh, kw), (ph, pw) = pair(module.kernel_size), pair(module.padding)
    sh, sw = pair(module.stride or module.kernel_size)
    dh, dw = pair(getattr(module, "dilation", 1))
    assert not getattr(module, "ceil_mode", False)
    return [c, _conv_out(h, kh, sh, ph, dh), _conv_out(w, kw, sw, pw, dw)]


@pytest.mark.parametrize("name", sorted(n for n, s in REGISTRY.items() if s.conv))
def test_every_conv_model_in_the_registry_gets_every_figure(name, data_dir):
    v = V.render(untrained(name), limit=64, mistakes=4, explain=[0], data_dir=data_dir)
    assert {f.name for f in v.figures} == {"filters", "feature_maps", "confusion", "mistakes", "saliency"}
    assert [na["figure"] for na in v.not_applicable] == ["curves"]  # an unsaved model has no metrics
    model = untrained(name).model
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, explain.POOLS)]
    layers = fig(v, "feature_maps").data["layers"]
    assert sum(l["kind"] == "conv" for l in layers) == len(convs)
    assert sum(l["kind"] == "pool" for l in layers) == len(pools)
    modules = dict(model.named_modules())
    for l in layers:  # each shape follows from the layer's own settings and the shape it received
        assert l["shape"] == _expected_shape(modules[l["layer"]], l["input_shape"]), l
    assert layers[0]["input_shape"] == [1, 28, 28]
    assert len(fig(v, "filters").data["matches"]) == convs[0].out_channels
    assert fig(v, "saliency").data["gradcam_layer"] is not None


def test_mlp_draws_its_weights_as_images_and_says_what_does_not_apply(data_dir, tmp_path):
    run = cnnlab.train(model="mlp", epochs=1, limit_train=1000, limit_test=200, data_dir=data_dir,
                       out=tmp_path / "mlp", progress=False, log=None)
    v = V.render(run.run_dir, limit=200, mistakes=4, data_dir=data_dir)
    assert [f.name for f in v.figures] == ["first_layer_weights", "curves", "confusion", "mistakes", "saliency"]
    w = fig(v, "first_layer_weights").data
    assert (w["layer_units"], w["shown"], w["shape"]) == (512, 64, [28, 28])
    reasons = {na["figure"]: na["reason"] for na in v.not_applicable}
    assert set(reasons) == {"filters", "feature_maps", "gradcam"}
    assert "no convolution" in reasons["filters"] and "no convolution or pooling" in reasons["feature_maps"]
    assert fig(v, "saliency").data["gradcam_layer"] is None
    assert sum(map(sum, fig(v, "confusion").data["confusion_matrix"])) == 200


def test_user_image_is_drawn_and_classified_like_the_digit_it_shows(quick_run, data_dir, test_images, tmp_path):
    digit = test_images.images[3].numpy()   # a 0, drawn dark on light and three times larger
    path = tmp_path / "my digit.png"
    Image.fromarray(255 - digit).resize((84, 84), Image.BILINEAR).save(path)
    v = V.render(quick_run.run_dir, image=path, limit=100, data_dir=data_dir)
    maps = fig(v, "feature_maps")
    assert maps.data["source"] == "image" and maps.data["index"] is None
    assert [l["shape"] for l in maps.data["layers"]] == [[16, 28, 28], [16, 14, 14], [32, 14, 14], [32, 7, 7]]
    first = fig(v, "saliency").data["images"][0]
    assert first["source"] == "your image" and first["true"] is None
    assert first["predicted"] == int(test_images.labels[3]) == 0


def test_cli_writes_pngs_and_lists_them_in_json(quick_run, tmp_path):
    out = tmp_path / "figs"
    r = run_cli("visualize", quick_run.run_dir, "--out", out, "--limit", 300, "--index", 7, "--json")
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert [f["name"] for f in j["figures"]] == ["filters", "feature_maps", "curves", "confusion", "mistakes",
                                                 "saliency"]
    assert j["test_images"] == 300 and j["not_applicable"] == []
    assert len(j["filters"]) == 16 and len(j["mistakes"]) == min(16, j["misclassified"])
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{f['name']}.png" for f in j["figures"])
    for f in j["figures"]:
        w, h = Image.open(f["file"]).size
        assert w > 300 and h > 200


@pytest.mark.parametrize("args, message", [
    (["--index", "10000"], "test image index 10000 is out of range; mnist has 10,000 test images"),
    (["--explain", "1,x"], "expected test image numbers separated by commas"),
    (["--image", "NOTIMAGE"], "--image: notes.txt is not an image Pillow can read"),
    (["--image", "missing.png"], "--image: cannot read missing.png"),
])
def test_cli_errors_are_one_line_and_write_nothing(args, message, quick_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    args = [a.replace("NOTIMAGE", "notes.txt") for a in args]
    out = tmp_path / "figs"
    try:
        code = main(["visualize", str(quick_run.run_dir), "--out", str(out), *args])
    except SystemExit as e:  # argparse's own checks exit from inside the parser
        code = e.code
    assert_usage_error(code, capsys.readouterr().err, message)
    assert not out.exists()


def test_cli_missing_run_folder(tmp_path, capsys):
    assert main(["visualize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
