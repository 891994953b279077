"""Parameters and multiply-accumulates of a real network, layer by layer: `cnnlab params MODEL`.

Counts come from the real modules (a forward pass with hooks records each layer's output shape),
so a table always agrees with `sum(p.numel() for p in model.parameters())`.
A multiply-accumulate (MAC) is one `a * b + c`; only convolutions and linear layers do them
(activations, pooling and dropout are counted as 0). Bias additions are not MACs.
The lecture's own arithmetic, which needs no network, is lecture/params.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import import_module

import torch
from torch import nn

from ..errors import CnnlabError
from ..lecture.params import REFERENCE, input_for
from .models import build_model, get_spec


@dataclass
class LayerRow:
    name: str            # qualified module name, e.g. features.0
    kind: str            # module class, e.g. Conv2d
    details: str         # the module's settings, e.g. 1, 16, kernel_size=(3, 3)
    output_shape: list   # without the batch dimension
    parameters: int
    macs: int
    receptive_field: list | None = None   # [h, w] input pixels one unit sees; None: a layer without space
    jump: list | None = None               # [h, w] input pixels between neighbouring units
    activation_bytes: int = 0              # the output for one image in float32


@dataclass
class Summary:
    model: str
    input_shape: list
    layers: list = field(default_factory=list)
    parameters: int = 0
    macs: int = 0
    activation_bytes: int = 0   # every layer's output for one image, float32, added up

    def to_json(self) -> dict:
        return {"model": self.model, "input_shape": self.input_shape, "parameters": self.parameters,
                "macs": self.macs, "activation_bytes": self.activation_bytes,
                "layers": [asdict(r) for r in self.layers]}


# --- Receptive fields: which input pixels a unit sees ------------------------------------------

@dataclass(frozen=True)
class Window:
    """How a layer reads its input along one axis: output index i sees input indices
    i * stride - padding ... i * stride - padding + kernel - 1 (kernel already dilated).
    Adaptive pooling has windows of varying length instead: n_in, n_out give them exactly."""
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    n_in: int = 0
    n_out: int = 0

    def span(self, first: int, last: int) -> tuple[int, int]:
        """Input indices (inclusive, before clipping to the input) that outputs first..last read."""
        if self.n_out:
            return first * self.n_in // self.n_out, -(-(last + 1) * self.n_in // self.n_out) - 1
        return first * self.stride - self.padding, last * self.stride - self.padding + self.kernel - 1


def _two(v) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def windows(module: nn.Module, input_shape, output_shape) -> tuple[Window, Window] | None:
    """The (height, width) windows of a layer given its input and output shapes [C, H, W];
    None for a layer whose output has no space (flatten, linear) or that it does not know."""
    if len(input_shape) != 3 or len(output_shape) != 3:
        return None
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        k = _two(module.kernel_size)
        d = _two(getattr(module, "dilation", 1))
        s = _two(module.stride if module.stride is not None else module.kernel_size)
        eff = [d[a] * (k[a] - 1) + 1 for a in (0, 1)]
        p = module.padding
        if isinstance(p, str):  # 'same' keeps the size, 'valid' pads nothing
            p = [(e - 1) // 2 for e in eff] if p == "same" else (0, 0)
        p = _two(p)
        return tuple(Window(eff[a], s[a], p[a]) for a in (0, 1))
    if isinstance(module, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
        return tuple(Window(-(-n // o), max(n // o, 1), 0, n, o)
                     for n, o in zip(input_shape[1:], output_shape[1:]))
    if list(input_shape[1:]) == list(output_shape[1:]):
        return Window(), Window()  # element-wise: activations, normalisation, dropout
    return None


def unit_field(layers: list[tuple[Window, Window]], row: int, col: int) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), inclusive, of the input pixels unit (row, col) of the last of
    `layers` (listed from the input on) can see; may reach into the padding outside the image."""
    top, bottom, left, right = row, row, col, col
    for wh, ww in reversed(layers):
        top, bottom = wh.span(top, bottom)
        left, right = ww.span(left, right)
    return top, left, bottom, right


def receptive_fields(geometry: list) -> list[tuple[list, list] | None]:
    """(receptive field, jump), each [h, w], for layers with these windows (windows(),
    first layer first); None from the first layer without space (or unknown geometry) on."""
    rf, jump, out = [1, 1], [1, 1], []
    for w in geometry:
        if w is None or (out and out[-1] is None):
            out.append(None)
            continue
        rf = [rf[a] + (w[a].kernel - 1) * jump[a] for a in (0, 1)]
        jump = [jump[a] * w[a].stride for a in (0, 1)]
        out.append((list(rf), list(jump)))
    return out


