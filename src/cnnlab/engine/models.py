"""The model registry: every network cnnlab can train, by name.

Add a model by writing its class here and a line in engine/config.py's MODELS. A class takes
(num_classes, in_channels) and maps [N, C, 28, 28] to [N, classes].
A model with an init_from_data(images) method gets a sample of normalised training images from
the engine before training starts (fast_cnn computes its first layer from them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CnnlabError
from .config import MODELS, ModelEntry


def model_names() -> list[str]:
    return list(MODELS)


def get_spec(name: str) -> ModelEntry:
    if name not in MODELS:
        raise CnnlabError(f"unknown model '{name}'; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    """A fresh network by its registry name (engine.config.MODELS names the class)."""
    return globals()[get_spec(name).cls](num_classes=num_classes, in_channels=in_channels)


def count_parameters(model: nn.Module | list) -> int:
    """Numbers in a model's parameters (or in a list of parameters, such as the trained ones)."""
    return sum(p.numel() for p in (model.parameters() if isinstance(model, nn.Module) else model))


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


def _conv_bn(cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1) -> list[nn.Module]:
    # No conv bias: the BatchNorm right after it has its own shift.
    return [nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class FastCNN(nn.Module):
    """The `fast` recipe's network: built for images per second on a CPU, not for elegance.

    Profiles of a step (batch 256, bf16, channels_last, 2 threads) drove each choice:
    - most of a step was memory-bound work on the large maps (BatchNorm, ReLU, pooling and their
      backward passes), so the first conv has stride 2 (no 28x28 map is stored) and no BatchNorm
      (on CPU, BatchNorm of its 14x14x16 output took ~1 ms forward and backward, 10% of a step),
      the second conv stays 16 wide at 14x14 and pools before its BatchNorm, and the width goes to
      32 only at 7x7, where convolutions run near the CPU's bf16 peak;
    - the classifier flattens in channels-last order: flattening NCHW made the last ReLU's
      backward take a slow mixed-layout path (1.08 ms of a 13.7 ms step; 0.10 ms this way);
    - widths stay multiples of 16 (oneDNN's bf16 kernels were 2x slower at width 12);
    - the first conv is not trained but computed from the data (init_from_data): no gradient has
      to flow back through the second conv to it, which saves that conv's input gradient and the
      first layer's backward pass, -10 to -16% per step with the same accuracy (docs/benchmarks.md).
    BatchNorm lets a high one-cycle rate converge in one epoch. Evidence: docs/benchmarks.md.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=5, stride=2, padding=2), nn.ReLU(inplace=True),  # 28 -> 14
            nn.Conv2d(16, 16, kernel_size=3, padding=1, bias=False), nn.MaxPool2d(2),     # 14 -> 7
            nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            *_conv_bn(16, 32),
            *_conv_bn(32, 32),
        )
        self.classifier = nn.Sequential(FlattenChannelsLast(), nn.Linear(32 * 7 * 7, num_classes))
        self.features[0].requires_grad_(False)

    def forward(self, x):
        return self.classifier(self.features(x))

    @torch.no_grad()
    def init_from_data(self, x: torch.Tensor) -> None:
        """Set the first conv to whitened principal components of the 5x5 patches of x (normalised
        training images [N, C, H, W]) and their negatives, so that ReLU keeps both signs. Patch
        whitening as a fixed first layer is airbench's idea (Keller Jordan's CIFAR-10 speed runs):
        its outputs start decorrelated with unit variance, which later layers learn from quickly.
        """
        conv = self.features[0]
        k = conv.out_channels // 2
        patches = F.unfold(x.float(), conv.kernel_size, padding=conv.padding, stride=conv.stride)  # [N, C*5*5, L]
        count = patches.shape[0] * patches.shape[2]
        mean = patches.sum((0, 2)) / count
        # The patch covariance E[p p^T] - mean mean^T, without copying the patches into one matrix.
        covariance = torch.bmm(patches, patches.transpose(1, 2)).sum(0) / count - torch.outer(mean, mean)
        variance, directions = torch.linalg.eigh(covariance.double())
        top = directions[:, -k:].flip(1).T                                # the k largest, first
        scale = variance[-k:].flip(0).clamp(min=0).sqrt() + WHITEN_EPS
        whitened = top / scale[:, None]
        filters = torch.cat([whitened, -whitened])
        conv.weight.copy_(filters.reshape(conv.weight.shape))
        conv.bias.zero_()


# Added to each component's standard deviation before dividing by it, so that components with
# almost no variance (flat patches) are not blown up. Normalised MNIST pixels have std ~0.6.
WHITEN_EPS = 1e-2


class FlattenChannelsLast(nn.Module):
    """[N, C, H, W] -> [N, H*W*C]: a free view of a channels_last tensor (see FastCNN)."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1).flatten(1)


