"""Run folders: what a training run leaves behind, written atomically, and loading it back.

A run folder holds (an ensemble's folder holds run folders instead: see cnnlab.ensemble)
  model.safetensors  weights only (safetensors: loading never unpickles anything)
  config.json        model name, dataset, classes, normalisation, recipe, seed, library versions
  metrics.jsonl      one JSON object per epoch
  checkpoint.safetensors  everything needed to resume training (see save_checkpoint)
"""

from __future__ import annotations

import hashlib
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
CHECKPOINT = "checkpoint.safetensors"
CHECKPOINT_FORMAT = "cnnlab-checkpoint-1"


_UMASK = os.umask(0)
os.umask(_UMASK)


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
        # mkstemp creates the file 0600; give it the mode an ordinary open() would (0666 - umask).
        os.chmod(tmp, 0o666 & ~_UMASK)
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
    def logits(self, images: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
        from .evaluate import CHUNK, predict_logits
        return predict_logits(self.model, images, self.mean, self.std, self.device, batch_size or CHUNK)

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).softmax(dim=1)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits(images).argmax(dim=1)

    def with_tta(self) -> "TrainedModel":
        """The same network under test-time augmentation (ensemble.TTA: the image and its 1-pixel shifts)."""
        from dataclasses import replace

        from .ensemble import TTA
        return self if isinstance(self.model, TTA) else replace(self, model=TTA(self.model).eval())


def load(run_dir: str | os.PathLike, device: str | torch.device = "cpu", tta: bool = False) -> TrainedModel:
    """Load a run folder: the model in eval mode with its preprocessing.

    An ensemble folder (cnnlab.ensemble) loads as one model averaging its members' probabilities.
    tta=True wraps the model in test-time augmentation (ensemble.TTA: the image and its 1-pixel shifts).
    """
    from . import ensemble

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if config["model"] == ensemble.ENSEMBLE:
        model = ensemble.load_members(run_dir, config, device)
    else:
        model = _load_weights(run_dir, config)
    device = torch.device(device)
    model.to(device).eval()
    trained = TrainedModel(model, config, run_dir, device)
    return trained.with_tta() if tta else trained


def _load_weights(run_dir: Path, config: dict) -> torch.nn.Module:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

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


# --- Resumable checkpoints -----------------------------------------------------------------------
# One safetensors file: every tensor (weights, optimiser moments, RNG states) as a tensor, and all
# other state as JSON in the file's metadata, with a SHA-256 over both. Loading parses JSON and raw
# tensor bytes only - never pickle - so a checkpoint from anywhere cannot run code, and a damaged
# or edited one is caught by the checksum. One file means one atomic rename per checkpoint.

def pack(obj, prefix: str, tensors: dict):
    """Nested state (an optimiser or scheduler state_dict) -> JSON-able, moving tensors into `tensors`."""
    from collections import Counter

    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(obj, Counter):  # MultiStepLR's milestones: a plain dict would break its lookups
        return {"__counter__": [[pack(k, f"{prefix}/k", tensors), v] for k, v in obj.items()]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: pack(v, f"{prefix}/{k}", tensors) for k, v in obj.items()}}
        return {"__items__": [[k, pack(v, f"{prefix}/{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [pack(v, f"{prefix}/{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix} in a checkpoint")


def unpack(obj, tensors: dict):
    """The inverse of pack."""
    from collections import Counter

    if isinstance(obj, list):
        return [unpack(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    (tag, value), = obj.items()
    if tag == "__tensor__":
        return tensors[value]
    if tag == "__counter__":
        return Counter({unpack(k, tensors): v for k, v in value})
    if tag == "__dict__":
        return {k: unpack(v, tensors) for k, v in value.items()}
    if tag == "__items__":
        return {k: unpack(v, tensors) for k, v in value}
    if tag == "__tuple__":
        return tuple(unpack(v, tensors) for v in value)
    raise ValueError(f"unknown tag {tag}")


def _digest(tensors: dict, state_json: str) -> str:
    h = hashlib.sha256(state_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_checkpoint(path, tensors: dict, state: dict) -> None:
    """Write tensors + JSON-able state as one checkpoint file, atomically."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state_json = json.dumps(state)
    metadata = {"format": CHECKPOINT_FORMAT, "state": state_json, "sha256": _digest(tensors, state_json)}
    atomic_write(path, save(tensors, metadata=metadata))


def load_checkpoint(path) -> tuple[dict, dict]:
    """(tensors, state) of a checkpoint, verified; RunError with one line for anything wrong."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    fix = "restore it from a backup or start a new run"
    if not path.is_file():
        raise RunError(f"{path.parent} has no {path.name} to resume from (it was stopped before training "
                       f"began, or written by an older cnnlab); start a new run")
    raw = path.read_bytes()
    try:
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8:8 + header_len])
        metadata = header.get("__metadata__") or {}
        tensors = load(raw)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError) as e:
        detail = " ".join(str(e).split())[:120] or "unreadable header"
        raise RunError(f"{path} is truncated or corrupt ({detail}); {fix}") from None
    if metadata.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not a cnnlab checkpoint (format {metadata.get('format')!r}, "
                       f"expected {CHECKPOINT_FORMAT!r}); {fix}")
    state_json = metadata.get("state", "")
    if _digest(tensors, state_json) != metadata.get("sha256"):
        raise RunError(f"{path} fails its SHA-256 check: it was modified or damaged after it was "
                       f"written; {fix}")
    return tensors, json.loads(state_json)
