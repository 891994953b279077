"""Run folders: what a training run leaves behind, written atomically, and loading it back.

A run folder holds
  model.safetensors       weights only (safetensors: loading never unpickles anything)
  config.json             model name, dataset, classes, normalisation, recipe, seed, library versions
  metrics.jsonl           one JSON object per epoch
  checkpoint.safetensors  everything needed to resume training (engine/checkpoint.py)

An ensemble folder holds ordinary run folders member-1/, member-2/, ... and its own config.json:
{"model": "ensemble", "members": ["member-1", ...], dataset, classes, normalization}. It loads as
one model that averages its members' probabilities (runs/inference.py's Ensemble).

test_split decides, for every command, which images a run is tested on.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from .. import __version__
from ..engine import data as data_mod
from ..engine.config import EVAL_CHUNK, TrainConfig
from ..engine.models import build_model, get_spec
from ..errors import DataError, RunError
from ..files import atomic_write, write_json
from .inference import TTA, Ensemble, predict_logits

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
ENSEMBLE = "ensemble"  # the "model" of an ensemble folder's config.json
MEMBER = "member-{}"


def save_weights(model: torch.nn.Module, path) -> None:
    # contiguous() because safetensors refuses views; clone-free for ordinary parameters.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save_tensors(state))


def versions() -> dict:
    return {"cnnlab": __version__, "torch": torch.__version__, "torchvision": version("torchvision"),
            "numpy": version("numpy"), "python": platform.python_version()}


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


def new_run(cfg, info, parameters: int, out=None) -> Path:
    """Create a run folder for a training that starts now, with its config.json."""
    run_dir = new_run_dir(cfg.model, out)
    write_json(run_dir / CONFIG, {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "classes": list(info.classes),
        "in_channels": 1,
        "input_size": [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE],
        "normalization": {"mean": info.mean, "std": info.std},
        "parameters": parameters,
        "recipe": asdict(cfg),
        "seed": cfg.seed,
        "created": datetime.now().isoformat(timespec="seconds"),
        "versions": versions(),
    })
    return run_dir


def update_config(run_dir, **values) -> None:
    write_json(Path(run_dir) / CONFIG, {**read_config(run_dir), **values})


def write_metrics(run_dir, rows: list[dict]) -> None:
    atomic_write(Path(run_dir) / METRICS, "".join(json.dumps(row) + "\n" for row in rows))


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
    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        return predict_logits(self.model, images, self.mean, self.std, self.device, batch_size or EVAL_CHUNK)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(dim=1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)

    def with_tta(self) -> "TrainedModel":
        """The same network under test-time augmentation (inference.TTA: the image and its 1-pixel shifts)."""
        return self if isinstance(self.model, TTA) else replace(self, model=TTA(self.model).eval())


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu", tta: bool = False) -> TrainedModel:
    """Load a run folder: the model in eval mode with its preprocessing.

    An ensemble folder loads as one model averaging its members' probabilities.
    tta=True wraps the model in test-time augmentation (inference.TTA: the image and its 1-pixel shifts).
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config["model"] == ENSEMBLE:
        model = load_members(run_dir, config, device)
    else:
        model = _load_weights(run_dir, config)
    device = torch.device(device)
    model.to(device).eval()
    trained = TrainedModel(model, config, run_dir, device)
    return trained.with_tta() if tta else trained


def _load_weights(run_dir: Path, config: dict) -> torch.nn.Module:
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
    return model


# --- the images a run is tested on ---------------------------------------------------------------

def test_share(config: dict | TrainConfig) -> float:
    """The share of each class a folder without train/ and test/ holds out as the run's test images.

    Runs trained before --test-split existed held out --val-split's share and tested on it (it was
    their validation split too): they are still tested on the images they were tested on then.
    """
    recipe = asdict(config) if isinstance(config, TrainConfig) else (config.get("recipe") or {})
    return recipe["test_split"] if "test_split" in recipe else (recipe.get("val_split") or 0.0)


def test_origin(config: dict | TrainConfig, dataset: str | None = None) -> str:
    """Where a run's test images come from, in words, for the lines that report accuracies."""
    recipe = asdict(config) if isinstance(config, TrainConfig) else (config.get("recipe") or {})
    name = dataset or (config.dataset if isinstance(config, TrainConfig) else config.get("dataset", "mnist"))
    if not data_mod.test_is_held_out(name):
        return "its test/ folder" if name.startswith(data_mod.FOLDER) else f"{name}'s test set"
    if "test_split" not in recipe:
        return (f"{test_share(config):.0%} of each class held out by --val-split, also the validation images "
                f"(trained before --test-split existed)")
    return f"{test_share(config):.0%} of each class held out by --test-split, never trained or stopped on"


