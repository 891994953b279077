"""Run folders: what a training run leaves behind, written atomically, and loading it back.

A run folder holds
  model.safetensors       weights only (safetensors: loading never unpickles anything)
  config.json             model name, dataset, classes, normalisation, recipe, seed, library versions
  metrics.jsonl           one JSON object per epoch
  checkpoint.safetensors  everything needed to resume training (engine/checkpoint.py)
  .lock                   while a process writes the run: who it is (claim(); gone when it ends)
  history.jsonl           what training looked like as it went, one JSON event a line (HISTORY_KINDS):
                          the smoothed loss every few steps, each epoch's metrics, and small
                          snapshots of the first conv layer's weights (with the test accuracy then)
                          at the start, at the end of every epoch and --snapshots times per epoch

An ensemble folder holds ordinary run folders member-1/, member-2/, ... and its own config.json:
{"model": "ensemble", "members": ["member-1", ...], dataset, classes, normalization}. It loads as
one model that averages its members' probabilities (runs/inference.py's Ensemble).

One process at a time writes a run folder: claim() holds its lock file for as long as training
(or a resume, or an ensemble) runs, so a second writer gets one line instead of corrupting it.

test_split decides, for every command, which images a run is tested on.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import socket
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as save_tensors

from .. import __version__
from ..engine import checkpoint
from ..engine import data as data_mod
from ..engine.config import EVAL_CHUNK, TrainConfig
from ..engine.models import build_model, get_spec
from ..errors import CnnlabError, DataError, RunError
from ..files import atomic_write, make_dir, write_json
from .inference import TTA, Ensemble, predict_logits

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
HISTORY = "history.jsonl"
# Every history event has "kind", "epoch" (1-based; 0 before training) and "step" (steps done
# since training began, over all epochs), so a resumed run can drop what came after its checkpoint.
HISTORY_KINDS = {
    "start": "training began: steps_per_epoch, epochs, train_images, batch_size",
    "resume": "training continued from the checkpoint at this step",
    "step": "loss: mean batch loss since the previous step event; epoch_loss: mean over the epoch so "
            "far; seconds and images_per_second within the epoch",
    "epoch": "an epoch's metrics, the same numbers as its metrics.jsonl row",
    "snapshot": "the first conv layer: layer (null without one), shape, trained (false for a layer that "
                "is not trained), weights (flat, rounded to 5 decimals), and test_accuracy on test_images "
                "test images",
}
ENSEMBLE = "ensemble"  # the "model" of an ensemble folder's config.json
MEMBER = "member-{}"
LOCK = ".lock"

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are then not guarded against a second writer
    fcntl = None


def save_weights(model: torch.nn.Module, path) -> None:
    # contiguous() because safetensors refuses views; clone-free for ordinary parameters.
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, save_tensors(state))


def versions() -> dict:
    return {"cnnlab": __version__, "torch": torch.__version__, "torchvision": version("torchvision"),
            "numpy": version("numpy"), "python": platform.python_version()}


def new_run_dir(model: str, out: str | os.PathLike | None = None, log=None,
                parent: str | os.PathLike = "runs") -> "RunLock":
    """Create and claim a run folder: --out if given (it must not hold anything yet), else
    PARENT/<date-time>-<model>/. The caller holds the returned lock until the run ends."""
    if out is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(parent) / f"{stamp}-{model}"
        base.parent.mkdir(parents=True, exist_ok=True)
        path, i = base, 1
        while True:
            try:
                path.mkdir()  # exclusive: two runs started in the same second get two folders
                return claim(path, log)
            except FileExistsError:
                i += 1
                path = base.with_name(f"{base.name}-{i}")
    path = Path(out)
    check_out(path)
    make_dir(path)
    lock = claim(path, log)
    try:
        check_out(path)  # written to between the first look and the lock
    except BaseException:
        lock.release()
        raise
    return lock


def check_out(path) -> None:
    """One line when --out names a file, or a folder that holds anything but what a training
    killed before it wrote its settings leaves (its stale lock, a half-written temporary).
    Training looks before it loads its data, so a second writer hears at once."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir() and all(p.name == LOCK or _ORPHAN.match(p.name) for p in path.iterdir()):
        return
    if path.is_dir() and (path / LOCK).is_file():
        holder = _holder(path)
        if holder:
            raise RunError(_in_use(path, holder))
    hint = (f"; to continue that run: cnnlab train --resume {path}" if (path / CONFIG).is_file()
            else " or delete it")
    raise RunError(f"--out {path} already exists and is not empty; choose a new folder{hint} "
                   f"(cnnlab never overwrites a run)")


