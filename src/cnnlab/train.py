"""The training engine: one loop that every recipe and command uses.

Batches are sliced straight from the in-memory uint8 tensors of cnnlab.data (a random
permutation per epoch, then contiguous index slices), converted and normalised as whole
tensors. There is no per-sample Python and no DataLoader worker process.

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

from . import data as data_mod
from . import runs
from .errors import CnnlabError, Interrupted, RunError
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
        for name, low in (("epochs", 1), ("batch_size", 1), ("limit_train", 1), ("limit_test", 1), ("threads", 1)):
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
        resolve_device(self.device)
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
    best_epoch: int | None = None         # with --patience: the epoch whose weights were kept

    def to_json(self) -> dict:
        return {
            "run_dir": str(self.run_dir) if self.run_dir else None,
            "model": self.config.model,
            "dataset": self.config.dataset,
            "recipe": self.config.recipe,
            "parameters": self.parameters,
            "test_accuracy": self.test_accuracy,
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


# --- Reliability helpers: several processes, signals, checkpoints --------------------------------

@dataclass
class _Processes:
    """This process's place among torchrun's processes; rank 0 of 1 without torchrun."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

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
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Processes(dist.get_rank(), world, device)


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
        run_dir = Path(resume)
        if not (run_dir / runs.CONFIG).is_file():
            runs.read_config(run_dir)  # the one-line error for a missing or non-run folder
        ckpt, state = runs.load_checkpoint(run_dir / runs.CHECKPOINT)
        cfg = _resumed_config(state, run_dir, {**(asdict(config) if config else {}), **overrides})
    else:
        cfg = TrainConfig(**{**asdict(config or TrainConfig()), **overrides}).validate()
        ckpt, state = None, None

    procs = _start_processes(cfg)
    try:
        return _train(cfg, procs, data_dir, out, save, progress, (log if procs.main else None) or (lambda s: None),
                      resume, ckpt, state)
    finally:
        if procs.world > 1:
            torch.distributed.destroy_process_group()


