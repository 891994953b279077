"""Stochastic weight averaging (Izmailov et al. 2018) after a finished run: does it lift `best`?

    python benchmarks/swa_tail.py runs/best-s0 runs/best-s1 runs/best-s2 --epochs 5 --lr 5e-4

Each run folder's network trains EPOCHS more epochs with AdamW at the run's weight decay, and
the run's augmentation and label smoothing, at a constant learning rate LR (the one-cycle schedule ended
near zero); torch.optim.swa_utils averages the weights at each epoch's end and recomputes the
average's BatchNorm statistics on the training images. One table row per run and epoch: the test
accuracy of the last weights and of the average, against the run's own at the start. Nothing
is written to the run folders. Issue 17's measurements are in docs/benchmarks.md (Records).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.optim.swa_utils import AveragedModel, update_bn  # noqa: E402

import cnnlab  # noqa: E402
from cnnlab.engine import augment, data  # noqa: E402
from cnnlab.runs.inference import accuracy  # noqa: E402

BN_CHUNK = 512  # training images per forward pass when recomputing the average's BatchNorm statistics


def swa_tail(run_dir: str, epochs: int, lr: float, data_dir: str) -> dict:
    trained = cnnlab.load(run_dir)
    recipe, mean, std = trained.config["recipe"], trained.mean, trained.std
    model = trained.model.to(memory_format=torch.channels_last)
    train = data.load(recipe["dataset"], "train", data_dir)
    test = data.load(recipe["dataset"], "test", data_dir)
    row = {"run": run_dir, "epochs": epochs, "lr": lr, "start": accuracy(model, test, mean, std), "rows": []}
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe["weight_decay"])
    average = AveragedModel(model)
    # New seeds: the tail must not replay the run's own shuffles and augmentations.
    shuffle = torch.Generator().manual_seed(recipe["seed"] + 100)
    warp = torch.Generator().manual_seed(recipe["seed"] + 101)
    plain = [data.normalize(train.images[i:i + BN_CHUNK].unsqueeze(1).float(), mean, std)
             for i in range(0, len(train.labels), BN_CHUNK)]  # un-augmented, as test images are
    clock = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train.labels), generator=shuffle)
        for i in range(0, len(order), recipe["batch_size"]):
            idx = order[i:i + recipe["batch_size"]]
            x = augment.apply(train.images[idx].unsqueeze(1).float(), recipe["augment"], warp)
            x = data.normalize(x, mean, std).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(model(x), train.labels[idx], label_smoothing=recipe["label_smoothing"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        average.update_parameters(model)
        update_bn(plain, average)
        model.eval()
        average.eval()
        row["rows"].append({"epoch": epoch, "last": accuracy(model, test, mean, std),
                            "swa": accuracy(average.module, test, mean, std),
                            "seconds": round(time.perf_counter() - clock, 1)})
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="finished run folders (cnnlab train --recipe best --out ...)")
    p.add_argument("--epochs", type=int, default=5, help="epochs of the averaging tail")
    p.add_argument("--lr", type=float, default=5e-4, help="the tail's constant learning rate")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", action="store_true", help="one JSON object per run instead of the table")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    data_dir = os.environ.get("CNNLAB_DATA_DIR") or "data"
    if not args.json:
        print("| run | start | epoch | last weights | SWA | seconds |\n| --- | --: | --: | --: | --: | --: |")
    for run in args.runs:
        result = swa_tail(run, args.epochs, args.lr, data_dir)
        if args.json:
            print(json.dumps(result), flush=True)
            continue
        for r in result["rows"]:
            print(f"| {run} | {100 * result['start']:.2f}% | {r['epoch']} | {100 * r['last']:.2f}% | "
                  f"{100 * r['swa']:.2f}% | {r['seconds']:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
