"""The training engine: one loop that every recipe and command uses.

Batches are sliced straight from the in-memory uint8 tensors of cnnlab.data (a random
permutation per epoch, then contiguous index slices), augmented, converted and normalised as
whole tensors. There is no per-sample Python and no DataLoader worker process.

Speed settings (each measured on a 2-core AMD EPYC Zen 4 with AVX512-BF16; see docs/benchmarks.md):
channels_last memory format and bf16 autocast (precision="auto" turns bf16 on only where the
hardware computes it natively: a CUDA GPU from Ampere on, or a CPU with AVX512-BF16 or AMX; where bf16
is only emulated it made training 1.4-1.8x slower, see native_bf16).
torch.compile is available but off by default: its compile time outweighs its gain for these
small networks and short runs.

The same loop runs resumably (a checkpoint per epoch and on Ctrl-C/SIGTERM; see runs.py for the
file), with early stopping on a validation split, and under torchrun as one of several
DistributedDataParallel processes (each takes its share of every global batch; rank 0 alone
prints, evaluates and writes).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import augment as augment_mod
from . import data as data_mod
from . import runs
from .errors import CnnlabError, Interrupted, RunError
from .evaluate import CHUNK as EVAL_CHUNK
from .evaluate import accuracy as split_accuracy
from .models import build_model, count_parameters, get_spec


@dataclass
class TrainConfig:
    """Everything that decides what a run computes. Recipes (cnnlab.recipes) are named sets of these."""

    model: str = "simple_cnn"
    dataset: str = "mnist"
    epochs: int = 2
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    schedule: str = "constant"
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    limit_train: int | None = None
    limit_test: int | None = None
    recipe: str = "lecture"
    augment: str = "none"            # one of augment.KINDS, applied to every training batch
    label_smoothing: float = 0.0
    precision: str = "auto"          # auto | fp32 | bf16 (autocast; weights stay float32)
    channels_last: bool = True
    compile: bool = False            # torch.compile the model (pays only for long runs)
    eval_batch_size: int = EVAL_CHUNK  # images per evaluation chunk (evaluate.CHUNK says why)
    target_accuracy: float | None = None  # stop as soon as test accuracy reaches this fraction
    eval_every: int | None = None    # with a target: evaluate every N steps (default 4x per epoch)
    val_split: float = 0.0           # share of each class held out from training for validation
    patience: int | None = None      # stop after this many epochs without a better validation accuracy

    def validate(self) -> "TrainConfig":
        get_spec(self.model)
        if self.dataset.startswith(data_mod.FOLDER):  # absolute, so evaluate works from anywhere
            self.dataset = data_mod.FOLDER + str(Path(self.dataset[len(data_mod.FOLDER):]).expanduser().resolve())
        data_mod.dataset_info(self.dataset)
        if not 0 <= self.val_split < 1:
            raise CnnlabError(f"--val-split must be a fraction in [0, 1) such as 0.1, got {self.val_split}")
        if self.patience is not None and self.patience < 1:
            raise CnnlabError(f"--patience must be at least 1, got {self.patience}")
        if self.patience is not None and not self.val_split:
            raise CnnlabError("--patience needs a validation split to watch; add --val-split 0.1 (for example)")
        for name, low in (("epochs", 1), ("batch_size", 1), ("limit_train", 1), ("limit_test", 1), ("threads", 1),
                          ("eval_batch_size", 1), ("eval_every", 1)):
            value = getattr(self, name)
            if value is not None and value < low:
                raise CnnlabError(f"--{name.replace('_', '-')} must be at least {low}, got {value}")
        if not self.lr > 0:
            raise CnnlabError(f"--lr must be greater than 0, got {self.lr}")
        if self.weight_decay < 0:
            raise CnnlabError(f"--weight-decay must be 0 or more, got {self.weight_decay}")
        if self.optimizer not in OPTIMIZERS:
            raise CnnlabError(f"unknown optimizer '{self.optimizer}'; choose one of: {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise CnnlabError(f"unknown schedule '{self.schedule}'; choose one of: {', '.join(SCHEDULES)}")
        if self.augment not in augment_mod.KINDS:
            raise CnnlabError(f"unknown augmentation '{self.augment}'; choose one of: {', '.join(augment_mod.KINDS)}")
        if not 0 <= self.label_smoothing < 1:
            raise CnnlabError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise CnnlabError(f"unknown precision '{self.precision}'; choose one of: {', '.join(PRECISIONS)}")
        if self.target_accuracy is not None and not 0 < self.target_accuracy <= 1:
            raise CnnlabError(f"--target-accuracy must be a fraction in (0, 1] such as 0.99, got {self.target_accuracy}")
        resolve_precision(self.precision, resolve_device(self.device))
        return self


# Training images a model's init_from_data sees (the first ones: no randomness). For fast_cnn's
# whitened first conv, 2,000 MNIST images give 392,000 patches, and 10,000 the same accuracy.
INIT_SAMPLE = 2000


def _fused(params) -> dict:
    """fused=True where PyTorch has a fused Adam kernel for these tensors: one kernel per step
    instead of a dozen foreach passes. Measured on fast_cnn's 30k parameters (1 thread): 0.43 ms
    against 1.12 ms per step (foreach), about 0.3 ms of each ~12 ms step of the fast recipe."""
    return {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) else {}


OPTIMIZERS = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, **_fused(params)),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, **_fused(params)),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, nesterov=True,
                                             weight_decay=c.weight_decay),
}


def _scheduler(optimizer, cfg: "TrainConfig", total_steps: int):
    """A learning-rate schedule stepped once per batch (None: the rate stays at --lr)."""
    S = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":  # warm up to lr over 25% of steps, then anneal to ~0
        if total_steps < 5:  # OneCycleLR divides by zero when its warm-up has no step of its own
            raise CnnlabError(f"--schedule onecycle needs at least 5 training steps, this run has "
                              f"{total_steps}; use more images, more epochs, a smaller --batch-size "
                              f"or another --schedule")
        return S.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.25)
    if cfg.schedule == "cosine":
        return S.CosineAnnealingLR(optimizer, T_max=total_steps)
    if cfg.schedule == "step":  # divide by 10 at 50% and 75% of training
        return S.MultiStepLR(optimizer, milestones=[total_steps // 2, total_steps * 3 // 4], gamma=0.1)
    return None


SCHEDULES = ["constant", "onecycle", "cosine", "step"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise CnnlabError("--device mps was asked for but Apple's MPS is not available; use --device cpu or auto")
    if name not in ("cuda", "mps"):
        raise CnnlabError(f"unknown device '{name}'; choose auto, cpu, cuda or mps")
    return torch.device(name)


PRECISIONS = ["auto", "fp32", "bf16"]


def native_bf16(device: torch.device) -> bool:
    """Does this device compute bf16 natively (so autocast to bf16 is faster, not emulated)?"""
    if device.type == "cuda":
        # Without including_emulation=False, pre-Ampere GPUs (T4, V100) count too, where bf16 is emulated.
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # The CPU's own bf16 instructions: AVX512-BF16 (Zen 4, Cooper Lake) or AMX (Sapphire Rapids).
        # Not oneDNN's _is_mkldnn_bf16_supported: it also says yes on AVX-512 CPUs that only emulate
        # bf16, where autocast made training slower. Measured on a 2-core Xeon (Ice Lake, no
        # AVX512-BF16), 2 threads: bf16 matmul 65 GFLOP/s against 303 in float32; the fast recipe
        # 7.3 s in bf16 against 4.1 s in float32, the lecture recipe 26.9 s against 19.3 s.
        # (Older torch without these checks: float32, the safe choice.)
        checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check)
    return False


def resolve_precision(name: str, device: torch.device) -> str:
    """"fp32" or "bf16": what autocast will use for this run."""
    if name == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if name == "bf16" and device.type == "mps":
        raise CnnlabError("--precision bf16 is not supported on MPS; use --precision fp32 or auto")
    return name


@dataclass
class EpochStats:
    epoch: int
    mean_loss: float
    seconds: float
    test_accuracy: float
    images_per_second: float
    val_accuracy: float | None = None


@dataclass
class TrainResult:
    config: TrainConfig
    run_dir: Path | None
    epochs: list[EpochStats] = field(default_factory=list)
    test_accuracy: float = 0.0
    parameters: int = 0
    model: torch.nn.Module | None = None
    precision: str = "fp32"
    train_seconds: float = 0.0            # training + periodic evaluation, excluding data loading
    target_seconds: float | None = None   # when --target-accuracy was met: seconds to get there
    target_images: int | None = None      # ... and the training images seen until then
    best_epoch: int | None = None         # with --patience: the epoch whose weights were kept

    def to_json(self) -> dict:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "model": self.config.model,
            "dataset": self.config.dataset,
            "recipe": self.config.recipe,
            "parameters": self.parameters,
            "test_accuracy": self.test_accuracy,
            "precision": self.precision,
            "train_seconds": self.train_seconds,
            "target_accuracy": self.config.target_accuracy,
            "target_reached": None if self.config.target_accuracy is None else self.target_seconds is not None,
            "target_seconds": self.target_seconds,
            "target_images": self.target_images,
            "best_epoch": self.best_epoch,
            "epochs": [asdict(e) for e in self.epochs],
            "config": asdict(self.config),
        }


def _config_json(cfg: TrainConfig, info: data_mod.DatasetInfo, params: int) -> dict:
    return {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "classes": list(info.classes),
        "in_channels": 1,
        "input_size": [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE],
        "normalization": {"mean": info.mean, "std": info.std},
        "parameters": params,
        "recipe": asdict(cfg),
        "seed": cfg.seed,
        "created": datetime.now().isoformat(timespec="seconds"),
        "versions": runs.versions(),
    }


def _progress(enabled: bool):
    """A rich progress bar on stderr; a no-op context when disabled (tests, --json, pipes)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:,.0f} img/s"),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))


