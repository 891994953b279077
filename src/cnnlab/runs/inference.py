"""Predictions from a trained network: logits in chunks, accuracy, the confusion matrix, and the
two ways cnnlab averages several predictions of one image.

An ensemble averages the class probabilities of independently trained networks (different
seeds and architectures make different mistakes, so the average makes fewer). Test-time
augmentation (TTA) averages one network's probabilities over the image and copies shifted by a
pixel. Both are nn.Modules that return log-probabilities: softmax of their output is the mean
probability and argmax the averaged vote, so they go anywhere a model's logits go.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..engine import data as data_mod
from ..engine.config import EVAL_CHUNK
from ..errors import CnnlabError

# The image and its four 1-pixel neighbours (dy, dx): digits in MNIST are centred by centre of
# mass, so a pixel either way is a shift the networks have seen in training data.
SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """[V, N, K] logits of V predictions -> [N, K] log of their mean softmax (logsumexp: stable
    for confident networks whose probabilities underflow)."""
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=0) - math.log(len(logits))


class Ensemble(nn.Module):
    """Members' softmax probabilities averaged; returns their log."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return log_mean_softmax(torch.stack([m(x) for m in self.members]))


class TTA(nn.Module):
    """A model's softmax probabilities averaged over shifted copies of each image; returns their log.

    shifts: (dy, dx) per view, (0, 0) being the image itself. A shift moves the content by dy rows
    down and dx columns right; the border is filled by repeating the edge pixels (padding mode
    "replicate"), so nothing wraps around and any background colour stays as it was.
    """

    def __init__(self, model: nn.Module, shifts=SHIFTS):
        super().__init__()
        if not shifts:
            raise CnnlabError("test-time augmentation needs at least one shift, such as (0, 0)")
        self.model = model
        self.shifts = tuple((int(dy), int(dx)) for dy, dx in shifts)

    @property
    def views(self) -> int:
        return len(self.shifts)

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [V * N, C, H, W]: every view of every image, view by view."""
        p = max(max(abs(dy), abs(dx)) for dy, dx in self.shifts)
        if p == 0:
            return x.repeat(self.views, 1, 1, 1)
        h, w = x.shape[-2:]
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        # view[i, j] = x[i - dy, j - dx]: the content moves by (dy, dx).
        return torch.cat([padded[..., p - dy:p - dy + h, p - dx:p - dx + w] for dy, dx in self.shifts])

    def forward(self, x):
        # One forward pass over all views: a batch V times larger is faster than V small ones.
        logits = self.model(self.shifted(x))
        return log_mean_softmax(logits.reshape(self.views, len(x), -1))


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images_u8: torch.Tensor, mean: float, std: float,
                   device: torch.device | str = "cpu", batch_size: int = EVAL_CHUNK) -> torch.Tensor:
    """Logits for uint8 images [N, H, W], in chunks so memory stays flat for any N."""
    # Test-time augmentation feeds the network several views per image: fewer images per chunk
    # keep each forward pass (and its activations) the size it is without.
    batch_size = max(1, batch_size // getattr(model, "views", 1))
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(images_u8), batch_size):
        x = data_mod.normalize(images_u8[i:i + batch_size].to(device), mean, std)
        out.append(model(x).float().cpu())
    model.train(was_training)
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted]."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_predictions(labels: torch.Tensor, preds: torch.Tensor, classes: list) -> dict:
    k = len(classes)
    cm = confusion_matrix(labels, preds, k)
    per_class_total = cm.sum(dim=1).clamp(min=1)
    return {
        "accuracy": fraction_correct(preds, labels),
        "correct": int((preds == labels).sum()),
        "total": int(len(labels)),
        "per_class_accuracy": (cm.diag().float() / per_class_total).tolist(),
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def accuracy(model, split: data_mod.Split, mean: float, std: float, device="cpu", batch_size: int = EVAL_CHUNK) -> float:
    return fraction_correct(predict_logits(model, split.images, mean, std, device, batch_size).argmax(1), split.labels)


def fraction_correct(preds: torch.Tensor, labels: torch.Tensor) -> float:
    return float((preds == labels).float().mean()) if len(labels) else 0.0


class EveryView(nn.Module):
    """A member's logits for each TTA view side by side, [N, V * K], so that evaluation's chunking
    (which keeps V * chunk images per forward pass) applies unchanged."""

    def __init__(self, tta: TTA):
        super().__init__()
        self.tta = tta
        self.views = tta.views

    def forward(self, x):
        logits = self.tta.model(self.tta.shifted(x))  # [V * N, K], view by view
        return logits.reshape(self.views, len(x), -1).transpose(0, 1).flatten(1)
