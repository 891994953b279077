"""Ensembles: train several networks into one folder, join finished runs, and evaluate them.

The folder format (member-1/, member-2/, ... and a config.json naming them) belongs to
runs/folder.py; averaging (Ensemble, TTA) to runs/inference.py.
"""

from __future__ import annotations

import json
import shutil
from contextlib import ExitStack
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..engine.config import RESUME_MAY_CHANGE, TrainConfig, resume_flags
from ..engine.processes import StopRequest
from ..engine.train import checked, train
from ..errors import CnnlabError, Interrupted, RunError
from ..files import atomic_write, check_new_dir, make_dir, write_json
from . import folder
from .folder import CONFIG, ENSEMBLE, MEMBER, METRICS, WEIGHTS, ensemble_config, member_dirs, read_config, test_split
from .inference import SHIFTS, TTA, EveryView, fraction_correct, log_mean_softmax

PLAN = "ensemble-plan.json"  # written when `train --ensemble` starts: the models members cycle through


def evaluate_ensemble(run_dir, data_dir=None, limit: int | None = None, record: bool = False) -> dict:
    """Test accuracy of each member, of the ensemble, and of the ensemble with TTA (same images).

    Each member sees every TTA view of every image once; the three accuracies all come from those
    probabilities (5 forward passes per member and image, where evaluating member, ensemble and
    ensemble with TTA one after another takes 7 and loads every member twice). record=True also
    writes the accuracies into the ensemble's config.json ("evaluation"), where `serve` shows them.
    """
    run_dir = Path(run_dir)
    trained = folder.load(run_dir)
    dataset, test = test_split(trained.config, data_dir, limit)
    per_view = []  # per member: [N, V, K] log-probabilities of every view
    for member in trained.model.members:
        views = replace(trained, model=EveryView(TTA(member)))
        per_view.append(F.log_softmax(views.logits(test.images).reshape(len(test), len(SHIFTS), -1), dim=-1))
    per_view = torch.stack(per_view)  # [M, N, V, K]

    def accuracy(log_probs: torch.Tensor) -> float:
        return fraction_correct(log_probs.argmax(-1), test.labels)

    members = [{"run_dir": str(d), "test_accuracy": accuracy(p[:, 0])}
               for d, p in zip(member_dirs(run_dir, trained.config), per_view)]
    for member, source in zip(members, trained.config.get("sources") or []):  # joined by `cnnlab ensemble`
        member["source"] = source
    plain = accuracy(log_mean_softmax(per_view[:, :, 0]))
    # TTA of the ensemble: the mean over views of the members' mean = the mean over all (member, view).
    everything = per_view.transpose(1, 2).flatten(0, 1)  # [M * V, N, K]
    tta = accuracy(torch.logsumexp(everything, dim=0))
    report = {"run_dir": str(run_dir), "dataset": dataset, "test_images": len(test), "members": members,
              "test_accuracy": plain, "tta_test_accuracy": tta, "tta_shifts": [list(s) for s in SHIFTS]}
    if record:
        evaluation = {k: report[k] for k in ("dataset", "test_images", "test_accuracy", "tta_test_accuracy")}
        write_json(run_dir / CONFIG, {**read_config(run_dir), "evaluation": evaluation})
    return report


