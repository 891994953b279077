"""cnnlab params: per-layer parameter and MAC counts, and the lecture's arithmetic."""

import json

import pytest
import torch
import torchvision

from cnnlab.engine import summary
from cnnlab.engine.models import SimpleCNN, build_model, model_names
from cnnlab.lecture import params
from conftest import assert_usage_error, run_cli, run_main


def test_lecture_numbers_are_the_lectures():
    L = params.lecture()
    assert L["single_layer"]["parameters"] == 401_920
    assert L["single_layer"]["arithmetic"] == "784 x 512 weights + 512 biases = 401,920"
    assert L["mnist_fc"]["parameters"] == 669_706
    assert L["mnist_fc"]["arithmetic"] == "401,920 + 262,656 + 5,130 = 669,706"
    assert L["imagenet_fc"]["parameters"] == 77_846_504
    assert L["simple_cnn"]["parameters"] == 206_922
    assert L["simple_cnn"]["arithmetic"] == "160 + 4,640 + 200,832 + 1,290 = 206,922"


def test_resolution_table_shows_the_explosion():
    rows = {r["side"]: r for r in params.resolution_table()}
    assert sorted(rows) == [28, 56, 112, 224]
    assert rows[28]["fc_parameters"] == 669_706
    assert rows[28]["cnn_parameters"] == 206_922
    # 224*224 = 50,176 inputs: 50,176 x 512 + 512 + 262,656 + 5,130
    assert rows[224]["fc_parameters"] == 25_958_410
    assert rows[224]["fc_first_layer"] == 50_176 * 512 + 512
    # The convolutions themselves cost the same at every resolution.
    assert {r["cnn_conv_parameters"] for r in rows.values()} == {160 + 4_640}
    assert rows[224]["cnn_parameters"] == 4_800 + 32 * 56 * 56 * 128 + 128 + 1_290


