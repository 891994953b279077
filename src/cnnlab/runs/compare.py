"""A family of models trained the same way, side by side: size, cost, speed, accuracy, overfitting.

Every model goes through the one training engine (train.train) with the same data, seed and
settings; only the architecture differs. Train and test accuracy are both measured after training
by cnnlab.evaluate (eval mode, float32) on the same training and test images the run used, so
the train-test gap, the lecture's overfitting point, compares like with like.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

from ..engine import data as data_mod
from ..engine.config import COMPARE_MODELS, TrainConfig
from ..engine.models import get_spec
from ..engine.processes import resolve_device
from ..engine.summary import summarize
from ..engine.train import checked, train
from ..errors import CnnlabError
from ..files import new_dir, write_output
from .folder import test_split
from .inference import accuracy

COLUMNS = ["model", "parameters", "macs", "train_seconds", "train_accuracy", "test_accuracy", "gap"]


@dataclass
class Row:
    model: str
    parameters: int
    macs: int             # multiply-accumulates per image (cnnlab.params)
    train_seconds: float  # time in the training loop, all epochs, without evaluation
    train_accuracy: float
    test_accuracy: float
    gap: float            # train - test accuracy
    run_dir: str | None


def compare(models: list[str] = COMPARE_MODELS, config: TrainConfig | None = None, *, data_dir=None,
            out=None, log: Callable[[str], None] | None = print, **overrides) -> list[Row]:
    """Train each model with the same TrainConfig (model swapped) and measure it.

    With `out`, each run folder is saved as out/<model>/ and the table as compare.csv and compare.md.
    """
    if not models:
        raise CnnlabError("--models is empty; name at least one model, e.g. --models mlp,simple_cnn")
    if len(set(models)) != len(models):
        raise CnnlabError(f"--models names a model twice: {','.join(models)}")
    for name in models:
        get_spec(name)  # every name is checked before anything trains
    base = checked(TrainConfig(**{**asdict(config or TrainConfig()), **overrides}))
    out = Path(out) if out is not None else None
    if out is not None:
        new_dir(out)  # a new or empty folder: the runs and tables go inside
    log = log or (lambda s: None)
    info = data_mod.dataset_info(base.dataset)
    train_split = data_mod.load(base.dataset, "train", data_dir, test_split=base.test_split).subset(base.limit_train)
    _, test = test_split(base, data_dir, base.limit_test)
    device = resolve_device(base.device)

    rows = []
    for name in models:
        result = train(base, data_dir=data_dir, out=out / name if out else None, save=out is not None,
                       progress=False, log=log, model=name)
        train_acc = accuracy(result.model, train_split, info.mean, info.std, device)
        test_acc = accuracy(result.model, test, info.mean, info.std, device)
        rows.append(Row(name, result.parameters, summarize(name).macs,
                        round(sum(e.seconds for e in result.epochs), 3), train_acc, test_acc,
                        train_acc - test_acc, str(result.run_dir) if result.run_dir else None))
    if out is not None:
        write_output(out / "compare.csv", to_csv(rows))
        write_output(out / "compare.md", to_markdown(rows, base))
    return rows


def to_csv(rows: list[Row]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        w.writerow([getattr(r, c) for c in COLUMNS])
    return buf.getvalue()


def to_markdown(rows: list[Row], cfg: TrainConfig) -> str:
    lines = [f"Trained {datetime.now():%Y-%m-%d %H:%M} on {cfg.dataset}: {cfg.epochs} epoch(s), batch "
             f"{cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, seed {cfg.seed}"
             + (f", first {cfg.limit_train:,} training images" if cfg.limit_train else "")
             + (f", first {cfg.limit_test:,} test images" if cfg.limit_test else "") + ".", "",
             "| model | parameters | MACs | train time (s) | train accuracy | test accuracy | gap |",
             "|---|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        lines.append(f"| {r.model} | {r.parameters:,} | {r.macs:,} | {r.train_seconds:.1f} | "
                     f"{r.train_accuracy:.2%} | {r.test_accuracy:.2%} | {r.gap * 100:+.2f} pts |")
    return "\n".join(lines) + "\n"
