"""Ensembles and test-time augmentation: several predictions of one image, averaged.

An ensemble averages the class probabilities of independently trained networks (different
seeds make different mistakes, so the average makes fewer). Test-time augmentation (TTA)
averages one network's probabilities over the image and copies shifted by a pixel. Both are
nn.Modules that return log-probabilities: softmax of their output is the mean probability and
argmax the averaged vote, so they go anywhere a model's logits go (evaluate, predict, serve, export).

An ensemble run folder holds ordinary run folders member-1/, member-2/, ... and its own
config.json: {"model": "ensemble", "members": ["member-1", ...], dataset, classes,
normalization}. runs.load() reads it; `cnnlab train --ensemble N` and `cnnlab ensemble RUN...`
write it.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import data as data_mod
from . import runs
from .errors import CnnlabError, RunError

ENSEMBLE = "ensemble"  # the "model" of an ensemble run folder's config.json
MEMBER = "member-{}"
PLAN = "ensemble-plan.json"  # written when `train --ensemble` starts: the models members cycle through
# The image and its four 1-pixel neighbours (dy, dx): digits in MNIST are centred by centre of
# mass, so a pixel either way is a shift the networks have seen in training data.
SHIFTS = ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))


def _log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """[V, N, K] logits of V predictions -> [N, K] log of their mean softmax (logsumexp: stable
    for confident networks whose probabilities underflow)."""
    return torch.logsumexp(F.log_softmax(logits.float(), dim=-1), dim=0) - math.log(len(logits))


class Ensemble(nn.Module):
    """Members' softmax probabilities averaged; returns their log."""

    def __init__(self, members):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x):
        return _log_mean_softmax(torch.stack([m(x) for m in self.members]))