def simple_cnn_at(side: int) -> torch.nn.Module:
    """The real simple_cnn for side x side inputs: same layers, the first linear layer widened to fit."""
    with torch.device("meta"):
        model = SimpleCNN()
        model.classifier[1] = torch.nn.Linear(32 * (side // 4) ** 2, 128)
    return model


def test_the_lectures_arithmetic_is_what_the_real_modules_hold():
    # lecture/params.py does the arithmetic by hand (no torch); the modules must agree with it.
    L = params.lecture()
    real = summary.summarize("simple_cnn")
    with_params = [r for r in real.layers if r.parameters]
    assert [s["layer"] for s in L["simple_cnn"]["layers"]] == [f"{r.name} {r.kind}({r.details})" for r in with_params]
    assert [s["parameters"] for s in L["simple_cnn"]["layers"]] == [r.parameters for r in with_params]
    assert (L["simple_cnn"]["parameters"], L["simple_cnn"]["macs"]) == (real.parameters, real.macs)
    for key in ("mnist_fc", "imagenet_fc"):
        sizes = L[key]["sizes"]
        with torch.device("meta"):
            fc = [torch.nn.Linear(a, b) for a, b in zip(sizes, sizes[1:])]
        assert L[key]["parameters"] == sum(p.numel() for layer in fc for p in layer.parameters())
    for row in params.resolution_table():
        side = row["side"]
        s = summary.summarize(simple_cnn_at(side), (1, side, side))
        assert (row["cnn_parameters"], row["cnn_macs"]) == (s.parameters, s.macs), side
        assert row["cnn_conv_parameters"] == sum(r.parameters for r in s.layers if r.kind == "Conv2d")
    assert params.resolution_table([28])[0]["fc_parameters"] == summary.summarize("mlp").parameters


@pytest.mark.parametrize("name", model_names())
def test_summary_equals_real_module_counts(name):
    s = summary.summarize(name)
    real = sum(p.numel() for p in build_model(name).parameters())
    assert s.parameters == real == sum(r.parameters for r in s.layers)
    assert s.layers[-1].output_shape == [10]


def test_lenet5_and_simple_cnn_by_hand():
    assert summary.summarize("lenet5").parameters == 61_706
    s = summary.summarize("simple_cnn")
    by_name = {r.name: r for r in s.layers}
    assert by_name["features.0"].output_shape == [16, 28, 28]
    assert by_name["features.0"].macs == 28 * 28 * 16 * 9
    assert by_name["features.2"].output_shape == [16, 14, 14]
    assert by_name["features.3"].macs == 14 * 14 * 32 * 16 * 9
    assert by_name["classifier.1"].macs == 1568 * 128
    assert s.macs == 112_896 + 903_168 + 200_704 + 1_280


def test_torchvision_alexnet_reference():
    with torch.device("meta"):
        alexnet = torchvision.models.alexnet()
    s = summary.summarize(alexnet, (3, 224, 224))
    assert s.parameters == 61_100_840
    first = s.layers[0]
    assert first.output_shape == [64, 55, 55]
    assert first.parameters == 64 * 3 * 11 * 11 + 64
    assert first.macs == 64 * 55 * 55 * 3 * 11 * 11
    assert s.layers[-1].output_shape == [1000]


def test_cli_alexnet_on_its_imagenet_input(capsys):
    """The lecture's history: AlexNet's real layers on 224x224x3 images, 61.1 million parameters."""
    code, out, err = run_main(capsys, "params", "alexnet")
    assert code == 0, err
    assert "alexnet, input 3x224x224" in out and "61,100,840" in out
    assert "Conv2d(3->64, 11x11, stride 4, pad 2)" in out and "64x55x55" in out
    code, out, _ = run_main(capsys, "params", "alexnet", "--json")
    data = json.loads(out)
    assert data["parameters"] == 61_100_840 and data["input_shape"] == [3, 224, 224]
    assert [r["output_shape"] for r in data["layers"]][-1] == [1000]
    code, _, err = run_main(capsys, "params", "alexnet", "--input", "1x28x28")
    assert_usage_error(code, err, "try --input 3x224x224")


def test_other_input_channels():
    s = summary.summarize("simple_cnn", (3, 28, 28))
    assert s.parameters == 206_922 + 2 * 16 * 9  # the first conv sees 3 channels instead of 1


def test_cli_model_table_and_json(capsys):
    code, out, err = run_main(capsys, "params", "lenet5")
    assert code == 0, err
    assert "61,706" in out and "6x28x28" in out and "16x5x5" in out
    code, out, _ = run_main(capsys, "params", "simple_cnn", "--input", "3x28x28", "--json")
    data = json.loads(out)
    assert data["parameters"] == 207_210 and data["input_shape"] == [3, 28, 28]
    code, out, _ = run_main(capsys, "params", "--json")
    assert {m["model"]: m["parameters"] for m in json.loads(out)["models"]}["mlp"] == 669_706


def test_cli_lecture(capsys):
    r = run_cli("params", "--lecture")  # once as a user runs it: a fresh process
    assert r.returncode == 0, r.stderr
    for text in ("401,920", "669,706", "77,846,504", "206,922", "25,958,410"):
        assert text in r.stdout
    code, out, _ = run_main(capsys, "params", "--lecture", "--json")
    assert json.loads(out)["imagenet_fc"]["parameters"] == 77_846_504


@pytest.mark.parametrize("args, message", [
    (["simple_cnn", "--input", "1x56x56"], "does not accept input 1x56x56"),
    (["simple_cnn", "--input", "28x28"], "CHANNELSxHEIGHTxWIDTH"),
    (["resnet"], "unknown model 'resnet'"),
])
def test_cli_errors_are_one_line(capsys, args, message):
    code, _, err = run_main(capsys, "params", *args)
    assert_usage_error(code, err, message)


# --- receptive fields, jumps and activation memory -------------------------------------------------

def test_alexnet_receptive_field_is_the_published_195():
    with torch.device("meta"):
        alexnet = torchvision.models.alexnet()
    rows = summary.summarize(alexnet, (3, 224, 224)).layers
    by_name = {r.name: r for r in rows}
    # conv1 11x11 stride 4; pool 3/2; conv2 5x5; pool 3/2; conv3-5 3x3; pool 3/2 (Araujo et al. 2019: 195)
    assert by_name["features.0"].receptive_field == [11, 11] and by_name["features.0"].jump == [4, 4]
    assert by_name["features.2"].receptive_field == [19, 19] and by_name["features.2"].jump == [8, 8]
    assert by_name["features.12"].receptive_field == [195, 195] and by_name["features.12"].jump == [32, 32]
    assert by_name["classifier.6"].receptive_field is None  # a linear layer sees every pixel


def _field_by_gradient(name: str, layer_index: int, row: int, col: int) -> tuple[int, int, int, int]:
    """Which input pixels can move one unit: the gradient of that unit, in a copy of the model whose
    weights are all 1, max pools replaced by average pools of the same windows (a max passes the
    gradient to one pixel only) and activations by the identity, so nothing cancels or is cut off."""
    from torch import nn
    torch.manual_seed(0)
    model = build_model(name).eval()
    leaves = [(n, m) for n, m in model.named_modules() if not any(m.children())]
    for qual, m in leaves:
        parent = model.get_submodule(qual.rsplit(".", 1)[0]) if "." in qual else model
        child = qual.rsplit(".", 1)[-1]
        if isinstance(m, nn.MaxPool2d):
            setattr(parent, child, nn.AvgPool2d(m.kernel_size, m.stride, m.padding))
        elif isinstance(m, (nn.ReLU, nn.Tanh, nn.BatchNorm2d, nn.Dropout)):
            setattr(parent, child, nn.Identity())
        elif isinstance(m, nn.Conv2d):
            nn.init.ones_(m.weight)
    x = torch.zeros(1, 1, 28, 28, requires_grad=True)
    kept = {}
    leaves = [m for _, m in model.named_modules() if not any(m.children())]
    leaves[layer_index].register_forward_hook(lambda mod, i, o: kept.setdefault("out", o))
    model(x)
    (grad,) = torch.autograd.grad(kept["out"][0, 0, row, col], x)
    rows, cols = torch.nonzero(grad[0, 0], as_tuple=True)
    return int(rows.min()), int(cols.min()), int(rows.max()), int(cols.max())


@pytest.mark.parametrize("name, layer, row, col", [
    ("simple_cnn", 5, 3, 3), ("simple_cnn", 3, 0, 13), ("lenet5", 5, 2, 2), ("lenet5", 3, 9, 0),
    ("alexnet_mini", 12, 1, 1), ("strided_cnn", 8, 5, 7), ("fast_cnn", 3, 6, 0),
])
def test_unit_field_equals_the_pixels_that_move_the_unit(name, layer, row, col):
    with torch.device("meta"):
        model = build_model(name)
    s = summary.summarize(model)
    leaves = [m for _, m in model.named_modules() if not any(m.children())]
    shapes, x = [], (1, 28, 28)
    for r in s.layers[:layer + 1]:
        shapes.append(summary.windows(leaves[len(shapes)], x, tuple(r.output_shape)))
        x = tuple(r.output_shape)
    top, left, bottom, right = summary.unit_field(shapes, row, col)
    clipped = (max(top, 0), max(left, 0), min(bottom, 27), min(right, 27))
    assert clipped == _field_by_gradient(name, layer, row, col)
    # Away from the border the span is exactly the layer's receptive field.
    if top >= 0 and left >= 0 and bottom <= 27 and right <= 27:
        assert [bottom - top + 1, right - left + 1] == s.layers[layer].receptive_field


def test_cli_shows_receptive_field_jump_and_memory(capsys):
    code, out, err = run_main(capsys, "params", "simple_cnn")
    assert code == 0, err
    assert "RF" in out and "jump" in out and "memory" in out
    line = next(row for row in out.splitlines() if "features.5" in row)
    assert "│  10 │" in line and "│    4 │" in line and "6.1 KiB" in line  # 32x7x7 floats = 6,272 bytes
    data = json.loads(run_main(capsys, "params", "lenet5", "--json")[1])
    by_name = {r["name"]: r for r in data["layers"]}
    assert by_name["features.3"]["receptive_field"] == [14, 14] and by_name["features.3"]["jump"] == [2, 2]
    assert by_name["features.0"]["activation_bytes"] == 6 * 28 * 28 * 4
    assert data["activation_bytes"] == sum(r["activation_bytes"] for r in data["layers"])
    assert by_name["classifier.1"]["receptive_field"] is None
