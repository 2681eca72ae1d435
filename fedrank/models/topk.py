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
"""

from __future__ import annotations

import torch

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
    order = sort_order(scores)
    ranks = torch.empty_like(order)
    return ranks.scatter_(0, order, torch.arange(order.numel(), device=order.device))


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
