"""Parameter and multiply-accumulate arithmetic: what a network costs, layer by layer.

Counts come from the real modules (a forward pass with hooks records each layer's output shape),
so a table always agrees with `sum(p.numel() for p in model.parameters())`.
A multiply-accumulate (MAC) is one `a * b + c`; only convolutions and linear layers do them
(activations, pooling and dropout are counted as 0). Bias additions are not MACs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import import_module

import torch
from torch import nn

from ..engine.models import SimpleCNN, build_model, get_spec
from ..errors import CnnlabError

# Networks the lessons count but cnnlab does not train, built by the library that has them:
# name -> (module, constructor, the input it was made for, what it is).
REFERENCE = {
    "alexnet": ("torchvision.models", "alexnet", (3, 224, 224),
                "AlexNet (Krizhevsky, Sutskever, Hinton; ImageNet 2012) as torchvision builds it: "
                "224x224x3 images, 1,000 classes (counted here, not trainable)"),
}


def input_for(name: str) -> tuple[int, int, int]:
    """The input a network by this name was made for: ImageNet's for the REFERENCE ones, else 1x28x28."""
    return REFERENCE[name][2] if name in REFERENCE else (1, 28, 28)


def _build(name: str, input_shape, num_classes: int) -> nn.Module:
    """A network by name on the meta device: nothing is allocated or computed, only shapes flow."""
    if name in REFERENCE:
        module, constructor, _, _ = REFERENCE[name]
        with torch.device("meta"):
            return getattr(import_module(module), constructor)()  # its own classes (1,000 for ImageNet)
    get_spec(name)  # unknown name -> clear error
    with torch.device("meta"):
        return build_model(name, num_classes=num_classes, in_channels=input_shape[0])


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


def parse_shape(text: str) -> tuple[int, int, int]:
    """'1x28x28' -> (1, 28, 28)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise CnnlabError(f"--input must be CHANNELSxHEIGHTxWIDTH with whole numbers, e.g. 1x28x28, got '{text}'")
    return shape


def summarize(model: nn.Module | str, input_shape=(1, 28, 28), num_classes: int = 10) -> Summary:
    """Per-layer output shape, parameters and MACs for one input of shape (C, H, W)."""
    input_shape = tuple(int(s) for s in input_shape)
    name = model if isinstance(model, str) else type(model).__name__
    if isinstance(model, str):
        model = _build(name, input_shape, num_classes)
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
                          f"try --input {'x'.join(map(str, input_for(name)))}, the size it was built for") from None
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    total = sum(p.numel() for p in model.parameters())
    listed = sum(r.parameters for r in rows)
    if total != listed:  # parameters held directly by a container, outside any leaf layer
        rows.append(LayerRow("(other)", "", "parameters outside leaf layers", [], total - listed, 0))
    return Summary(name, list(input_shape), rows, total, sum(r.macs for r in rows))


# --- The lecture's questions ---------------------------------------------------------------------

def _linear_step(n_in: int, n_out: int) -> dict:
    weights, biases = n_in * n_out, n_out
    return {"layer": f"Linear({n_in:,}, {n_out:,})", "weights": weights, "biases": biases,
            "parameters": weights + biases,
            "arithmetic": f"{n_in:,} x {n_out:,} weights + {n_out:,} biases = {weights + biases:,}"}


def _fc_net(sizes: list[int]) -> dict:
    steps = [_linear_step(a, b) for a, b in zip(sizes, sizes[1:])]
    total = sum(s["parameters"] for s in steps)
    # Check the arithmetic against real modules, built on the meta device (no memory used).
    with torch.device("meta"):
        real = sum(p.numel() for a, b in zip(sizes, sizes[1:]) for p in nn.Linear(a, b).parameters())
    assert real == total, (real, total)
    return {"sizes": sizes, "layers": steps, "parameters": total,
            "arithmetic": " + ".join(f"{s['parameters']:,}" for s in steps) + f" = {total:,}"}


def simple_cnn_at(side: int) -> nn.Module:
    """simple_cnn for side x side inputs: same layers, the first linear layer widened to fit."""
    with torch.device("meta"):
        model = SimpleCNN()
        model.classifier[1] = nn.Linear(32 * (side // 4) ** 2, 128)
    return model


RESOLUTIONS = [28, 56, 112, 224]


def resolution_table(sides=RESOLUTIONS) -> list[dict]:
    """FC net versus CNN parameters as grayscale input grows: the parameter explosion argument."""
    rows = []
    for side in sides:
        fc = _fc_net([side * side, 512, 512, 10])
        cnn = summarize(simple_cnn_at(side), (1, side, side))
        conv_params = sum(r.parameters for r in cnn.layers if r.kind == "Conv2d")
        rows.append({"side": side, "inputs": side * side,
                     "fc_parameters": fc["parameters"], "fc_first_layer": fc["layers"][0]["parameters"],
                     "cnn_conv_parameters": conv_params, "cnn_parameters": cnn.parameters,
                     "cnn_macs": cnn.macs})
    return rows


def param_arithmetic(module: nn.Module) -> str:
    """How a layer's parameter count comes about, e.g. '16 x (1 x 3 x 3) weights + 16 biases = 160'."""
    total = sum(p.numel() for p in module.parameters())
    bias = f" + {module.bias.numel():,} biases" if getattr(module, "bias", None) is not None else ""
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return (f"{module.out_channels:,} filters x ({module.in_channels // module.groups:,} x {kh} x {kw}) "
                f"weights{bias} = {total:,}")
    if isinstance(module, nn.Linear):
        return f"{module.in_features:,} x {module.out_features:,} weights{bias} = {total:,}"
    return f"{total:,}"


def lecture() -> dict:
    """The lecture's parameter questions, each answered with its arithmetic."""
    cnn = summarize("simple_cnn")
    with torch.device("meta"):
        modules = dict(build_model("simple_cnn").named_modules())
    cnn_steps = [{"layer": f"{r.name} {r.kind}({r.details})", "parameters": r.parameters,
                  "arithmetic": param_arithmetic(modules[r.name])} for r in cnn.layers if r.parameters]
    return {
        "single_layer": _linear_step(28 * 28, 512),
        "mnist_fc": _fc_net([28 * 28, 512, 512, 10]),
        "imagenet_fc": _fc_net([224 * 224 * 3, 512, 512, 1000]),
        "simple_cnn": {"layers": cnn_steps, "parameters": cnn.parameters, "macs": cnn.macs,
                       "arithmetic": " + ".join(f"{s['parameters']:,}" for s in cnn_steps) + f" = {cnn.parameters:,}"},
        "by_resolution": resolution_table(),
    }