def _train(cfg, procs, data_dir, out, save, progress, log, resume, ckpt, state) -> TrainResult:
    device = procs.device
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
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
    model = build_model(cfg.model, num_classes=len(info.classes)).to(device)
    params = count_parameters(model)
    optimizer = OPTIMIZERS[cfg.optimizer](model.parameters(), cfg)
    shuffle = torch.Generator().manual_seed(cfg.seed)
    forward = model
    if procs.world > 1:
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    images, labels = train_split.images, train_split.labels
    n = len(labels)
    # Under torchrun each process takes every world-th image of each global batch; the last,
    # partial batch is dropped so that every process takes the same number of steps.
    steps = n // cfg.batch_size if procs.world > 1 else (n + cfg.batch_size - 1) // cfg.batch_size
    if steps < 1:
        raise CnnlabError(f"{n} training images do not fill one global batch of {cfg.batch_size}; "
                          f"lower --batch-size")
    scheduler = _scheduler(optimizer, cfg, steps * cfg.epochs)

    result = TrainResult(cfg, None, parameters=params, model=model)
    first_epoch, first_step, loss_sum, seconds_before = 1, 0, 0.0, 0.0
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
            if scheduler:
                scheduler.load_state_dict(runs.unpack(state["scheduler"], ckpt))
        except (RuntimeError, KeyError, ValueError) as e:
            raise RunError(f"{run_dir / runs.CHECKPOINT} does not fit model '{cfg.model}' with "
                           f"{cfg.optimizer}: {' '.join(str(e).split())[:200]}") from None
        torch.set_rng_state(ckpt["rng/torch"])
        if "rng/cuda" in ckpt and device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng/cuda"], device)
        shuffle.set_state(ckpt["rng/shuffle"])
        result.epochs = [EpochStats(**e) for e in state["epochs"]]
        first_epoch, first_step = state["epoch"] + 1, state["step"]
        loss_sum, seconds_before = state["loss_sum"], state["seconds"]
        best_acc, bad_epochs, result.best_epoch = state["best_acc"], state["bad_epochs"], state["best_epoch"]
        best = {k[5:]: v for k, v in ckpt.items() if k.startswith("best/")} or None
        if procs.main:  # the checkpoint is the truth: drop metric rows written after it
            runs.atomic_write(run_dir / runs.METRICS, "".join(json.dumps(asdict(e)) + "\n" for e in result.epochs))
            if cfg.epochs != state["config"]["epochs"]:
                config_json = runs.read_config(run_dir)
                runs.write_json(run_dir / runs.CONFIG, {**config_json, "recipe": asdict(cfg)})
        log(f"resuming {run_dir} at epoch {first_epoch}, step {first_step}/{steps}")
    elif save and procs.main:
        run_dir = runs.new_run_dir(cfg.model, out)
        runs.write_json(run_dir / runs.CONFIG, _config_json(cfg, info, params))
    else:
        run_dir = None
    writer = run_dir if procs.main else None  # only rank 0 writes
    result.run_dir = run_dir
    log(f"training {cfg.model} ({params:,} parameters) on {cfg.dataset}: {n:,} train / "
        + (f"{len(val_split):,} validation / " if val_split is not None else "")
        + f"{len(test_split):,} test images, {cfg.epochs} epochs, batch {cfg.batch_size}, "
        f"{cfg.optimizer} lr {cfg.lr}, device {device}"
        + (f", {procs.world} processes" if procs.world > 1 else ""))

    def checkpoint(epoch_done: int, step: int, loss: float, seconds: float, shuffle_state, finished=False):
        if writer:
            _save_checkpoint(writer, cfg, model, optimizer, scheduler,
                             _rng_tensors(device, {"shuffle": shuffle_state}), best, {
                                 "epoch": epoch_done, "step": step, "loss_sum": loss, "seconds": seconds,
                                 "epochs": [asdict(e) for e in result.epochs], "finished": finished,
                                 "best_acc": best_acc, "bad_epochs": bad_epochs, "best_epoch": result.best_epoch,
                                 "classes": list(info.classes), "n_train": n, "world_size": procs.world})

    with _progress(progress and procs.main) as bar, _StopRequest() as stop:
        for epoch in range(first_epoch, cfg.epochs + 1):
            task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=steps, loss=0.0, ips=0.0)
            model.train()
            start = time.perf_counter() - seconds_before
            epoch_shuffle = shuffle.get_state()  # resuming mid-epoch redraws this epoch's order from here
            order = torch.randperm(n, generator=shuffle)
            loss_sum_t = torch.full((), loss_sum, dtype=torch.float64)
            for step in range(first_step, steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size][procs.rank::procs.world]
                x = data_mod.normalize(images[idx].to(device), info.mean, info.std)
                y = labels[idx].to(device)
                loss = F.cross_entropy(forward(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler:
                    scheduler.step()
                # The true mean loss over the epoch: every batch counts, not only the last.
                loss_sum_t += loss.detach().double().cpu()
                if step % 20 == 0 or step == steps - 1:
                    seen = min((step + 1) * cfg.batch_size, n)
                    bar.update(task, completed=step + 1, loss=float(loss_sum_t) / (step + 1),
                               ips=seen / max(time.perf_counter() - start, 1e-9))
                if procs.any(stop.signum is not None) and step < steps - 1:
                    checkpoint(epoch - 1, step + 1, float(procs.mean(loss_sum_t)), time.perf_counter() - start,
                               epoch_shuffle)
                    raise _interrupted(stop, run_dir, epoch, step + 1, steps)
            first_step, seconds_before = 0, 0.0
            seconds = time.perf_counter() - start
            bar.remove_task(task)
            mean_loss = float(procs.mean(loss_sum_t)) / steps
            loss_sum = 0.0
            stop_early = False
            if procs.main:
                acc = _accuracy(model, test_split, info, device)
                val_acc = _accuracy(model, val_split, info, device) if val_split is not None else None
                stats = EpochStats(epoch, mean_loss, round(seconds, 3), acc, round(n / seconds, 1), val_acc)
                result.epochs.append(stats)
                if cfg.patience:
                    if val_acc > best_acc:
                        best_acc, bad_epochs, result.best_epoch = val_acc, 0, epoch
                        best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    else:
                        bad_epochs += 1
                    stop_early = bad_epochs >= cfg.patience and epoch < cfg.epochs
                if writer:
                    runs.append_metrics(writer, asdict(stats))
                log(f"epoch {epoch}/{cfg.epochs}: mean loss {stats.mean_loss:.4f}, "
                    + (f"validation accuracy {val_acc:.2%}, " if val_acc is not None else "")
                    + f"test accuracy {acc:.2%}, {seconds:.1f} s ({stats.images_per_second:,.0f} img/s)")
            stop_early = procs.any(stop_early)
            checkpoint(epoch, 0, 0.0, 0.0, shuffle.get_state(), finished=stop_early)
            if stop_early:
                log(f"early stopping: validation accuracy has not improved for {cfg.patience} epochs")
                break
            if procs.any(stop.signum is not None) and epoch < cfg.epochs:
                raise _interrupted(stop, run_dir, epoch + 1, 0, steps)

    final = result.epochs[-1] if result.epochs else None  # (None on ranks other than 0)
    if best is not None and result.best_epoch != final.epoch:
        model.load_state_dict(best)
        final = result.epochs[result.best_epoch - 1]
        log(f"keeping the weights of epoch {result.best_epoch}, the best validation accuracy ({best_acc:.2%})")
    result.test_accuracy = final.test_accuracy if final else 0.0
    if writer:
        runs.save_weights(model, writer / runs.WEIGHTS)
        log(f"test accuracy {result.test_accuracy:.2%}; run saved to {writer}")
    return result


def _accuracy(model, split: data_mod.Split, info, device) -> float:
    preds = predict_logits(model, split.images, info.mean, info.std, device).argmax(1)
    return float((preds == split.labels).float().mean())


def _interrupted(stop: _StopRequest, run_dir, epoch: int, step: int, steps: int) -> Interrupted:
    signum = stop.signum or signal.SIGINT
    name = signal.Signals(signum).name
    where = f"epoch {epoch}, step {step}/{steps}" if step else f"the start of epoch {epoch}"
    if run_dir is None:
        return Interrupted(f"stopped by {name} at {where} (nothing saved: save=False)", 128 + signum)
    return Interrupted(f"stopped by {name}; checkpoint saved at {where}. Resume with: "
                       f"cnnlab train --resume {run_dir}", 128 + signum, run_dir)
