"""cnnlab train: train a model (by default the lecture's recipe) and save its run folder.

Every training setting's flag is generated from its definition in engine/config.py (TrainConfig).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import cnnlab

from ..engine.config import RECIPES, SettingError, TrainConfig, ensemble_models, resume_flags
from ..errors import CnnlabError, Interrupted
from . import COMMANDS, add_data_dir_flag, add_json_flag, bounded, print_json
from .ensemble import print_summary

members = bounded(int, lambda v: v >= 2, "at least 2 (leave --ensemble out to train one model)", "a whole number")
CASTS = {"int": int, "float": float, "str": str}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help=COMMANDS["train"],
                       description="Train a model. Defaults are the lecture's recipe: simple_cnn on MNIST, "
                                   "batch 64, Adam lr 0.001, 2 epochs. --recipe picks another named set of "
                                   "settings; any flag given explicitly overrides the recipe's value.")
    p.add_argument("--recipe", default=None, choices=list(RECIPES),
                   help="lecture (default): the lecture's numbers; fast: quickest to 99%% MNIST; "
                        "best: highest accuracy in ~15 min on 2 CPU cores")
    for f in fields(TrainConfig):
        if f.metadata["setting"].cli:
            add_setting_flag(p, f)
    add_data_dir_flag(p)
    p.add_argument("--out", default=None, help="run folder to create (default runs/<date-time>-<model>/)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help=f"continue an interrupted run from its checkpoint, with its saved settings (only "
                        f"{resume_flags()} may be given as well)")
    p.add_argument("--ensemble", type=members, default=None, metavar="N",
                   help="train N models with seeds SEED, SEED+1, ... into OUT/member-1 ... and average their "
                        "probabilities (--recipe best cycles through kernel5_cnn, best_cnn and strided_cnn unless "
                        "--model is given); reports each member's, the ensemble's and the ensemble's test-time "
                        "augmented test accuracy. With --resume DIR: finish an interrupted ensemble "
                        "(finished members kept, the interrupted one resumed, missing ones trained)")
    add_json_flag(p)
    p.set_defaults(func=run)


def add_setting_flag(p: argparse.ArgumentParser, f) -> None:
    """One flag from one TrainConfig field: its type, bounds, choices, default and help."""
    s, flag = f.metadata["setting"], "--" + f.name.replace("_", "-")
    help = s.help.replace("%", "%%") + ("" if f.default is None else f" (default {f.default})")
    if f.type == "bool":  # a switch that turns the default off (or on)
        p.add_argument(f"--no-{f.name.replace('_', '-')}" if f.default else flag, dest=f.name,
                       action="store_false" if f.default else "store_true", default=None, help=help)
        return
    cast = CASTS[f.type.split("|")[0].strip()]

    def parse(text: str):
        try:
            return s.check(f.name, cast(text))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if cast is int else 'a number'}, "
                                             f"got '{text}'") from None
        except SettingError as e:
            raise argparse.ArgumentTypeError(e.detail) from None
    # (--dataset also takes folder:PATH, so its choices are checked by parse, not listed by argparse.)
    p.add_argument(flag, type=parse, default=None, metavar=s.metavar or (f.name.upper() if s.choices else None),
                   help=help + (f"; one of: {', '.join(s.choices)}" if s.choices else ""))


def run(args) -> int:
    # With --json, stdout carries only the JSON object; human-readable lines go to stderr.
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig)
             if f.metadata["setting"].cli and getattr(args, f.name) is not None}
    if args.resume and args.recipe:
        raise CnnlabError("--resume continues with the run's saved settings; drop --recipe")
    args.recipe = args.recipe or "lecture"
    if args.ensemble:
        return run_ensemble(args, given, log)
    try:
        if args.resume:
            if args.out:
                raise CnnlabError("--resume continues in the run's own folder; drop --out")
            result = cnnlab.train(resume=args.resume, data_dir=args.data_dir, log=log, progress=not args.json, **given)
        else:
            result = cnnlab.train(cnnlab.config(args.recipe, **given), data_dir=args.data_dir, out=args.out, log=log,
                                  progress=not args.json)
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for all
            print(f"cnnlab train: {e}", file=sys.stderr)
        return e.exit_code
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        print_json(result.to_json())
    return 0


def run_ensemble(args, given: dict, log) -> int:
    try:
        if args.resume:
            if args.out:
                raise CnnlabError("--resume continues in the ensemble's own folder; drop --out")
            r = cnnlab.train_ensemble(None, args.ensemble, data_dir=args.data_dir, resume=args.resume, log=log,
                                      progress=not args.json, **given)
        else:
            # An explicit --model trains every member as that model; else the recipe's own mix.
            models = None if "model" in given else ensemble_models(args.recipe)
            r = cnnlab.train_ensemble(cnnlab.config(args.recipe, **given), args.ensemble, models=models,
                                      data_dir=args.data_dir, out=args.out, log=log, progress=not args.json)
    except Interrupted as e:  # (its line says how to finish the ensemble)
        print(f"cnnlab train: {e}", file=sys.stderr)
        return e.exit_code
    if args.json:
        print_json(r)
    else:
        print_summary(r)
    return 0
