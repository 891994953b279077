"""Inference speed of a trained model through cnnlab's prediction path (TrainedModel.predict).

    python benchmarks/inference.py --run runs/<run>      # a run folder from `cnnlab train`
    python benchmarks/inference.py --model fast_cnn      # trains 512 images first: same speed

Prints images/s at batch 1 and batch 1024, and p50/p99 latency of one single-image prediction
(uint8 image in, class index out: normalisation, forward pass and argmax included).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

os.environ.setdefault("GOMP_SPINCOUNT", "10000")  # as the CLI does (cnnlab.cli.tune_process), before torch loads
import torch  # noqa: E402

import cnnlab  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", default=None, help="run folder to load (default: a fresh --model)")
    p.add_argument("--model", default="simple_cnn", help="model to benchmark when no --run is given")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: PyTorch's choice)")
    p.add_argument("--repeats", type=int, default=2000, help="single-image predictions to time")
    p.add_argument("--json", action="store_true", help="also print the numbers as JSON")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.run:
        trained = cnnlab.load(args.run)
    else:  # a short real training run: loading and prediction then take the real path
        tmp = Path(tempfile.mkdtemp()) / "run"
        cnnlab.train(model=args.model, epochs=1, limit_train=512, limit_test=256, out=tmp, progress=False, log=None)
        trained = cnnlab.load(tmp)

    images = torch.randint(0, 256, (1024, 28, 28), dtype=torch.uint8)
    one = images[:1]
    for _ in range(50):  # warm-up: oneDNN picks and caches its kernels on first use
        trained.predict(one)
    trained.predict(images)

    lat = timed(lambda: trained.predict(one), args.repeats)
    big = timed(lambda: trained.predict(images), 20)
    p50, p99 = statistics.median(lat), sorted(lat)[int(0.99 * len(lat)) - 1]
    print(f"model {trained.name}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
    print(f"{'batch':>6s} {'images/s':>10s}")
    print(f"{1:6d} {1 / statistics.mean(lat):10,.0f}")
    print(f"{1024:6d} {1024 / statistics.median(big):10,.0f}")
    print(f"single-image latency: p50 {p50 * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms ({args.repeats} predictions)")
    if args.json:
        print(json.dumps({"model": trained.name, "threads": torch.get_num_threads(),
                          "images_per_second_batch_1": 1 / statistics.mean(lat),
                          "images_per_second_batch_1024": 1024 / statistics.median(big),
                          "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "repeats": args.repeats}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