def train_ensemble(config, n: int, *, models=None, data_dir=None, out=None, resume=None, progress: bool = True,
                   log: Callable[[str], None] | None = print, **overrides) -> dict:
    """Train n members with seeds seed, seed+1, ... (each an ordinary run in OUT/member-k, through
    train.train), write the ensemble's config and evaluate it. Returns evaluate_ensemble's dict plus
    each member's seed, model and training time.

    models: the networks members cycle through (member k trains models[(k - 1) % len(models)]);
    default: config.model for all. Different networks make different mistakes, so their average
    makes fewer (recipes.ENSEMBLE_MODELS has the measurements).

    resume=DIR finishes an interrupted `train --ensemble` in DIR: finished members are kept, an
    interrupted one resumes from its checkpoint (or starts again if it had none), missing ones are
    trained with the settings and models saved in PLAN. overrides (epochs, device, threads only) apply
    to what is trained now.
    """
    log = log or (lambda s: None)
    if n < 2:
        raise CnnlabError(f"--ensemble needs at least 2 members, got {n}; leave it out to train one model")
    root = None
    with ExitStack() as held, StopRequest() as stop:
        try:
            if resume is not None:
                root, config, models = _unfinished(Path(resume), overrides)
                held.enter_context(folder.claim(root, log))  # the whole ensemble's one writer
            else:
                root, config, models = _begin(config, models, out, overrides, held, log)
            names, seconds = [], []
            for k in range(1, n + 1):
                _stop_if_asked(stop, f"before member {k} of {n} began; the finished members are kept", n, root)
                names.append(MEMBER.format(k))
                try:
                    seconds.append(_member(root / names[-1], k, n, replace(config, seed=config.seed + k - 1,
                                                                            model=models[(k - 1) % len(models)]),
                                           data_dir, progress, log, overrides))
                except Interrupted as e:  # the member's own line, then how to go on with the whole ensemble
                    raise Interrupted(f"{e}; to finish the ensemble: cnnlab train --ensemble {n} --resume {root}",
                                      e.exit_code, root) from None
            _stop_if_asked(stop, "after its last member; every member is saved", n, root)
            # Written last: a folder without it is an ensemble whose training did not finish.
            configs = [read_config(root / m) for m in names]
            write_json(root / CONFIG, ensemble_config(names, configs))
            log(f"evaluating each member, the ensemble and the ensemble with TTA ({len(SHIFTS)} views per image)")
            report = evaluate_ensemble(root, data_dir=data_dir, limit=config.limit_test, record=True)
            _stop_if_asked(stop, f"as the ensemble ended; {root} is complete (nothing to resume)", n, None)
        except KeyboardInterrupt:  # the same signal twice, between members: stopped at once
            how = (f". Resume with: cnnlab train --ensemble {n} --resume {root}"
                   if root and not (root / CONFIG).is_file() else "")
            raise Interrupted(f"stopped at once by a second {stop.name}; the finished members are kept{how}",
                              stop.exit_code) from None
    for member, member_config, s in zip(report["members"], configs, seconds):
        member["seed"] = member_config.get("seed")
        member["model"] = member_config.get("model")
        member["train_seconds"] = s  # None: trained by an earlier, interrupted call
    report["train_seconds"] = round(sum(s for s in seconds if s is not None), 3)
    return report


def _begin(config, models, out, overrides: dict, held: ExitStack, log):
    """Create and claim a new ensemble folder: (folder, member settings, models)."""
    config = checked(TrainConfig(**{**asdict(config or TrainConfig()), **overrides}))
    models = list(models or [config.model])
    for name in models:
        checked(replace(config, model=name))  # an unknown model fails before anything is written
    root = held.enter_context(folder.new_run_dir(f"{ENSEMBLE}-{config.model}", out, log))
    # Read by --resume: the settings and which network each missing member must be.
    write_json(root / PLAN, {"models": models, "recipe": asdict(config)})
    return root, config, models


def _member(member: Path, k: int, n: int, config: TrainConfig, data_dir, progress, log, overrides) -> float | None:
    """Train (or finish, or keep) member k; its training seconds, None when it had finished before."""
    if (member / WEIGHTS).is_file():  # weights are written when a run finishes
        log(f"ensemble member {k}/{n} ({config.model}, seed {config.seed}): finished before, kept")
        return None
    log(f"ensemble member {k}/{n} ({config.model}, seed {config.seed})")
    if (member / CONFIG).is_file():  # begun: resume (from its checkpoint, or from the start if it has none)
        return train(data_dir=data_dir, resume=member, progress=progress, log=log, **overrides).train_seconds
    # Not begun, or killed as its folder was made (that folder holds at most a stale lock).
    return train(config, data_dir=data_dir, out=member, progress=progress, log=log).train_seconds


