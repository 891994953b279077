"""The training engine: one loop that every recipe and command uses.

Batches are sliced straight from the in-memory uint8 tensors of engine/data.py (a random
permutation per epoch, then contiguous index slices), augmented, converted and normalised as
whole tensors: no per-sample Python, no DataLoader worker process.

Speed settings (docs/benchmarks.md has the measurements): channels_last memory format, and bf16
autocast only where the hardware computes bf16 natively (processes.native_bf16). torch.compile is
available but off by default: its compile time outweighs its gain for these small networks.

The same loop runs resumably (a checkpoint per epoch and on Ctrl-C/SIGTERM: engine/checkpoint.py),
with early stopping on a validation split, and under torchrun as one of several processes
(engine/processes.py). The run folder it writes is runs/folder.py's format.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import CnnlabError, RunError
from ..runs import folder
from ..runs.inference import accuracy
from . import augment, checkpoint, cpus, data
from .config import FOLDER, RESUME_MAY_CHANGE, TrainConfig, resume_flags
from .models import build_model, count_parameters
from .processes import StopRequest, interrupted, resolve_device, resolve_precision, start_processes

# Training images a model's init_from_data sees (the first ones: no randomness). For fast_cnn's
# whitened first conv, 2,000 MNIST images give 392,000 patches, and 10,000 the same accuracy.
INIT_SAMPLE = 2000


def _fused(params) -> dict:
    """fused=True where PyTorch has a fused Adam kernel for these tensors: one kernel per step
    instead of a dozen foreach passes (0.43 ms against 1.12 ms per step for fast_cnn, 1 thread)."""
    return {"fused": True} if all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) else {}


OPTIMIZERS = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay, **_fused(params)),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, **_fused(params)),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, nesterov=True,
                                             weight_decay=c.weight_decay),
}


def _scheduler(optimizer, cfg: TrainConfig, total_steps: int):
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


def checked(cfg: TrainConfig) -> TrainConfig:
    """cfg validated against its definitions and against this machine: the dataset exists, the
    device is there, the precision works on it. A folder dataset's path is made absolute so that
    evaluate finds it from anywhere."""
    cfg.validate()
    if cfg.dataset.startswith(FOLDER):
        cfg.dataset = FOLDER + str(Path(cfg.dataset[len(FOLDER):]).expanduser().resolve())
    data.dataset_info(cfg.dataset)
    resolve_precision(cfg.precision, resolve_device(cfg.device))
    return cfg


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
    threads: int = 0                      # CPU threads used (_Run._pick_threads)
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
            "threads": self.threads,
            "train_seconds": self.train_seconds,
            "target_accuracy": self.config.target_accuracy,
            "target_reached": None if self.config.target_accuracy is None else self.target_seconds is not None,
            "target_seconds": self.target_seconds,
            "target_images": self.target_images,
            "best_epoch": self.best_epoch,
            "epochs": [asdict(e) for e in self.epochs],
            "config": asdict(self.config),
        }


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
    saved = None
    if resume is not None:
        folder.read_config(resume)  # the one-line error for a missing or non-run folder
        saved = checkpoint.read(Path(resume) / checkpoint.CHECKPOINT)
        cfg = _resumed_config(saved[1], Path(resume), {**(asdict(config) if config else {}), **overrides})
    else:
        cfg = checked(TrainConfig(**{**asdict(config or TrainConfig()), **overrides}))
    procs = start_processes(cfg)
    # A resumed run keeps the thread count it started with (unless --threads says otherwise): the
    # same count is what makes it bit for bit the uninterrupted run.
    threads = cfg.threads or (((folder.read_config(resume).get("threads") or {}).get("used")) if resume else None)
    threads_before = torch.get_num_threads()
    try:
        run = _Run(cfg, procs, data_dir, (log if procs.main else None) or (lambda s: None), threads)
        if saved is not None:
            run.restore(Path(resume), *saved)
        elif save and procs.main:
            run.run_dir = folder.new_run(cfg, run.info, run.parameters, out, run.precision, run.threads)
        return run.loop(progress and procs.main)
    finally:
        torch.set_num_threads(threads_before)  # the caller's process as it was
        if procs.owns_group:
            torch.distributed.destroy_process_group()


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
                          f"{', '.join('--' + k.replace('_', '-') for k in fixed)} (only {resume_flags()} may change)")
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
    return checked(TrainConfig(**{**saved, **{k: v for k, v in overrides.items() if k in RESUME_MAY_CHANGE}}))


def _progress(enabled: bool) -> Progress:
    """A rich progress bar on stderr; a no-op when disabled (tests, --json, pipes)."""
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:,.0f} img/s"),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))


class _Run:
    """One training: its data, network, optimiser and position, and the loop that moves it on."""

    def __init__(self, cfg: TrainConfig, procs, data_dir, log, threads: int | None = None):
        self.cfg, self.procs, self.log, self.device = cfg, procs, log, procs.device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self._load_data(data_dir)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, num_classes=len(self.info.classes)).to(
            self.device, memory_format=self.memory_format)
        self.parameters = count_parameters(self.model)
        if hasattr(self.model, "init_from_data"):  # (resuming loads these layers again)
            sample = self.train_split.images[:INIT_SAMPLE].to(self.device)
            self.model.init_from_data(data.normalize(sample, self.info.mean, self.info.std))
        self.threads = self._pick_threads(threads)
        torch.set_num_threads(self.threads)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = OPTIMIZERS[cfg.optimizer](self.trainable, cfg)
        # Same seeds on every process: shuffles agree (each takes its own slice of one order), and
        # with equal shards the generators stay in step, so rank 0's states resume every rank.
        self.generators = {"shuffle": torch.Generator().manual_seed(cfg.seed),
                           "augment": torch.Generator(device=self.device).manual_seed(cfg.seed + 1)}
        self.forward = self.model
        if procs.world > 1:
            self.forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.forward = torch.compile(self.forward) if cfg.compile else self.forward
        self.steps = self._steps_per_epoch()
        self.scheduler = _scheduler(self.optimizer, cfg, self.steps * cfg.epochs)
        self.result = TrainResult(cfg, None, parameters=self.parameters, model=self.model, precision=self.precision,
                                  threads=self.threads)
        # Where training stands: epochs done, step within the next one, and early stopping's memory.
        self.epoch, self.step, self.loss_before, self.seconds_before = 0, 0, 0.0, 0.0
        self.best, self.best_acc, self.bad_epochs = None, -1.0, 0
        self.run_dir = None

    def _load_data(self, data_dir) -> None:
        cfg = self.cfg
        self.info = data.dataset_info(cfg.dataset)
        train_split = data.load(cfg.dataset, "train", data_dir, val_split=cfg.val_split).subset(cfg.limit_train)
        _, self.test_split = folder.test_split(cfg, data_dir, cfg.limit_test)
        for split in (train_split, self.test_split):
            if data.skipped_warning(split):
                self.log(data.skipped_warning(split))
        self.val_split = None
        if cfg.val_split and data.test_is_held_out(cfg.dataset):
            self.val_split = self.test_split  # a folder without train/ and test/: its held-out part is both
        elif cfg.val_split:
            train_split, self.val_split = data.hold_out(train_split, cfg.val_split)
        self.train_split = train_split
        # On a GPU the whole uint8 training set (47 MB for MNIST) moves once; batches are sliced there.
        self.images, self.labels = train_split.images.to(self.device), train_split.labels.to(self.device)

    def _pick_threads(self, asked: int | None) -> int:
        """Intra-op threads: --threads (or a resumed run's count);
        PyTorch's choice on a GPU, under torchrun or with OMP_NUM_THREADS set; else PyTorch's choice
        cut to the cores other jobs leave free when training starts, at least 1 (cpus.py says why)."""
        default = torch.get_num_threads()
        if asked or default == 1 or self.device.type != "cpu" or self.procs.world > 1 or \
                os.environ.get("OMP_NUM_THREADS"):
            return asked or default
        free = cpus.free_cores()
        if free is None or free >= default:
            return default
        self.log(f"other jobs kept {default - free} of the {default} cores busy: training with "
                 f"{max(1, free)} thread{'s' if free > 1 else ''} (--threads N to choose)")
        return max(1, free)

    def _steps_per_epoch(self) -> int:
        # Under torchrun each process takes every world-th image of each global batch; the last,
        # partial batch is dropped so that every process takes the same number of steps.
        n, batch = len(self.labels), self.cfg.batch_size
        steps = n // batch if self.procs.world > 1 else (n + batch - 1) // batch
        if steps < 1:
            raise CnnlabError(f"{n} training images do not fill one global batch of {batch}; lower --batch-size")
        return steps

    def restore(self, run_dir: Path, tensors: dict, state: dict) -> None:
        """Continue from a checkpoint: same data, weights, optimiser, schedule and random states."""
        n = len(self.labels)
        if state.get("classes") != list(self.info.classes) or state.get("n_train") != n:
            raise RunError(f"the training data of {run_dir} changed since its checkpoint (now {n:,} images "
                           f"in classes {', '.join(self.info.classes)}; then {state.get('n_train')} in "
                           f"{', '.join(state.get('classes') or [])}); resume needs the same data")
        self.best = checkpoint.restore(tensors, state, self.model, self.optimizer, self.scheduler,
                                       self.generators, f"{run_dir / checkpoint.CHECKPOINT} ({self.cfg.model})")
        self.result.epochs = [EpochStats(**e) for e in state["epochs"]]
        self.epoch, self.step = state["epoch"], state["step"]
        self.loss_before, self.seconds_before = state["loss_sum"], state["seconds"]
        self.best_acc, self.bad_epochs, self.result.best_epoch = state["best_acc"], state["bad_epochs"], state["best_epoch"]
        self.run_dir = run_dir
        if self.procs.main:  # the checkpoint is the truth: drop metric rows written after it
            folder.write_metrics(run_dir, [asdict(e) for e in self.result.epochs])
            if self.cfg.epochs != state["config"]["epochs"]:
                folder.update_config(run_dir, recipe=asdict(self.cfg))
            # Resumed where `auto` means another precision, or with another --threads: record both.
            for key, now in (("precision", self.precision), ("threads", self.threads)):
                used = (folder.read_config(run_dir).get(key) or {}).get("used")
                if used and used != now:
                    folder.update_config(run_dir, **{key: {"asked": getattr(self.cfg, key), "used": now,
                                                           "used_before_resume": used}})
        self.log(f"resuming {run_dir} at epoch {self.epoch + 1}, step {self.step}/{self.steps}")

    def loop(self, progress: bool) -> TrainResult:
        """The training loop: epochs of shuffled batches, each a forward, backward and optimiser step."""
        cfg, procs, result = self.cfg, self.procs, self.result
        self.log(self._first_line())
        eval_every = cfg.eval_every or max(1, self.steps // 4)
        n, clock, seen_total = len(self.labels), time.perf_counter(), 0
        with _progress(progress) as bar, StopRequest() as stop:
            for epoch in range(self.epoch + 1, cfg.epochs + 1):
                task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=self.steps, loss=0.0, ips=0.0)
                self.model.train()
                start = time.perf_counter() - self.seconds_before
                epoch_shuffle = self.generators["shuffle"].get_state()  # resuming mid-epoch redraws this order
                order = torch.randperm(n, generator=self.generators["shuffle"]).to(self.device)
                loss_sum = torch.full((), self.loss_before, dtype=torch.float64, device=self.device)
                acc = None
                for step in range(self.step, self.steps):
                    idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size][procs.rank::procs.world]
                    x, y = self._batch(idx)
                    with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                        loss = F.cross_entropy(self.forward(x), y, label_smoothing=cfg.label_smoothing)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    if self.scheduler:
                        self.scheduler.step()
                    loss_sum += loss.detach().double()  # the true mean over the epoch, not the last batch
                    seen_total += len(y) * procs.world
                    if step % 20 == 0 or step == self.steps - 1:
                        bar.update(task, completed=step + 1, loss=float(loss_sum) / (step + 1),
                                   ips=min((step + 1) * cfg.batch_size, n) / max(time.perf_counter() - start, 1e-9))
                    # --target-accuracy: look at the test set a few times per epoch and stop once met.
                    if cfg.target_accuracy and ((step + 1) % eval_every == 0 or step == self.steps - 1):
                        acc = self._accuracy(self.test_split) if procs.main else 0.0
                        if procs.any(acc >= cfg.target_accuracy):
                            result.target_seconds = round(time.perf_counter() - clock, 3)
                            result.target_images = seen_total
                            break
                    # Ctrl-C / SIGTERM: this step is done; save exactly here and leave (all processes alike).
                    if procs.any(stop.signum is not None) and step < self.steps - 1:
                        self._checkpoint(epoch - 1, step + 1, float(procs.mean(loss_sum)),
                                         time.perf_counter() - start, epoch_shuffle)
                        raise interrupted(stop, self.run_dir, epoch, step + 1, self.steps)
                bar.remove_task(task)
                if self._end_epoch(epoch, step + 1, time.perf_counter() - start, loss_sum, acc):
                    break
                if procs.any(stop.signum is not None) and epoch < cfg.epochs:
                    raise interrupted(stop, self.run_dir, epoch + 1, 0, self.steps)
        result.train_seconds = round(time.perf_counter() - clock, 3)
        return self._finish()

    def _batch(self, idx):
        """One training batch: gather uint8 rows, augment and normalise as whole tensors."""
        x = self.images[idx].unsqueeze(1).float()
        x = augment.apply(x, self.cfg.augment, self.generators["augment"])
        x = data.normalize(x, self.info.mean, self.info.std).contiguous(memory_format=self.memory_format)
        return x, self.labels[idx]

    def _accuracy(self, split: data.Split) -> float:
        # In float32, like `cnnlab evaluate`, predict, serve and the exports, so the accuracy a run
        # reports is the one every other command gives back (under bf16 they differed on 10 of
        # 2,000 borderline test images of a 95% model); fp32 costs ~0.2 s per 10,000 images here.
        return accuracy(self.model, split, self.info.mean, self.info.std, self.device, self.cfg.eval_batch_size)

    def _end_epoch(self, epoch: int, done: int, seconds: float, loss_sum, acc) -> bool:
        """Evaluate, log and checkpoint a finished epoch; True when training should stop here."""
        cfg, procs, result = self.cfg, self.procs, self.result
        self.step, self.loss_before, self.seconds_before = 0, 0.0, 0.0
        mean_loss = float(procs.mean(loss_sum)) / done
        finished = result.target_seconds is not None
        if procs.main:
            acc = self._accuracy(self.test_split) if acc is None else acc  # (a target evaluated the last step)
            val_acc = self._accuracy(self.val_split) if self.val_split is not None else None
            seen = min(done * cfg.batch_size, len(self.labels))
            stats = EpochStats(epoch, mean_loss, round(seconds, 3), acc, round(seen / seconds, 1), val_acc)
            result.epochs.append(stats)
            if cfg.patience:
                finished = self._early_stopping(epoch, val_acc) or finished
            if self.run_dir:
                folder.append_metrics(self.run_dir, asdict(stats))
            self.log(f"epoch {epoch}/{cfg.epochs}: mean loss {stats.mean_loss:.4f}, "
                     + (f"validation accuracy {val_acc:.2%}, " if val_acc is not None else "")
                     + f"test accuracy {acc:.2%}, {seconds:.1f} s ({stats.images_per_second:,.0f} img/s)"
                     + (f" [stopped after {done}/{self.steps} steps]" if done < self.steps else ""))
        finished = procs.any(finished)
        self._checkpoint(epoch, 0, 0.0, 0.0, self.generators["shuffle"].get_state(), finished=finished)
        if result.target_seconds is not None:
            self.log(f"reached {cfg.target_accuracy:.2%} test accuracy after {result.target_seconds:.1f} s "
                     f"({result.target_images:,} training images)")
        elif finished:
            self.log(f"early stopping: validation accuracy has not improved for {cfg.patience} epochs")
        return finished

    def _early_stopping(self, epoch: int, val_acc: float) -> bool:
        """Keep the best epoch's weights; True after `patience` epochs without a better one."""
        if val_acc > self.best_acc:
            self.best_acc, self.bad_epochs, self.result.best_epoch = val_acc, 0, epoch
            self.best = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.cfg.patience and epoch < self.cfg.epochs

    def _checkpoint(self, epoch_done: int, step: int, loss: float, seconds: float, shuffle_state,
                    finished: bool = False) -> None:
        if not (self.run_dir and self.procs.main):  # only rank 0 writes
            return
        generators = {"shuffle": shuffle_state, "augment": self.generators["augment"].get_state()}
        checkpoint.save(self.run_dir, self.cfg, self.model, self.optimizer, self.scheduler, generators, self.best, {
            "epoch": epoch_done, "step": step, "loss_sum": loss, "seconds": seconds, "finished": finished,
            "epochs": [asdict(e) for e in self.result.epochs], "best_acc": self.best_acc,
            "bad_epochs": self.bad_epochs, "best_epoch": self.result.best_epoch,
            "classes": list(self.info.classes), "n_train": len(self.labels), "world_size": self.procs.world})

    def _finish(self) -> TrainResult:
        """The final weights (the best epoch's under early stopping), the reported accuracy, the saved run."""
        cfg, result = self.cfg, self.result
        final = result.epochs[-1] if result.epochs else None  # (None on ranks other than 0)
        if self.best is not None and result.best_epoch != final.epoch:
            self.model.load_state_dict(self.best)
            final = result.epochs[result.best_epoch - 1]
            self.log(f"keeping the weights of epoch {result.best_epoch}, the best validation accuracy "
                     f"({self.best_acc:.2%})")
        result.test_accuracy = final.test_accuracy if final else 0.0
        if cfg.target_accuracy and result.target_seconds is None:
            self.log(f"target {cfg.target_accuracy:.2%} not reached in {cfg.epochs} epochs "
                     f"(final test accuracy {result.test_accuracy:.2%})")
        if self.run_dir and self.procs.main:
            folder.save_weights(self.model, self.run_dir / folder.WEIGHTS)
            self.log(f"test accuracy {result.test_accuracy:.2%}; run saved to {self.run_dir}")
        result.run_dir = self.run_dir if self.procs.main else None
        return result

    def _first_line(self) -> str:
        cfg, n_trained = self.cfg, count_parameters(self.trainable)
        return (f"training {cfg.model} ({self.parameters:,} parameters"
                + (f", {n_trained:,} of them trained" if n_trained < self.parameters else "")
                + f") on {cfg.dataset}: {len(self.labels):,} train / "
                + (f"{len(self.val_split):,} validation / " if self.val_split is not None else "")
                + f"{len(self.test_split):,} test images, {cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, "
                f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, device {self.device}, {self.precision}"
                + (f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.device.type == "cpu" else "")
                + (f", {self.procs.world} processes" if self.procs.world > 1 else "")
                + (f", augment {cfg.augment}" if cfg.augment != "none" else "")
                + (f", until {cfg.target_accuracy:.2%} test accuracy" if cfg.target_accuracy else ""))
