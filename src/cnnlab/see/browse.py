"""Runs as a whole, for the run browser: a folder's runs at a glance, how one run learned (its
history), the test images behind each cell of its confusion matrix, and two runs side by side.

Every number comes from the run folder (runs/folder.py's format) and from the run's own test
images (runs/folder.py's test_split, with the run's --limit-test), so the accuracy shown is the
one the run reported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.checkpoint import CHECKPOINT
from ..engine.data import Split
from ..errors import CnnlabError, RunError
from ..runs.folder import (
    CONFIG,
    ENSEMBLE,
    WEIGHTS,
    TrainedModel,
    load,
    read_config,
    read_history,
    read_metrics,
    test_split,
)
from .explain import cam_layer, grad_cam, hand_kernels, match_kernels, saliency, without_inplace

CELL_IMAGES = 24     # test images a confusion cell shows by default
DIFFERENT_IMAGES = 12  # images of each kind a comparison shows


# --- a folder of runs -----------------------------------------------------------------------------

def is_run(path: Path) -> bool:
    return (path / CONFIG).is_file()


def summary(run_dir: Path) -> dict | None:
    """One row of the run browser (None: the folder is not a readable run)."""
    try:
        config = read_config(run_dir)
        metrics = read_metrics(run_dir)
    except RunError:
        return None
    recipe = config.get("recipe") or {}
    last = metrics[-1] if metrics else {}
    ensemble = config.get("model") == ENSEMBLE
    accuracy = last.get("test_accuracy", (config.get("evaluation") or {}).get("test_accuracy"))
    finished = ensemble or (run_dir / WEIGHTS).is_file()
    return {"name": run_dir.name, "model": config.get("model"), "dataset": config.get("dataset"),
            "recipe": recipe.get("recipe"), "test_accuracy": accuracy,
            "test_images": recipe.get("limit_test"), "parameters": config.get("parameters"),
            "epochs_done": len(metrics), "epochs": recipe.get("epochs"),
            "train_seconds": round(sum(r.get("seconds") or 0 for r in metrics), 3),
            "created": config.get("created"), "finished": finished,
            "resumable": not ensemble and not finished and (run_dir / CHECKPOINT).is_file(),
            "members": config.get("members") if ensemble else None}


def list_runs(root: Path) -> list[dict]:
    """The runs directly inside `root`, newest first."""
    rows = [summary(p) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".") and is_run(p)] \
        if root.is_dir() else []
    return sorted((r for r in rows if r), key=lambda r: (r["created"] or "", r["name"]), reverse=True)


def latest_finished(root: Path) -> Path | None:
    """The newest run of `root` that has its weights (what `cnnlab serve RUNS_DIR` opens first)."""
    return next((root / r["name"] for r in list_runs(root) if r["finished"]), None)


# --- how a run learned --------------------------------------------------------------------------

def history(run_dir: Path) -> dict:
    """The run's history.jsonl as the explorer draws it: loss points, epochs, and each snapshot of
    the first-layer filters with the hand-designed kernel each one resembles most (explain.match_kernels).

    A run trained before cnnlab kept a history has only its metrics.jsonl epochs.
    """
    events, _ = read_history(run_dir)
    start = next((e for e in events if e["kind"] == "start"), {})
    snapshots = [with_matches(e) for e in events if e["kind"] == "snapshot"]
    size = next((s["shape"][-1] for s in snapshots if s["shape"]), None)
    epochs = [e for e in events if e["kind"] == "epoch"] or read_metrics(run_dir)
    return {"steps_per_epoch": start.get("steps_per_epoch"), "epochs_planned": start.get("epochs"),
            "points": [{k: e.get(k) for k in ("epoch", "step", "loss", "epoch_loss", "images_per_second")}
                       for e in events if e["kind"] == "step"],
            "epochs": epochs, "resumed_at": [e["step"] for e in events if e["kind"] == "resume"],
            "snapshots": snapshots,
            "kernels": {k: v.tolist() for k, v in hand_kernels(size).items()} if size and size >= 3 else {}}


def with_matches(snapshot: dict) -> dict:
    """A snapshot event with its filters as [n, k, k] (averaged over input channels) and matches."""
    shape, out = snapshot.get("shape") or [], {k: v for k, v in snapshot.items() if k != "weights"}
    if len(shape) != 4 or not snapshot.get("weights"):
        return {**out, "filters": [], "matches": [], "mean_similarity": None}
    w = np.asarray([np.nan if v is None else v for v in snapshot["weights"]], np.float64).reshape(shape).mean(1)
    w = np.nan_to_num(w)
    matches = [{k: m[k] for k in ("filter", "match", "similarity")} for m in match_kernels(w)]
    scores = [m["similarity"] for m in matches if m["similarity"] is not None]
    return {**out, "filters": np.round(w, 5).tolist(), "matches": matches,
            "mean_similarity": round(float(np.mean(scores)), 4) if scores else None}


# --- its test images, predicted -----------------------------------------------------------------

@dataclass
class Evaluation:
    """A run's predictions on its own test images, kept for the confusion cells and comparisons."""

    trained: TrainedModel
    dataset: str
    test: Split
    probs: torch.Tensor     # [N, K] softmax probabilities
    preds: torch.Tensor     # [N]
    lock: threading.Lock = field(default_factory=threading.Lock)  # explanations hook the model
    _explainer: tuple | None = None

    @property
    def confusion(self) -> torch.Tensor:
        k = len(self.trained.classes)
        return torch.bincount(self.test.labels * k + self.preds, minlength=k * k).reshape(k, k)

    def to_json(self) -> dict:
        cm = self.confusion
        totals = cm.sum(1).clamp(min=1)
        return {"dataset": self.dataset, "test_images": len(self.test), "classes": self.trained.classes,
                "accuracy": float((self.preds == self.test.labels).float().mean()) if len(self.test) else 0.0,
                "confusion_matrix": cm.tolist(), "per_class_accuracy": (cm.diag() / totals).tolist()}


