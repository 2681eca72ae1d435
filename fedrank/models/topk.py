"""Exact top-k masks and rank vectors of score tensors, without a full sort per step.

A supermask layer needs, at every forward pass, the 0/1 mask of the ``keep``
largest of its ``n`` scores, and once per round the rank vector of all of them.
``torch.topk`` (or a sort) per step made selection the larger part of an FRL
client's training time. Two facts make it cheap:

- Between two optimiser steps the top-k set changes little: on MNIST-5k a step of
  the MLP's first layer flips several hundred of its 200,704 edges, and the number
  above the previous threshold moves by a few dozen. Counting the scores above the
  previous threshold (one compare and one sum) says how many change status; they
  all lie next to it, so only a narrow band of values has to be searched.
- A rank vector is a stable sort of the scores. Mapping float32 scores to int32
  keys with the same order lets ``torch.sort`` use its radix sort, which is 10x
  faster here than the stable float sort.

Every mask returned is exact: it keeps exactly ``keep`` edges, the ``keep`` largest
scores, and a tie at the boundary is broken as :func:`rank_vector` breaks it (the
higher index ranks higher). The remembered threshold only decides how fast the
answer comes, never what it is, so the result does not depend on the history of
calls.

On the CPU, where a compiled kernel (``_topk.c``) was built, a layer's masked weight
(:meth:`TopKMask.live`) is one tensor kept from step to step beside one status byte per
edge: one pass over the scores and statuses counts the scores above the threshold,
rewrites only the blocks of 64 edges where a status changed (an MLP step on MNIST
changes 400-800 of 200,704) and notes the blocks near the threshold, where the torch
path needs a compare, a sum, a band search and a product, each a pass over the layer
with its own temporary. Rank vectors come from a radix sort in the same module.
``COMPILED_SELECTION`` says whether it was built; the answers are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.autograd.graph import increment_version

MaskedUpdate = Callable[..., "tuple[float, float, int] | None"]
try:  # the compiled kernels (fedrank/models/_topk.c), built where a C compiler was at hand
    from fedrank.models._topk import masked_update as _compiled_update
    from fedrank.models._topk import rank_vector as _compiled_rank
except ImportError:  # pragma: no cover - depends on the build
    _compiled_update = _compiled_rank = None  # type: ignore[assignment]
_masked_update: MaskedUpdate | None = _compiled_update
_rank_into: Callable[[np.ndarray, np.ndarray], None] | None = _compiled_rank

COMPILED_SELECTION = _masked_update is not None

# Layers up to this size select with one kthvalue over all their scores.
_WHOLE_LAYER = 4096
# Block length of the two-level search for the few nonzero entries of a long vector.
_BLOCK = 64


def order_keys(scores: torch.Tensor) -> torch.Tensor:
    """int32 keys whose integer order is the float order of float32 ``scores``.

    Equal scores get equal keys (``-0.0`` is first made ``+0.0``), so a stable sort
    of the keys is a stable sort of the scores. NaN sorts below ``-inf`` or above
    ``+inf`` by its sign bit; it still gets a place, so a rank vector stays a
    permutation.
    """
    if scores.dtype != torch.float32:
        raise TypeError(f"order_keys needs float32 scores, got {scores.dtype}")
    bits = (scores + 0.0).view(torch.int32)
    # Negative floats order by decreasing magnitude: flip their 31 low bits.
    return bits ^ ((bits >> 31) & 0x7FFFFFFF)


def sort_order(scores: torch.Tensor) -> torch.Tensor:
    """Indices that sort flat ``scores`` ascending, ties by index (a stable argsort)."""
    flat = scores.reshape(-1)
    if flat.dtype != torch.float32:  # no int32 keys: the (slower) float sort
        return torch.argsort(flat, stable=True)
    return torch.sort(order_keys(flat), stable=True).indices


def rank_vector(scores: torch.Tensor) -> torch.Tensor:
    """Rank (int64) of each score among the flattened scores: 0 is the smallest.

    Ties are ranked by index, the lower index first (stable sort semantics).
    """
    flat = scores.detach().reshape(-1)
    if _rank_into is not None and flat.device.type == "cpu" and flat.dtype == torch.float32:
        ranks = torch.empty(flat.numel(), dtype=torch.int64)
        _rank_into(flat.contiguous().numpy(), ranks.numpy())  # a radix sort of order keys
        return ranks
    order = sort_order(flat)
    ranks = torch.empty_like(order)
    return ranks.scatter_(0, order, torch.arange(order.numel(), device=order.device))


class _Live:
    """A layer's masked weight kept between steps, with one status byte per edge (1: kept).

    ``out`` and the statuses always agree (``out`` is ``status * weight``); the scores
    only decide which entries the next update rewrites. Valid while the scores and weight
    stay in the same memory, the weight unchanged and ``out`` written by nothing else
    (autograd versions tell).
    """

    def __init__(self, scores: torch.Tensor, weight: torch.Tensor, kernel: MaskedUpdate) -> None:
        scores, weight = scores.detach(), weight.detach()
        self.kernel = kernel
        self.key = (scores.data_ptr(), weight.data_ptr(), weight._version, scores.shape)
        self.out = weight * 0.0  # status 0 everywhere: 0 * weight, -0.0 where it is negative
        self.status = np.zeros(scores.numel(), dtype=np.uint8)
        self.views = (scores.numpy(), weight.numpy(), self.out.numpy(), self.status)
        self.version = self.out._version

    def serves(self, scores: torch.Tensor, weight: torch.Tensor) -> bool:
        key = (scores.data_ptr(), weight.data_ptr(), weight._version, scores.shape)
        return key == self.key and self.out._version == self.version

    def update(self, keep: int, threshold: float, density: float) -> tuple[float, float] | None:
        """The kernel's update; the next (threshold, density), or None (no band held enough)."""
        state = self.kernel(*self.views, keep, threshold, density)
        if state is None:
            return None
        threshold, density, flips = state
        if flips:
            increment_version(self.out)
            self.version = self.out._version
        return threshold, density

    def overwrite(self, mask: torch.Tensor, weight: torch.Tensor) -> None:
        """Set every entry from a 0/1 ``mask`` (flat)."""
        with torch.no_grad():
            torch.mul(mask.view_as(self.out), weight, out=self.out)
        np.not_equal(mask.numpy(), 0.0, out=self.status.view(np.bool_))
        self.version = self.out._version


