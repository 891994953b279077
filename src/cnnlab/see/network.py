"""The whole network for one image, layer by layer, and the arithmetic behind any one unit.

explain.trace_layers runs the model once and keeps every layer's input and output; `layers`
describes them (shape, receptive field, the values packed small for a page), and `unit` explains
one number: a convolution unit's window over every input channel, the kernel, the element-wise
products, their sum and the bias; a pooling unit's window and its maximum or mean; a linear unit's
largest contributions; softmax's exponentials and their sum. Every number is read from the
forward pass's own tensors and the layers' own weights (the tests compare them with the model).
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..engine.summary import Window, describe, receptive_fields, unit_field, windows
from ..errors import CnnlabError
from .explain import LayerOutput, trace_layers

SHORT = 16               # vectors up to this long are sent exactly as well
TOP_CONTRIBUTIONS = 12   # a linear unit lists this many of its inputs, the largest |weight x input| first
FORMULAS = {nn.ReLU: "max(0, x)", nn.Tanh: "tanh(x)", nn.Sigmoid: "1 / (1 + e^-x)",
            nn.LeakyReLU: "x if x > 0 else slope * x", nn.ReLU6: "min(max(0, x), 6)"}


@dataclass
class Network:
    """One image's trip through a model: the traced layers and each one's windows (None: no space)."""
    layers: list[LayerOutput]
    geometry: list            # per layer: (Window, Window) for a spatial layer, else None
    raw: np.ndarray           # the uint8 image [H, W] before normalisation
    mean: float
    std: float


def run(model: nn.Module, x: torch.Tensor, raw: np.ndarray, mean: float, std: float) -> Network:
    """Trace one normalised image x [1, C, H, W] (raw: the same image in 0-255)."""
    _, layers = trace_layers(model, x)
    geometry: list = [(Window(), Window())]  # the input: each pixel sees itself
    for layer in layers[1:]:
        spatial = geometry[-1] is not None and layer.input is not None and layer.input.dim() == 3
        geometry.append(windows(layer.module, tuple(layer.input.shape), tuple(layer.output.shape))
                        if spatial and layer.module is not None else None)
    return Network(layers, geometry, np.asarray(raw), mean, std)


# --- the layer-by-layer view --------------------------------------------------------------------

def _pack(values: torch.Tensor) -> tuple[float, str]:
    """Values -> (scale, base64 int8 of round(127 * v / scale)): a whole layer in a few kB."""
    v = values.double().numpy().ravel()
    scale = float(np.abs(v).max()) if v.size else 0.0
    q = np.round(v / (scale or 1.0) * 127).astype(np.int8)
    return scale, base64.b64encode(q.tobytes()).decode()


def layers(net: Network) -> list[dict]:
    """What the page draws: every layer with its shape, receptive field and packed values."""
    fields = receptive_fields(net.geometry[1:])
    out = []
    for i, layer in enumerate(net.layers):
        scale, data = _pack(layer.output)
        field = fields[i - 1] if i else ([1, 1], [1, 1])
        out.append({"index": i, "name": layer.name, "kind": layer.kind,
                    "type": type(layer.module).__name__ if layer.module is not None else layer.kind,
                    "describe": describe(layer.module) if layer.module is not None else "",
                    "shape": list(layer.output.shape), "spatial": net.geometry[i] is not None,
                    "receptive_field": field[0] if field else None, "jump": field[1] if field else None,
                    "min": float(layer.output.min()), "max": float(layer.output.max()), "scale": scale,
                    "data": data,
                    # a short vector (logits, probabilities) also exactly: the page prints these numbers
                    "exact": layer.output.tolist() if layer.output.numel() <= SHORT else None})
    return out


# --- one unit -----------------------------------------------------------------------------------

def unit(net: Network, index: int, where: list[int]) -> dict:
    """Everything that went into one number: layer `index`, unit `where` ([c, y, x] or [i])."""
    if not 0 <= index < len(net.layers):
        raise CnnlabError(f"layer {index} does not exist; this network has layers 0 to {len(net.layers) - 1}")
    layer = net.layers[index]
    shape = tuple(layer.output.shape)
    if len(where) != len(shape) or any(not 0 <= w < n for w, n in zip(where, shape)):
        raise CnnlabError(f"unit {list(where)} is outside layer {index} ({layer.name}), whose output is "
                          f"{'x'.join(map(str, shape))}; give one index per dimension, each from 0")
    where = tuple(int(w) for w in where)
    info = {"layer": index, "name": layer.name, "kind": layer.kind, "unit": list(where),
            "describe": describe(layer.module) if layer.module is not None else "",
            "value": float(layer.output[where]), "input_layer": index - 1 if index else None}
    if net.geometry[index] is not None and len(where) == 3:
        info["receptive_field"] = _field(net, index, where[1], where[2])
    explain = {"input": _input, "conv": _conv, "pool": _pool, "activation": _elementwise, "norm": _elementwise,
               "dropout": _elementwise, "flatten": _flatten, "linear": _linear, "softmax": _softmax}
    info.update(explain.get(layer.kind, _other)(net, index, where))
    if layer.kind in ("conv", "linear"):
        info["then"] = _then(net, index, where)
    return info


def _field(net: Network, index: int, y: int, x: int) -> dict:
    """The input pixels unit (y, x) of a spatial layer sees, clipped to the image, and unclipped."""
    top, left, bottom, right = unit_field(net.geometry[1:index + 1], y, x)
    h, w = net.raw.shape[-2:]
    return {"top": max(top, 0), "left": max(left, 0), "bottom": min(bottom, h - 1), "right": min(right, w - 1),
            "size": [bottom - top + 1, right - left + 1], "unclipped": [top, left, bottom, right]}


def _input(net: Network, index: int, where: tuple) -> dict:
    _, y, x = where
    return {"raw": float(net.raw[y, x]), "mean": net.mean, "std": net.std,
            "formula": "(pixel / 255 - mean) / std"}


def _taps(window: Window, at: int, dilation: int) -> list[int]:
    """Input indices a window at output index `at` reads (those outside the input are padding)."""
    start = window.span(at, at)[0]
    return [start + a * dilation for a in range((window.kernel - 1) // dilation + 1)]


def _conv(net: Network, index: int, where: tuple) -> dict:
    layer, (c, y, x) = net.layers[index], where
    m: nn.Conv2d = layer.module
    wh, ww = net.geometry[index]
    rows, cols = _taps(wh, y, m.dilation[0]), _taps(ww, x, m.dilation[1])
    per_group = m.in_channels // m.groups
    first = (c // (m.out_channels // m.groups)) * per_group
    inp = layer.input[first:first + per_group].double()
    if m.padding_mode != "zeros":
        raise CnnlabError(f"{layer.name} pads with '{m.padding_mode}'; only zero padding is explained")
    window = torch.zeros(per_group, len(rows), len(cols), dtype=torch.float64)
    for a, r in enumerate(rows):
        for b, q in enumerate(cols):
            if 0 <= r < inp.shape[1] and 0 <= q < inp.shape[2]:
                window[:, a, b] = inp[:, r, q]
    kernel = m.weight[c].detach().double().cpu()
    products = window * kernel
    sums = products.sum((1, 2))
    bias = float(m.bias.detach()[c]) if m.bias is not None else None
    total = float(sums.sum())
    return {"rows": rows, "cols": cols, "channels": list(range(first, first + per_group)),
            "window": window.tolist(), "kernel": kernel.tolist(), "products": products.tolist(),
            "channel_sums": sums.tolist(), "sum": total, "bias": bias, "result": total + (bias or 0.0),
            "order": [int(i) for i in torch.argsort(sums.abs(), descending=True)]}


def _pool(net: Network, index: int, where: tuple) -> dict:
    layer, (c, y, x) = net.layers[index], where
    m = layer.module
    if not isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
        return _other(net, index, where)
    wh, ww = net.geometry[index]
    dil = m.dilation if isinstance(m, nn.MaxPool2d) else 1
    dh, dw = (dil, dil) if isinstance(dil, int) else dil
    adaptive = isinstance(m, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d))
    rows = list(range(*_closed(wh.span(y, y)))) if adaptive else _taps(wh, y, dh)
    cols = list(range(*_closed(ww.span(x, x)))) if adaptive else _taps(ww, x, dw)
    is_max = isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d))
    inp = layer.input[c].double()
    pad = -math.inf if is_max else 0.0
    window = [[float(inp[r, q]) if 0 <= r < inp.shape[0] and 0 <= q < inp.shape[1] else pad for q in cols]
              for r in rows]
    flat = np.array(window).ravel()
    info = {"rows": rows, "cols": cols, "channel": c, "window": [[v if math.isfinite(v) else None for v in row]
                                                                   for row in window],
            "mode": "max" if is_max else "mean"}
    if is_max:
        k = int(np.argmax(flat))
        info.update(result=float(flat[k]), chosen=[k // len(cols), k % len(cols)])
    else:
        count = len(flat) if getattr(m, "count_include_pad", True) else sum(
            0 <= r < inp.shape[0] and 0 <= q < inp.shape[1] for r in rows for q in cols)
        divisor = getattr(m, "divisor_override", None) or count
        info.update(sum=float(flat.sum()), count=int(divisor), result=float(flat.sum()) / divisor)
    return info


def _closed(span: tuple[int, int]) -> tuple[int, int]:
    return span[0], span[1] + 1


def _elementwise(net: Network, index: int, where: tuple) -> dict:
    layer = net.layers[index]
    x = float(layer.input[where])
    m = layer.module
    if layer.kind == "norm":
        c = where[0]
        mean, var = float(m.running_mean[c]), float(m.running_var[c])
        gamma = float(m.weight.detach()[c]) if m.weight is not None else 1.0
        beta = float(m.bias.detach()[c]) if m.bias is not None else 0.0
        return {"input_value": x, "mean": mean, "var": var, "eps": m.eps, "gamma": gamma, "beta": beta,
                "formula": "(x - mean) / sqrt(var + eps) * gamma + beta",
                "result": (x - mean) / math.sqrt(var + m.eps) * gamma + beta}
    if layer.kind == "dropout":
        return {"input_value": x, "formula": "x (dropout only acts while training)", "result": x}
    formula = next((f for t, f in FORMULAS.items() if type(m) is t), f"{type(m).__name__}(x)")
    with torch.no_grad():
        result = float(m(torch.tensor([x], dtype=torch.float64))[0])
    return {"input_value": x, "formula": formula, "result": result}


def _flatten(net: Network, index: int, where: tuple) -> dict:
    return {"source": _source(net, index, where[0]), "input_shape": list(net.layers[index].input.shape)}


def _source(net: Network, index: int, i: int) -> list[int]:
    """Which element of a flatten layer's input became element i: run the layer on the indices."""
    layer = net.layers[index]
    ids = torch.arange(layer.input.numel()).reshape(1, *layer.input.shape)
    flat = int(layer.module(ids).reshape(-1)[i])
    return [int(v) for v in np.unravel_index(flat, tuple(layer.input.shape))]


