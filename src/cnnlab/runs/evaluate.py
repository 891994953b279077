"""Evaluate a run: accuracy, per-class accuracy and the confusion matrix on its test images."""

from __future__ import annotations

from .folder import TrainedModel, load, test_origin, test_split
from .inference import TTA, metrics_from_predictions


def evaluate(run, dataset: str | None = None, data_dir=None, limit: int | None = None,
             device: str = "cpu", tta: bool = False) -> dict:
    """Evaluate a run folder (or a loaded TrainedModel) on its test images (folder.test_split).

    tta=True averages each image's prediction with its 1-pixel shifts (inference.TTA).
    Returns accuracy (fraction), per_class_accuracy (list), confusion_matrix (rows = true class).
    """
    trained = run if isinstance(run, TrainedModel) else load(run, device=device)
    if tta:
        trained = trained.with_tta()
    name, test = test_split(trained.config, data_dir, limit, dataset)
    preds = trained.logits(test.images).argmax(1)
    result = metrics_from_predictions(test.labels, preds, trained.classes)
    result["dataset"] = name
    result["test_images_from"] = test_origin(trained.config, dataset)
    result["tta"] = isinstance(trained.model, TTA)
    result["skipped_images"] = len(test.skipped)
    result["run_dir"] = str(trained.run_dir) if trained.run_dir else None
    return result
