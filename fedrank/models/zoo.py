"""The packaged models: ordinary dense factories, registered as ``mlp`` and ``cnn``.

They follow the factory calling convention of :mod:`fedrank.models.factory`
(``factory(input_shape=..., num_classes=...)``) and have no biases, so FedAvg
trains the same graph that FRL masks. Their weights come from torch's default
initialisation, which the factory module draws from the run's seed.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.errors import ConfigError


class Mlp(nn.Module):
    """784-256-128-10 style MLP (the input size follows the example shape)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, 256, bias=False)
        self.fc2 = nn.Linear(256, 128, bias=False)
        self.fc3 = nn.Linear(128, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class Cnn(nn.Module):
    """Two 3x3 convolutions (32, 64 channels), 2x2 max-pooling from 16 pixels, two linear layers."""

    def __init__(self, channels: int, height: int, width: int, num_classes: int) -> None:
        super().__init__()
        self.pool = height >= 16
        side_h, side_w = height - 4, width - 4
        if self.pool:
            side_h, side_w = side_h // 2, side_w // 2
        self.conv1 = nn.Conv2d(channels, 32, 3, bias=False)
        self.conv2 = nn.Conv2d(32, 64, 3, bias=False)
        self.fc1 = nn.Linear(64 * side_h * side_w, 128, bias=False)
        self.fc2 = nn.Linear(128, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        if self.pool:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.fc2(x)
        return out


def mlp(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Packaged factory ``mlp``: any example shape (flattened)."""
    return Mlp(math.prod(input_shape), num_classes)


def cnn(*, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Packaged factory ``cnn``: images (channels, height, width), at least 5x5 pixels."""
    if len(input_shape) != 3 or min(input_shape[1:]) < 5:
        raise ConfigError(
            "model", f"cnn needs images (channels, height >= 5, width >= 5), got {input_shape}"
        )
    c, h, w = input_shape
    return Cnn(c, h, w, num_classes)
