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
