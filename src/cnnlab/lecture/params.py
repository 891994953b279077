"""The lecture's parameter arithmetic: what a fully connected net and the lecture's CNN cost.

Plain arithmetic, the way the lecture does it on the board: a linear layer has n_in x n_out
weights and n_out biases; a convolution has filters x (channels x kh x kw) weights and one bias
per filter, whatever the image size. No PyTorch is needed, so `cnnlab params --lecture` starts at
once. The tests check every number here against the real modules (engine/summary.py counts
any network layer by layer, `cnnlab params MODEL`).
"""

from __future__ import annotations

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


def _linear_step(n_in: int, n_out: int) -> dict:
    weights, biases = n_in * n_out, n_out
    return {"layer": f"Linear({n_in:,}, {n_out:,})", "weights": weights, "biases": biases,
            "parameters": weights + biases,
            "arithmetic": f"{n_in:,} x {n_out:,} weights + {n_out:,} biases = {weights + biases:,}"}


def _fc_net(sizes: list[int]) -> dict:
    steps = [_linear_step(a, b) for a, b in zip(sizes, sizes[1:])]
    total = sum(s["parameters"] for s in steps)
    return {"sizes": sizes, "layers": steps, "parameters": total,
            "arithmetic": " + ".join(f"{s['parameters']:,}" for s in steps) + f" = {total:,}"}


def _conv(name: str, c_in: int, c_out: int, k: int, side: int) -> dict:
    """A k x k convolution with padding k // 2 (the output keeps the input's side x side size)."""
    weights, total = c_out * c_in * k * k, c_out * c_in * k * k + c_out
    return {"layer": f"{name} Conv2d({c_in}->{c_out}, {k}x{k}, pad {k // 2})", "parameters": total,
            "macs": side * side * weights,  # one dot product of c_in x k x k per output value
            "arithmetic": f"{c_out:,} filters x ({c_in:,} x {k} x {k}) weights + {c_out:,} biases = {total:,}"}


def _linear(name: str, n_in: int, n_out: int) -> dict:
    total = n_in * n_out + n_out
    return {"layer": f"{name} Linear({n_in}->{n_out})", "parameters": total, "macs": n_in * n_out,
            "arithmetic": f"{n_in:,} x {n_out:,} weights + {n_out:,} biases = {total:,}"}


def simple_cnn_layers(side: int = 28, classes: int = 10) -> list[dict]:
    """The layers with parameters of the lecture's CNN (engine/models.py SimpleCNN) on a
    side x side grayscale image: conv 16 (3x3, pad 1), 2x2 max pool, conv 32, 2x2 max pool, flatten,
    fc 128, fc `classes`. Each pool halves the side, so the flattened map is 32 x (side // 4)^2."""
    return [_conv("features.0", 1, 16, 3, side), _conv("features.3", 16, 32, 3, side // 2),
            _linear("classifier.1", 32 * (side // 4) ** 2, 128), _linear("classifier.3", 128, classes)]


RESOLUTIONS = [28, 56, 112, 224]


def resolution_table(sides=RESOLUTIONS) -> list[dict]:
    """FC net versus CNN parameters as grayscale input grows: the parameter explosion argument."""
    rows = []
    for side in sides:
        fc = _fc_net([side * side, 512, 512, 10])
        cnn = simple_cnn_layers(side)
        rows.append({"side": side, "inputs": side * side,
                     "fc_parameters": fc["parameters"], "fc_first_layer": fc["layers"][0]["parameters"],
                     "cnn_conv_parameters": sum(s["parameters"] for s in cnn if "Conv2d" in s["layer"]),
                     "cnn_parameters": sum(s["parameters"] for s in cnn),
                     "cnn_macs": sum(s["macs"] for s in cnn)})
    return rows


def lecture() -> dict:
    """The lecture's parameter questions, each answered with its arithmetic."""
    layers = simple_cnn_layers()
    total = sum(s["parameters"] for s in layers)
    return {
        "single_layer": _linear_step(28 * 28, 512),
        "mnist_fc": _fc_net([28 * 28, 512, 512, 10]),
        "imagenet_fc": _fc_net([224 * 224 * 3, 512, 512, 1000]),
        "simple_cnn": {"layers": [{k: s[k] for k in ("layer", "parameters", "arithmetic")} for s in layers],
                       "parameters": total, "macs": sum(s["macs"] for s in layers),
                       "arithmetic": " + ".join(f"{s['parameters']:,}" for s in layers) + f" = {total:,}"},
        "by_resolution": resolution_table(),
    }