class TTA(nn.Module):
    """A model's softmax probabilities averaged over shifted copies of each image; returns their log.

    shifts: (dy, dx) per view, (0, 0) being the image itself. A shift moves the content by dy rows
    down and dx columns right; the border is filled by repeating the edge pixels (padding mode
    "replicate"), so nothing wraps around and any background colour stays as it was.
    """

    def __init__(self, model: nn.Module, shifts=SHIFTS):
        super().__init__()
        if not shifts:
            raise CnnlabError("test-time augmentation needs at least one shift, such as (0, 0)")
        self.model = model
        self.shifts = tuple((int(dy), int(dx)) for dy, dx in shifts)

    @property
    def views(self) -> int:
        return len(self.shifts)

    def shifted(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [V * N, C, H, W]: every view of every image, view by view."""
        p = max(max(abs(dy), abs(dx)) for dy, dx in self.shifts)
        if p == 0:
            return x.repeat(self.views, 1, 1, 1)
        h, w = x.shape[-2:]
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        # view[i, j] = x[i - dy, j - dx]: the content moves by (dy, dx).
        return torch.cat([padded[..., p - dy:p - dy + h, p - dx:p - dx + w] for dy, dx in self.shifts])

    def forward(self, x):
        # One forward pass over all views: a batch V times larger is faster than V small ones.
        logits = self.model(self.shifted(x))
        return _log_mean_softmax(logits.reshape(self.views, len(x), -1))


# --- ensemble run folders --------------------------------------------------------------------------

def _evaluated_on(config: dict) -> dict:
    """What members must share to be averaged: the images they take, the classes they name."""
    dataset = config.get("dataset", "mnist")
    val_split = (config.get("recipe") or {}).get("val_split") or 0.0
    return {
        "classes": list(config.get("classes") or [str(i) for i in range(10)]),
        "in_channels": int(config.get("in_channels", 1)),
        "input_size": list(config.get("input_size") or [1, data_mod.IMAGE_SIZE, data_mod.IMAGE_SIZE]),
        "normalization": {k: float(v) for k, v in (config.get("normalization") or {}).items()},
        "dataset": dataset,
        # A folder without train/ and test/ is tested on the share held out by --val-split: members
        # must hold out the same share, or one member's test images are another's training images.
        # (Decided from the name alone: loading for predict or serve must not need the images.)
        "val_split": val_split if dataset.startswith(data_mod.FOLDER) else 0.0,
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
    val_split = shared.pop("val_split")
    return {"model": ENSEMBLE, "members": members, **shared,
            "recipe": {"val_split": val_split},  # read by evaluate like an ordinary run's recipe
            **extra, "created": datetime.now().isoformat(timespec="seconds"), "versions": runs.versions()}


def member_dirs(run_dir: Path, config: dict) -> list[Path]:
    members = config.get("members")
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise RunError(f"{run_dir / runs.CONFIG} lists no members; it is not a complete ensemble config")
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
        if runs.read_config(d).get("model") == ENSEMBLE:
            raise RunError(f"ensemble member {d} is an ensemble itself; list its member folders instead")
        trained.append(runs.load(d, device=device))
    shared_config([t.config for t in trained] + [config], [str(d) for d in dirs] + [str(run_dir)])
    return Ensemble([t.model for t in trained])


def evaluate_ensemble(run_dir, data_dir=None, limit: int | None = None, record: bool = False) -> dict:
    """Test accuracy of each member, of the ensemble, and of the ensemble with TTA (same images).

    Each member sees every TTA view of every image once; the three accuracies all come from those
    probabilities (5 forward passes per member and image, where evaluating member, ensemble and
    ensemble with TTA one after another takes 7 and loads every member twice). record=True also
    writes the accuracies into the ensemble's config.json ("evaluation"), where `serve` shows them.
    """
    from dataclasses import replace as with_model

    from .evaluate import evaluation_split, fraction_correct

    run_dir = Path(run_dir)
    trained = runs.load(run_dir)
    dataset, test = evaluation_split(trained, None, data_dir, limit)
    per_view = []  # per member: [N, V, K] log-probabilities of every view
    for member in trained.model.members:
        views = with_model(trained, model=_EveryView(TTA(member)))
        per_view.append(F.log_softmax(views.logits(test.images).reshape(len(test), len(SHIFTS), -1), dim=-1))
    per_view = torch.stack(per_view)  # [M, N, V, K]

    def accuracy(log_probs: torch.Tensor) -> float:
        return fraction_correct(log_probs.argmax(-1), test.labels)

    members = [{"run_dir": str(d), "test_accuracy": accuracy(p[:, 0])}
               for d, p in zip(member_dirs(run_dir, trained.config), per_view)]
    for member, source in zip(members, trained.config.get("sources") or []):  # joined by `cnnlab ensemble`
        member["source"] = source
    plain = accuracy(_log_mean_softmax(per_view[:, :, 0]))
    # TTA of the ensemble: the mean over views of the members' mean = the mean over all (member, view).
    everything = per_view.transpose(1, 2).flatten(0, 1)  # [M * V, N, K]
    tta = accuracy(torch.logsumexp(everything, dim=0))
    report = {"run_dir": str(run_dir), "dataset": dataset, "test_images": len(test), "members": members,
              "test_accuracy": plain, "tta_test_accuracy": tta, "tta_shifts": [list(s) for s in SHIFTS]}
    if record:
        evaluation = {k: report[k] for k in ("dataset", "test_images", "test_accuracy", "tta_test_accuracy")}
        runs.write_json(run_dir / runs.CONFIG, {**runs.read_config(run_dir), "evaluation": evaluation})
    return report


class _EveryView(nn.Module):
    """A member's logits for each TTA view side by side, [N, V * K], so that evaluation's chunking
    (which keeps V * chunk images per forward pass) applies unchanged."""

    def __init__(self, tta: TTA):
        super().__init__()
        self.tta = tta
        self.views = tta.views

    def forward(self, x):
        logits = self.tta.model(self.tta.shifted(x))  # [V * N, K], view by view
        return logits.reshape(self.views, len(x), -1).transpose(0, 1).flatten(1)


def train_ensemble(config, n: int, *, models=None, data_dir=None, out=None, resume=None, progress: bool = True,
                   log: Callable[[str], None] | None = print, **overrides) -> dict:
    """Train n members with seeds seed, seed+1, ... (each an ordinary run in OUT/member-k, through
    train.train), write the ensemble's config and evaluate it. Returns evaluate_ensemble's dict plus
    each member's seed, model and training time.

    models: the networks members cycle through (member k trains models[(k - 1) % len(models)]);
    default: config.model for all. Different networks make different mistakes, so their average
    makes fewer (recipes.ENSEMBLE_MODELS has the measurements).

    resume=DIR finishes an interrupted `train --ensemble` in DIR: finished members are kept, an
    interrupted one resumes from its checkpoint, missing ones are trained with member-1's saved
    settings and the models saved in PLAN. overrides (device, threads only) apply to what is trained now.
    """
    from .train import TrainConfig, train

    log = log or (lambda s: None)
    if n < 2:
        raise CnnlabError(f"--ensemble needs at least 2 members, got {n}; leave it out to train one model")
    if resume is not None:
        root, config, models = _unfinished(Path(resume), overrides)
    else:
        config = TrainConfig(**{**asdict(config or TrainConfig()), **overrides}).validate()
        models = list(models or [config.model])
        for name in models:
            replace(config, model=name).validate()  # an unknown model fails before anything is written
        root = runs.new_run_dir(f"{ENSEMBLE}-{config.model}", out)
        # Read by --resume: which network each missing member must be.
        runs.write_json(root / PLAN, {"models": models})
    names, seconds = [], []
    for k in range(1, n + 1):
        names.append(MEMBER.format(k))
        folder, seed, model = root / names[-1], config.seed + k - 1, models[(k - 1) % len(models)]
        if (folder / runs.WEIGHTS).is_file():  # weights are written when a run finishes
            log(f"ensemble member {k}/{n} ({model}, seed {seed}): finished before, kept")
            seconds.append(None)
            continue
        log(f"ensemble member {k}/{n} ({model}, seed {seed})")
        if folder.exists():
            result = train(data_dir=data_dir, resume=folder, progress=progress, log=log, **overrides)
        else:
            result = train(replace(config, seed=seed, model=model), data_dir=data_dir, out=folder,
                           progress=progress, log=log)
        seconds.append(result.train_seconds)
    # Written last: a folder without it is an ensemble whose training did not finish.
    configs = [runs.read_config(root / m) for m in names]
    runs.write_json(root / runs.CONFIG, ensemble_config(names, configs))
    log(f"evaluating each member, the ensemble and the ensemble with TTA ({len(SHIFTS)} views per image)")
    report = evaluate_ensemble(root, data_dir=data_dir, limit=config.limit_test, record=True)
    for member, member_config, s in zip(report["members"], configs, seconds):
        member["seed"] = member_config.get("seed")
        member["model"] = member_config.get("model")
        member["train_seconds"] = s  # None: trained by an earlier, interrupted call
    report["train_seconds"] = round(sum(s for s in seconds if s is not None), 3)
    return report


def _unfinished(root: Path, overrides: dict):
    """(folder, member settings, models) of an interrupted `train --ensemble`, or one line saying why not."""
    from .train import TrainConfig

    if (root / runs.CONFIG).is_file():
        raise CnnlabError(f"{root} is a finished run or ensemble; nothing to resume")
    first = root / MEMBER.format(1)
    if not (first / runs.CONFIG).is_file():
        raise RunError(f"{root} holds no {first.name}/{runs.CONFIG}; pass the folder an interrupted "
                       f"'cnnlab train --ensemble N' was writing")
    fixed = sorted(set(overrides) - {"device", "threads"})
    if fixed:
        raise CnnlabError(f"--resume continues the ensemble with member-1's saved settings; drop "
                          f"{', '.join('--' + k.replace('_', '-') for k in fixed)} (only --device and "
                          f"--threads may change)")
    saved = runs.read_config(first).get("recipe") or {}
    try:
        config = TrainConfig(**{**saved, **overrides}).validate()
    except TypeError:
        raise RunError(f"{first / runs.CONFIG} was written by another cnnlab version; "
                       f"it cannot be resumed by this one") from None
    models = [config.model]  # ensembles begun before the plan file existed used one model
    if (root / PLAN).is_file():
        try:
            models = json.loads((root / PLAN).read_text()).get("models")
        except (ValueError, UnicodeDecodeError, AttributeError):
            models = None
        if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)):
            raise RunError(f"{root / PLAN} is corrupt; delete it to train every missing member as "
                           f"{config.model}")
        for name in models:
            replace(config, model=name).validate()
    return root, config, models


def assemble(run_dirs, out) -> Path:
    """Copy finished runs into a new ensemble folder OUT/member-1, member-2, ... with its config.

    Everything is checked before anything is written; OUT must not hold anything yet.
    """
    if out is None:
        raise CnnlabError("give the ensemble folder to create with --out DIR")
    if len(run_dirs) < 2:
        raise CnnlabError(f"an ensemble needs at least 2 run folders, got {len(run_dirs)}")
    sources = [Path(d) for d in run_dirs]
    configs = []
    for d in sources:
        if runs.read_config(d).get("model") == ENSEMBLE:
            raise RunError(f"{d} is an ensemble itself; pass its member folders ({d}/member-1, ...) instead")
        configs.append(runs.load(d).config)  # loads the weights: a corrupt run fails here, not later
    names = [MEMBER.format(k) for k in range(1, len(sources) + 1)]
    config = ensemble_config(names, configs, labels=[str(d) for d in sources],
                             sources=[str(d.resolve()) for d in sources])
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunError(f"--out {out} already exists and is not empty; choose a new folder "
                       f"(cnnlab never overwrites a run)")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        for src, name in zip(sources, names):
            (out / name).mkdir()
            for f in (runs.WEIGHTS, runs.CONFIG, runs.METRICS):
                if (src / f).is_file():
                    runs.atomic_write(out / name / f, (src / f).read_bytes())
        runs.write_json(out / runs.CONFIG, config)
    except BaseException as e:
        # Nothing half-written: remove what this call created (an empty --out given by the user stays).
        for name in names:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / runs.CONFIG).unlink(missing_ok=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, OSError):
            raise CnnlabError(f"could not write the ensemble to {out}: {e.strerror or e}; nothing was kept") from None
        raise
    return out

