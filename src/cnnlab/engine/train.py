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

import math
import os
import time
from contextlib import ExitStack
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..errors import CnnlabError, RunError
from ..runs import folder
from ..runs.inference import accuracy
from . import augment, checkpoint, cpus, data, optimizers
from .config import FOLDER, RESUME_MAY_CHANGE, TrainConfig, resume_flags
from .models import build_model, count_parameters
from .processes import (
    StopRequest,
    env_rank,
    env_world,
    interrupted,
    resolve_device,
    resolve_precision,
    start_processes,
)

# Training images a model's init_from_data sees (the first ones: no randomness). For fast_cnn's
# whitened first conv, 2,000 MNIST images give 392,000 patches, and 10,000 the same accuracy.
INIT_SAMPLE = 2000

# The run's history (runs/folder.py's HISTORY): about this many loss points per epoch, and the
# test images a mid-epoch snapshot is measured on (~0.05 s for simple_cnn; an epoch's end uses all).
HISTORY_POINTS = 50
SNAPSHOT_TEST_IMAGES = 1000


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

    resume=RUN_DIR continues an interrupted run from its checkpoint, with its saved settings (a
    run stopped before its first checkpoint starts again; one whose checkpoint says it is done
    gets its final weights).

    The run folder is claimed for the whole call (runs/folder.py's lock): a second process
    writing it gets a RunError. Ctrl-C, SIGTERM and SIGHUP at any moment save what can be saved
    and raise Interrupted, whose message says what was saved and how to resume.

    >>> cnnlab.train(model="simple_cnn", epochs=1, limit_train=6000)   # doctest: +SKIP
    """
    unknown = set(overrides) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    main_log = (log if env_rank() == 0 else None) or (lambda s: None)  # under torchrun rank 0 speaks
    resume = Path(resume) if resume is not None else None
    run = None
    with ExitStack() as held, StopRequest() as stop:
        held.callback(torch.set_num_threads, torch.get_num_threads())  # the caller's process as it was
        try:
            if resume is not None:
                folder.read_config(resume)  # the one-line error for a missing or non-run folder
                if env_rank() == 0:  # the one writer
                    held.enter_context(folder.claim(resume, main_log))
                cfg, saved = _resume_point(resume, {**(asdict(config) if config else {}), **overrides})
            else:
                cfg = checked(TrainConfig(**{**asdict(config or TrainConfig()), **overrides}))
                if save and out is not None and env_rank() == 0:
                    folder.check_out(out)  # (claimed once the data is loaded and the network built)
            procs = start_processes(cfg)
            if procs.owns_group:
                held.callback(torch.distributed.destroy_process_group)
            run = _Run(cfg, procs, data_dir, main_log, stop, _threads(cfg, resume))
            if resume is not None:
                run.restore(resume, saved)
            else:
                run.stop_if_asked("before training began; nothing was saved")  # (every rank: a collective)
                if save and procs.main:
                    run.run_dir = held.enter_context(folder.new_run(cfg, run.info, run.parameters, out, main_log,
                                                                         run.precision, run.threads))
            return run.loop(progress and procs.main)
        except KeyboardInterrupt:  # the same signal twice: StopRequest stopped at once
            kept = run.kept() if run else (f"{resume} is unchanged" if resume else "nothing was saved")
            raise interrupted(stop, run.run_dir if run else resume,
                              f"stopped at once by a second {stop.name}; {kept}") from None


def _threads(cfg: TrainConfig, resume: Path | None) -> int | None:
    """--threads, else (resuming) the count the run started with: the same count is what makes it
    bit for bit the uninterrupted run; else None (chosen when training starts)."""
    if cfg.threads or resume is None:
        return cfg.threads
    return (folder.read_config(resume).get("threads") or {}).get("used")


def _resume_point(run_dir: Path, overrides: dict) -> tuple[TrainConfig, tuple | None]:
    """(settings, checkpoint) to resume run_dir from; no checkpoint: it starts again from its config."""
    path = run_dir / checkpoint.CHECKPOINT
    if path.is_file():
        saved = checkpoint.read(path)
        if not _well_formed(saved[1]):  # (its checksum proves it unchanged, not that cnnlab wrote it)
            raise RunError(f"{path} holds a state cnnlab did not write (missing or malformed fields); restore "
                           f"it from a backup or start a new run")
        return _resumed_config(saved[1], run_dir, overrides), saved
    config = folder.read_config(run_dir)
    if config["model"] == folder.ENSEMBLE or (run_dir / folder.WEIGHTS).is_file():
        raise CnnlabError(f"{run_dir} is a finished {'ensemble' if config['model'] == folder.ENSEMBLE else 'run'} "
                          f"without a {checkpoint.CHECKPOINT}; nothing to resume")
    # Stopped (or killed) before its first checkpoint: nothing was trained, so it starts again.
    recipe = config.get("recipe")
    try:
        cfg = TrainConfig(**recipe)
    except TypeError:
        raise RunError(f"{run_dir} has no {checkpoint.CHECKPOINT} and its {folder.CONFIG} holds no settings "
                       f"this cnnlab can start it again with; start a new run") from None
    _only_resume_flags(cfg, overrides, run_dir)
    return checked(TrainConfig(**{**recipe, **{k: v for k, v in overrides.items() if k in RESUME_MAY_CHANGE}})), None


# The fields of a checkpoint's state (_Run._checkpoint) that resuming reads, with their types.
_STATE = {"epoch": int, "step": int, "loss_sum": (int, float), "seconds": (int, float), "config": dict,
          "epochs": list, "best_acc": (int, float), "bad_epochs": int, "best_epoch": (int, type(None))}


def _well_formed(state: dict) -> bool:
    known = {f.name for f in fields(EpochStats)}
    needed = {f.name for f in fields(EpochStats) if f.default is MISSING}
    return (all(isinstance(state.get(k), t) and not isinstance(state.get(k), bool) for k, t in _STATE.items())
            and state["epoch"] >= 0 and state["step"] >= 0
            and all(isinstance(e, dict) and needed <= set(e) <= known for e in state["epochs"]))


def _only_resume_flags(cfg: TrainConfig, overrides: dict, run_dir: Path) -> None:
    fixed = sorted(k for k, v in overrides.items() if k not in RESUME_MAY_CHANGE and v != getattr(cfg, k))
    if fixed:
        raise CnnlabError(f"--resume continues {run_dir} with its saved settings; drop "
                          f"{', '.join('--' + k.replace('_', '-') for k in fixed)} (only {resume_flags()} may change)")


def _resumed_config(state: dict, run_dir: Path, overrides: dict) -> TrainConfig:
    """The settings to go on with, or one line when there is nothing to resume or --epochs does not fit."""
    names = {f.name for f in fields(TrainConfig)}
    saved = state["config"]
    if set(saved) - names:
        raise RunError(f"{run_dir} was written by another cnnlab version (unknown settings "
                       f"{', '.join(sorted(set(saved) - names))}); it cannot be resumed by this one")
    if "test_split" not in saved and data.test_is_held_out(saved.get("dataset", "")):
        raise RunError(f"{run_dir} was trained by an older cnnlab that tested on its validation images; it "
                       f"cannot be resumed (its test images would change) - train it again")
    cfg = TrainConfig(**saved)
    _only_resume_flags(cfg, overrides, run_dir)
    if state.get("world_size", 1) != env_world():
        raise CnnlabError(f"{run_dir} was trained by {state.get('world_size', 1)} process(es) and this is "
                          f"{env_world()}: its batches and schedule are split per process, so resume it with "
                          f"the same number (the same torchrun line plus --resume)")
    epochs, epoch, step = overrides.get("epochs", cfg.epochs), state["epoch"], state["step"]
    if epochs != cfg.epochs and cfg.schedule != "constant":
        raise CnnlabError(f"--epochs cannot change on resume with the {cfg.schedule} schedule (it is "
                          f"planned over {cfg.epochs} epochs); resume without --epochs")
    if step and epochs <= epoch:  # never end inside an epoch: weights must match the accuracy reported
        raise CnnlabError(f"{run_dir} stopped inside epoch {epoch + 1} (step {step}); --epochs {epochs} would "
                          f"end before that epoch does: pass --epochs {epoch + 1} or more")
    if epochs < epoch:
        raise CnnlabError(f"{run_dir} has trained {epoch} epochs already; --epochs {epochs} cannot take them "
                          f"back: pass --epochs {epoch} or more")
    if _done(state, epochs) and (run_dir / folder.WEIGHTS).is_file():
        how = (f"stopped early at epoch {epoch}" if state.get("finished") else f"already finished {epoch} epochs")
        raise CnnlabError(f"{run_dir} {how}; nothing to resume"
                          + ("" if cfg.schedule != "constant" or state.get("finished")
                             else f" (pass --epochs N with N > {epoch} to train further)"))
    return checked(TrainConfig(**{**saved, **{k: v for k, v in overrides.items() if k in RESUME_MAY_CHANGE}}))


def _done(state: dict, epochs: int) -> bool:
    """Does the checkpoint say training is over (all epochs done, or stopped early on purpose)?"""
    return bool(state.get("finished")) or (not state["step"] and state["epoch"] >= epochs)


def _position(epoch_done: int, step: int, steps: int) -> str:
    """Where a checkpoint stands, in words."""
    return f"epoch {epoch_done + 1}, step {step}/{steps}" if step else f"the end of epoch {epoch_done}"


def _progress(enabled: bool) -> Progress:
    """A rich progress bar on stderr; a no-op when disabled (tests, --json, pipes)."""
    console = Console(stderr=True)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("loss {task.fields[loss]:.4f}  {task.fields[ips]:,.0f} img/s"),
                    TimeElapsedColumn(), console=console, transient=True,
                    disable=not (enabled and console.is_terminal))


class _Run:
    """One training: its data, network, optimiser and position, and the loop that moves it on."""

    def __init__(self, cfg: TrainConfig, procs, data_dir, log, stop: StopRequest, threads: int | None = None):
        self.cfg, self.procs, self.log, self.device, self.stop = cfg, procs, log, procs.device, stop
        watch = cpus.Watch()  # (the cores are watched while the data loads and the network is built)
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
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = optimizers.build(self.trainable, cfg)
        self.threads = self._pick_threads(threads, watch)
        torch.set_num_threads(self.threads)
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
        self.done = False  # the checkpoint resumed from says training is over: only the weights are left
        self.saved_at = ""  # where the last checkpoint stands, for messages
        self.run_dir = None

    def _load_data(self, data_dir) -> None:
        """The three splits, apart: test (the dataset's, or a held-out share of a folder without
        train/ and test/: runs.folder.test_split decides), training, and validation taken out of
        the training images. Early stopping watches validation; test images are never trained on."""
        cfg = self.cfg
        self.info = data.dataset_info(cfg.dataset)
        train_split = data.load(cfg.dataset, "train", data_dir, test_split=cfg.test_split).subset(cfg.limit_train)
        _, self.test_split = folder.test_split(cfg, data_dir, cfg.limit_test)
        for split in (train_split, self.test_split):
            if data.skipped_warning(split):
                self.log(data.skipped_warning(split))
        self.val_split = None
        if cfg.val_split:
            train_split, self.val_split = data.hold_out(train_split, cfg.val_split)
        self.train_split = train_split
        for name, split in (("test", self.test_split), ("validation", self.val_split)):
            if split is not None and not len(split):
                raise CnnlabError(f"the {name} split of {cfg.dataset} is empty"
                                  + (f" (--val-split {cfg.val_split} of {len(train_split)} images holds out "
                                     f"none: a class needs 2 images to give one)" if cfg.val_split else "")
                                  + "; use more images")
        # On a GPU the whole uint8 training set (47 MB for MNIST) moves once; batches are sliced there.
        self.images, self.labels = train_split.images.to(self.device), train_split.labels.to(self.device)

    def _pick_threads(self, asked: int | None, watch: cpus.Watch) -> int:
        """Intra-op threads: --threads (or a resumed run's count);
        PyTorch's choice on a GPU, under torchrun or with OMP_NUM_THREADS set; else PyTorch's choice
        cut to the cores other jobs leave free when training starts, at least 1 (cpus.py says why)."""
        default = torch.get_num_threads()
        if asked or default == 1 or self.device.type != "cpu" or self.procs.world > 1 or \
                os.environ.get("OMP_NUM_THREADS"):
            return asked or default
        free = watch.free_cores()
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

    def restore(self, run_dir: Path, saved: tuple | None) -> None:
        """Continue from a checkpoint: same data, weights, optimiser, schedule and random states.
        Without one (saved is None) the run had not trained yet and starts again in its folder."""
        self.run_dir = run_dir
        if saved is None:
            if self.procs.main:
                folder.write_run_config(run_dir, self.cfg, self.info, self.parameters, self.precision, self.threads)
                folder.write_metrics(run_dir, [])
            self.log(f"{run_dir} was stopped before its first checkpoint; training it from the start")
            return
        tensors, state = saved
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
        self.result.target_seconds, self.result.target_images = state.get("target_seconds"), state.get("target_images")
        self.done = _done(state, self.cfg.epochs)
        self.saved_at = _position(self.epoch, self.step, self.steps)
        if self.procs.main:  # the checkpoint is the truth: drop metric rows written after it
            folder.write_metrics(run_dir, [asdict(e) for e in self.result.epochs])
            if self.cfg.epochs != state["config"]["epochs"]:
                folder.update_config(run_dir, recipe=asdict(self.cfg))
            self._record_settings_used(run_dir)
        self.log(f"{run_dir} finished training at epoch {self.epoch}; writing its final weights" if self.done
                 else f"resuming {run_dir} at epoch {self.epoch + 1}, step {self.step}/{self.steps}")

    def stop_if_asked(self, line: str, resume: bool = True) -> None:
        """A signal arrived outside a training step: leave here with `line` (what was saved)."""
        if self.procs.any(self.stop.signum is not None):
            raise interrupted(self.stop, self.run_dir, f"stopped by {self.stop.name} {line}", resume)

    def _record_settings_used(self, run_dir: Path) -> None:
        """Resumed where `auto` means another precision, or with another --threads: record both."""
        for key, now in (("precision", self.precision), ("threads", self.threads)):
            used = (folder.read_config(run_dir).get(key) or {}).get("used")
            if used and used != now:
                folder.update_config(run_dir, **{key: {"asked": getattr(self.cfg, key), "used": now,
                                                       "used_before_resume": used}})

    def loop(self, progress: bool) -> TrainResult:
        """Train from where the run stands to its end, then save the final weights."""
        self.stop_if_asked(f"before training {'resumed' if self.saved_at else 'began'}; {self.kept()}")
        clock = time.perf_counter()
        if not self.done:
            self.log(self._first_line())
            self._history_begin()
            with _progress(progress) as bar:
                self._epochs(bar, clock)
        self.result.train_seconds = round(time.perf_counter() - clock, 3)
        result = self._finish()
        # Stopped in the last moments (the last step, its evaluation, the final weights): all is saved.
        self.stop_if_asked(f"as training ended; the final weights are saved, {self.run_dir} is complete "
                           f"(nothing to resume)" if self.run_dir else "as training ended (nothing saved: save=False)",
                           resume=False)
        return result

    def _epochs(self, bar, clock: float) -> None:
        """The training loop: epochs of shuffled batches, each a forward, backward and optimiser step."""
        cfg, procs, result, stop = self.cfg, self.procs, self.result, self.stop
        eval_every = cfg.eval_every or max(1, self.steps // 4)
        n, seen_total = len(self.labels), 0
        for epoch in range(self.epoch + 1, cfg.epochs + 1):
            task = bar.add_task(f"epoch {epoch}/{cfg.epochs}", total=self.steps, loss=0.0, ips=0.0)
            self.model.train()
            start = time.perf_counter() - self.seconds_before
            epoch_shuffle = self.generators["shuffle"].get_state()  # resuming mid-epoch redraws this order
            order = torch.randperm(n, generator=self.generators["shuffle"]).to(self.device)
            loss_sum = torch.full((), self.loss_before, dtype=torch.float64, device=self.device)
            losses = torch.zeros(self.steps, device=self.device)  # this epoch's, to name the step that diverged
            acc = None
            for step in range(self.step, self.steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size][procs.rank::procs.world]
                x, y = self._batch(idx)
                loss = self._step(x, y)
                losses[step] = loss.detach()
                loss_sum += loss.detach().double()  # the true mean over the epoch, not the last batch
                seen_total += len(y) * procs.world
                self._history_step(epoch, step, loss, loss_sum, start)
                if step % 20 == 0 or step == self.steps - 1:  # (float() waits for the device: not every step)
                    self._check_finite(float(loss_sum), losses, epoch, step)
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
                    self._check_finite(float(loss_sum), losses, epoch, step)
                    self._checkpoint(epoch - 1, step + 1, float(procs.mean(loss_sum)),
                                     time.perf_counter() - start, epoch_shuffle)
                    where = f"epoch {epoch}, step {step + 1}/{self.steps}"
                    raise self._interrupted(f"checkpoint saved at {where}", where)
            bar.remove_task(task)
            self._check_finite(float(loss_sum), losses, epoch, step)
            if self._end_epoch(epoch, step + 1, time.perf_counter() - start, loss_sum, acc):
                break
            if procs.any(stop.signum is not None) and epoch < cfg.epochs:
                raise self._interrupted(f"checkpoint saved at the start of epoch {epoch + 1}",
                                        f"the start of epoch {epoch + 1}")

    def _interrupted(self, saved: str, where: str):
        if self.run_dir is None:
            return interrupted(self.stop, None, f"stopped by {self.stop.name} at {where} (nothing saved: save=False)")
        return interrupted(self.stop, self.run_dir, f"stopped by {self.stop.name}; {saved}")

    def _check_finite(self, loss_sum: float, losses: torch.Tensor, epoch: int, step: int) -> None:
        """Stop at a loss that is NaN or infinite, before it reaches a checkpoint or the weights."""
        if not self.procs.any(not math.isfinite(loss_sum)):
            return
        bad = (~torch.isfinite(losses[:step + 1])).nonzero()
        first = int(bad[0]) if len(bad) else step
        raise self._diverged(f"the training loss became {float(losses[first])} at epoch {epoch}, "
                             f"step {first + 1}/{self.steps}")

    def kept(self) -> str:
        """What the run folder holds now, for the line a stop or an error prints."""
        if self.run_dir is None:
            return "nothing was saved"
        if self.saved_at:
            return f"{self.run_dir} keeps its checkpoint at {self.saved_at}"
        return f"{self.run_dir} holds its settings but no checkpoint yet"

    def _diverged(self, what: str) -> CnnlabError:
        cfg = self.cfg
        fix = (f"lower --lr (it is {cfg.lr:g})" + (f" or --weight-decay ({cfg.weight_decay:g})" if cfg.weight_decay else "")
               + (", or use --precision fp32" if self.precision == "bf16" else ""))
        kept = "" if self.run_dir is None else f"; {self.kept()}, nothing from after the divergence"
        return CnnlabError(f"training diverged: {what}; {fix}, and start a new run{kept}")

    def _check_weights(self, where: str) -> None:
        """Never write weights that are NaN or infinite (a checkpoint keeps the last good ones)."""
        tensors = [t for t in self.model.state_dict().values() if t.is_floating_point()]
        if not torch.stack([torch.isfinite(t).all() for t in tensors]).all():
            raise self._diverged(f"the weights became NaN or infinite by {where}")

    def _step(self, x, y) -> torch.Tensor:
        """One training step on a batch: forward, loss, backward, optimiser step (`cnnlab code` shows it)."""
        # Forward pass (in bf16 where the hardware computes it natively) and the loss.
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            loss = F.cross_entropy(self.forward(x), y, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)  # forget the last step's gradients
        loss.backward()                             # gradients of the loss for every weight
        self.optimizer.step()                       # move each weight against its gradient
        if self.scheduler:
            self.scheduler.step()                   # the learning rate for the next step
        return loss

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
                self._history_epoch(stats, (epoch - 1) * self.steps + done)
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

    # --- the history: what training looked like, for the explorer ------------------------------

    def _history_begin(self) -> None:
        """A new run records its start and its untrained filters; a resumed one forgets what was
        recorded after its checkpoint (the checkpoint is the truth, as for metrics.jsonl)."""
        self.history = bool(self.run_dir) and self.procs.main  # (only rank 0 writes)
        self.window, self.window_steps = torch.zeros((), dtype=torch.float64, device=self.device), 0
        self.point_every = max(1, self.steps // HISTORY_POINTS)
        if not self.history:
            return
        here = self.epoch * self.steps + self.step
        if here:
            folder.trim_history(self.run_dir, here)
            self._record("resume", self.epoch + 1, here)
        else:
            self._record("start", 0, 0, steps_per_epoch=self.steps, epochs=self.cfg.epochs,
                         train_images=len(self.labels), batch_size=self.cfg.batch_size)
            self._snapshot(0, 0)

    def _history_step(self, epoch: int, step: int, loss, loss_sum, start: float) -> None:
        """The loss since the last point, every point_every steps; --snapshots N: a snapshot at each
        k/N of the epoch (the last one, at its end, is _history_epoch's)."""
        if not self.history:
            return
        self.window += loss.detach().double()
        self.window_steps += 1
        last, here = step == self.steps - 1, (epoch - 1) * self.steps + step + 1
        if (step + 1) % self.point_every == 0 or last:
            seconds = max(time.perf_counter() - start, 1e-9)  # (the epoch's, as the progress bar's)
            self._record("step", epoch, here, loss=round(float(self.window) / self.window_steps, 5),
                         epoch_loss=round(float(loss_sum) / (step + 1), 5), seconds=round(seconds, 3),
                         images_per_second=round(min((step + 1) * self.cfg.batch_size, len(self.labels)) / seconds, 1))
            self.window.zero_()
            self.window_steps = 0
        if (step + 1) * self.cfg.snapshots // self.steps > step * self.cfg.snapshots // self.steps and not last:
            self._snapshot(epoch, here)

    def _history_epoch(self, stats: EpochStats, here: int) -> None:
        if self.history:
            self._record("epoch", stats.epoch, here, **{k: v for k, v in asdict(stats).items() if k != "epoch"})
            self._snapshot(stats.epoch, here, stats.test_accuracy, len(self.test_split))

    def _snapshot(self, epoch: int, here: int, acc: float | None = None, images: int | None = None) -> None:
        """The first conv layer's weights now, with the test accuracy (on the first
        SNAPSHOT_TEST_IMAGES test images unless given). A model without convolutions: the accuracy."""
        if acc is None:
            test = self.test_split.subset(SNAPSHOT_TEST_IMAGES)
            acc, images = self._accuracy(test), len(test)
        name, conv = next(((n, m) for n, m in self.model.named_modules() if isinstance(m, torch.nn.Conv2d)),
                          (None, None))
        w = conv.weight.detach().float().cpu() if conv is not None else torch.empty(0)
        self._record("snapshot", epoch, here, layer=name, shape=list(w.shape),
                     trained=bool(conv is not None and conv.weight.requires_grad),
                     weights=[round(v, 5) for v in w.flatten().tolist()], test_accuracy=acc, test_images=images)

    def _record(self, kind: str, epoch: int, step: int, **values) -> None:
        folder.append_history(self.run_dir, {"kind": kind, "epoch": epoch, "step": step, **values})

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
        self._check_weights(_position(epoch_done, step, self.steps))
        if not (self.run_dir and self.procs.main):  # only rank 0 writes
            return
        self.saved_at = _position(epoch_done, step, self.steps)
        generators = {"shuffle": shuffle_state, "augment": self.generators["augment"].get_state()}
        checkpoint.save(self.run_dir, self.cfg, self.model, self.optimizer, self.scheduler, generators, self.best, {
            "epoch": epoch_done, "step": step, "loss_sum": loss, "seconds": seconds, "finished": finished,
            "epochs": [asdict(e) for e in self.result.epochs], "best_acc": self.best_acc,
            "bad_epochs": self.bad_epochs, "best_epoch": self.result.best_epoch,
            "classes": list(self.info.classes), "n_train": len(self.labels), "world_size": self.procs.world,
            "target_seconds": self.result.target_seconds, "target_images": self.result.target_images})

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
        self._check_weights("the end of training")
        if self.run_dir and self.procs.main:
            folder.save_weights(self.model, self.run_dir / folder.WEIGHTS)
            self.log(f"test accuracy {result.test_accuracy:.2%}{self._test_note()}; run saved to {self.run_dir}")
        result.run_dir = self.run_dir if self.procs.main else None
        return result

    def _test_note(self) -> str:
        """Where the test images of a folder without train/ and test/ come from; nothing for others."""
        return f" ({folder.test_origin(self.cfg)})" if data.test_is_held_out(self.cfg.dataset) else ""

    def _first_line(self) -> str:
        cfg, n_trained = self.cfg, count_parameters(self.trainable)
        return (f"training {cfg.model} ({self.parameters:,} parameters"
                + (f", {n_trained:,} of them trained" if n_trained < self.parameters else "")
                + f") on {cfg.dataset}: {len(self.labels):,} train / "
                + (f"{len(self.val_split):,} validation / " if self.val_split is not None else "")
                + f"{len(self.test_split):,} test images{self._test_note()}, "
                f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''}, "
                f"batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr}, device {self.device}, {self.precision}"
                + (f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.device.type == "cpu" else "")
                + (f", {self.procs.world} processes" if self.procs.world > 1 else "")
                + (f", augment {cfg.augment}" if cfg.augment != "none" else "")
                + (f", until {cfg.target_accuracy:.2%} test accuracy" if cfg.target_accuracy else ""))
