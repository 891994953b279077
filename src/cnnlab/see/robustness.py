"""How robust is one prediction? Move, turn and scale a digit and see the answer change, and find
the smallest change of the pixels that flips it: a fast-gradient-sign step search (Goodfellow et
al. 2015, "Explaining and harnessing adversarial examples").

The lecture claims pooling buys a little invariance to shifts (see/invariance.py measures it over
the test set); here one drawing is moved by hand, and the network's blind spot is shown: a change
of a few grey levels per pixel, invisible to people, can change its mind.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..runs.folder import TrainedModel

MAX_EPSILON = 128  # the largest step tried, in grey levels (0-255)


def transform(image_u8: np.ndarray, dx: float = 0.0, dy: float = 0.0, angle: float = 0.0,
              scale: float = 1.0) -> np.ndarray:
    """The image moved dx pixels right and dy down, turned `angle` degrees clockwise and scaled
    about its centre (bilinear, black outside), as uint8 again. PyTorch's affine_grid and
    grid_sample do the sampling: each output pixel p reads the input at A (p - t), A being the
    inverse rotation over the scale (in coordinates where the image spans -1..1)."""
    h, w = image_u8.shape
    a = math.radians(angle)
    inverse = torch.tensor([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]], dtype=torch.float64) / scale
    shift = torch.tensor([2.0 * dx / w, 2.0 * dy / h], dtype=torch.float64)
    theta = torch.cat([inverse, (-inverse @ shift)[:, None]], dim=1)[None].float()
    x = torch.from_numpy(np.ascontiguousarray(image_u8, dtype=np.float32))[None, None]
    grid = F.affine_grid(theta, [1, 1, h, w], align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def _probabilities(trained: TrainedModel, images: torch.Tensor) -> torch.Tensor:
    return trained.model(trained.preprocess(images)).float().softmax(1)


def smallest_fgsm(trained: TrainedModel, image_u8: np.ndarray, max_epsilon: int = MAX_EPSILON) -> dict:
    """The smallest step epsilon (whole grey levels) along the sign of the loss gradient that
    changes the prediction: x' = clip(x + epsilon * sign(d loss(x, predicted) / dx), 0, 255).

    One gradient, then every epsilon from 1 to max_epsilon in one batch, so the answer is the
    smallest on that line (not the smallest change of any kind). found=False when none flips it.
    """
    model = trained.model.eval()
    x = torch.from_numpy(np.ascontiguousarray(image_u8, dtype=np.float32))[None]
    x.requires_grad_(True)
    logits = model(trained.preprocess(x)).float()
    predicted = int(logits.argmax(1))
    loss = F.cross_entropy(logits, torch.tensor([predicted], device=logits.device))
    (grad,) = torch.autograd.grad(loss, x)
    x, sign = x.detach(), grad.sign().cpu()
    steps = torch.arange(1, max_epsilon + 1, dtype=torch.float32)
    candidates = (x + steps[:, None, None] * sign).clamp(0, 255)
    with torch.no_grad():
        probs = _probabilities(trained, candidates).cpu()
        original = _probabilities(trained, x)[0].cpu()
    flipped = torch.nonzero(probs.argmax(1) != predicted).flatten()
    answer = {"predicted": predicted, "probabilities": [round(float(p), 6) for p in original],
              "max_epsilon": max_epsilon, "found": bool(len(flipped))}
    if not len(flipped):
        return answer
    i = int(flipped[0])
    adversarial = candidates[i].to(torch.uint8)
    return {**answer, "epsilon": i + 1, "adversarial": {
        "predicted": int(probs[i].argmax()), "probabilities": [round(float(p), 6) for p in probs[i]],
        "image": adversarial.tolist()},
        "perturbation": (adversarial.int() - x[0].int()).tolist(),
        "changed_pixels": int((adversarial.int() != x[0].int()).sum())}
