"""cnnlab train: train a model (by default the lecture's recipe) and save its run folder."""

from __future__ import annotations

import argparse
import os
import sys

from . import add_json_flag, positive_float, positive_int, print_json


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction such as 0.1, got '{text}'") from None
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {value}")
    return value


def add_parser(sub) -> None:
    from ..data import DATASETS
    from ..models import model_names
    from ..train import OPTIMIZERS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="train a model and save a run folder",
                       description="Train a model. Defaults are the lecture's recipe: simple_cnn on MNIST, "
                                   "batch 64, Adam lr 0.001, 2 epochs.")
    p.add_argument("--model", default=d.model, help=f"one of: {', '.join(model_names())} (default {d.model})")
    p.add_argument("--dataset", default=d.dataset, help=f"one of: {', '.join(DATASETS)}, or folder:PATH for your own images in one "
                        f"sub-folder per class (default {d.dataset})")
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"passes over the training set (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"images per step (default {d.batch_size})")
    p.add_argument("--lr", type=positive_float, default=d.lr, help=f"learning rate (default {d.lr})")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help=f"learning-rate schedule (default {d.schedule})")
    p.add_argument("--optimizer", default=d.optimizer, choices=list(OPTIMIZERS), help=f"optimiser (default {d.optimizer})")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"weight decay (default {d.weight_decay})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"random seed; same seed on CPU gives identical runs (default {d.seed})")
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda", "mps"], help="where to train (default auto)")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default $CNNLAB_DATA_DIR, else ./data)")
    p.add_argument("--out", default=None, help="run folder to create (default runs/<date-time>-<model>/)")
    p.add_argument("--limit-train", type=positive_int, default=None, metavar="N", help="train on the first N images only")
    p.add_argument("--limit-test", type=positive_int, default=None, metavar="N", help="evaluate on the first N test images only")
    p.add_argument("--val-split", type=fraction, default=d.val_split, metavar="FRACTION",
                   help="hold out this share of each class of the training images for validation "
                        "(for a folder without train/ and test/: the held-out test images)")
    p.add_argument("--patience", type=positive_int, default=None, metavar="EPOCHS",
                   help="early stopping: stop after this many epochs without a better validation "
                        "accuracy and keep the best epoch's weights (needs --val-split)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue an interrupted run from its checkpoint, with its saved settings "
                        "(only --epochs, --device and --threads may be given as well)")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from dataclasses import asdict

    from ..errors import CnnlabError, Interrupted
    from ..train import TrainConfig, train

    cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs, batch_size=args.batch_size,
                      lr=args.lr, schedule=args.schedule, optimizer=args.optimizer,
                      weight_decay=args.weight_decay, seed=args.seed, device=args.device, threads=args.threads,
                      limit_train=args.limit_train, limit_test=args.limit_test, val_split=args.val_split,
                      patience=args.patience)
    # With --json, stdout carries only the JSON object; human-readable lines go to stderr.
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    try:
        if args.resume:
            if args.out:
                raise CnnlabError("--resume continues in the run's own folder; drop --out")
            # Only the options the user actually changed from the defaults are checked against the run.
            given = {k: v for k, v in asdict(cfg).items() if v != getattr(TrainConfig(), k)}
            result = train(resume=args.resume, data_dir=args.data_dir, log=log, progress=not args.json, **given)
        else:
            result = train(cfg.validate(), data_dir=args.data_dir, out=args.out, log=log, progress=not args.json)
    except Interrupted as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"cnnlab train: {e}", file=sys.stderr)
        return e.exit_code
    if args.json and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        print_json(result.to_json())
    return 0