def _linear(net: Network, index: int, where: tuple) -> dict:
    layer, (i,) = net.layers[index], where
    x = layer.input.double()
    w = layer.module.weight[i].detach().double().cpu()
    products = x * w
    order = torch.argsort(products.abs(), descending=True)
    top = order[:TOP_CONTRIBUTIONS]
    previous = net.layers[index - 1]
    mapped = previous.kind == "flatten" and previous.input.dim() == 3
    rows = [{"index": int(j), "input": float(x[j]), "weight": float(w[j]), "product": float(products[j]),
             **({"source": _source(net, index - 1, int(j))} if mapped else {})} for j in top]
    bias = float(layer.module.bias.detach()[i]) if layer.module.bias is not None else None
    total = float(products.sum())
    info = {"inputs": len(x), "contributions": rows, "rest": float(products[order[TOP_CONTRIBUTIONS:]].sum()),
            "rest_count": max(len(x) - TOP_CONTRIBUTIONS, 0), "sum": total, "bias": bias,
            "result": total + (bias or 0.0)}
    if mapped and previous.input.shape[0] == 1:  # one input channel (an mlp): the weights as an image
        grid = torch.zeros(previous.input.numel(), dtype=torch.float64)
        grid[[int(np.ravel_multi_index(_source(net, index - 1, j), tuple(previous.input.shape)))
              for j in range(len(w))]] = w
        info["weight_image"] = grid.reshape(previous.input.shape[1:]).tolist()
    return info