class BestCNN(nn.Module):
    """A member of the `best` ensembles: four BatchNorm convs (32-64-64-128), global pooling, dropout.

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


class StridedCNN(nn.Module):
    """A third `best` architecture, for ensembles: no pooling at all. Strided 5x5 convolutions do
    the downsampling (the "all convolutional net" of Springenberg et al. 2015), in the layout of a
    popular Kaggle MNIST network (Chris Deotte, 2018): two unpadded 3x3 convs, a 5x5 stride-2 conv,
    twice, then a 4x4 conv that sees the whole 4x4 map. Dropout after each stage.

    About 30 MFLOP per image forward, like best_cnn, at 1.2-1.45x its step time (more 28x28 work).
    Alone it is as accurate as best_cnn; averaged with it, it errs on different images (docs/benchmarks.md).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            *_conv_bn(in_channels, 32, 3, padding=0), *_conv_bn(32, 32, 3, padding=0),   # 28 -> 26 -> 24
            *_conv_bn(32, 32, 5, stride=2, padding=2), nn.Dropout(0.25),                   # 24 -> 12
            *_conv_bn(32, 64, 3, padding=0), *_conv_bn(64, 64, 3, padding=0),             # 12 -> 10 -> 8
            *_conv_bn(64, 64, 5, stride=2, padding=2), nn.Dropout(0.25),                   # 8 -> 4
            *_conv_bn(64, 128, 4, padding=0),                                              # 4 -> 1
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.25), nn.Linear(128, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class Kernel5CNN(nn.Module):
    """The `best` recipe's network: best_cnn's plan with LeNet's 5x5 kernels in the first two stages,
    so each layer sees a larger patch, then two 3x3 convs at 7x7, global max pooling, dropout.

    About 30 MFLOP per image forward, 1.25x best_cnn's step time, and more accurate than best_cnn
    in the same 15 epochs (docs/benchmarks.md has the runs).
    """

    WIDTH = 32  # the first stage's channels; the second has 2x, the 7x7 convs 4x

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        w = self.WIDTH
        self.features = nn.Sequential(
            *_conv_bn(in_channels, w, 5, padding=2), nn.MaxPool2d(2),   # 28 -> 14
            *_conv_bn(w, 2 * w, 5, padding=2), nn.MaxPool2d(2),         # 14 -> 7
            *_conv_bn(2 * w, 4 * w), *_conv_bn(4 * w, 4 * w),
        )
        self.classifier = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                        nn.Linear(4 * w, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


class Wide5CNN(Kernel5CNN):
    """The `fashion` recipe's network: kernel5_cnn at 1.5x the width (48-96-192-192), 2.2x its
    parameters and multiply-accumulates. Clothes gain from the width where digits hardly do
    (docs/benchmarks.md, "Records")."""

    WIDTH = 48


class LeNet5(nn.Module):
    """LeCun et al. 1998: conv 6@5x5, subsampling, conv 16@5x5, subsampling, fc 120, fc 84, fc 10.

    The paper fed 32x32 images; padding 2 on the first convolution makes 28x28 MNIST give the
    same 28x28 maps. Subsampling was averaging and the squashing function tanh, as here.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Tanh(), nn.AvgPool2d(2),  # 28 -> 14
            nn.Conv2d(6, 16, kernel_size=5), nn.Tanh(), nn.AvgPool2d(2),                      # 10 -> 5
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh(),
            nn.Linear(84, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class AlexNetMini(nn.Module):
    """AlexNet's pattern (Krizhevsky et al. 2012) scaled to 28x28 grayscale: five convolutions
    with ReLU, overlapping 3x3 stride-2 max pooling after the 1st, 2nd and 5th, then dropout and
    three fully connected layers."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        overlap = dict(kernel_size=3, stride=2)  # windows overlap by one pixel, as in AlexNet
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(**overlap),  # 28 -> 13
            nn.Conv2d(32, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(**overlap),           # 13 -> 6
            nn.Conv2d(64, 96, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(96, 96, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(96, 64, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(**overlap),           # 6 -> 2
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(0.5), nn.Linear(64 * 2 * 2, 256), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class NoPoolCNN(nn.Module):
    """simple_cnn with each 2x2 max pooling replaced by a stride-2 convolution.

    Same layers, shapes and parameter count (206,922) as simple_cnn, so the only difference
    between the two is pooling: the control for the lecture's translation-invariance claim.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1, stride=2), nn.ReLU(),  # 28 -> 14
            nn.Conv2d(16, 32, kernel_size=3, padding=1, stride=2), nn.ReLU(),           # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


