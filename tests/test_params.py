"""cnnlab params: per-layer parameter and MAC counts, and the lecture's arithmetic."""

import json

import pytest
import torch
import torchvision

from cnnlab.engine.models import build_model, model_names
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


@pytest.mark.parametrize("name", model_names())
def test_summary_equals_real_module_counts(name):
    s = params.summarize(name)
    real = sum(p.numel() for p in build_model(name).parameters())
    assert s.parameters == real == sum(r.parameters for r in s.layers)
    assert s.layers[-1].output_shape == [10]


def test_lenet5_and_simple_cnn_by_hand():
    assert params.summarize("lenet5").parameters == 61_706
    s = params.summarize("simple_cnn")
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
    s = params.summarize(alexnet, (3, 224, 224))
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
    s = params.summarize("simple_cnn", (3, 28, 28))
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
