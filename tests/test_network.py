"""see/network.py: every layer of every registered model, and each unit's arithmetic, against torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.engine.models import build_model, model_names
from cnnlab.errors import CnnlabError
from cnnlab.see import network


def _model(name: str) -> nn.Module:
    """A registered model with random weights and random BatchNorm statistics (so that no layer is
    the identity and a wrong formula shows)."""
    torch.manual_seed(0)
    model = build_model(name)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.3, 0.3)
    return model.eval()


def _digit() -> tuple[np.ndarray, torch.Tensor]:
    raw = np.zeros((28, 28), np.uint8)
    raw[5:23, 12:16] = 255
    raw[5:9, 8:20] = 180
    return raw, ((torch.from_numpy(raw).float() / 255 - 0.5) / 0.5)[None, None]


def _units(shape) -> list[list[int]]:
    """The first, a middle and the last unit of a layer."""
    return [[0] * len(shape), [s // 2 for s in shape], [s - 1 for s in shape]]


@pytest.mark.parametrize("name", model_names())
def test_every_unit_equals_the_forward_pass(name):
    model = _model(name)
    raw, x = _digit()
    net = network.run(model, x, raw, 0.5, 0.5)
    layers = net.layers
    # The trace is the forward pass: each layer's input is the previous one's output, and the
    # softmax at the end is the model's.
    for before, after in zip(layers[1:-1], layers[2:-1]):
        assert torch.equal(after.input, before.output), after.name
    with torch.no_grad():
        probs = model(x).softmax(1)[0]
    torch.testing.assert_close(layers[-1].output, probs)
    for i, layer in enumerate(layers):
        for where in _units(tuple(layer.output.shape)):
            u = network.unit(net, i, where)
            assert u["value"] == pytest.approx(float(layer.output[tuple(where)]), abs=0)
            if "result" in u:
                assert u["result"] == pytest.approx(u["value"], abs=1e-4, rel=1e-5), (name, layer.name, where)
            for t in u.get("then", []):
                assert t["result"] == pytest.approx(t["value"], abs=1e-4, rel=1e-5), (name, t["name"], where)
            _check_kind(net, i, u)


def _check_kind(net, i, u):
    layer = net.layers[i]
    if u["kind"] == "conv":  # the window is what torch's unfold cuts out at that position
        m = layer.module
        cols = F.unfold(layer.input[None].double(), m.kernel_size, m.dilation, m.padding, m.stride)[0]
        _, oh, ow = layer.output.shape
        c, y, x = u["unit"]
        assert np.allclose(np.array(u["window"]).ravel(), cols[:, y * ow + x].numpy())
        assert np.allclose(np.array(u["products"]), np.array(u["window"]) * np.array(u["kernel"]))
        assert u["sum"] == pytest.approx(sum(u["channel_sums"]))
    elif u["kind"] == "pool" and u["mode"] == "max":
        a, b = u["chosen"]
        assert u["window"][a][b] == max(v for row in u["window"] for v in row if v is not None) == u["result"]
    elif u["kind"] == "linear":
        assert u["sum"] == pytest.approx(sum(c["product"] for c in u["contributions"]) + u["rest"], abs=1e-9)
        assert len(u["contributions"]) == min(u["inputs"], network.TOP_CONTRIBUTIONS)
    elif u["kind"] == "flatten":
        assert float(layer.input[tuple(u["source"])]) == u["value"]
    elif u["kind"] == "softmax":
        assert sum(u["probabilities"]) == pytest.approx(1.0)
    if "receptive_field" in u:
        rf = u["receptive_field"]
        assert 0 <= rf["top"] <= rf["bottom"] <= 27 and 0 <= rf["left"] <= rf["right"] <= 27


def test_layers_for_the_page_and_the_mlp():
    raw, x = _digit()
    net = network.run(_model("lenet5"), x, raw, 0.5, 0.5)
    page = network.layers(net)
    assert [p["kind"] for p in page][:4] == ["input", "conv", "activation", "pool"]
    conv2 = page[4]
    assert conv2["shape"] == [16, 10, 10] and conv2["receptive_field"] == [14, 14] and conv2["jump"] == [2, 2]
    # The packed values come back to within half a step of 127 levels.
    import base64
    q = np.frombuffer(base64.b64decode(conv2["data"]), np.int8).astype(float) / 127 * conv2["scale"]
    assert np.abs(q - net.layers[4].output.numpy().ravel()).max() <= conv2["scale"] / 254 + 1e-7
    assert page[-1]["exact"] == pytest.approx(net.layers[-1].output.tolist())
    mlp = network.run(_model("mlp"), x, raw, 0.5, 0.5)
    first = network.unit(mlp, 2, [7])
    weights = mlp.layers[2].module.weight[7].detach().numpy().reshape(28, 28)
    assert np.allclose(first["weight_image"], weights)
    assert first["contributions"][0]["source"][0] == 0  # a pixel: channel 0, row, column
    assert not any(p["spatial"] for p in network.layers(mlp)[1:])


def test_unit_errors():
    raw, x = _digit()
    net = network.run(_model("simple_cnn"), x, raw, 0.5, 0.5)
    with pytest.raises(CnnlabError, match="layer 40 does not exist"):
        network.unit(net, 40, [0])
    with pytest.raises(CnnlabError, match="outside layer 1"):
        network.unit(net, 1, [16, 0, 0])
    with pytest.raises(CnnlabError, match="one index per dimension"):
        network.unit(net, 1, [0])