def sparse_nonzero(flags: torch.Tensor) -> torch.Tensor:
    """Ascending indices of the nonzero entries of a 1-D float tensor with few of them.

    Equal to ``torch.nonzero(flags).view(-1)``, about 2.5x faster when few entries are
    set: one ``amax`` per block of ``_BLOCK`` entries finds the blocks that hold any,
    and only those blocks are searched.
    """
    body = flags.numel() - flags.numel() % _BLOCK
    blocks = flags[:body].view(-1, _BLOCK)
    hit = torch.nonzero(blocks.amax(dim=1)).view(-1)
    local = torch.nonzero(blocks[hit])
    index = hit[local[:, 0]] * _BLOCK + local[:, 1]
    if body < flags.numel():
        index = torch.cat([index, torch.nonzero(flags[body:]).view(-1) + body])
    return index


class TopKMask:
    """Exact 0/1 mask of the ``keep`` largest of ``n`` scores that change a little per call.

    Parameters
    ----------
    n : int
        Number of scores (edges of the layer).
    keep : int
        Number of scores the mask keeps, ``1 <= keep <= n``.

    Notes
    -----
    State: the last strict threshold ``t`` (exactly ``keep`` scores lay above it) and
    the density of scores around it. A call counts the scores above ``t``; when
    ``d`` more (or fewer) than ``keep`` lie above, only the ``|d|`` scores nearest to
    ``t`` on that side change status, so it gathers the scores of a narrow band on
    that side (a width the density says holds about ``2|d|`` of them), finds the new
    boundary among them and flips those ``|d|`` entries of the mask. Without a
    threshold, when the band never holds enough scores, or with a tie at the
    boundary, it sorts the layer instead. Small layers take ``kthvalue`` directly.
    """

    def __init__(self, n: int, keep: int) -> None:
        if not 1 <= keep <= n:
            raise ValueError(f"keep must lie in [1, {n}], got {keep}")
        self.n = n
        self.keep = keep
        self.reset()

    def reset(self) -> None:
        """Forget the threshold (the next call sorts the layer)."""
        self._threshold: float | None = None
        self._density = 0.0
        self._scratch: torch.Tensor | None = None
        self._live: _Live | None = None

    def __getstate__(self) -> dict[str, object]:
        # Copies and pickles start without the kept tensor: its numpy views would not be
        # views of the copy's tensors.
        return {**self.__dict__, "_live": None, "_scratch": None}

    def _scratch_like(self, flat: torch.Tensor) -> torch.Tensor:
        # One reused buffer for the band: fewer full-size temporaries stay in cache.
        if self._scratch is None or self._scratch.device != flat.device:
            self._scratch = torch.empty_like(flat)
        return self._scratch

    def hint(self, *, threshold: float, density: float) -> None:
        """Start from a strict threshold with exactly ``keep`` scores above it.

        ``density`` is the number of scores per unit of score near the threshold.
        """
        self._threshold = threshold
        self._density = density

    def masked(self, scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` times the mask of ``scores``: a new tensor, shaped like ``weight``."""
        out = self.live(scores, weight)
        return out.detach().clone() if self.keeps(out) else out

    def keeps(self, masked: torch.Tensor) -> bool:
        """Whether ``masked`` is the tensor :meth:`live` keeps from call to call."""
        return self._live is not None and masked is self._live.out

    def live(self, scores: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` times the mask of ``scores``, in one tensor kept from call to call.

        For one layer's own scores and weight. Where the compiled kernel applies (float32
        on the CPU), only the entries whose status changed are rewritten, and the tensor's
        autograd version is bumped when any did: a graph that saved the former value and
        is backpropagated after this call fails (PyTorch's "modified by an inplace
        operation") instead of giving a wrong gradient. Elsewhere a new tensor each call.
        """
        live = self._live_for(scores, weight)
        if live is None:
            return self(scores).mul_(weight)
        if self._threshold is not None and self._density > 0.0:
            state = live.update(self.keep, self._threshold, self._density)
            if state is not None:
                self._threshold, self._density = state
                return live.out
        mask = self._from_sort(scores.detach().reshape(-1))
        live.overwrite(mask, weight)
        return live.out

    def _live_for(self, scores: torch.Tensor, weight: torch.Tensor) -> _Live | None:
        live = self._live
        if live is not None and live.serves(scores, weight):
            return live
        kernel = _masked_update
        fits = (
            scores.device.type == weight.device.type == "cpu"
            and scores.dtype == weight.dtype == torch.float32
            and scores.is_contiguous()
            and weight.is_contiguous()
            and scores.shape == weight.shape
            and scores.numel() == self.n
            and self.keep < self.n < 2**32
        )
        self._live = _Live(scores, weight, kernel) if kernel is not None and fits else None
        return self._live

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        """The float 0/1 mask (same shape as ``scores``) of the ``keep`` largest scores.

        A new tensor each call, which the caller may overwrite.
        """
        flat = scores.detach().reshape(-1)
        if flat.numel() != self.n:
            raise ValueError(f"expected {self.n} scores, got {flat.numel()}")
        if self.keep == self.n:
            return torch.ones_like(scores)
        mask = None
        if self.n <= _WHOLE_LAYER:
            # The largest score left out is the strict threshold.
            threshold = torch.kthvalue(flat, self.n - self.keep).values
            mask = torch.gt(flat, threshold, out=torch.empty_like(flat))
            if self._count(mask) != self.keep:
                mask = None  # a tie at the boundary
        elif self._threshold is not None and self._density > 0.0:
            mask = self._from_threshold(flat, self._threshold)
        if mask is None:
            mask = self._from_sort(flat)
        return mask.view_as(scores)

    def _count(self, mask: torch.Tensor) -> int:
        # A float32 sum of 0/1 values is exact below 2**24 terms.
        if self.n < 1 << 24:
            return int(mask.sum())
        return int(mask.sum(dtype=torch.float64))

    def _from_threshold(self, flat: torch.Tensor, threshold: float) -> torch.Tensor | None:
        mask = torch.gt(flat, threshold, out=torch.empty_like(flat))
        excess = self._count(mask) - self.keep
        if excess == 0:
            return mask
        need = abs(excess)  # scores that change status, all next to the threshold
        width = (2 * need + 64) / self._density
        band = self._scratch_like(flat)
        for _ in range(3):
            if excess > 0:  # drop the ``need`` smallest of (t, t + width]
                torch.sub(mask, torch.gt(flat, threshold + width, out=band), out=band)
            else:  # keep the ``need`` largest of (t - width, t]
                torch.gt(flat, threshold - width, out=band).sub_(mask)
            index = sparse_nonzero(band)
            size = index.numel()
            self._density = max(size, 1) / width
            if size >= need:
                break
            width *= 4.0
        else:
            return None
        values = flat[index]
        if excess > 0:
            boundary = float(torch.kthvalue(values, need).values)
            flip = index[values <= boundary]
            new_threshold = boundary
        else:
            boundary = float(torch.kthvalue(values, size - need + 1).values)
            flip = index[values >= boundary]
            new_threshold = (
                float(torch.kthvalue(values, size - need).values)
                if size > need
                else threshold - width  # nothing left in the band: its edge will do
            )
        if flip.numel() != need:
            return None  # a tie at the boundary: the sort breaks it by index
        mask.index_fill_(0, flip, 0.0 if excess > 0 else 1.0)
        self._threshold = new_threshold
        return mask

    def _from_sort(self, flat: torch.Tensor) -> torch.Tensor:
        order = sort_order(flat)
        cut = self.n - self.keep  # sorted positions >= cut are kept
        self._threshold = float(flat[order[cut - 1]])
        # Density from the 2 * 256 scores around the boundary.
        low, high = max(0, cut - 256), min(self.n - 1, cut + 256)
        spread = float(flat[order[high]] - flat[order[low]])
        self._density = (high - low) / spread if spread > 0 else 0.0
        # By position, not by value: a tie at the boundary is broken as rank_vector does.
        return torch.zeros_like(flat).index_fill_(0, order[cut:], 1.0)
