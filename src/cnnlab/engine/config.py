"""Every training setting, defined once: TrainConfig, the choices it takes, and the recipes.

A setting's default, bounds, choices and help live in one field of TrainConfig; `validate()`
checks them, and `cnnlab train` generates its flags from them (cli/train.py). Recipes are named
sets of those settings, nothing else. This module imports no torch, so `cnnlab --help` is fast; for
the same reason it also holds the few choices other commands' --help shows (compare's default
models, export's formats and parity tolerance).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

from ..errors import CnnlabError


class SettingError(CnnlabError):
    """A training setting out of its bounds; `name` is the TrainConfig field (the CLI names the flag)."""

    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.detail = message


# --- the choices ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    cls: str           # the nn.Module class in cnnlab.engine.models
    description: str
    conv: bool = True  # has convolution layers (filters, feature maps and Grad-CAM apply)


# The model registry. To add a network: write its class in engine/models.py and add a line here.
MODELS: dict[str, ModelEntry] = {
    "simple_cnn": ModelEntry("SimpleCNN", "the lecture's CNN: conv16-pool-conv32-pool-fc128-fc10 (206,922 parameters)"),
    "mlp": ModelEntry("MLP", "the lecture's fully connected baseline 784-512-512-10 (669,706 parameters)", conv=False),
    "fast_cnn": ModelEntry("FastCNN", "the fast recipe's CNN: stride-2 conv16 computed from the data (whitened patch "
                                      "PCA, not trained), conv16-pool, conv32, conv32 with BatchNorm (1-epoch 99%)"),
    "best_cnn": ModelEntry("BestCNN", "BatchNorm convs 32-64-64-128, global max pool, dropout (a best-ensemble member)"),
    "strided_cnn": ModelEntry("StridedCNN", "all-convolutional: BatchNorm convs 32-32-32/s2-64-64-64/s2-128, strided "
                                            "5x5 convs instead of pooling, dropout (a best-ensemble member)"),
    "kernel5_cnn": ModelEntry("Kernel5CNN", "the best recipe's CNN: best_cnn with 5x5 kernels, BatchNorm convs 32-64 "
                                            "(5x5), 128-128 (3x3), global max pool, dropout"),
    "wide5_cnn": ModelEntry("Wide5CNN", "the fashion recipe's CNN: kernel5_cnn at 1.5x width, BatchNorm convs 48-96 "
                                        "(5x5), 192-192 (3x3) (617,050 parameters)"),
    "lenet5": ModelEntry("LeNet5", "LeCun et al. 1998: conv6-avgpool-conv16-avgpool-fc120-fc84, 5x5 kernels, tanh"),
    "alexnet_mini": ModelEntry("AlexNetMini", "AlexNet's pattern at 28x28: 5 convs, overlapping max pools, dropout, 3 FC"),
    "no_pool_cnn": ModelEntry("NoPoolCNN", "simple_cnn with stride-2 convs instead of max pooling (the control)"),
}

DATASET_NAMES = ["mnist", "fashion-mnist", "kmnist", "qmnist"]
FOLDER = "folder:"  # --dataset folder:PATH, one sub-folder of images per class
OPTIMIZERS = ["adam", "adamw", "sgd"]
SCHEDULES = ["constant", "onecycle", "cosine", "step"]
AUGMENTATIONS = ["none", "translate", "affine", "elastic", "mirror"]
PRECISIONS = ["auto", "fp32", "bf16"]
DEVICES = ["auto", "cpu", "cuda", "mps"]

# `cnnlab compare` without --models: the lecture's line-up, from the FC net to AlexNet's pattern.
COMPARE_MODELS = ["mlp", "simple_cnn", "lenet5", "alexnet_mini"]
# `cnnlab export --format`: file suffix per format; the largest |logit difference| from PyTorch
# an export may show on real test images before it is written.
EXPORT_FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
EXPORT_TOLERANCE = 1e-4

# Images per forward pass when evaluating. Measured in fp32 on 2 threads (2-core Zen 4): best_cnn
# on 4,000 test images 1.9 s in chunks of 256 against 2.4 s in chunks of 2,048, whose activations
# were mapped fresh each time (page faults); simple_cnn on 10,000 images 0.9 against 1.7 s.
EVAL_CHUNK = 256


# --- one setting -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    help: str
    low: float | None = None        # smallest allowed value
    high: float | None = None       # largest allowed value
    low_open: bool = False          # low itself is not allowed
    high_open: bool = False         # high itself is not allowed
    choices: tuple | None = None
    cli: bool = True                # `cnnlab train` has a flag for it
    metavar: str | None = None
    hint: str = ""                  # added to the message for a value out of bounds

    def check(self, name: str, value):
        """value, or SettingError saying what is allowed. None means 'not set' where None is the default."""
        if value is None:
            return value
        if self.choices is not None:
            if value not in self.choices and not (name == "dataset" and str(value).startswith(FOLDER)):
                raise SettingError(name, f"unknown {name.replace('_', ' ')} '{value}'; choose one of: "
                                   f"{', '.join(self.choices)}"
                                   + (f", or {FOLDER}PATH" if name == "dataset" else ""))
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if self.low is None and self.high is None:
                return value
            raise SettingError(name, f"expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(name, f"must be a finite number, got {value}")
        if (self.low is not None and (value < self.low or (self.low_open and value == self.low))) or \
                (self.high is not None and (value > self.high or (self.high_open and value == self.high))):
            raise SettingError(name, f"must be {self.rule()}, got {value}" + (f" ({self.hint})" if self.hint else ""))
        return value

    def rule(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.low is not None and self.high is not None:
            return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"greater than {low}" if self.low_open else f"at least {low}"
        return f"at most {high}"


def _number(v) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else f"{v:g}" if v is not None else ""


def setting(default, help: str, **rules):
    return field(default=default, metadata={"setting": Setting(help, **rules)})


MAX_SEED = 2**63 - 1  # torch.manual_seed takes a signed 64-bit integer


@dataclass
class TrainConfig:
    """Everything that decides what a run computes. Recipes are named sets of these."""

    model: str = setting("simple_cnn", "network to train", choices=tuple(MODELS))
    dataset: str = setting("mnist", "dataset, or folder:PATH for your own images in one sub-folder per class",
                           choices=tuple(DATASET_NAMES))
    epochs: int = setting(2, "passes over the training set", low=1, high=10_000)
    batch_size: int = setting(64, "images per step", low=1, high=1_000_000)
    lr: float = setting(1e-3, "learning rate", low=0, low_open=True, high=100)
    optimizer: str = setting("adam", "optimiser", choices=tuple(OPTIMIZERS))
    weight_decay: float = setting(0.0, "weight decay", low=0, high=10)
    schedule: str = setting("constant", "learning-rate schedule", choices=tuple(SCHEDULES))
    seed: int = setting(0, "random seed; the same seed and thread count on a CPU give identical runs", low=0, high=MAX_SEED)
    device: str = setting("auto", "where to train", choices=tuple(DEVICES))
    threads: int | None = setting(None, "CPU threads for PyTorch (default: PyTorch's choice, cut to the cores other "
                                        "jobs leave free when training starts; a resume keeps the run's count)",
                                  low=1, high=1024)
    limit_train: int | None = setting(None, "train on the first N images only", low=1, metavar="N")
    limit_test: int | None = setting(None, "evaluate on the first N test images only", low=1, metavar="N")
    recipe: str = setting("lecture", "the named set of settings this run started from", cli=False)
    augment: str = setting("none", "batched augmentation of training images: translate (+-2 px), affine (rotate, "
                                   "scale, shear, shift), elastic (affine + smooth random warp) or mirror (translate, "
                                   "flip left-right, erase a random rectangle: for clothes, not digits)",
                           choices=tuple(AUGMENTATIONS))
    label_smoothing: float = setting(0.0, "label smoothing", low=0, high=1, high_open=True)
    precision: str = setting("auto", "auto: bf16 autocast where bf16 is native (a CPU with AVX512-BF16 or AMX, a "
                                     "CUDA GPU from Ampere on), else fp32", choices=tuple(PRECISIONS))
    channels_last: bool = setting(True, "channels_last memory layout (faster with oneDNN)")
    compile: bool = setting(False, "torch.compile the model (compile time exceeds the gain on short runs)")
    eval_batch_size: int = setting(EVAL_CHUNK, "images per evaluation chunk", low=1, cli=False)
    target_accuracy: float | None = setting(
        None, "evaluate 4 times per epoch and stop as soon as test accuracy >= A (a fraction such as 0.99)",
        low=0, low_open=True, high=1, metavar="A", hint="a fraction such as 0.99, not a percentage")
    eval_every: int | None = setting(None, "with --target-accuracy: evaluate every STEPS batches", low=1,
                                     metavar="STEPS")
    val_split: float = setting(0.0, "hold out this share of each class of the training images for validation "
                                    "(early stopping watches it; the test images stay unseen)",
                               low=0, high=1, high_open=True, metavar="F")
    test_split: float = setting(0.2, "a folder without train/ and test/: hold out this share of each class as its "
                                     "test images, which training, validation and early stopping never see",
                                low=0, low_open=True, high=1, high_open=True, metavar="F")
    patience: int | None = setting(None, "early stopping: stop after this many epochs without a better validation "
                                         "accuracy and keep the best epoch's weights (needs --val-split)",
                                   low=1, metavar="EPOCHS")
    snapshots: int = setting(1, "snapshots of the first-layer filters (with the test accuracy on the first 1,000 "
                                "test images) per epoch, kept in the run's history.jsonl; the last is at the "
                                "epoch's end", low=1, high=1000, metavar="N")

    def validate(self) -> "TrainConfig":
        """Check every setting against its definition; SettingError names the first one out of bounds."""
        for f in fields(self):
            f.metadata["setting"].check(f.name, getattr(self, f.name))
        if self.dataset.startswith(FOLDER) and not self.dataset[len(FOLDER):].strip():
            raise SettingError("dataset", f"{FOLDER} needs a path, such as {FOLDER}my_images")
        if self.patience is not None and not self.val_split:
            raise SettingError("patience", "needs a validation split to watch; add --val-split 0.1 (for example)")
        return self


def settings() -> dict:
    """name -> Setting, in TrainConfig's order."""
    return {f.name: f.metadata["setting"] for f in fields(TrainConfig)}


