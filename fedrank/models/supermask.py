"""Supermask networks for Federated Rank Learning (FRL, arXiv 2110.04350, Sec. 3).

:func:`to_supermask` turns any ``torch.nn.Module`` into an FRL network. Every layer
whose type is exactly ``nn.Linear``, ``nn.Conv1d``, ``nn.Conv2d`` or ``nn.Conv3d``
becomes a supermask layer, in ``named_modules()`` order (the ranking's layer order;
its layer names are the module paths, e.g. ``"features.0"``):

- its weight is random and frozen: signed constants +-sigma with
  sigma = sqrt(2 / (k * fan_in)), drawn from the seed (the "signed Kaiming
  constant" of edge-popup, Ramanujan et al. 2020, arXiv 1911.13299, scaled for the
  kept fraction k);
- each weight (edge) has a trainable score; the forward pass keeps the edges whose
  score is in the top-k fraction of the layer, and the gradient reaches the scores
  straight through the (non-differentiable) selection;
- it has no bias, as in FRL and edge-popup: a bias is a trained parameter that no
  ranking carries, and a frozen random one would shift activations in a way the
  mask cannot undo. A layer built with a bias loses it;
- stride, padding, dilation, groups and padding mode are kept.

Everything else stays as the module built it and is frozen: only rankings travel
between server and clients, so a parameter that trained would differ from site to
site. Normalisation layers (BatchNorm, InstanceNorm) drop their running statistics
and always normalise with the batch's own, so the network is a function of
(seed, ranking, input) alone and server and clients agree on it. Subclasses of the
wrapped types (e.g. the output projection inside ``nn.MultiheadAttention``, whose
parent reads its weight directly) are left as they are.

A layer's ranking is its rank vector: ``ranks[e]`` is the position of edge ``e`` when
the layer's edges (flattened C-order) are sorted by score ascending, ties by index.
The top-k mask keeps the edges with ``ranks >= n - kept_count(n, k)``.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.errors import ConfigError
from fedrank.models.topk import TopKMask, rank_vector

WRAPPED_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def kept_count(n: int, k: float) -> int:
    """Number of edges a top-k fraction keeps out of ``n`` (at least one)."""
    return max(1, round(k * n))


def check_k(k: float) -> None:
    """Raise ``ConfigError('k')`` unless ``0 < k <= 1``."""
    if not (isinstance(k, int | float) and 0.0 < k <= 1.0):
        raise ConfigError("k", f"must lie in (0, 1], got {k}")


class _StraightThrough(torch.autograd.Function):
    """Pass the masked weight on; give the scores the gradient the mask would get.

    ``masked`` is ``weight * mask``, computed by the caller; the mask's gradient is
    the product's gradient times the weight, and it reaches the scores unchanged
    (straight through the top-k selection).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        scores: torch.Tensor,
        weight: torch.Tensor,
        masked: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(weight)
        return masked  # autograd returns it as a view with this function's gradient

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (weight,) = ctx.saved_tensors
        return grad * weight, None, None


