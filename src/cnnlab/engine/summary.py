"""Parameters and multiply-accumulates of a real network, layer by layer: `cnnlab params MODEL`.

Counts come from the real modules (a forward pass with hooks records each layer's output shape),
so a table always agrees with `sum(p.numel() for p in model.parameters())`.
A multiply-accumulate (MAC) is one `a * b + c`; only convolutions and linear layers do them
(activations, pooling and dropout are counted as 0). Bias additions are not MACs.
The lecture's own arithmetic, which needs no network, is lecture/params.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import CnnlabError
from .models import build_model, get_spec


@dataclass
class LayerRow:
    name: str            # qualified module name, e.g. features.0
    kind: str            # module class, e.g. Conv2d
    details: str         # the module's settings, e.g. 1, 16, kernel_size=(3, 3)
    output_shape: list   # without the batch dimension
    parameters: int
    macs: int


@dataclass
class Summary:
    model: str
    input_shape: list
    layers: list = field(default_factory=list)
    parameters: int = 0
    macs: int = 0

    def to_json(self) -> dict:
        return {"model": self.model, "input_shape": self.input_shape, "parameters": self.parameters,
                "macs": self.macs, "layers": [asdict(r) for r in self.layers]}


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


def summarize(model: nn.Module | str, input_shape=(1, 28, 28), num_classes: int = 10) -> Summary:
    """Per-layer output shape, parameters and MACs for one input of shape (C, H, W)."""
    input_shape = tuple(int(s) for s in input_shape)
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        get_spec(model)  # unknown name -> clear error
        # On the meta device nothing is allocated or computed: only shapes flow through.
        with torch.device("meta"):
            model = build_model(name, num_classes=num_classes, in_channels=input_shape[0])
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")

    rows: list[LayerRow] = []
    hooks = []
    for qual, module in model.named_modules():
        if any(True for _ in module.children()):
            continue  # containers: their leaves report

        def hook(module, inputs, output, qual=qual):
            out = output[0] if isinstance(output, (tuple, list)) else output
            own = sum(p.numel() for p in module.parameters(recurse=False))
            # A module called twice is listed twice but its parameters are counted once.
            seen = any(r.name == qual for r in rows)
            rows.append(LayerRow(qual, type(module).__name__, describe(module),
                                 list(out.shape[1:]), 0 if seen else own, layer_macs(module, out)))
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
                          f"try --input 1x28x28, the size it was built for") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    total = sum(p.numel() for p in model.parameters())
    listed = sum(r.parameters for r in rows)
    if total != listed:  # parameters held directly by a container, outside any leaf layer
        rows.append(LayerRow("(other)", "", "parameters outside leaf layers", [], total - listed, 0))
    return Summary(name, list(input_shape), rows, total, sum(r.macs for r in rows))
