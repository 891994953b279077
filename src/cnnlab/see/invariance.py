"""The lecture's claim that pooling buys translation invariance, measured on trained networks.

Shift test digits by 1-4 pixels and count how often a trained model's prediction changes, and how
far its last feature map moves, for a model with pooling and the same model without it
(no_pool_cnn: stride-2 convolutions instead of max pooling), trained with the run's own recipe on
the run's own images - a baseline trained otherwise is refused.
"""

from __future__ import annotations

import io
from dataclasses import asdict, fields
from pathlib import Path
from typing import Callable

import torch
from matplotlib.figure import Figure as MplFigure

from ..engine.config import FOLDER, TrainConfig
from ..engine.processes import resolve_device
from ..engine.train import train
from ..errors import CnnlabError
from ..files import check_output, write_output
from ..runs.folder import TrainedModel, load, run_files, test_split

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


# What decides what a network learns, besides its architecture: the pool-free baseline must share
# every one with the pooled run, or the table measures a difference in training, not pooling
# (a 60,000-image pooled run against a 6,000-image baseline "showed" a 9-point pooling effect).
SAME_TRAINING = ("dataset", "limit_train", "test_split", "val_split", "epochs", "batch_size", "optimizer", "lr",
                 "weight_decay", "schedule", "augment", "label_smoothing", "patience", "target_accuracy")


def training_of(config: dict) -> dict:
    """The SAME_TRAINING settings of a run's config.json (TrainConfig's defaults where an older run lacks one)."""
    recipe = {**asdict(TrainConfig()), **(config.get("recipe") or {})}
    if "test_split" not in (config.get("recipe") or {}) or not str(recipe["dataset"]).startswith(FOLDER):
        recipe["test_split"] = None  # trained before there was a test share, or a dataset with its own
    return {k: recipe[k] for k in SAME_TRAINING}


def images_text(limit) -> str:
    return "all its training images" if limit is None else f"the first {limit:,} training images"


def _show(key: str, value) -> str:
    if key == "limit_train":
        return images_text(value)
    return f"--{key.replace('_', '-')} {value}" if value is not None else f"no --{key.replace('_', '-')}"


def check_same_training(run: dict, baseline: dict, name: str) -> None:
    """A one-line CnnlabError naming the first setting in which `baseline` was trained unlike `run`."""
    a, b = training_of(run), training_of(baseline)
    for key in SAME_TRAINING:
        if a[key] != b[key]:
            raise CnnlabError(f"{name} was trained with {_show(key, b[key])} but the run with {_show(key, a[key])}; "
                              f"pooling can only be compared between networks trained alike - train the "
                              f"baseline with the run's settings, or leave out --baseline to train one so")


def baseline_for(run_config: dict, data_dir=None, log: Callable | None = None):
    """Train no_pool_cnn with the pooled run's own recipe (same data, seed, epochs), through train.train."""
    recipe = run_config.get("recipe") or {}
    known = {f.name for f in fields(TrainConfig)}
    cfg = TrainConfig(**{k: v for k, v in recipe.items() if k in known})
    result = train(cfg, data_dir=data_dir, save=False, progress=False, log=log, model="no_pool_cnn")
    config = {"model": "no_pool_cnn", "classes": run_config.get("classes"), "dataset": result.config.dataset,
              "normalization": run_config["normalization"], "recipe": asdict(result.config)}
    return TrainedModel(result.model.eval(), config, None, resolve_device(result.config.device))


def plot_invariance(rows: list[dict], out, force: bool = False, inputs=()) -> None:
    """Two panels: predictions changed and feature change versus shift, one line per model."""
    fig = MplFigure(figsize=(8, 3))
    axes = fig.subplots(1, 2)
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
    write_output(out, buf.getvalue(), force=force, inputs=inputs)


def measure(run_dir, *, baseline_dir=None, out=None, limit: int | None = None, max_shift: int = 4,
            limit_train: int | None = None, data_dir=None, log: Callable | None = None,
            force: bool = False) -> dict:
    """`cnnlab pool --invariance`: the run against a pool-free baseline trained alike, on the run's own
    test images, with the plot written to `out` (default RUN_DIR/invariance.png; an existing file is
    replaced only with force, a file of either run never).

    limit_train, when given, must be the run's own: the baseline sees exactly the run's images.
    """
    pooled = load(run_dir)
    check_has_features(pooled)  # before any baseline is trained
    training = training_of(pooled.config)
    if limit_train is not None and limit_train != training["limit_train"]:
        raise CnnlabError(f"--limit-train {limit_train:,} would train the baseline on the first {limit_train:,} "
                          f"images but {run_dir} was trained on {images_text(training['limit_train'])}; the baseline "
                          f"must see the same images - drop --limit-train (or train the pooled run with it too)")
    out = Path(out) if out else Path(run_dir) / "invariance.png"
    inputs = [*run_files(run_dir), *(run_files(baseline_dir) if baseline_dir else [])]
    check_output(out, force=force, inputs=inputs)
    if baseline_dir:
        baseline = load(baseline_dir)
        check_has_features(baseline)
        check_same_training(pooled.config, baseline.config, f"--baseline {baseline_dir}")
    else:
        (log or print)(f"training no_pool_cnn with {pooled.name}'s recipe and images for comparison "
                       f"(pass --baseline RUN_DIR to reuse one trained alike)")
        baseline = baseline_for(pooled.config, data_dir=data_dir, log=log)
    _, test = test_split(pooled.config, data_dir, limit)
    models = {pooled.name: pooled, baseline.name if baseline.name != pooled.name else "baseline": baseline}
    rows = invariance(models, test.images, test.labels, max_shift)
    plot_invariance(rows, out, force, inputs)
    return {"run_dir": str(pooled.run_dir), "baseline": str(baseline.run_dir) if baseline.run_dir else None,
            "training": training, "images": len(test), "plot": str(out), "rows": rows}