def test_split(config: dict | TrainConfig, data_dir=None, limit: int | None = None, dataset: str | None = None,
               download: bool = True):
    """(dataset name, the test images) of a run - its config.json, or the TrainConfig of a run
    being trained: the one place that decides, for every command.

    A folder without train/ and test/ is tested on the share of each class held out by
    --test-split (test_share). `dataset` names another dataset with the same classes to test on instead.
    """
    if isinstance(config, TrainConfig):
        config = {"dataset": config.dataset, "recipe": asdict(config)}
    name = dataset or config.get("dataset", "mnist")
    test = data_mod.load(name, "test", data_dir, download=download, test_split=test_share(config)).subset(limit)
    classes = config.get("classes") or test.classes
    if len(test.classes) != len(classes):
        raise DataError(f"{name} has {len(test.classes)} classes but the run was trained on "
                        f"{len(classes)} ({', '.join(classes)}); test on a dataset with the same classes")
    return name, test


# --- ensemble folders ----------------------------------------------------------------------------

def _evaluated_on(config: dict) -> dict:
    """What members must share to be averaged: the images they take, the classes they name."""
    dataset = config.get("dataset", "mnist")
    return {
        "classes": list(config.get("classes") or [str(i) for i in range(10)]),
        "in_channels": int(config.get("in_channels", 1)),
        "input_size": list(config.get("input_size") or [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE]),
        "normalization": {k: float(v) for k, v in (config.get("normalization") or {}).items()},
        "dataset": dataset,
        # A folder without train/ and test/ is tested on the share held out by --test-split: members
        # must hold out the same share, or one member's test images are another's training images.
        # (Decided from the name alone: loading for predict or serve must not need the images.)
        "test_split": test_share(config) if dataset.startswith(data_mod.FOLDER) else 0.0,
    }


def shared_config(configs: list[dict], names: list[str]) -> dict:
    """The settings all members share, or one RunError line naming the first disagreement."""
    first = _evaluated_on(configs[0])
    for config, name in zip(configs[1:], names[1:]):
        other = _evaluated_on(config)
        for key, value in first.items():
            if other[key] != value:
                raise RunError(f"ensemble members disagree on {key}: {names[0]} has {_show(value)}, {name} "
                               f"has {_show(other[key])}; members must be trained on the same data and classes")
    return first


def _show(value) -> str:
    if isinstance(value, list) and len(value) > 4:
        return ",".join(map(str, value[:4])) + ",..."
    return str(value)


def ensemble_config(members: list[str], member_configs: list[dict], labels: list[str] | None = None,
                    **extra) -> dict:
    shared = shared_config(member_configs, labels or members)
    share = shared.pop("test_split")
    return {"model": ENSEMBLE, "members": members, **shared,
            "recipe": {"test_split": share},  # read by evaluate like an ordinary run's recipe
            **extra, "created": datetime.now().isoformat(timespec="seconds"), "versions": versions()}


def member_dirs(run_dir: Path, config: dict) -> list[Path]:
    members = config.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise RunError(f"{run_dir / CONFIG} lists no members; it is not a complete ensemble config")
    dirs = [run_dir / m for m in members]
    for d in dirs:
        if not d.is_dir():
            raise RunError(f"ensemble member {d} is missing; restore that run folder or rebuild the "
                           f"ensemble with 'cnnlab ensemble RUN_DIR RUN_DIR ... --out DIR'")
    return dirs


def load_members(run_dir: Path, config: dict, device) -> Ensemble:
    """The Ensemble of an ensemble run folder (runs.load calls this), its members checked."""
    dirs = member_dirs(run_dir, config)
    trained = []
    for d in dirs:
        if read_config(d).get("model") == ENSEMBLE:
            raise RunError(f"ensemble member {d} is an ensemble itself; list its member folders instead")
        trained.append(load(d, device=device))
    shared_config([t.config for t in trained] + [config], [str(d) for d in dirs] + [str(run_dir)])
    return Ensemble([t.model for t in trained])