def new_run(cfg, info, parameters: int, out=None, log=None, precision: str | None = None,
            threads: int | None = None) -> "RunLock":
    """Create and claim a run folder for a training that starts now, with its config.json.

    precision: what autocast uses ("bf16" or "fp32"); threads: the CPU threads it trains with. The
    recipe keeps what was asked (precision "auto", threads None: chosen when training starts).
    """
    lock = new_run_dir(cfg.model, out, log)
    try:
        write_run_config(lock.run_dir, cfg, info, parameters, precision, threads)
    except BaseException:
        lock.release()
        raise
    return lock


def write_run_config(run_dir, cfg, info, parameters: int, precision: str | None = None,
                     threads: int | None = None) -> None:
    """config.json of a run that starts training now: everything loading it needs, and its recipe."""
    write_json(Path(run_dir) / CONFIG, {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "classes": list(info.classes),
        "in_channels": 1,
        "input_size": [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE],
        "normalization": {"mean": info.mean, "std": info.std},
        "parameters": parameters,
        "precision": {"asked": cfg.precision, "used": precision or cfg.precision},
        "threads": {"asked": cfg.threads, "used": threads or cfg.threads},
        "recipe": asdict(cfg),
        "seed": cfg.seed,
        "created": datetime.now().isoformat(timespec="seconds"),
        "versions": versions(),
    })


# --- one writer per run folder -------------------------------------------------------------------

class RunLock:
    """This process's hold on a run folder's lock file; release() (or leaving a `with`) lets go."""

    def __init__(self, run_dir: Path, fd: int | None):
        self.run_dir, self._fd = run_dir, fd

    def release(self) -> None:
        if self._fd is None:
            return
        # Removed while still held, so whoever opens the name next gets a fresh file (claim
        # retries when it locked a file that was removed meanwhile).
        try:
            if os.stat(self.run_dir / LOCK).st_ino == os.fstat(self._fd).st_ino:
                (self.run_dir / LOCK).unlink()
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> Path:
        return self.run_dir

    def __exit__(self, *exc) -> None:
        self.release()


def claim(run_dir, log=None) -> RunLock:
    """Hold run_dir's lock for this process, or RunError naming the process that holds it.

    The lock is an flock on RUN/.lock, which the kernel drops when its process ends however it
    ends, so a process killed with -9 never blocks the folder: its file stays with its pid in it,
    and the next claim says so and takes over. The file also says who holds it, for the message.
    Files a killed writer left half-written (atomic_write's temporaries) are removed here, since
    only the holder writes.
    """
    run_dir = Path(run_dir)
    path = run_dir / LOCK
    if fcntl is None:
        return RunLock(run_dir, None)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot write to {run_dir} ({e.strerror or e}); choose a folder you can write to") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunError(_in_use(run_dir, holder)) from None
        except OSError:  # a filesystem without locks: go on unguarded rather than refuse to train
            return RunLock(run_dir, fd)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # its holder removed it as we locked it: lock the file that is there now
    stale = _read_holder(fd)
    if stale and log:
        log(f"note: {run_dir} was left locked by {stale}, which has ended without unlocking it (it was "
            f"killed or crashed); taking it over")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now().isoformat(timespec="seconds"),
          "command": " ".join(["cnnlab", *sys.argv[1:]])[:200]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    _remove_orphans(run_dir)
    return RunLock(run_dir, fd)


def _read_holder(fd: int) -> str:
    """'process 123 on host h (cnnlab train ..., since ...)' from a lock file; '' when empty."""
    try:
        who = json.loads(os.pread(fd, 4096, 0) or b"null")
    except (ValueError, RecursionError, OSError):
        return "another process"
    if not isinstance(who, dict):
        return "another process" if who is not None else ""
    return (f"process {who.get('pid')} on host {who.get('host')} ({who.get('command')}, since "
            f"{who.get('since')})")


