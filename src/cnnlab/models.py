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