def evaluate_run(run_dir: Path, data_dir=None) -> Evaluation:
    """Predict every test image the run was measured on (its --limit-test images)."""
    trained = load(run_dir)
    limit = (trained.config.get("recipe") or {}).get("limit_test")
    name, test = test_split(trained.config, data_dir, limit, download=False)
    probs = trained.predict_proba(test.images)
    return Evaluation(trained, name, test, probs, probs.argmax(1))


def _explainer(ev: Evaluation):
    """(model without in-place activations, Grad-CAM layer name and module or None), built once."""
    if ev._explainer is None:
        net = without_inplace(ev.trained.model)
        x = ev.trained.preprocess(ev.test.images[:1])
        name = cam_layer(net, x) if ev.trained.name != ENSEMBLE else None
        ev._explainer = (net, name, dict(net.named_modules()).get(name) if name else None)
    return ev._explainer


def explain(ev: Evaluation, index: int, target: int) -> tuple[np.ndarray, str]:
    """A [H, W] map in [0, 1] of where image `index` supports class `target`, and its kind:
    Grad-CAM at the last spatial layer, or the saliency (input gradient) for a model without one."""
    net, name, module = _explainer(ev)
    x = ev.trained.preprocess(ev.test.images[index:index + 1])
    if module is not None:
        return grad_cam(net, module, x, target), f"Grad-CAM at {name}"
    s = saliency(net, x, target)
    return s / s.max() if s.max() > 0 else s, "saliency"


def cell(ev: Evaluation, true: int, predicted: int, limit: int = CELL_IMAGES) -> dict:
    """The test images of class `true` predicted as `predicted`, the most confident first, each
    with its probabilities and where the network looked (explain)."""
    k = len(ev.trained.classes)
    if not (0 <= true < k and 0 <= predicted < k):
        raise CnnlabError(f"classes are 0..{k - 1}; got true {true}, predicted {predicted}")
    idx = torch.nonzero((ev.test.labels == true) & (ev.preds == predicted)).flatten()
    idx = idx[ev.probs[idx, predicted].argsort(descending=True, stable=True)]
    shown, kind = [], None
    with ev.lock:
        for i in idx[:limit].tolist():
            heat, kind = explain(ev, i, predicted)
            shown.append({"index": i, "image": ev.test.images[i].flatten().tolist(),
                          "probabilities": [round(float(p), 5) for p in ev.probs[i]],
                          "heat": np.round(heat * 255).astype(int).flatten().tolist()})
    return {"true": true, "predicted": predicted, "count": len(idx), "explanation": kind,
            "size": list(ev.test.images.shape[-2:]), "images": shown}


# --- two runs side by side ------------------------------------------------------------------------

def compare_runs(a: Evaluation, b: Evaluation, limit: int = DIFFERENT_IMAGES) -> dict:
    """Accuracy and per-class accuracy of two runs on the test images both were measured on, and
    the images one gets right and the other wrong."""
    if a.trained.classes != b.trained.classes:
        raise CnnlabError("the two runs have different classes; compare runs trained on the same dataset")
    n = min(len(a.test), len(b.test))
    labels = a.test.labels[:n]
    if a.dataset != b.dataset or not torch.equal(labels, b.test.labels[:n]) or \
            not torch.equal(a.test.images[:n], b.test.images[:n]):
        raise CnnlabError(f"the runs were tested on different images ({a.dataset}, {b.dataset}); "
                          f"compare runs trained on the same dataset")
    ra, rb = a.preds[:n] == labels, b.preds[:n] == labels
    k = len(a.trained.classes)

    def per_class(right):
        return [float(right[labels == c].float().mean()) if (labels == c).any() else None for c in range(k)]

    def only(right, wrong):
        idx = torch.nonzero(right & ~wrong).flatten()
        return {"count": len(idx), "images": [
            {"index": i, "true": int(labels[i]), "image": a.test.images[i].flatten().tolist(),
             "a": {"predicted": int(a.preds[i]), "probability": round(float(a.probs[i].max()), 4)},
             "b": {"predicted": int(b.preds[i]), "probability": round(float(b.probs[i].max()), 4)}}
            for i in idx[:limit].tolist()]}
    return {"test_images": n, "classes": a.trained.classes,
            "accuracy": [float(ra.float().mean()), float(rb.float().mean())],
            "per_class_accuracy": [per_class(ra), per_class(rb)],
            "a_right_b_wrong": only(ra, rb), "b_right_a_wrong": only(rb, ra),
            "both_wrong": int((~ra & ~rb).sum())}