def _stop_if_asked(stop: StopRequest, what: str, n: int, root: Path | None) -> None:
    """A signal between members (or while the ensemble is evaluated): leave with what is saved."""
    if stop.signum is None:
        return
    how = f". Resume with: cnnlab train --ensemble {n} --resume {root}" if root else ""
    raise Interrupted(f"stopped by {stop.name} {what}{how}", stop.exit_code)


def _unfinished(root: Path, overrides: dict):
    """(folder, member settings, models) of an interrupted `train --ensemble`, or one line saying why not."""
    if (root / CONFIG).is_file():
        raise CnnlabError(f"{root} is a finished run or ensemble; nothing to resume")
    fixed = sorted(set(overrides) - set(RESUME_MAY_CHANGE))
    if fixed:
        raise CnnlabError(f"--resume continues the ensemble with its saved settings; drop "
                          f"{', '.join('--' + k.replace('_', '-') for k in fixed)} (only {resume_flags()} may change)")
    plan, first = _read_plan(root), root / MEMBER.format(1)
    if plan and "recipe" in plan:
        saved, source = plan["recipe"], root / PLAN
    elif (first / CONFIG).is_file():  # (plans written before they held the settings)
        saved, source = read_config(first).get("recipe") or {}, first / CONFIG
    elif plan is not None or (root / folder.LOCK).is_file() or (root.is_dir() and not any(root.iterdir())):
        raise RunError(f"{root} was stopped before its first member began, so nothing was trained; start it "
                       f"again with 'cnnlab train --ensemble N --out {root}' and its settings")
    else:
        raise RunError(f"{root} holds no {first.name}/{CONFIG}; pass the folder an interrupted "
                       f"'cnnlab train --ensemble N' was writing")
    try:
        config = checked(TrainConfig(**{**saved, **overrides}))
    except TypeError:
        raise RunError(f"{source} was written by another cnnlab version; it cannot be resumed by this one") from None
    if plan is False:
        raise RunError(f"{root / PLAN} is corrupt; delete it to train every missing member as {config.model}")
    models = plan["models"] if plan else [config.model]  # no plan (deleted): member-1's model for all
    for name in models:
        checked(replace(config, model=name))
    return root, config, models


def _read_plan(root: Path) -> dict | None | bool:
    """PLAN's {"models": [...], "recipe": {...}}; None when there is none, False when it is corrupt."""
    if not (root / PLAN).is_file():
        return None
    try:
        plan = json.loads((root / PLAN).read_text())
    except (ValueError, RecursionError):  # (UnicodeDecodeError is a ValueError)
        return False
    models = plan.get("models") if isinstance(plan, dict) else None
    if not (isinstance(models, list) and models and all(isinstance(m, str) for m in models)) \
            or not isinstance(plan.get("recipe", {}), dict):
        return False
    return plan


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
        if read_config(d).get("model") == ENSEMBLE:
            raise RunError(f"{d} is an ensemble itself; pass its member folders ({d}/member-1, ...) instead")
        configs.append(folder.load(d).config)  # loads the weights: a corrupt run fails here, not later
    names = [MEMBER.format(k) for k in range(1, len(sources) + 1)]
    config = ensemble_config(names, configs, labels=[str(d) for d in sources],
                             sources=[str(d.resolve()) for d in sources])
    out = check_new_dir(out)
    created = not out.exists()
    try:
        make_dir(out)
        for src, name in zip(sources, names):
            (out / name).mkdir()
            for f in (WEIGHTS, CONFIG, METRICS):
                if (src / f).is_file():
                    atomic_write(out / name / f, (src / f).read_bytes())
        write_json(out / CONFIG, config)
    except BaseException as e:
        # Nothing half-written: remove what this call created (an empty --out given by the user stays).
        for name in names:
            shutil.rmtree(out / name, ignore_errors=True)
        (out / CONFIG).unlink(missing_ok=True)
        if created:
            shutil.rmtree(out, ignore_errors=True)
        if isinstance(e, OSError):
            raise CnnlabError(f"could not write the ensemble to {out}: {e.strerror or e}; nothing was kept") from None
        raise
    return out