def _batch(images, labels, idx, cfg: TrainConfig, info, gen, memory_format):
    """One training batch: gather uint8 rows, augment and normalise as whole tensors."""
    x = images[idx].unsqueeze(1).float()
    x = augment_mod.apply(x, cfg.augment, gen)
    x = data_mod.normalize(x, info.mean, info.std).contiguous(memory_format=memory_format)
    return x, labels[idx]


# --- Reliability helpers: several processes, signals, checkpoints --------------------------------

@dataclass
class _Processes:
    """This process's place among torchrun's processes; rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # we joined torchrun's group, so we leave it when training ends

    @property
    def main(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every process when it is True on any (so all stop at the same step)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world == 1:
            return value
        value = value.clone()
        torch.distributed.all_reduce(value)
        return value / self.world


def _start_processes(cfg: TrainConfig) -> _Processes:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) when WORLD_SIZE > 1."""
    device = resolve_device(cfg.device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Processes(device=device)
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CnnlabError(f"torchrun training runs on CPUs (gloo) or CUDA GPUs (NCCL), not on {device.type}; "
                          f"pass --device cpu")
    if cfg.batch_size % world:
        raise CnnlabError(f"--batch-size {cfg.batch_size} is the global batch and must split evenly over "
                          f"the {world} processes; use a multiple of {world}")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Processes(dist.get_rank(), world, device, owns)


class _StopRequest:
    """SIGINT / SIGTERM while training: remember it so the loop can finish its step, checkpoint
    and leave. The same signal again stops at once (the last checkpoint stays intact: writes are
    atomic). A different one is not a repeat: on Ctrl-C, torchrun's workers get SIGINT from the
    terminal and SIGTERM from torchrun at the same moment."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum == signum:
            raise KeyboardInterrupt
        self.signum = self.signum or signum

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _rng_tensors(device: torch.device, generator_states: dict) -> dict:
    out = {"rng/torch": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng/cuda"] = torch.cuda.get_rng_state(device)
    out.update({f"rng/{k}": state for k, state in generator_states.items()})
    return out


def _save_checkpoint(run_dir: Path, cfg: TrainConfig, model, optimizer, scheduler, rngs: dict,
                     best: dict | None, state: dict) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    tensors.update(rngs)
    if best:
        tensors.update({f"best/{k}": v for k, v in best.items()})
    state = {**state, "config": asdict(cfg),
             "optimizer": runs.pack(optimizer.state_dict(), "optim", tensors),
             "scheduler": runs.pack(scheduler.state_dict(), "sched", tensors) if scheduler else None}
    runs.save_checkpoint(run_dir / runs.CHECKPOINT, tensors, state)


# Settings a resumed run may change: where and how fast it runs, and (with a constant learning
# rate, where nothing depends on the total) how many epochs it runs in all.
RESUME_MAY_CHANGE = ("device", "threads", "epochs")


def _resumed_config(state: dict, run_dir: Path, overrides: dict) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    saved = state.get("config") or {}
    if set(saved) - names:
        raise RunError(f"{run_dir} was written by another cnnlab version (unknown settings "
                       f"{', '.join(sorted(set(saved) - names))}); it cannot be resumed by this one")
    cfg = TrainConfig(**saved)
    fixed = sorted(k for k, v in overrides.items() if k not in RESUME_MAY_CHANGE and v != getattr(cfg, k))
    if fixed:
        raise CnnlabError(f"--resume continues {run_dir} with its saved settings; drop "
                          f"{', '.join('--' + k.replace('_', '-') for k in fixed)} (only --epochs, "
                          f"--device and --threads may change)")
    epochs = overrides.get("epochs", cfg.epochs)
    if epochs != cfg.epochs and cfg.schedule != "constant":
        raise CnnlabError(f"--epochs cannot change on resume with the {cfg.schedule} schedule (it is "
                          f"planned over {cfg.epochs} epochs); resume without --epochs")
    if epochs < state["epoch"] or (epochs == state["epoch"] and not state["step"]) or state.get("finished"):
        how = (f"stopped early at epoch {state['epoch']}" if state.get("finished")
               else f"already finished {state['epoch']} epochs")
        raise CnnlabError(f"{run_dir} {how}; nothing to resume"
                          + ("" if cfg.schedule != "constant" or state.get("finished")
                             else f" (pass --epochs N with N > {state['epoch']} to train further)"))
    return TrainConfig(**{**saved, **{k: v for k, v in overrides.items() if k in RESUME_MAY_CHANGE}}).validate()


def train(config: TrainConfig | None = None, *, data_dir=None, out=None, save: bool = True,
          progress: bool = True, log: Callable[[str], None] | None = print, resume=None,
          **overrides) -> TrainResult:
    """Train a model and (when save) write its run folder. Keyword overrides set TrainConfig fields.

    resume=RUN_DIR continues an interrupted run from its checkpoint, with its saved settings.

    >>> cnnlab.train(model="simple_cnn", epochs=1, limit_train=6000)   # doctest: +SKIP
    """
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    if resume is not None:
        if not (Path(resume) / runs.CONFIG).is_file():
            runs.read_config(resume)  # the one-line error for a missing or non-run folder
        ckpt, state = runs.load_checkpoint(Path(resume) / runs.CHECKPOINT)
        cfg = _resumed_config(state, Path(resume), {**(asdict(config) if config else {}), **overrides})
    else:
        cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides}).validate()
        ckpt, state = None, None

    procs = _start_processes(cfg)
    try:
        return _train(cfg, procs, data_dir, out, save, progress, (log if procs.main else None) or (lambda s: None),
                      resume, ckpt, state)
    finally:
        if procs.owns_group:
            torch.distributed.destroy_process_group()


def _train(cfg, procs, data_dir, out, save, progress, log, resume, ckpt, state) -> TrainResult:
    device = procs.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision = resolve_precision(cfg.precision, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    info = data_mod.dataset_info(cfg.dataset)
    train_split = data_mod.load(cfg.dataset, "train", data_dir, val_split=cfg.val_split).subset(cfg.limit_train)
    test_split = data_mod.load(cfg.dataset, "test", data_dir, val_split=cfg.val_split).subset(cfg.limit_test)
    for split in (train_split, test_split):
        if data_mod.skipped_warning(split):
            log(data_mod.skipped_warning(split))
    val_split = None
    if cfg.val_split and data_mod.test_is_held_out(cfg.dataset):
        val_split = test_split  # a folder without train/ and test/: its held-out part is both
    elif cfg.val_split:
        train_split, val_split = data_mod.hold_out(train_split, cfg.val_split)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=len(info.classes)).to(device, memory_format=memory_format)
    params = count_parameters(model)
    if resume is None and hasattr(model, "init_from_data"):  # (resuming loads those layers instead)
        sample = train_split.images[:INIT_SAMPLE].to(device)
        model.init_from_data(data_mod.normalize(sample, info.mean, info.std))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = OPTIMIZERS[cfg.optimizer](trainable, cfg)
    # Same seeds on every process: shuffles agree (each takes its own slice of one order), and
    # with equal shards the generators stay in step, so rank 0's states resume every rank.
    shuffle = torch.Generator().manual_seed(cfg.seed)
    augment_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    forward = model
    if procs.world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    forward = torch.compile(forward) if cfg.compile else forward

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def accuracy(split: data_mod.Split) -> float:
        # In float32, like `cnnlab evaluate`, predict, serve and the exports, so the accuracy a run
        # reports is the one every other command gives back. Under bf16 the two differed by 10 of
        # 2,000 test images for a 95% model (borderline digits); fp32 costs ~0.2 s per 10,000 here.
        return split_accuracy(model, split, info.mean, info.std, device, cfg.eval_batch_size)

    # On a GPU the whole uint8 training set (47 MB for MNIST) moves once; batches are sliced there.
    images, labels = train_split.images.to(device), train_split.labels.to(device)
    n = len(labels)
    # Under torchrun each process takes every world-th image of each global batch; the last,
    # partial batch is dropped so that every process takes the same number of steps.
    steps = n // cfg.batch_size if procs.world > 1 else (n + cfg.batch_size - 1) // cfg.batch_size
    if steps < 1:
        raise CnnlabError(f"{n} training images do not fill one global batch of {cfg.batch_size}; lower --batch-size")
    eval_every = cfg.eval_every or max(1, steps // 4)
    scheduler = _scheduler(optimizer, cfg, steps * cfg.epochs)

    result = TrainResult(cfg, None, parameters=params, model=model, precision=precision)
    first_epoch, first_step, loss_before, seconds_before = 1, 0, 0.0, 0.0
    best, best_acc, bad_epochs = None, -1.0, 0
    if resume is not None:
        run_dir = Path(resume)
        if state.get("classes") != list(info.classes) or state.get("n_train") != n:
            raise RunError(f"the training data of {run_dir} changed since its checkpoint (now {n:,} images "
                           f"in classes {', '.join(info.classes)}; then {state.get('n_train')} in "
                           f"{', '.join(state.get('classes') or [])}); resume needs the same data")
        try:
            model.load_state_dict({k[6:]: v for k, v in ckpt.items() if k.startswith("model/")})
            optimizer.load_state_dict(runs.unpack(state["optimizer"], ckpt))
            # Checkpoints store tensors contiguous; give each moment its parameter's memory layout
            # again (channels_last), since the fused Adam kernel pairs elements in memory order.
            for p, s in optimizer.state.items():
                for k, v in s.items():
                    if v.shape == p.shape and v.stride() != p.stride():
                        s[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)
            if scheduler:
                scheduler.load_state_dict(runs.unpack(state["scheduler"], ckpt))
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunError(f"{run_dir / runs.CHECKPOINT} does not fit model '{cfg.model}' with "
                           f"{cfg.optimizer}: {' '.join(str(e).split())[:200]}") from None
        torch.set_rng_state(ckpt["rng/torch"])
        if "rng/cuda" in ckpt and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng/cuda"], device)
        shuffle.set_state(ckpt["rng/shuffle"])
        augment_gen.set_state(ckpt["rng/augment"])
        result.epochs = [EpochStats(**e) for e in state["epochs"]]
        first_epoch, first_step = state["epoch"] + 1, state["step"]
        loss_before, seconds_before = state["loss_sum"], state["seconds"]
        best_acc, bad_epochs, result.best_epoch = state["best_acc"], state["bad_epochs"], state["best_epoch"]
        best = {k[5:]: v for k, v in ckpt.items() if k.startswith("best/")} or None
        if procs.main:  # the checkpoint is the truth: drop metric rows written after it
            runs.atomic_write(run_dir / runs.METRICS, "".join(json.dumps(asdict(e)) + "\n" for e in result.epochs))
            if cfg.epochs != state["config"]["epochs"]:
                runs.write_json(run_dir / runs.CONFIG, {**runs.read_config(run_dir), "recipe": asdict(cfg)})
        log(f"resuming {run_dir} at epoch {first_epoch}, step {first_step}/{steps}")
    elif save and procs.main:
        run_dir = runs.new_run_dir(cfg.model, out)
        runs.write_json(run_dir / runs.CONFIG, _config_json(cfg, info, params))
    else:
        run_dir = None
    writer = run_dir if procs.main else None  # only rank 0 writes
    result.run_dir = run_dir
    n_trained = count_parameters(trainable)
    log(f"training {cfg.model} ({params:,} parameters" + (f", {n_trained:,} of them trained" if n_trained < params else "")
        + f") on {cfg.dataset}: {n:,} train / "
        + (f"{len(val_split):,} validation / " if val_split is not None else "")
        + f"{len(test_split):,} test images, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr}, device {device}, {precision}"
        + (f", {procs.world} processes" if procs.world > 1 else "")
        + (f", augment {cfg.augment}" if cfg.augment != "none" else "")
        + (f", until {cfg.target_accuracy:.2%} test accuracy" if cfg.target_accuracy else ""))

    def checkpoint(epoch_done: int, step: int, loss: float, seconds: float, shuffle_state, finished=False):
        if writer:
            rngs = _rng_tensors(device, {"shuffle": shuffle_state, "augment": augment_gen.get_state()})
            _save_checkpoint(writer, cfg, model, optimizer, scheduler, rngs, best, {
                "epoch": epoch_done, "step": step, "loss_sum": loss, "seconds": seconds, "finished": finished,
                "epochs": [asdict(e) for e in result.epochs], "best_acc": best_acc, "bad_epochs": bad_epochs,
                "best_epoch": result.best_epoch, "classes": list(info.classes), "n_train": n,
                "world_size": procs.world})

    clock = time.perf_counter()
    seen_total = 0
    with _progress(progress and procs.main) as bar, _StopRequest() as stop:
        for epoch in range(first_epoch, cfg.epochs + 1):
            task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps, loss=0.0, ips=0.0)
            model.train()
            start = time.perf_counter() - seconds_before
            epoch_shuffle = shuffle.get_state()  # resuming mid-epoch redraws this epoch's order from here
            order = torch.randperm(n, generator=shuffle).to(device)
            loss_sum = torch.full((), loss_before, dtype=torch.float64, device=device)
            acc = None
            for step in range(first_step, steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size][procs.rank::procs.world]
                x, y = _batch(images, labels, idx, cfg, info, augment_gen, memory_format)
                with autocast():
                    loss = F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler:
                    scheduler.step()
                # The true mean loss over the epoch: every batch counts, not only the last.
                loss_sum += loss.detach().double()
                seen_total += len(y) * procs.world
                if step % 20 == 0 or step == steps - 1:
                    seen = min((step + 1) * cfg.batch_size, n)
                    bar.update(task, completed=step + 1, loss=float(loss_sum) / (step + 1),
                               ips=seen / max(time.perf_counter() - start, 1e-9))
                # --target-accuracy: look at the test set a few times per epoch and stop once met.
                if cfg.target_accuracy and ((step + 1) % eval_every == 0 or step == steps - 1):
                    acc = accuracy(test_split) if procs.main else 0.0
                    if procs.any(acc >= cfg.target_accuracy):
                        result.target_seconds = round(time.perf_counter() - clock, 3)
                        result.target_images = seen_total
                        break
                # Ctrl-C / SIGTERM: this step is done; save exactly here and leave (all processes alike).
                if procs.any(stop.signum is not None) and step < steps - 1:
                    checkpoint(epoch - 1, step + 1, float(procs.mean(loss_sum)), time.perf_counter() - start,
                               epoch_shuffle)
                    raise _interrupted(stop, run_dir, epoch, step + 1, steps)
            done = step + 1
            seconds = time.perf_counter() - start
            first_step, loss_before, seconds_before = 0, 0.0, 0.0
            bar.remove_task(task)
            mean_loss = float(procs.mean(loss_sum)) / done
            finished = result.target_seconds is not None
            if procs.main:
                if acc is None:  # (with a target, the last step taken was just evaluated)
                    acc = accuracy(test_split)
                val_acc = accuracy(val_split) if val_split is not None else None
                seen = min(done * cfg.batch_size, n)
                stats = EpochStats(epoch, mean_loss, round(seconds, 3), acc, round(seen / seconds, 1), val_acc)
                result.epochs.append(stats)
                if cfg.patience:
                    if val_acc > best_acc:
                        best_acc, bad_epochs, result.best_epoch = val_acc, 0, epoch
                        best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        bad_epochs += 1
                    finished = finished or (bad_epochs >= cfg.patience and epoch < cfg.epochs)
                if writer:
                    runs.append_metrics(writer, asdict(stats))
                log(f"epoch {epoch}/{cfg.epochs}: mean loss {stats.mean_loss:.4f}, "
                    + (f"validation accuracy {val_acc:.2%}, " if val_acc is not None else "")
                    + f"test accuracy {acc:.2%}, {seconds:.1f} s ({stats.images_per_second:,.0f} img/s)"
                    + (f" [stopped after {done}/{steps} steps]" if done < steps else ""))
            finished = procs.any(finished)
            checkpoint(epoch, 0, 0.0, 0.0, shuffle.get_state(), finished=finished)
            if result.target_seconds is not None:
                log(f"reached {cfg.target_accuracy:.2%} test accuracy after {result.target_seconds:.1f} s "
                    f"({seen_total:,} training images)")
                break
            if finished:
                log(f"early stopping: validation accuracy has not improved for {cfg.patience} epochs")
                break
            if procs.any(stop.signum is not None) and epoch < cfg.epochs:
                raise _interrupted(stop, run_dir, epoch + 1, 0, steps)

    result.train_seconds = round(time.perf_counter() - clock, 3)
    final = result.epochs[-1] if result.epochs else None  # (None on ranks other than 0)
    if best is not None and result.best_epoch != final.epoch:
        model.load_state_dict(best)
        final = result.epochs[result.best_epoch - 1]
        log(f"keeping the weights of epoch {result.best_epoch}, the best validation accuracy ({best_acc:.2%})")
    result.test_accuracy = final.test_accuracy if final else 0.0
    if cfg.target_accuracy and result.target_seconds is None:
        log(f"target {cfg.target_accuracy:.2%} not reached in {cfg.epochs} epochs "
            f"(final test accuracy {result.test_accuracy:.2%})")
    if writer:
        runs.save_weights(model, writer / runs.WEIGHTS)
        log(f"test accuracy {result.test_accuracy:.2%}; run saved to {writer}")
    return result


def _interrupted(stop: _StopRequest, run_dir, epoch: int, step: int, steps: int) -> Interrupted:
    signum = stop.signum or signal.SIGINT
    name = signal.Signals(signum).name
    where = f"epoch {epoch}, step {step}/{steps}" if step else f"the start of epoch {epoch}"
    if run_dir is None:
        return Interrupted(f"stopped by {name} at {where} (nothing saved: save=False)", 128 + signum)
    return Interrupted(f"stopped by {name}; checkpoint saved at {where}. Resume with: "
                       f"cnnlab train --resume {run_dir}", 128 + signum, run_dir)
