"""Looking inside a network: what each layer outputs, which pixels matter, where it looks.

trace_layers records every layer's input and output with forward hooks (trace keeps the conv and
pooling ones), in the order the forward pass runs them, so any model in the registry works however
its layers are nested. saliency is the input gradient; grad_cam is Grad-CAM (Selvaraju et al.
2017); match_kernels compares learned filters with the lecture's hand-designed kernels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CnnlabError
from ..lecture import kernels

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d, nn.LPPool2d,
         nn.FractionalMaxPool2d)
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Hardtanh)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


# --- finding layers ----------------------------------------------------------------------------

def layer_kind(module: nn.Module, inp: torch.Tensor | None = None, out: torch.Tensor | None = None) -> str:
    """conv, pool, activation, norm, flatten, linear, dropout or other. A leaf that turns a map
    into a vector of the same size is a flatten, whatever its class (fast_cnn's channels-last one)."""
    for kind, types in (("conv", nn.Conv2d), ("pool", POOLS), ("activation", ACTIVATIONS), ("norm", NORMS),
                        ("flatten", nn.Flatten), ("linear", nn.Linear), ("dropout", nn.Dropout)):
        if isinstance(module, types):
            return kind
    if inp is not None and out is not None and inp.dim() > 2 and out.dim() == 2 and inp.numel() == out.numel():
        return "flatten"
    return "other"


@dataclass
class LayerOutput:
    name: str                  # the module's path in the model, e.g. "features.3"
    kind: str                  # see layer_kind; the full trace adds "input" and "softmax"
    module: nn.Module | None
    input_shape: tuple         # [C, H, W] the layer received
    output: torch.Tensor       # [C, H, W] (or [N]) what it produced, for one image
    input: torch.Tensor | None = None   # what it received (trace_layers only)


@torch.no_grad()
def trace_layers(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerOutput]]:
    """Run one image [1, C, H, W] through the model, keeping every leaf layer's input and output in
    the order the forward pass runs them, between an "input" and a "softmax" pseudo-layer."""
    seen: list[LayerOutput] = [LayerOutput("input", "input", None, tuple(x.shape[1:]), x[0].detach().cpu(),
                                           x[0].detach().cpu())]
    received: dict[int, torch.Tensor] = {}
    handles = []

    def before(mod, inputs):
        # clone: an in-place ReLU would otherwise overwrite the input we keep.
        received[id(mod)] = inputs[0].detach().clone().cpu() if inputs and torch.is_tensor(inputs[0]) else None

    def after(mod, inputs, output, name):
        inp = received.pop(id(mod), None)
        if inp is None or not torch.is_tensor(output):
            return
        out = output.detach().clone().cpu()
        seen.append(LayerOutput(name or type(mod).__name__, layer_kind(mod, inp, out), mod, tuple(inp.shape[1:]),
                                out[0], inp[0]))
    for name, module in model.named_modules():
        if not any(module.children()):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(lambda m, i, o, name=name: after(m, i, o, name)))
    was_training = model.training
    model.eval()
    try:
        logits = model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    z = logits[0].detach().float().cpu()
    seen.append(LayerOutput("softmax", "softmax", None, tuple(z.shape), z.softmax(0), z))
    return logits, seen


@torch.no_grad()
def trace(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[LayerOutput]]:
    """Run one image batch [1, C, H, W] through the model, recording every conv and pool output."""
    logits, layers = trace_layers(model, x)
    return logits, [layer for layer in layers if layer.kind in ("conv", "pool")]


