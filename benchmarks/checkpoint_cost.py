"""What a resumable checkpoint costs per epoch: its size, the time to write it (atomically, with
fsync) and to read and verify it, for each registered model with Adam's state.

    PYTHONPATH=src python benchmarks/checkpoint_cost.py

Prints a Markdown table (median of 5 writes and 5 reads) for docs/benchmarks.md.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from cnnlab.engine import checkpoint
from cnnlab.engine.models import build_model, count_parameters, model_names


def main() -> None:
    print("| model | parameters | checkpoint size | write (ms) | read + verify (ms) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / checkpoint.CHECKPOINT
        for name in model_names():
            model = build_model(name)
            opt = torch.optim.Adam(model.parameters())
            model(torch.randn(8, 1, 28, 28)).sum().backward()
            opt.step()  # Adam's moments now exist: the checkpoint is ~3x the weights
            writes, reads = [], []
            for _ in range(5):
                t = time.perf_counter()
                tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
                state = {"optimizer": checkpoint.pack(opt.state_dict(), "optim", tensors)}
                checkpoint.write(path, tensors, state)
                writes.append(time.perf_counter() - t)
                t = time.perf_counter()
                checkpoint.read(path)
                reads.append(time.perf_counter() - t)
            print(f"| {name} | {count_parameters(model):,} | {path.stat().st_size / 1e6:.1f} MB | "
                  f"{statistics.median(writes) * 1e3:.1f} | {statistics.median(reads) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