class SupermaskMixin(nn.Module):
    """Frozen signed-constant weights plus one trainable score per weight."""

    weight: torch.Tensor
    k: float

    def _init_supermask(self, shape: torch.Size, k: float, generator: torch.Generator) -> None:
        check_k(k)
        fan_in = math.prod(shape[1:])
        sigma = math.sqrt(2.0 / (k * fan_in))
        signs = torch.randint(0, 2, shape, generator=generator) * 2 - 1
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
        self.scores = nn.Parameter(self.get_buffer("score_levels")[initial].view(shape))
        self.k = k
        self.selector = TopKMask(n, kept_count(n, k))
        self._hint_from_levels()

    def _hint_from_levels(self) -> None:
        # Scores that are the levels in some order have a known threshold (the level
        # just below the kept ones) and density (one level per spacing).
        levels = self.get_buffer("score_levels")
        n, keep = levels.numel(), self.selector.keep
        if n > 1 and keep < n:
            spacing = float(levels[1] - levels[0])
            self.selector.hint(threshold=float(levels[n - keep - 1]), density=1.0 / spacing)

    def mask(self) -> torch.Tensor:
        """The current 0/1 top-k mask (float, shaped like the weight)."""
        return self.selector(self.scores)

    def masked_weight(self) -> torch.Tensor:
        """The weight with pruned edges zeroed (a new tensor); differentiable in the scores."""
        masked = self.selector.masked(self.scores, self.weight)
        out: torch.Tensor = _StraightThrough.apply(self.scores, self.weight, masked)  # type: ignore[no-untyped-call]
        return out

    def _forward_weight(self) -> torch.Tensor:
        """The masked weight of this layer's forward pass, differentiable in the scores.

        Where the selector keeps one masked weight from step to step (the compiled
        path), that tensor is a leaf of the graph, and a hook hands its gradient, times
        the weight, to the scores once it is accumulated: no autograd node in the forward
        pass (a Python one per layer and step was the larger part of a small layer's
        cost). The scores' gradient then arrives through ``backward()``, as optimisers
        use it, not through ``torch.autograd.grad``. Elsewhere, the straight-through node.
        """
        scores, weight = self.scores, self.weight
        masked = self.selector.live(scores, weight)
        if not self.selector.keeps(masked):
            out: torch.Tensor = _StraightThrough.apply(scores, weight, masked)  # type: ignore[no-untyped-call]
            return out
        if not masked.requires_grad:  # a new kept tensor: it gets its hook once
            self._route_gradient(masked)
        return masked

    def _route_gradient(self, masked: torch.Tensor) -> None:
        owner = weakref.ref(self)  # the hook does not keep the layer alive

        def to_scores(leaf: torch.Tensor) -> None:
            layer = owner()
            if layer is None or leaf.grad is None:
                return
            grad = leaf.grad.mul_(layer.weight)  # the straight-through gradient
            leaf.grad = None
            scores = layer.scores
            if scores.grad is None:
                scores.grad = grad
            else:
                scores.grad.add_(grad)

        masked.requires_grad_(True)
        masked.register_post_accumulate_grad_hook(to_scores)  # type: ignore[no-untyped-call]  # untyped in torch

    def set_ranks(self, ranks: torch.Tensor) -> None:
        """Set scores so that their order is ``ranks``; the values are the seed's."""
        levels = self.get_buffer("score_levels")
        flat = ranks.reshape(-1).to(device=levels.device, dtype=torch.int64)
        with torch.no_grad():
            self.scores.copy_(levels.index_select(0, flat).view_as(self.scores))
        self._hint_from_levels()

    def get_ranks(self) -> torch.Tensor:
        """Rank vector (int64, flat) of the current scores (ascending, ties by index)."""
        return rank_vector(self.scores.detach())


class SupermaskLinear(SupermaskMixin, nn.Linear):
    """Bias-free linear layer with a frozen random weight and a learned top-k mask."""

    def __init__(
        self, in_features: int, out_features: int, *, k: float, generator: torch.Generator
    ) -> None:
        # On the meta device nothing is drawn from torch's global generator.
        nn.Linear.__init__(self, in_features, out_features, bias=False, device="meta")
        self._init_supermask(torch.Size((out_features, in_features)), k, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self._forward_weight())


