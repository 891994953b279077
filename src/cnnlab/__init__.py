"""cnnlab: convolutional neural networks on MNIST-style images, to run, see inside, trust and use."""

__version__ = "0.1.0"

import os as _os

# PyTorch's OpenMP threads (libgomp) spin for ~300,000 iterations before sleeping. On a machine
# whose cores are shared with other jobs that spinning starves everyone: measured on the project's
# 2-core VM at load average ~8, 2-thread training ran at ~200-400 img/s with the default and
# ~1,600-2,500 img/s with a spin count of 10,000 (benchmarks/time_to_accuracy.py, docs/benchmarks.md).
# It must be set before torch is first imported; an explicit setting by the user wins.
_os.environ.setdefault("GOMP_SPINCOUNT", "10000")

from .evaluate import evaluate  # noqa: E402
from .models import build_model, model_names  # noqa: E402
from .runs import load  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__all__ = ["train", "evaluate", "load", "build_model", "model_names", "TrainConfig", "__version__"]
