"""cnnlab train: train a model (by default the lecture's recipe) and save its run folder."""

from __future__ import annotations

import os
import sys

from . import (add_data_dir_flag, add_json_flag, bounded, fraction, positive_float, positive_int, print_json,
               share)

members = bounded(int, lambda v: v >= 2, "at least 2 (leave --ensemble out to train one model)", "a whole number")


def add_parser(sub) -> None:
    from ..augment import KINDS
    from ..data import DATASETS
    from ..models import model_names
    from ..recipes import RECIPES
    from ..train import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a model and save a run folder",
                       description="Train a model. Defaults are the lecture's recipe: simple_cnn on MNIST, "
                                   "batch 64, Adam lr 0.001, 2 epochs. --recipe picks another named set of "
                                   "settings; any flag given explicitly overrides the recipe's value.")
    # Every setting defaults to None so that a recipe's value is kept unless the flag is given.
    p.add_argument("--recipe", default="lecture", choices=list(RECIPES),
                   help="lecture (default): the lecture's numbers; fast: quickest to 99%% MNIST; "
                        "best: highest accuracy in ~15 min on 2 CPU cores")
    p.add_argument("--model", default=None, help=f"one of: {', '.join(model_names())} (default {d.model})")
    p.add_argument("--dataset", default=None, help=f"one of: {', '.join(DATASETS)}, or folder:PATH for your own images in one "
                        f"sub-folder per class (default {d.dataset})")
    p.add_argument("--epochs", type=positive_int, default=None, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=None, help=f"images per step (default {d.batch_size})")
    p.add_argument("--lr", type=positive_float, default=None, help=f"learning rate (default {d.lr})")
    p.add_argument("--schedule", default=None, choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    p.add_argument("--optimizer", default=None, choices=list(OPTIMIZERS), help=f"optimiser (default {d.optimizer})")
    p.add_argument("--weight-decay", type=float, default=None, help=f"weight decay (default {d.weight_decay})")
    p.add_argument("--augment", default=None, choices=KINDS,
                   help="batched augmentation of training images: translate (+-2 px), affine (rotate, scale, "
                        "shear, shift) or elastic (affine + smooth random warp) (default none)")
    p.add_argument("--label-smoothing", type=float, default=None, help=f"label smoothing (default {d.label_smoothing})")
    p.add_argument("--target-accuracy", type=fraction, default=None, metavar="A",
                   help="evaluate 4 times per epoch and stop as soon as test accuracy >= A (a fraction, e.g. 0.99); "
                        "reports the time it took")
    p.add_argument("--eval-every", type=positive_int, default=None, metavar="STEPS",
                   help="with --target-accuracy: evaluate every STEPS batches (default: 4 times per epoch)")
    p.add_argument("--precision", default=None, choices=PRECISIONS,
                   help="auto (default): bf16 autocast where bf16 is native (a CPU with AVX512-BF16 or AMX, a CUDA GPU "
                        "from Ampere on), else fp32")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false", default=None,
                   help="keep NCHW memory layout (channels_last is the default; it is faster with oneDNN)")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (off by default: compile time exceeds the gain on short runs)")
    p.add_argument("--seed", type=int, default=None, help=f"random seed; same seed on CPU gives identical runs (default {d.seed})")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"], help="where to train (default auto)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    add_data_dir_flag(p)
    p.add_argument("--out", default=None, help="run folder to create (default runs/<date-time>-<model>/)")
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N", help="train on the first N images only")
    p.add_argument("--limit-test", type=positive_int, default=None, metavar="N", help="evaluate on the first N test images only")
    p.add_argument("--val-split", type=share, default=None, metavar="F",
                   help="hold out this share of each class of the training images for validation "
                        "(for a folder without train/ and test/: the held-out test images)")
    p.add_argument("--patience", type=positive_int, default=None, metavar="EPOCHS",
                   help="early stopping: stop after this many epochs without a better validation "
                        "accuracy and keep the best epoch's weights (needs --val-split)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its checkpoint, with its saved settings "
                        "(only --epochs, --device and --threads may be given as well)")
    p.add_argument("--ensemble", type=members, default=None, metavar="N",
                   help="train N models with seeds SEED, SEED+1, ... into OUT/member-1 ... and average their "
                        "probabilities (--recipe best cycles through kernel5_cnn, best_cnn and strided_cnn unless "
                        "--model is given); reports each member's, the ensemble's and the ensemble's test-time "
                        "augmented test accuracy. With --resume DIR: finish an interrupted ensemble "
                        "(finished members kept, the interrupted one resumed, missing ones trained)")
    add_json_flag(p)
    p.set_defaults(func=run)


SETTINGS = ["model", "dataset", "epochs", "batch_size", "lr", "schedule", "optimizer", "weight_decay", "augment",
            "label_smoothing", "target_accuracy", "eval_every", "precision", "channels_last", "compile", "seed",
            "device", "threads", "limit_train", "limit_test", "val_split", "patience"]


def run(args) -> int:
    from ..errors import CnnlabError, Interrupted
    from ..recipes import config
    from ..train import train

    # With --json, stdout carries only the JSON object; human-readable lines go to stderr.
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    given = {name: getattr(args, name) for name in SETTINGS if getattr(args, name) is not None}
    if args.ensemble:
        return run_ensemble(args, given, log)
    try:
        if args.resume:
            if args.out:
                raise CnnlabError("--resume continues in the run's own folder; drop --out")
            result = train(resume=args.resume, data_dir=args.data_dir, log=log, progress=not args.json, **given)
        else:
            cfg = config(args.recipe, **given)
            result = train(cfg, data_dir=args.data_dir, out=args.out, log=log, progress=not args.json)
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks for all
            print(f"cnnlab train: {e}", file=sys.stderr)
        return e.exit_code
    if args.json and int(os.environ.get("RANK", "0")) == 0:
        print_json(result.to_json())
    return 0


def run_ensemble(args, given: dict, log) -> int:
    from ..ensemble import train_ensemble
    from ..errors import CnnlabError, Interrupted
    from ..recipes import config, ensemble_models
    from .ensemble import print_summary

    try:
        if args.resume:
            if args.out:
                raise CnnlabError("--resume continues in the ensemble's own folder; drop --out")
            r = train_ensemble(None, args.ensemble, data_dir=args.data_dir, resume=args.resume, log=log,
                               progress=not args.json, **given)
        else:
            # An explicit --model trains every member as that model; else the recipe's own mix.
            models = None if "model" in given else ensemble_models(args.recipe)
            r = train_ensemble(config(args.recipe, **given), args.ensemble, models=models, data_dir=args.data_dir,
                               out=args.out, log=log, progress=not args.json)
    except Interrupted as e:
        folder = args.resume or (e.run_dir.parent if e.run_dir else None)
        print(f"cnnlab train: {e}" + (f"; to finish the whole ensemble instead: cnnlab train --ensemble "
                                      f"{args.ensemble} --resume {folder}" if folder else ""), file=sys.stderr)
        return e.exit_code
    if args.json:
        print_json(r)
    else:
        print_summary(r)
    return 0
