"""Run folders: what a training run leaves behind, written atomically, and loading it back.

A run folder holds
  model.safetensors  weights only (safetensors: loading never unpickles anything)
  config.json        model name, dataset, classes, normalisation, recipe, seed, library versions
  metrics.jsonl      one JSON object per epoch
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from . import data as data_mod
from .errors import RunError
from .models import build_model, get_spec

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"


def atomic_write(path: str | os.PathLike, content: bytes | str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    A reader (or a crash) sees either the old file or the new one, never half of one.
    """
    path = Path(path)
    if isinstance(content, str):
        content = content.encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, obj) -> None:
    atomic_write(path, json.dumps(obj, indent=2) + "\n")


def save_weights(model: torch.nn.Module, path) -> None:
    from safetensors.torch import save

    # contiguous() because safetensors refuses views; clone-free for ordinary parameters.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save(state))


def versions() -> dict:
    import numpy
    import torchvision

    from . import __version__
    return {"cnnlab": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


def new_run_dir(model: str, out: str | os.PathLike | None = None) -> Path:
    """--out if given (it must not hold a run already), else runs/<date-time>-<model>/."""
    if out is not None:
        path = Path(out)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(f"--out {path} already exists and is not empty; choose a new folder "
                           f"or delete it (cnnlab never overwrites a run)")
        path.mkdir(parents=True, exist_ok=True)
        return path
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{stamp}-{model}"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    path.mkdir(parents=True)
    return path


def append_metrics(run_dir, row: dict) -> None:
    path = Path(run_dir) / METRICS
    old = path.read_text() if path.exists() else ""
    atomic_write(path, old + json.dumps(row) + "\n")


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise RunError(f"{path} line {n} is not valid JSON; the metrics file is corrupt") from None
    return rows


def read_config(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the folder that "
                       f"'cnnlab train' printed (it holds {CONFIG} and {WEIGHTS})")
    path = run_dir / CONFIG
    if not path.is_file():
        raise RunError(f"{run_dir} is not a cnnlab run: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise RunError(f"{path} is corrupt (not valid JSON); retrain or restore the run") from None
    if not isinstance(config, dict) or "model" not in config:
        raise RunError(f"{path} does not name a model; it is not a cnnlab run config")
    return config


@dataclass
class TrainedModel:
    """A trained network with the preprocessing it was trained with: what cnnlab.load returns."""

    model: torch.nn.Module
    config: dict
    run_dir: Path | None
    device: torch.device

    @property
    def name(self) -> str:
        return self.config["model"]

    @property
    def classes(self) -> list:
        return self.config.get("classes") or [str(i) for i in range(10)]

    @property
    def mean(self) -> float:
        return float(self.config["normalization"]["mean"])

    @property
    def std(self) -> float:
        return float(self.config["normalization"]["std"])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range images [N, H, W] or [N, 1, H, W] -> the normalised float batch the model expects."""
        return data_mod.normalize(images, self.mean, self.std).to(self.device)

    @torch.no_grad()
    def logits(self, images: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
        from .evaluate import predict_logits
        return predict_logits(self.model, images, self.mean, self.std, self.device, batch_size)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(dim=1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Load a run folder: the model in eval mode with its preprocessing."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    get_spec(config["model"])  # unknown model name -> clear error
    if "normalization" not in config:
        raise RunError(f"{run_dir / CONFIG} lacks 'normalization'; it is not a complete cnnlab run config")
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise RunError(f"{run_dir} has no {WEIGHTS}; the run did not finish or the file was removed")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as e:
        raise RunError(f"{weights} is corrupt or truncated ({e}); retrain or restore the run") from None
    model = build_model(config["model"], num_classes=len(config.get("classes") or range(10)),
                        in_channels=int(config.get("in_channels", 1)))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:300]
        raise RunError(f"{weights} does not fit model '{config['model']}': {detail}") from None
    device = torch.device(device)
    model.to(device).eval()
    return TrainedModel(model, config, run_dir, device)