# What a resumed run (or ensemble) may change: where and how fast it runs, and (with a constant
# learning rate, where nothing depends on the total) how many epochs it runs in all.
RESUME_MAY_CHANGE = ("epochs", "device", "threads")


def resume_flags() -> str:
    """'--epochs, --device and --threads': the flags a resume may be given."""
    flags = ["--" + name for name in RESUME_MAY_CHANGE]
    return ", ".join(flags[:-1]) + " and " + flags[-1]


# --- recipes -------------------------------------------------------------------------------------
# `cnnlab train --recipe NAME` starts from a recipe; a flag given explicitly overrides it. Each
# recipe names its evidence in one line; docs/benchmarks.md has the measurements and their history.

RECIPES: dict[str, dict] = {
    # The lecture's numbers: simple_cnn, batch 64, Adam 1e-3, 2 epochs, Normalize(0.5, 0.5).
    # Evidence: 98.57% mean of 3 seeds in 20.0 s, 2.5x the lecture's own code (2-core Xeon, 2026-12-01).
    "lecture": dict(model="simple_cnn", epochs=2, batch_size=64, optimizer="adam", lr=1e-3,
                    schedule="constant", augment="none", label_smoothing=0.0),
    # Quickest to 99% MNIST on every seed: fast_cnn, one epoch, one-cycle at a high rate.
    # Evidence: seeds 0-15 >= 99.10%, 8.9x the lecture's code (Zen 4, bf16); >= 99.03%, 10.3x (Zen 2, fp32), 2026-12-02.
    "fast": dict(model="fast_cnn", epochs=1, batch_size=128, optimizer="adam", lr=1e-2,
                 schedule="onecycle", augment="none", label_smoothing=0.05),
    # Highest single-network accuracy within 15 minutes on 2 cores (19 min in float32 on a Zen 2 without AVX-512).
    # Evidence: 99.69% mean of 3 seeds in 12.5 min each (2-core Xeon, 2026-12-01); 4.6 min each (Zen 4, 2026-12-02).
    "best": dict(model="kernel5_cnn", epochs=15, batch_size=128, optimizer="adamw", lr=3e-3,
                 weight_decay=5e-4, schedule="onecycle", augment="affine", label_smoothing=0.05),
    # Clothes: Fashion-MNIST by default (or your own images of things whose mirror image is the same
    # class), best's settings with its network 1.5x wider, 30 epochs, mirror augmentation (shift, flip, erase).
    # Evidence: 94.08, 93.96, 93.83% (mean 93.96%; kernel5_cnn 93.40%), ~16 min on 2 threads (Zen 4, 2026-12-02).
    "fashion": dict(model="wide5_cnn", dataset="fashion-mnist", epochs=30, batch_size=128, optimizer="adamw",
                    lr=3e-3, weight_decay=5e-4, schedule="onecycle", augment="mirror", label_smoothing=0.05),
}

# `--recipe R --ensemble N` without --model: the networks members cycle through. Different
# architectures make different mistakes, so their average corrects more than seeds of one.
# Evidence: best --ensemble 6, 99.78% (members 99.64-99.76%), 66 min (2-core Xeon, 2026-12-01).
ENSEMBLE_MODELS: dict[str, tuple[str, ...]] = {
    "best": ("kernel5_cnn", "best_cnn", "strided_cnn"),
}


def ensemble_models(name: str) -> list[str] | None:
    """The models an ensemble of recipe `name` cycles through (None: the recipe's one model)."""
    models = ENSEMBLE_MODELS.get(name)
    return list(models) if models else None


def recipe_names() -> list[str]:
    return list(RECIPES)


def config(name: str = "lecture", **overrides) -> TrainConfig:
    """The TrainConfig of a recipe, with explicit overrides (None means: keep the recipe's value)."""
    if name not in RECIPES:
        raise SettingError("recipe", f"unknown recipe '{name}'; choose one of: {', '.join(RECIPES)}")
    unknown = set(overrides) - set(settings())
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    values = {**asdict(TrainConfig()), **RECIPES[name], "recipe": name}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()