def _holder(run_dir: Path) -> str:
    """Who holds run_dir's lock now ('' when nobody does), without taking it."""
    if fcntl is None:
        return ""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return ""
    except BlockingIOError:
        return _read_holder(fd) or "another process"
    except OSError:
        return ""
    finally:
        os.close(fd)


def _in_use(run_dir: Path, holder: str) -> str:
    return (f"{run_dir} is being written by {holder or 'another process'}; two processes writing one "
            f"run folder would corrupt it: wait for that one to end (or stop it), or choose another folder")


# atomic_write's temporary files: ".NAME.XXXXXXXX.tmp" (tempfile.mkstemp's 8 random characters).
_ORPHAN = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")


def _remove_orphans(run_dir: Path) -> None:
    """Delete the temporaries a writer killed mid-write left beside the run's own files."""
    own = {WEIGHTS, CONFIG, METRICS, checkpoint.CHECKPOINT}
    for p in run_dir.iterdir():
        m = _ORPHAN.match(p.name)
        if m and m.group(1) in own and p.is_file():
            p.unlink(missing_ok=True)


def update_config(run_dir, **values) -> None:
    write_json(Path(run_dir) / CONFIG, {**read_config(run_dir), **values})


def write_metrics(run_dir, rows: list[dict]) -> None:
    atomic_write(Path(run_dir) / METRICS, "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows))


def append_metrics(run_dir, row: dict) -> None:
    path = Path(run_dir) / METRICS
    old = path.read_text() if path.exists() else ""
    atomic_write(path, old + json.dumps(row, allow_nan=False) + "\n")


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except (ValueError, RecursionError):
                raise RunError(f"{path} line {n} is not valid JSON; the metrics file is corrupt") from None
    return rows


def append_history(run_dir, event: dict) -> None:
    """Add one event to the run's history.jsonl: a single append of one whole line, so a reader
    sees complete lines and at most the start of the line being written. (No fsync: the history
    is a picture of training, not needed to resume it; the checkpoint is.)"""
    line = (json.dumps(_finite(event), separators=(",", ":")) + "\n").encode()
    fd = os.open(Path(run_dir) / HISTORY, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        while line:
            line = line[os.write(fd, line):]
    finally:
        os.close(fd)


def _finite(value):
    """value with NaN and infinities as null (a diverged loss): JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def read_history(run_dir, offset: int = 0) -> tuple[list[dict], int]:
    """(events, offset after them) from byte `offset` of history.jsonl: complete lines only, so
    a caller following a training passes the offset back to get what was added since. A damaged
    line (a crash mid-write) is skipped: the rest of the history still shows."""
    path = Path(run_dir) / HISTORY
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            raw = f.read()
    except FileNotFoundError:
        return [], offset
    end = raw.rfind(b"\n") + 1
    events = []
    for line in raw[:end].splitlines():
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(event, dict) and "kind" in event:
            events.append(event)
    return events, offset + end


def trim_history(run_dir, step: int) -> None:
    """Keep the events up to `step` (a resumed run continues from its checkpoint there)."""
    events, _ = read_history(run_dir)
    atomic_write(Path(run_dir) / HISTORY, "".join(json.dumps(e, separators=(",", ":")) + "\n"
                                                  for e in events if e.get("step", 0) <= step))


def read_config(run_dir) -> dict:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist; pass the folder that "
                       f"'cnnlab train' printed (it holds {CONFIG} and {WEIGHTS})")
    path = run_dir / CONFIG
    if not path.is_file():
        if (Path(run_dir) / LOCK).is_file():  # claimed, then stopped before its settings were written
            raise RunError(f"{run_dir} holds no {CONFIG}: its training was stopped before it began, so nothing "
                           f"was trained; start it again with 'cnnlab train --out {run_dir}' and its settings")
        raise RunError(f"{run_dir} is not a cnnlab run: {CONFIG} is missing")
    try:
        config = json.loads(path.read_text())
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        raise RunError(f"{path} is corrupt (not valid JSON); retrain or restore the run") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise RunError(f"{path} does not name a model; it is not a cnnlab run config")
    check_preprocessing(config, path)
    return config


def check_preprocessing(config: dict, where, fix: str = "restore the file or train the run again") -> None:
    """The classes and normalisation a model's inputs and outputs need (a run's config.json, an
    exported file's metadata): a list of class names, a finite mean and a finite std > 0, or one
    RunError line naming `where` and saying how to `fix` it."""
    classes = config.get("classes")
    if classes is not None and not (isinstance(classes, list) and len(classes) >= 2
                                    and all(isinstance(c, str) for c in classes)):
        raise RunError(f"{where}: 'classes' must be a list of at least 2 class names, got {_show(classes)}; {fix}")
    norm = config.get("normalization")
    if norm is None:
        return
    mean, std = (norm.get(k) if isinstance(norm, dict) else None for k in ("mean", "std"))
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (mean, std)) \
            or std <= 0:
        raise RunError(f"{where}: 'normalization' must hold a finite mean and a std greater than 0, got "
                       f"{_show(norm)}; {fix}")


def as_pixels(images, size: int = data_mod.IMAGE_SIZE) -> torch.Tensor:
    """Images as a tensor of pixel values [N, H, W] or [N, 1, H, W] (0-255, uint8 or float): a NumPy
    array or tensor [H, W], [N, H, W] or [N, 1, H, W], a PIL image, or a list of any of them."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise CnnlabError("no images given (an empty list)")
        parts = [as_pixels(im, size) for im in images]
        if len({p.dtype for p in parts}) > 1:
            parts = [p.float() for p in parts]
        return torch.cat([p.reshape(-1, size, size) for p in parts])
    if isinstance(images, Image.Image):
        images = np.asarray(images.convert("L"))
    if isinstance(images, np.ndarray):
        if images.dtype.kind not in "uif":
            raise CnnlabError(f"images must hold numbers (pixel values 0-255), got a NumPy array of {images.dtype}")
        # (a copy: PIL's arrays are read-only, and the caller's array stays the caller's)
        images = torch.from_numpy(np.array(images, dtype=np.uint8 if images.dtype == np.uint8 else np.float32))
    if not isinstance(images, torch.Tensor):
        raise CnnlabError(f"images must be a NumPy array, a PIL image, a torch tensor or a list of them, "
                          f"not {type(images).__name__}")
    x = images.unsqueeze(0) if images.dim() == 2 else images
    if not (x.dim() == 3 or (x.dim() == 4 and x.shape[1] == 1)) or tuple(x.shape[-2:]) != (size, size):
        raise CnnlabError(f"images must be grayscale {size}x{size}: [{size}, {size}], [N, {size}, {size}] or "
                          f"[N, 1, {size}, {size}], got shape {list(images.shape)}; photos and scans of other sizes "
                          f"go through cnnlab.load_classifier and cnnlab.predict_files (cnnlab predict)")
    if x.dtype == torch.uint8:
        return x
    x = x.float()  # (the network's weights are float32)
    if not bool(torch.isfinite(x).all()):
        raise CnnlabError("images hold NaN or infinite values; pixel values must be finite numbers 0-255")
    return x


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

    # images: pixel values 0-255 (white on black, as the dataset's), as as_pixels takes them.
    def preprocess(self, images) -> torch.Tensor:
        """Images -> the normalised float batch [N, 1, H, W] the model expects."""
        return data_mod.normalize(as_pixels(images), self.mean, self.std).to(self.device)

    @torch.no_grad()
    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        return predict_logits(self.model, as_pixels(images), self.mean, self.std, self.device,
                              batch_size or EVAL_CHUNK)

    def predict_proba(self, images) -> torch.Tensor:
        """[N, classes] probabilities (a torch tensor; .numpy() for an array)."""
        return self.logits(images).softmax(dim=1)

    def predict(self, images) -> torch.Tensor:
        """[N] class indices; .classes names them."""
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
        if (run_dir / checkpoint.CHECKPOINT).is_file():
            raise RunError(f"{run_dir} has no {WEIGHTS} yet: its training did not finish; finish it with "
                           f"'cnnlab train --resume {run_dir}'")
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
    broken = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if broken:
        raise RunError(f"{weights} holds NaN or infinite weights ({', '.join(broken[:3])}); the training that "
                       f"wrote them diverged: train again with a lower --lr")
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
    return str(value)[:80]


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


def run_files(run_dir) -> list[Path]:
    """The files of a run folder's format (weights, checkpoint, config, metrics, plans; members too):
    a command's inputs, which none of its outputs may replace."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.rglob("*") if p.suffix in (".safetensors", ".json", ".jsonl")]
