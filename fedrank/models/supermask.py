"""Supermask networks for Federated Rank Learning (FRL, arXiv 2110.04350, Sec. 3).

The weights of every layer are random and frozen: signed constants +-sigma with
sigma = sqrt(2 / fan_in), drawn from the model seed (the "signed Kaiming
constant" of edge-popup, Ramanujan et al. 2020, arXiv 1911.13299). Each weight
(edge) has a trainable score; the forward pass keeps the edges whose score is in
the top-k fraction of its layer, and the gradient reaches the scores straight
through the (non-differentiable) top-k selection. No biases.

A layer's ranking is its rank vector: ``ranks[e]`` is the position of edge ``e``
when the layer's edges (flattened C-order) are sorted by score ascending. The top-k
mask therefore keeps the edges with ``ranks >= n - round(k * n)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.errors import ConfigError


def kept_count(n: int, k: float) -> int:
    """Number of edges a top-k fraction keeps out of ``n`` (at least one)."""
    return max(1, round(k * n))


class _TopK(torch.autograd.Function):
    """0/1 mask of the top-k scores; the backward pass is the identity (straight through)."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, scores: torch.Tensor, k: float
    ) -> torch.Tensor:
        flat = scores.flatten()
        keep = kept_count(flat.numel(), k)
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, keep, sorted=False).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return grad, None


class SupermaskMixin(nn.Module):
    """Frozen signed-constant weights plus one trainable score per weight."""

    weight: torch.Tensor
    k: float

    def _init_supermask(self, k: float, generator: torch.Generator) -> None:
        fan_in = self.weight[0].numel()
        sigma = math.sqrt(2.0 / (k * fan_in))
        signs = torch.randint(0, 2, self.weight.shape, generator=generator) * 2 - 1
        self.weight = nn.Parameter(signs.to(torch.float32) * sigma, requires_grad=False)
        # Scores are the n evenly spaced quantiles of U(-b, b), b the kaiming_uniform_
        # (a=sqrt(5)) bound, in the order of a random initial ranking. Distinct levels
        # matter: float32 draws of U(-b, b) collide, and a tie would not survive the
        # rank -> scores -> rank round trip.
        n = self.weight.numel()
        bound = 1.0 / math.sqrt(fan_in)
        levels = ((torch.arange(n, dtype=torch.float64) + 0.5) / n * 2 - 1) * bound
        self.register_buffer("score_levels", levels.to(torch.float32))
        initial = torch.randperm(n, generator=generator)
        self.scores = nn.Parameter(self.get_buffer("score_levels")[initial].view_as(self.weight))
        self.k = k

    def masked_weight(self) -> torch.Tensor:
        mask: torch.Tensor = _TopK.apply(self.scores, self.k)  # type: ignore[no-untyped-call]
        return self.weight * mask

    def set_ranks(self, ranks: torch.Tensor) -> None:
        """Set scores so that their order is ``ranks``; the values are the seed's."""
        levels = self.get_buffer("score_levels")
        with torch.no_grad():
            self.scores.copy_(levels[ranks.flatten()].view_as(self.scores))

    def get_ranks(self) -> torch.Tensor:
        """Rank vector (int64) of the current scores (ascending, ties by index)."""
        order = torch.argsort(self.scores.detach().flatten(), stable=True)
        ranks = torch.empty_like(order)
        ranks[order] = torch.arange(order.numel())
        return ranks


class SupermaskLinear(SupermaskMixin, nn.Linear):
    """Bias-free linear layer with a frozen random weight and a learned top-k mask."""

    def __init__(
        self, in_features: int, out_features: int, *, k: float, generator: torch.Generator
    ):
        nn.Linear.__init__(self, in_features, out_features, bias=False)
        self._init_supermask(k, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.masked_weight())


class SupermaskConv2d(SupermaskMixin, nn.Conv2d):
    """Bias-free 2-D convolution with a frozen random weight and a learned top-k mask."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        k: float,
        generator: torch.Generator,
    ):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, bias=False)
        self._init_supermask(k, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._conv_forward(x, self.masked_weight(), None)
        return out


class Mlp(nn.Module):
    """784-256-128-10 style MLP (input size follows the image)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = layers

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        out: torch.Tensor = self.fc3(x)
        return out


class Cnn(nn.Module):
    """Two 3x3 convolutions (32, 64 channels), max-pooling, two linear layers."""

    def __init__(self, layers: list[nn.Module], *, pool: bool) -> None:
        super().__init__()
        self.conv1, self.conv2, self.fc1, self.fc2 = layers
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        if self.pool:
            x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        out: torch.Tensor = self.fc2(x)
        return out


def build_model(
    name: str,
    *,
    image_shape: tuple[int, int, int],
    num_classes: int,
    seed: int,
    k: float,
    dense: bool = False,
) -> nn.Module:
    """Build the MLP or CNN for images of ``image_shape``.

    Parameters
    ----------
    name : {"mlp", "cnn"}
        Architecture.
    image_shape : tuple of int
        (channels, height, width).
    num_classes : int
        Output size.
    seed : int
        Seed of the frozen weights and initial scores (supermask) or of the
        initial weights (dense); the same seed rebuilds the same network.
    k : float
        Kept fraction of each layer's edges (supermask only).
    dense : bool
        Build an ordinary trainable bias-free network instead (FedAvg baseline).
    """
    if not 0.0 < k <= 1.0:
        raise ConfigError("k", f"must lie in (0, 1], got {k}")
    gen = torch.Generator().manual_seed(seed)
    c, h, w = image_shape

    def seeded(layer: nn.Linear | nn.Conv2d) -> nn.Module:
        # PyTorch's default initialisation, drawn from the model seed.
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=gen)
        return layer

    def linear(i: int, o: int) -> nn.Module:
        if dense:
            return seeded(nn.Linear(i, o, bias=False))
        return SupermaskLinear(i, o, k=k, generator=gen)

    def conv(i: int, o: int) -> nn.Module:
        if dense:
            return seeded(nn.Conv2d(i, o, 3, bias=False))
        return SupermaskConv2d(i, o, 3, k=k, generator=gen)

    if name == "mlp":
        return Mlp([linear(c * h * w, 256), linear(256, 128), linear(128, num_classes)])
    if name == "cnn":
        pool = h >= 16
        side = (h - 4) // 2 if pool else h - 4
        return Cnn(
            [conv(c, 32), conv(32, 64), linear(64 * side * side, 128), linear(128, num_classes)],
            pool=pool,
        )
    raise ConfigError("model", f"must be 'mlp' or 'cnn', got {name!r}")


def supermask_layers(model: nn.Module) -> dict[str, SupermaskMixin]:
    """The model's supermask layers by name, in a fixed order (the ranking's layers)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SupermaskMixin)}


def get_rankings(model: nn.Module) -> dict[str, np.ndarray]:
    """Each supermask layer's rank vector (int64 numpy), keyed by layer name."""
    return {name: layer.get_ranks().numpy() for name, layer in supermask_layers(model).items()}


def set_rankings(model: nn.Module, rankings: Mapping[str, np.ndarray]) -> None:
    """Set every supermask layer's scores from a rank vector."""
    layers = supermask_layers(model)
    if set(layers) != set(rankings):
        raise ConfigError(
            "rankings", f"layers {sorted(rankings)} do not match the model's {sorted(layers)}"
        )
    for name, layer in layers.items():
        layer.set_ranks(torch.from_numpy(np.asarray(rankings[name], dtype=np.int64)))
