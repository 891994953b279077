"""Pooling as a loop, and the translation-invariance claim measured.

Max pooling keeps the largest value of each window, average pooling their mean. Both shrink the
feature map and, the lecture claims, make the network care less about exactly where a feature
is. `invariance` tests that claim: shift test digits by 1-4 pixels and count how often a
trained model's prediction changes, and how far its feature map moves, for a model with pooling
and the same model without it (no_pool_cnn: stride-2 convolutions instead of max pooling).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch

from .conv import _pair
from .errors import CnnlabError

# A 4x4 example: 2x2 max pooling with stride 2 gives [[6, 8], [3, 4]].
LECTURE_INPUT = "1 1 2 4; 5 6 7 8; 3 2 1 0; 1 2 3 4"
MODES = ("max", "avg")


@dataclass
class PoolStep:
    row: int
    col: int
    top: int
    left: int
    window: np.ndarray
    value: float


def pool2d(x, size=2, stride=None, mode: str = "max", steps: list | None = None) -> np.ndarray:
    """Slide a size x size window (default stride = size: no overlap) and keep its max or mean."""
    if mode not in MODES:
        raise CnnlabError(f"unknown pooling mode '{mode}'; choose max or avg")
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise CnnlabError(f"pool2d takes a 2-D matrix, got shape {list(x.shape)}")
    kh, kw = _pair(size)
    sh, sw = _pair(stride if stride is not None else size)
    if min(kh, kw, sh, sw) < 1:
        raise CnnlabError(f"pool size and stride must be at least 1, got size {size}, stride {stride}")
    h, w = x.shape
    if kh > h or kw > w:
        raise CnnlabError(f"a {kh}x{kw} pooling window does not fit the {h}x{w} input; use a smaller --size")
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = np.zeros((oh, ow), dtype=np.float64)
    for i in range(oh):
        for j in range(ow):
            top, left = i * sh, j * sw
            window = x[top:top + kh, left:left + kw]
            if mode == "max":
                value = window[0, 0]
                for a in range(kh):
                    for b in range(kw):
                        if window[a, b] > value:
                            value = window[a, b]
            else:
                value = 0.0
                for a in range(kh):
                    for b in range(kw):
                        value += window[a, b]
                value /= kh * kw
            out[i, j] = value
            if steps is not None:
                steps.append(PoolStep(i, j, top, left, window.copy(), float(value)))
    return out


# --- Translation invariance ----------------------------------------------------------------------

# Each shift is tried in four directions (right, left, down, up) and the results averaged.
DIRECTIONS = [(1, 0), (-1, 0), (0, 1), (0, -1)]


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move [N, H, W] images dx pixels right and dy down (negative: left/up); vacated pixels are 0."""
    out = torch.zeros_like(images)
    h, w = images.shape[-2:]
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, dst_y, dst_x] = images[:, src_y, src_x]
    return out


def check_has_features(trained) -> None:
    if not hasattr(trained.model, "features"):
        raise CnnlabError(f"model '{trained.name}' has no .features block (convolutions and pooling) to measure; "
                          f"use a run of a convolutional model such as simple_cnn")


@torch.no_grad()
def _features_and_predictions(trained, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model = trained.model
    check_has_features(trained)
    feats, preds = [], []
    for i in range(0, len(images), 1000):
        x = trained.preprocess(images[i:i + 1000])
        f = model.features(x)
        feats.append(f.flatten(1).float().cpu())
        preds.append(model(x).argmax(1).cpu())
    return torch.cat(feats), torch.cat(preds)


def invariance(models: dict, images: torch.Tensor, labels: torch.Tensor, max_shift: int = 4) -> list[dict]:
    """For each model (name -> TrainedModel) and shift 0..max_shift pixels: how often the prediction
    changes, the accuracy, and how far the last feature map moves relative to its size."""
    rows = []
    for name, trained in models.items():
        trained.model.eval()
        base_feats, base_preds = _features_and_predictions(trained, images)
        base_norm = base_feats.norm(dim=1).clamp(min=1e-12)
        for k in range(max_shift + 1):
            changed, correct, moved = [], [], []
            for dx, dy in (DIRECTIONS if k else [(0, 0)]):
                feats, preds = _features_and_predictions(trained, shift_images(images, dx * k, dy * k))
                changed.append((preds != base_preds).float().mean())
                correct.append((preds == labels).float().mean())
                moved.append(((feats - base_feats).norm(dim=1) / base_norm).mean())
            rows.append({"model": name, "shift": k,
                         "prediction_changed": float(torch.stack(changed).mean()),
                         "accuracy": float(torch.stack(correct).mean()),
                         "feature_change": float(torch.stack(moved).mean())})
    return rows


def baseline_for(run_config: dict, data_dir=None, log: Callable | None = None, **overrides):
    """Train no_pool_cnn with the pooled run's own recipe (same data, seed, epochs), through train.train."""
    from dataclasses import fields

    from .runs import TrainedModel
    from .train import TrainConfig, resolve_device, train

    recipe = run_config.get("recipe") or {}
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in recipe.items() if k in known})
    settings = {"model": "no_pool_cnn", **{k: v for k, v in overrides.items() if v is not None}}
    result = train(cfg, data_dir=data_dir, save=False, progress=False, log=log, **settings)
    config = {"model": "no_pool_cnn", "classes": run_config.get("classes"),
              "normalization": run_config["normalization"], "recipe": asdict(result.config)}
    return TrainedModel(result.model.eval(), config, None, resolve_device(result.config.device))


def plot_invariance(rows: list[dict], out) -> None:
    """Two panels: predictions changed and feature change versus shift, one line per model."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import atomic_write

    fig, axes = plt.subplots(1, 2, figsize=(8, 3))
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        shifts = [r["shift"] for r in mine]
        axes[0].plot(shifts, [100 * r["prediction_changed"] for r in mine], marker="o", label=name)
        axes[1].plot(shifts, [r["feature_change"] for r in mine], marker="o", label=name)
    axes[0].set(xlabel="shift (pixels)", ylabel="predictions changed (%)", title="Prediction changes")
    axes[1].set(xlabel="shift (pixels)", ylabel="|f(shifted) - f| / |f|", title="Feature-map change")
    for ax in axes:
        ax.set_xticks(sorted({r["shift"] for r in rows}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(out, buf.getvalue())
