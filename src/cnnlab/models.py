"""The model registry: every network cnnlab can train, by name.

Add a model by decorating a builder with @register("name", "one-line description"). A builder
takes (num_classes, in_channels) and returns an nn.Module that maps [N, C, 28, 28] to [N, classes].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from .errors import CnnlabError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[..., nn.Module]
    conv: bool  # has convolution layers (visualisations of filters apply)


REGISTRY: dict[str, ModelSpec] = {}


def register(name: str, description: str, conv: bool = True):
    def wrap(builder):
        REGISTRY[name] = ModelSpec(name, description, builder, conv)
        return builder
    return wrap


def model_names() -> list[str]:
    return list(REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise CnnlabError(f"unknown model '{name}'; choose one of: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return get_spec(name).build(num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class SimpleCNN(nn.Module):
    """The lecture's classifier: conv 16 -> pool -> conv 32 -> pool -> fc 128 -> fc 10."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(16, 32, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2),           # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    """The lecture's fully connected baseline 784 -> 512 -> 512 -> 10: no notion of space."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, size: int = 28):
        super().__init__()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * size * size, 512), nn.ReLU(),
            nn.Linear(512, 512), nn.ReLU(),
            nn.Linear(512, num_classes),
        )

    def forward(self, x):
        return self.classifier(x)


register("simple_cnn", "the lecture's CNN: conv16-pool-conv32-pool-fc128-fc10 (206,922 parameters)")(SimpleCNN)
register("mlp", "the lecture's fully connected baseline 784-512-512-10 (669,706 parameters)", conv=False)(MLP)


def _conv_bn(cin: int, cout: int) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift.
    return [nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class FastCNN(nn.Module):
    """The `fast` recipe's network: simple_cnn's shape with BatchNorm and a third small conv.

    BatchNorm lets a high one-cycle learning rate converge in a single epoch; the third conv runs
    on 7x7 maps where it is cheap. About 3.8 MFLOP per image forward (simple_cnn: 2.5).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 16), nn.MaxPool2d(2),   # 28 -> 14
            *_conv_bn(16, 32), nn.MaxPool2d(2),            # 14 -> 7
            *_conv_bn(32, 64),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class BestCNN(nn.Module):
    """The `best` recipe's network: four BatchNorm convs (32-64-64-128), global pooling, dropout.

    About 29 MFLOP per image forward, ~12x simple_cnn: sized so 15 augmented epochs fit in 15
    minutes on 2 CPU cores with bf16.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32), nn.MaxPool2d(2),   # 28 -> 14
            *_conv_bn(32, 64), *_conv_bn(64, 64), nn.MaxPool2d(2),  # 14 -> 7
            *_conv_bn(64, 128),
        )
        self.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                        nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


register("fast_cnn", "the fast recipe's CNN: simple_cnn + BatchNorm + a conv64 at 7x7 (cheap, 1-epoch 99%)")(FastCNN)
register("best_cnn", "the best recipe's CNN: BatchNorm convs 32-64-64-128, global max pool, dropout")(BestCNN)
