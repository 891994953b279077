"""See what a trained network learned: every figure of a run, computed and drawn in one call.

    >>> v = cnnlab.visualize("runs/my-run")                 # doctest: +SKIP
    >>> cnnlab.see.visualize.write(v, "figures/")           # doctest: +SKIP

The figures themselves are in see/figures.py, one function each; this module picks the images
(the run's own test images: runs/folder.py's test_split) and puts them together.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import CnnlabError
from ..files import atomic_write, check_outputs, make_dir
from ..runs.folder import ENSEMBLE, TrainedModel, load, test_split
from ..runs.inference import metrics_from_predictions, predict_logits
from ..runs.predict import ImageError, check_preprocess_name, open_image, prepare, preprocessing_for
from . import figures
from .explain import trace
from .figures import Figure

PREDICT_CHUNK = 1000  # test images per forward pass, so the progress bar moves


@dataclass
class Visuals:
    run_dir: Path | None
    model: str
    dataset: str
    figures: list[Figure]
    not_applicable: list[dict]   # {"figure": name, "reason": one sentence}
    summary: dict                # key numbers for --json and the report

    def to_json(self, files: dict | None = None) -> dict:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "model": self.model,
            "dataset": self.dataset,
            "figures": [{"name": f.name, "title": f.title, **({"file": str(files[f.name])} if files else {})}
                        for f in self.figures],
            "not_applicable": self.not_applicable,
            **self.summary,
        }


def render(run, *, index: int = 0, image=None, explain: list[int] | None = None, limit: int | None = None,
           mistakes: int = 16, data_dir=None, progress: bool = False, preprocess: str | None = None) -> Visuals:
    """Compute and draw every figure that applies to a run (a folder or a loaded TrainedModel).

    index: the test image whose feature maps are drawn; image: a user's image file drawn instead,
    prepared as the run's dataset was made or as `preprocess` says ("digit", "fashion", "plain").
    explain: test indices for saliency/Grad-CAM (default: `index` and the 3 most confident mistakes).
    limit: use the first N test images for the confusion matrix and the mistakes.
    """
    trained = run if isinstance(run, TrainedModel) else load(run)
    if trained.name == ENSEMBLE:  # filters and feature maps belong to one network
        raise CnnlabError(f"{trained.run_dir} is an ensemble; draw one of its networks by passing a member "
                          f"folder such as {trained.run_dir / trained.config['members'][0]}")
    dataset, test_full = test_split(trained.config, data_dir)
    for i in [index, *(explain or [])]:
        if not 0 <= i < len(test_full):
            raise CnnlabError(f"test image index {i} is out of range; {dataset} has {len(test_full):,} test "
                              f"images (0..{len(test_full) - 1})")
    how = check_preprocess_name(preprocess) or preprocessing_for(trained.config.get("dataset", "mnist"))
    user = _user_image(image, how) if image is not None else None
    test = test_full.subset(limit)
    with _progress(progress) as bar:
        probs = _predict(trained, test, bar).softmax(1)
    conf, preds = probs.max(1)
    metrics = metrics_from_predictions(test.labels, preds, trained.classes)

    shown = torch.from_numpy(user) if user is not None else test_full.images[index]
    x = trained.preprocess(shown[None])
    _, layers = trace(trained.model, x)
    source = (f"your image {Path(image).name} ({how} preprocessing)" if user is not None
              else f"test #{index} (true {trained.classes[int(test_full.labels[index])]})")
    made = [figures.filters(trained, layers, x),
            figures.feature_maps(trained, layers, shown.numpy(), source, None if user is not None else index),
            figures.curves(trained),
            figures.confusion(metrics, trained.classes),
            figures.mistakes(test, preds, conf, trained.classes, mistakes)]
    wrong = made[-1][0][0].data["mistakes"] if made[-1][0] else []
    chosen = explain if explain else [index] + [it["index"] for it in wrong[:3] if it["index"] != index]
    sources = ([("image", user, None)] if user is not None else []) + \
              [(i, test_full.images[i].numpy(), int(test_full.labels[i])) for i in chosen]
    made.append(figures.explanations(trained, sources, any(l.kind == "conv" for l in layers), x))
    drawn = [f for figs, _ in made for f in figs]
    missing = [n for _, reasons in made for n in reasons]
    summary = _summary(metrics, drawn, wrong)
    if user is not None:
        summary["image_preprocessing"] = how
    return Visuals(trained.run_dir, trained.name, dataset, drawn, missing, summary)


def _summary(metrics: dict, drawn: list[Figure], wrong: list[dict]) -> dict:
    """The key numbers of the figures, for --json and the report."""
    summary = {"test_images": metrics["total"], "accuracy": metrics["accuracy"],
               "misclassified": metrics["total"] - metrics["correct"],
               "per_class_accuracy": metrics["per_class_accuracy"]}
    by_name = {f.name: f for f in drawn}
    if "filters" in by_name:
        summary["filters"] = by_name["filters"].data["matches"]
        scores = [m["similarity"] for m in summary["filters"] if m["similarity"] is not None]
        if scores:
            summary["mean_filter_similarity"] = round(float(np.mean(scores)), 4)
    if "feature_maps" in by_name:
        summary["feature_maps"] = by_name["feature_maps"].data["layers"]
    summary["mistakes"] = wrong
    return summary


def _predict(trained: TrainedModel, test, bar) -> torch.Tensor:
    """Logits of every test image, in chunks so the progress bar moves."""
    task = bar.add_task(f"predicting {len(test):,} test images", total=len(test)) if bar else None
    parts = []
    for i in range(0, len(test), PREDICT_CHUNK):
        chunk = test.images[i:i + PREDICT_CHUNK]
        parts.append(predict_logits(trained.model, chunk, trained.mean, trained.std, trained.device))
        if bar:
            bar.update(task, advance=len(chunk))
    return torch.cat(parts) if parts else torch.empty(0, len(trained.classes))


def _progress(enabled: bool):
    """A rich progress bar on stderr; nothing when disabled (tests, --json, pipes)."""
    if not enabled:
        return nullcontext()
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def _user_image(path, how: str) -> np.ndarray:
    """A user's photo, scan or drawing -> uint8 [28, 28], prepared `how` (runs/predict.py's prepare)."""
    try:
        return prepare(open_image(path), how, str(path))
    except ImageError as e:
        raise CnnlabError(f"--image: {e}") from None


# Every figure render() can draw (see/figures.py), so an --out folder is checked before drawing.
FIGURES = ("filters", "first_layer_weights", "feature_maps", "curves", "confusion", "mistakes", "saliency")


def check_out(out_dir, force: bool = False, inputs=()) -> Path:
    """Refuse, before anything is drawn, an --out whose figure files exist (unless force) or are inputs."""
    out = Path(out_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise CnnlabError(f"--out {out} is a file; pass a folder for the figures")
    check_outputs([out / f"{name}.png" for name in FIGURES], force=force, inputs=inputs, parent_must_exist=False)
    return out


def write(visuals: Visuals, out_dir, force: bool = False, inputs=()) -> dict[str, Path]:
    """Write each figure as OUT_DIR/<name>.png (atomically); returns name -> path.

    An existing figure file is replaced only with force; a file among `inputs` never.
    """
    out = check_out(out_dir, force, inputs)
    paths = {f.name: out / f"{f.name}.png" for f in visuals.figures}
    check_outputs(paths.values(), force=force, inputs=inputs, parent_must_exist=False)
    make_dir(out)
    for f in visuals.figures:
        atomic_write(paths[f.name], f.png, replace=force)
    return paths