class _SupermaskConv(SupermaskMixin):
    """Shared parts of the supermask convolutions (``_conv_forward`` keeps padding modes)."""

    _conv_forward: Any

    def _init_conv(
        self, base: type[nn.Module], conv: Any, k: float, generator: torch.Generator
    ) -> None:
        # On the meta device nothing is drawn from torch's global generator.
        base.__init__(
            self,
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=False,
            padding_mode=conv.padding_mode,
            device="meta",
        )
        self._init_supermask(conv.weight.shape, k, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._conv_forward(x, self._forward_weight(), None)
        return out


class SupermaskConv1d(_SupermaskConv, nn.Conv1d):
    """Bias-free ``nn.Conv1d`` (same geometry as ``conv``) with a learned top-k mask."""

    def __init__(self, conv: nn.Conv1d, *, k: float, generator: torch.Generator) -> None:
        self._init_conv(nn.Conv1d, conv, k, generator)


class SupermaskConv2d(_SupermaskConv, nn.Conv2d):
    """Bias-free ``nn.Conv2d`` (same geometry as ``conv``) with a learned top-k mask."""

    def __init__(self, conv: nn.Conv2d, *, k: float, generator: torch.Generator) -> None:
        self._init_conv(nn.Conv2d, conv, k, generator)


class SupermaskConv3d(_SupermaskConv, nn.Conv3d):
    """Bias-free ``nn.Conv3d`` (same geometry as ``conv``) with a learned top-k mask."""

    def __init__(self, conv: nn.Conv3d, *, k: float, generator: torch.Generator) -> None:
        self._init_conv(nn.Conv3d, conv, k, generator)


def _supermask_of(layer: nn.Module, *, k: float, generator: torch.Generator) -> nn.Module:
    if isinstance(layer, nn.Linear):
        return SupermaskLinear(layer.in_features, layer.out_features, k=k, generator=generator)
    if isinstance(layer, nn.Conv1d):
        return SupermaskConv1d(layer, k=k, generator=generator)
    if isinstance(layer, nn.Conv2d):
        return SupermaskConv2d(layer, k=k, generator=generator)
    if isinstance(layer, nn.Conv3d):
        return SupermaskConv3d(layer, k=k, generator=generator)
    raise TypeError(f"cannot wrap {type(layer).__name__}")


def wrappable_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The layers :func:`to_supermask` replaces, by module path, in its order."""
    return {name: m for name, m in module.named_modules() if type(m) in WRAPPED_TYPES}


def to_supermask(module: nn.Module, *, k: float, seed: int) -> nn.Module:
    """An FRL copy of ``module``: its Linear/Conv layers as supermask layers, the rest frozen.

    Parameters
    ----------
    module : nn.Module
        Left unchanged; the copy is returned.
    k : float
        Kept fraction of each layer's edges, in (0, 1].
    seed : int
        Draws every layer's frozen signs and initial ranking, layer by layer in
        ``named_modules()`` order; the same (module, k, seed) gives the same
        network bit for bit in any process.

    Raises
    ------
    ConfigError
        ``k`` outside (0, 1] (field ``k``), or no layer to wrap (field ``model``).
    """
    check_k(k)
    net = copy.deepcopy(module)
    targets = wrappable_layers(net)
    if not targets:
        raise ConfigError(
            "model", f"{type(module).__name__} has no Linear or Conv1d/2d/3d layer for FRL to wrap"
        )
    generator = torch.Generator().manual_seed(seed)
    replaced = {id(m): _supermask_of(m, k=k, generator=generator) for m in targets.values()}
    if id(net) in replaced:  # the module is itself one layer (its ranking layer is "")
        net = replaced[id(net)]
    for parent in list(net.modules()):
        # ``_modules`` rather than ``named_children()``: a layer used twice is replaced
        # under both names.
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in replaced:
                setattr(parent, child_name, replaced[id(child)])
    for p in net.parameters():
        p.requires_grad_(False)
    for layer in supermask_layers(net).values():
        layer.scores.requires_grad_(True)
    for norm in net.modules():
        if isinstance(norm, nn.modules.batchnorm._NormBase):
            # Batch statistics in training and evaluation (torch does so without
            # running statistics): no state outside the ranking.
            norm.track_running_stats = False
            norm.running_mean = None
            norm.running_var = None
            norm.num_batches_tracked = None
    return net


def supermask_layers(model: nn.Module) -> dict[str, SupermaskMixin]:
    """The model's supermask layers by name, in a fixed order (the ranking's layers)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, SupermaskMixin)}


def layer_sizes(model: nn.Module) -> dict[str, int]:
    """Edges per supermask layer (what a valid FRL reply must contain)."""
    return {name: layer.weight.numel() for name, layer in supermask_layers(model).items()}


def get_rankings(model: nn.Module) -> dict[str, np.ndarray]:
    """Each supermask layer's rank vector (int64 numpy), keyed by layer name."""
    return {
        name: layer.get_ranks().cpu().numpy() for name, layer in supermask_layers(model).items()
    }


def set_rankings(model: nn.Module, rankings: Mapping[str, np.ndarray]) -> None:
    """Set every supermask layer's scores from a rank vector."""
    layers = supermask_layers(model)
    if set(layers) != set(rankings):
        raise ConfigError(
            "rankings", f"layers {sorted(rankings)} do not match the model's {sorted(layers)}"
        )
    for name, layer in layers.items():
        layer.set_ranks(torch.from_numpy(np.asarray(rankings[name], dtype=np.int64)))


def build_model(
    name: str,
    *,
    image_shape: tuple[int, ...],
    num_classes: int,
    seed: int,
    k: float,
    dense: bool = False,
) -> nn.Module:
    """The network ``name`` for inputs of ``image_shape``: FRL (supermask) or dense.

    Kept for callers of the first API; :func:`fedrank.models.factory.build_network`
    is the same with the factory calling convention's names.

    Parameters
    ----------
    name : str
        A packaged model (``"mlp"``, ``"cnn"``) or ``"package.module:factory"``.
    image_shape : tuple of int
        Shape of one input example, e.g. (channels, height, width).
    num_classes : int
        Output size.
    seed : int
        Seed of the initial weights, the frozen weights and the initial scores.
    k : float
        Kept fraction of each layer's edges (supermask only, checked always).
    dense : bool
        Build the module as its factory made it, trainable (FedAvg baseline).
    """
    from fedrank.models.factory import build_network  # the factory module imports this one

    return build_network(
        name,
        input_shape=tuple(image_shape),
        num_classes=num_classes,
        seed=seed,
        k=k,
        supermask=not dense,
    )
