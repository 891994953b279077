"""cnnlab: convolutional neural networks on MNIST-style images, to run, see inside, trust and use."""

__version__ = "0.1.0"

from .evaluate import evaluate  # noqa: E402
from .models import build_model, model_names  # noqa: E402
from .runs import load  # noqa: E402
from .train import TrainConfig, train  # noqa: E402

__all__ = ["train", "evaluate", "load", "build_model", "model_names", "TrainConfig", "__version__"]