def _softmax(net: Network, index: int, where: tuple) -> dict:
    z = net.layers[index].input.double()
    shift = float(z.max()) if float(z.max()) > 80 else 0.0  # e^z overflows past ~709; show e^(z - max)
    e = torch.exp(z - shift)
    return {"logits": z.tolist(), "exps": e.tolist(), "shift": shift, "sum": float(e.sum()),
            "probabilities": (e / e.sum()).tolist(), "result": float(e[where[0]] / e.sum())}


def _other(net: Network, index: int, where: tuple) -> dict:
    layer = net.layers[index]
    return {"note": f"cnnlab does not break {type(layer.module).__name__} layers down unit by unit; "
                    f"the value is the forward pass's"}


def _then(net: Network, index: int, where: tuple) -> list[dict]:
    """The element-wise layers right after a conv or linear unit (BatchNorm, ReLU, tanh...) at the
    same position: what happens to its value before the next layer mixes it with others."""
    steps = []
    for j in range(index + 1, len(net.layers)):
        if net.layers[j].kind not in ("activation", "norm", "dropout") or net.layers[j].output.shape != \
                net.layers[index].output.shape:
            break
        e = _elementwise(net, j, where)
        steps.append({"layer": j, "name": net.layers[j].name, "kind": net.layers[j].kind,
                      "type": type(net.layers[j].module).__name__,
                      "describe": describe(net.layers[j].module), "value": float(net.layers[j].output[where]), **e})
    return steps