def _fields(rows: list[LayerRow], shapes: list[tuple]) -> None:
    """Fill each row's receptive field and jump, in the order the forward pass ran the layers."""
    for r, found in zip(rows, receptive_fields([windows(m, i, o) for m, i, o in shapes])):
        if found is not None:
            r.receptive_field, r.jump = found


def layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs one input image costs in this layer: each output value is one dot product."""
    per_image = output[0].numel()
    if isinstance(module, nn.modules.conv._ConvNd):
        k = 1
        for s in module.kernel_size:
            k *= s
        return per_image * (module.in_channels // module.groups) * k
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


def _pair(v) -> str:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    return f"{v[0]}" if v[0] == v[1] else f"{v[0]}x{v[1]}"


def describe(module: nn.Module) -> str:
    """A short description of a layer's settings: '1->16, 3x3, pad 1' rather than its full repr."""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        text = f"{module.in_channels}->{module.out_channels}, {kh}x{kw}"
        for label, value, default in (("stride", module.stride, 1), ("pad", module.padding, 0),
                                      ("dilation", module.dilation, 1)):
            if value not in (default, (default, default)):
                text += f", {label} {_pair(value)}"
        return text
    if isinstance(module, nn.Linear):
        return f"{module.in_features}->{module.out_features}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = _pair(module.kernel_size)
        text = f"{k}x{k}" if "x" not in k else k
        text += f", stride {_pair(module.stride)}"
        if module.padding not in (0, (0, 0)):
            text += f", pad {_pair(module.padding)}"
        return text
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"{module.num_features}"
    if isinstance(module, nn.Dropout):
        return f"p={module.p}"
    if isinstance(module, (nn.Flatten, nn.ReLU, nn.Tanh)):
        return ""
    return " ".join(module.extra_repr().split())



def _build(name: str, input_shape, num_classes: int) -> nn.Module:
    """A network by name on the meta device: nothing is allocated or computed, only shapes flow."""
    if name in REFERENCE:
        module, constructor, _, _ = REFERENCE[name]
        with torch.device("meta"):
            return getattr(import_module(module), constructor)()  # its own classes (1,000 for ImageNet)
    get_spec(name)  # unknown name -> clear error
    with torch.device("meta"):
        return build_model(name, num_classes=num_classes, in_channels=input_shape[0])


def summarize(model: nn.Module | str, input_shape=(1, 28, 28), num_classes: int = 10) -> Summary:
    """Per-layer output shape, parameters and MACs for one input of shape (C, H, W)."""
    input_shape = tuple(int(s) for s in input_shape)
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = _build(name, input_shape, num_classes)
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")

    rows: list[LayerRow] = []
    shapes: list[tuple] = []   # (module, input shape, output shape) per row
    hooks = []
    for qual, module in model.named_modules():
        if any(True for _ in module.children()):
            continue  # containers: their leaves report

        def hook(module, inputs, output, qual=qual):
            out = output[0] if isinstance(output, (tuple, list)) else output
            own = sum(p.numel() for p in module.parameters(recurse=False))
            # A module called twice is listed twice but its parameters are counted once.
            seen = any(r.name == qual for r in rows)
            rows.append(LayerRow(qual, type(module).__name__, describe(module), list(out.shape[1:]),
                                 0 if seen else own, layer_macs(module, out), activation_bytes=4 * out[0].numel()))
            shapes.append((module, tuple(inputs[0].shape[1:]) if inputs else (), tuple(out.shape[1:])))
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), device=device))
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:200]
        size = "x".join(map(str, input_shape))
        raise CnnlabError(f"model '{name}' does not accept input {size} ({detail}); "
                          f"try --input {'x'.join(map(str, input_for(name)))}, the size it was built for") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    _fields(rows, shapes)
    total = sum(p.numel() for p in model.parameters())
    listed = sum(r.parameters for r in rows)
    if total != listed:  # parameters held directly by a container, outside any leaf layer
        rows.append(LayerRow("(other)", "", "parameters outside leaf layers", [], total - listed, 0))
    return Summary(name, list(input_shape), rows, total, sum(r.macs for r in rows),
                   sum(r.activation_bytes for r in rows))


