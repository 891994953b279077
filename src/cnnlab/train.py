"""The training engine: one loop that every recipe and command uses.

Batches are sliced straight from the in-memory uint8 tensors of cnnlab.data (a random
permutation per epoch, then contiguous index slices), augmented, converted and normalised as
whole tensors. There is no per-sample Python and no DataLoader worker process.

Speed settings (each measured on a 2-core AMD EPYC Zen 4 with AVX512-BF16; see docs/benchmarks.md):
channels_last memory format and bf16 autocast (precision="auto" turns bf16 on only where the
hardware computes it natively: a CUDA GPU with bf16 or a CPU whose oneDNN reports bf16 support).
torch.compile is available but off by default: its compile time outweighs its gain for these
small networks and short runs.
"""

from __future__ import annotations

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
from .errors import CnnlabError
from .evaluate import predict_logits
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
    eval_batch_size: int = 4096      # images per evaluation chunk
    target_accuracy: float | None = None  # stop as soon as test accuracy reaches this fraction
    eval_every: int | None = None    # with a target: evaluate every N steps (default 4x per epoch)

    def validate(self) -> "TrainConfig":
        get_spec(self.model)
        data_mod.dataset_info(self.dataset)
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


OPTIMIZERS = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, nesterov=True,
                                             weight_decay=c.weight_decay),
}


def _scheduler(optimizer, cfg: "TrainConfig", total_steps: int):
    """A learning-rate schedule stepped once per batch (None: the rate stays at --lr)."""
    S = torch.optim.lr_scheduler
    if cfg.schedule == "onecycle":  # warm up to lr over 25% of steps, then anneal to ~0
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
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        # oneDNN says yes on CPUs with AVX512-BF16 or AMX (Zen 4, Sapphire Rapids and later).
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
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


def train(config: TrainConfig | None = None, *, data_dir=None, out=None, save: bool = True,
          progress: bool = True, log: Callable[[str], None] | None = print, **overrides) -> TrainResult:
    """Train a model and (when save) write its run folder. Keyword overrides set TrainConfig fields.

    >>> cnnlab.train(model="simple_cnn", epochs=1, limit_train=6000)   # doctest: +SKIP
    """
    cfg = config or TrainConfig()
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**{**asdict(cfg), **overrides}).validate()
    log = log or (lambda s: None)

    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    precision = resolve_precision(cfg.precision, device)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    info = data_mod.dataset_info(cfg.dataset)
    train_split = data_mod.load(cfg.dataset, "train", data_dir).subset(cfg.limit_train)
    test_split = data_mod.load(cfg.dataset, "test", data_dir).subset(cfg.limit_test)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, num_classes=len(info.classes)).to(device, memory_format=memory_format)
    params = count_parameters(model)
    optimizer = OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    augment_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    forward = torch.compile(model) if cfg.compile else model
    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def test_accuracy() -> float:
        with autocast():
            logits = predict_logits(model, test_split.images, info.mean, info.std, device, cfg.eval_batch_size)
        return float((logits.argmax(1) == test_split.labels).float().mean())

    run_dir = runs.new_run_dir(cfg.model, out) if save else None
    if run_dir:
        runs.write_json(run_dir / runs.CONFIG, _config_json(cfg, info, params))
    result = TrainResult(cfg, run_dir, parameters=params, model=model, precision=precision)
    log(f"training {cfg.model} ({params:,} parameters) on {cfg.dataset}: {len(train_split):,} train / "
        f"{len(test_split):,} test images, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr}, device {device}, {precision}"
        + (f", augment {cfg.augment}" if cfg.augment != "none" else "")
        + (f", until {cfg.target_accuracy:.2%} test accuracy" if cfg.target_accuracy else ""))

    # On a GPU the whole uint8 training set (47 MB for MNIST) moves once; batches are sliced there.
    images, labels = train_split.images.to(device), train_split.labels.to(device)
    n = len(labels)
    steps = (n + cfg.batch_size - 1) // cfg.batch_size
    eval_every = cfg.eval_every or max(1, steps // 4)
    scheduler = _scheduler(optimizer, cfg, steps * cfg.epochs)
    clock = time.perf_counter()
    seen_total = 0
    with _progress(progress) as bar:
        for epoch in range(1, cfg.epochs + 1):
            task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps, loss=0.0, ips=0.0)
            model.train()
            start = time.perf_counter()
            order = torch.randperm(n, generator=shuffle).to(device)
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            acc = None
            for step in range(steps):
                x, y = _batch(images, labels, order[step * cfg.batch_size:(step + 1) * cfg.batch_size],
                              cfg, info, augment_gen, memory_format)
                with autocast():
                    loss = F.cross_entropy(forward(x), y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler:
                    scheduler.step()
                # The true mean loss over the epoch: every batch counts, not only the last.
                loss_sum += loss.detach().double()
                seen_total += len(y)
                if step % 20 == 0 or step == steps - 1:
                    seen = min((step + 1) * cfg.batch_size, n)
                    bar.update(task, completed=step + 1, loss=float(loss_sum) / (step + 1),
                               ips=seen / max(time.perf_counter() - start, 1e-9))
                # --target-accuracy: look at the test set a few times per epoch and stop once met.
                if cfg.target_accuracy and ((step + 1) % eval_every == 0 or step == steps - 1):
                    acc = test_accuracy()
                    if acc >= cfg.target_accuracy:
                        result.target_seconds = round(time.perf_counter() - clock, 3)
                        result.target_images = seen_total
                        break
            done = step + 1
            seconds = time.perf_counter() - start
            bar.remove_task(task)
            if acc is None:  # (with a target, the last step taken was just evaluated)
                acc = test_accuracy()
            seen = min(done * cfg.batch_size, n)
            stats = EpochStats(epoch, float(loss_sum) / done, round(seconds, 3), acc, round(seen / seconds, 1))
            result.epochs.append(stats)
            if run_dir:
                runs.append_metrics(run_dir, asdict(stats))
            log(f"epoch {epoch}/{cfg.epochs}: mean loss {stats.mean_loss:.4f}, test accuracy "
                f"{acc:.2%}, {seconds:.1f} s ({stats.images_per_second:,.0f} img/s)"
                + (f" [stopped after {done}/{steps} steps]" if done < steps else ""))
            if result.target_seconds is not None:
                log(f"reached {cfg.target_accuracy:.2%} test accuracy after {result.target_seconds:.1f} s "
                    f"({seen_total:,} training images)")
                break

    result.train_seconds = round(time.perf_counter() - clock, 3)
    result.test_accuracy = result.epochs[-1].test_accuracy
    if cfg.target_accuracy and result.target_seconds is None:
        log(f"target {cfg.target_accuracy:.2%} not reached in {cfg.epochs} epochs "
            f"(final test accuracy {result.test_accuracy:.2%})")
    if run_dir:
        runs.save_weights(model, run_dir / runs.WEIGHTS)
        log(f"test accuracy {result.test_accuracy:.2%}; run saved to {run_dir}")
    return result