def first_linear(model: nn.Module, x: torch.Tensor) -> nn.Linear | None:
    """The first nn.Linear the forward pass runs (an mlp's first layer)."""
    found = []
    handles = [m.register_forward_hook(lambda mod, i, o: found.append(mod))
               for m in model.modules() if isinstance(m, nn.Linear)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found[0] if found else None


# --- hand-designed kernels and cosine similarity -----------------------------------------------

def hand_kernels(size: int) -> dict[str, np.ndarray]:
    """cnnlab.kernels' named kernels at size x size, to compare with learned filters of that size.

    Kernels with a size option (Gaussian, box blur) are built at that size; the fixed 3x3 ones are
    the same operator centred in a zero border. A kernel that cannot be made at the size (a
    Gaussian needs an odd side) is left out.
    """
    out = {}
    for name, fixed in kernels.NAMED.items():
        if fixed is None:
            try:
                out[name] = kernels.get(name, size=size)
            except CnnlabError:
                continue
            continue
        k = kernels.get(name)
        if k.shape[0] > size or k.shape[1] > size:
            continue
        big = np.zeros((size, size))
        top, left = (size - k.shape[0]) // 2, (size - k.shape[1]) // 2
        big[top:top + k.shape[0], left:left + k.shape[1]] = k
        out[name] = big
    return out


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def match_kernels(filters: np.ndarray) -> list[dict]:
    """For each filter [k, k], the most similar hand-designed kernel of the same size.

    A learned filter may be a kernel with its sign flipped (a dark-to-light edge detector instead
    of light-to-dark); it is the same detector, so negated kernels count and are named "-sobel-x".
    """
    size = filters.shape[-1]
    if size < 3 or filters.shape[-2] != size:
        return [{"filter": i, "match": None, "similarity": None} for i in range(len(filters))]
    bank = hand_kernels(size)
    out = []
    for i, f in enumerate(filters):
        scores = {name: cosine(f, k) for name, k in bank.items()}
        name = max(scores, key=lambda n: abs(scores[n]))
        s = scores[name]
        out.append({"filter": i, "match": name if s >= 0 else f"-{name}", "similarity": round(abs(s), 4),
                    "kernel": (bank[name] * (1 if s >= 0 else -1)).tolist()})
    return out


# --- explanations: input gradient and Grad-CAM -------------------------------------------------

def saliency(model: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """|d logit[target] / d pixel|, the largest over input channels: [H, W]."""
    model.eval()
    x = x.clone().requires_grad_(True)
    score = model(x)[0, target]
    (grad,) = torch.autograd.grad(score, x)
    return grad[0].abs().amax(0).cpu().numpy()


def cam_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """Where Grad-CAM looks: the last module whose output is still a spatial map (more than 1x1).

    That is the rectified (and usually pooled) map the classifier reads - the choice of the Grad-CAM
    paper and of common implementations (VGG's features[-1]). A raw conv output before its ReLU is
    mostly negative and would give an empty map. None when no layer keeps a spatial map (an mlp).
    """
    last = {}
    handles = []
    for name, m in model.named_modules():
        if name and not any(m.children()):
            def hook(mod, inputs, out, name=name):
                if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[-1] * out.shape[-2] > 1:
                    last["name"] = name
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return last.get("name")


def grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at `layer`: ReLU(sum_k mean(dY/dA_k) A_k), upsampled to
    the input size and scaled to [0, 1]. `model` must not use in-place activations (without_inplace)."""
    model.eval()
    kept = {}

    def keep(m, i, o):
        kept["a"] = o  # the last call wins when a module (a shared ReLU) runs several times
    handle = layer.register_forward_hook(keep)
    try:
        score = model(x)[0, target]
    finally:
        handle.remove()
    act = kept["a"]
    (grad,) = torch.autograd.grad(score, act)
    weights = grad[0].mean(dim=(1, 2))                       # one weight per channel
    cam = F.relu((weights[:, None, None] * act[0]).sum(0)).detach()
    cam = F.interpolate(cam[None, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    return (cam / top if top > 0 else cam).cpu().numpy()


def without_inplace(model: nn.Module) -> nn.Module:
    """A copy whose activations are not in-place, so gradients of intermediate outputs exist."""
    clone = copy.deepcopy(model)
    for m in clone.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return clone.eval()
