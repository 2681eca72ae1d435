"""Malicious client behaviours for robustness experiments.

Ranking attacks target the FRL vote (arXiv 2110.04350): a rank vector ``r`` gives
every edge its position in the layer's ascending score order; the mask keeps the
top ``round(k * n)`` positions. Update attacks target float (LoRA adapter) updates,
given as ``dict[str, np.ndarray]``; they are computed in float64 and cast back to
each layer's dtype. Data poisoning: :func:`flip_labels`.

Colluders share information: each docstring says what the attacker is assumed to
know. Which clients are malicious is fixed by :func:`malicious_clients`. The attack's
settings are the scenario's :class:`~fedrank.config.AttackConfig`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import numpy as np
import numpy.typing as npt

from fedrank.config import AttackConfig, AttackDirection, FlipRule
from fedrank.errors import ConfigError
from fedrank.strategies.robust_vote import trimmed_borda_vote

Direction = AttackDirection
IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
Update = Mapping[str, npt.NDArray[np.floating]]


def malicious_clients(spec: AttackConfig, num_clients: int) -> frozenset[int]:
    """The partition ids of the malicious clients: ``floor(fraction * num_clients)``
    ids drawn without replacement by a Generator seeded with ``spec.seed``."""
    if num_clients < 1:
        raise ConfigError("num_clients", f"must be at least 1, got {num_clients}")
    # The epsilon keeps 0.29 * 100 = 28.999999999999996 at 29 attackers.
    count = math.floor(spec.fraction * num_clients + 1e-9)
    chosen = np.random.default_rng(spec.seed).choice(num_clients, size=count, replace=False)
    return frozenset(int(i) for i in chosen)


# ---------------------------------------------------------------- ranking attacks


def _check_rank_vector(ranking: npt.NDArray[np.integer]) -> int:
    n = ranking.shape[0] if ranking.ndim == 1 else 0
    if n < 1 or not np.array_equal(np.sort(ranking), np.arange(n)):
        raise ValueError("benign_estimate: must be a rank vector (a permutation of 0..n-1)")
    return n


def estimate_benign_ranking(colluder_rankings: npt.NDArray[np.integer]) -> IntArray:
    """The colluders' estimate of the benign global ranking: the plain Borda vote of
    the rank vectors they obtained by training honestly on their own data (FRL Sec. 5)."""
    return trimmed_borda_vote(colluder_rankings, trim_fraction=0.0)


def reverse_ranking_attack(benign_estimate: npt.NDArray[np.integer]) -> IntArray:
    """FRL's attack (arXiv 2110.04350, Sec. 5): send the reverse of the benign ranking.

    Knows: the colluders' estimate of the benign ranking
    (:func:`estimate_benign_ranking`). Every edge's position ``p`` becomes
    ``n - 1 - p``: the most important edges get the lowest positions, the maximal
    per-edge shift of a Borda sum against the benign direction.
    """
    n = _check_rank_vector(benign_estimate)
    return (n - 1) - benign_estimate.astype(np.int64)


def random_ranking_attack(n: int, rng: np.random.Generator) -> IntArray:
    """A uniformly random rank vector (an untargeted, knowledge-free attacker)."""
    if n < 1:
        raise ValueError(f"n: must be at least 1, got {n}")
    return rng.permutation(n).astype(np.int64)


def mask_boundary_attack(
    benign_estimate: npt.NDArray[np.integer], *, k: float, boundary_fraction: float
) -> IntArray:
    """Attack the top-k mask boundary while looking like a benign ranking.

    Knows: the colluders' estimate of the benign ranking and the mask fraction ``k``.
    The ``w = max(1, round(boundary_fraction * n))`` edges just inside the estimated
    mask go to the bottom (the edge closest to the boundary to position 0) and the
    ``w`` edges just outside it go to the top (the closest to position ``n - 1``);
    every other edge keeps its benign relative order, shifted by at most ``w``.

    Aimed at the mask itself, hence also at trimmed-mean and median votes: only
    edges near the boundary can change the mask, so the attacker spends its extreme
    positions on exactly those (a robust rule then keeps the edge of the benign
    range for them) and agrees with the benign clients everywhere else, so the
    vector is neither trimmed away as an outlier nor easy to spot.
    """
    n = _check_rank_vector(benign_estimate)
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k: must lie in (0, 1], got {k}")
    if not 0.0 < boundary_fraction <= 1.0:
        raise ValueError(f"boundary_fraction: must lie in (0, 1], got {boundary_fraction}")
    threshold = n - round(k * n)  # the mask keeps positions >= threshold
    width = max(1, round(boundary_fraction * n))
    inside, outside = min(width, n - threshold), min(width, threshold)
    order = np.argsort(benign_estimate, kind="stable")  # order[p]: edge at position p
    attacked_order = np.concatenate(
        [
            order[threshold : threshold + inside],
            order[: threshold - outside],
            order[threshold + inside :],
            order[threshold - outside : threshold],
        ]
    )
    ranks = np.empty(n, dtype=np.int64)
    ranks[attacked_order] = np.arange(n, dtype=np.int64)
    return ranks


# ---------------------------------------------------------------- update attacks


def _stack(updates: Sequence[Update]) -> FloatArray:
    """Flatten each update (layers in sorted name order) into one float64 row."""
    if not updates:
        raise ValueError("benign_updates: need at least one update")
    names = sorted(updates[0])
    rows = []
    for update in updates:
        if sorted(update) != names:
            raise ValueError(f"benign_updates: layer names differ: {sorted(update)} vs {names}")
        rows.append(np.concatenate([np.ravel(update[name]).astype(np.float64) for name in names]))
    if len({row.shape for row in rows}) != 1:
        raise ValueError("benign_updates: layer shapes differ between updates")
    return np.stack(rows)


def _unstack(vector: FloatArray, like: Update) -> dict[str, npt.NDArray[np.floating]]:
    """Split a flat float64 vector back into ``like``'s layers, shapes and dtypes."""
    out: dict[str, npt.NDArray[np.floating]] = {}
    start = 0
    for name in sorted(like):
        size = like[name].size
        out[name] = vector[start : start + size].reshape(like[name].shape).astype(like[name].dtype)
        start += size
    return out


def sign_flip_attack(update: Update) -> dict[str, npt.NDArray[np.floating]]:
    """Send the negated update. Knows: its own (honestly trained) update."""
    return {name: np.negative(layer) for name, layer in update.items()}


def scaling_attack(update: Update, *, factor: float) -> dict[str, npt.NDArray[np.floating]]:
    """Send ``factor`` times the update (``-5``: a boosted sign flip). Knows: its own update."""
    return {name: (layer * factor).astype(layer.dtype) for name, layer in update.items()}


def gaussian_noise_attack(
    update: Update, *, std: float, rng: np.random.Generator
) -> dict[str, npt.NDArray[np.floating]]:
    """Add i.i.d. ``N(0, std^2)`` noise to every coordinate. Knows: its own update."""
    return {
        name: (layer + rng.normal(0.0, std, size=layer.shape)).astype(layer.dtype)
        for name, layer in update.items()
    }


def alie_z_max(*, num_clients: int, num_malicious: int) -> float:
    """Baruch et al. (arXiv 1902.06156, Sec. 4): ``s = floor(n/2 + 1) - f`` benign
    clients must be won over; ``z_max = Phi^{-1}((n - s) / n)``."""
    supporters = math.floor(num_clients / 2 + 1) - num_malicious
    if num_malicious < 1 or supporters < 1:
        raise ValueError(
            f"num_malicious: need 1 <= f < n/2 + 1, got f={num_malicious}, n={num_clients}"
        )
    return NormalDist().inv_cdf((num_clients - supporters) / num_clients)


def alie_attack(
    benign_updates: Sequence[Update],
    *,
    num_clients: int,
    num_malicious: int,
    z_max: float | None = None,
) -> dict[str, npt.NDArray[np.floating]]:
    """ "A little is enough" (arXiv 1902.06156): ``mean - z_max * std`` per coordinate.

    Knows: the benign updates in ``benign_updates`` (the colluders' own honest ones,
    or all benign ones) and the number of clients. All colluders send this same
    update; every coordinate lies ``z_max`` benign standard deviations (population,
    ``ddof=0``) from the benign mean, inside the band a coordinate-wise defence
    considers normal, yet all coordinates move the same way.
    """
    rows = _stack(benign_updates)
    z = alie_z_max(num_clients=num_clients, num_malicious=num_malicious) if z_max is None else z_max
    return _unstack(rows.mean(axis=0) - z * rows.std(axis=0), benign_updates[0])


def _perturbation(rows: FloatArray, direction: Direction) -> FloatArray:
    mean: FloatArray = rows.mean(axis=0)
    if direction == "inverse_std":
        spread: FloatArray = rows.std(axis=0)
        return -spread
    if direction == "inverse_sign":
        signs: FloatArray = np.sign(mean)
        return -signs
    norm = float(np.linalg.norm(mean))
    return -mean / norm if norm > 0.0 else np.zeros_like(mean)


def _largest_gamma(rows: FloatArray, perturbation: FloatArray, *, objective: str) -> float:
    """The largest ``gamma >= 0`` with ``mean + gamma * p`` inside the benign bound.

    Shejwalkar & Houmansadr find it by binary search; the objective is a convex
    quadratic in ``gamma`` that holds at ``gamma = 0`` (the mean is a convex
    combination of the benign updates), so we solve for its largest root exactly.
    With ``x_i = b_i - mean``: ``||mean + g p - b_i||^2 = g^2 |p|^2 - 2 g <x_i, p>
    + |x_i|^2``.
    """
    centred = rows - rows.mean(axis=0)
    gram = centred @ centred.T
    norms = np.diag(gram)
    pairwise = np.maximum(norms[:, None] + norms[None, :] - 2.0 * gram, 0.0)
    a = float(perturbation @ perturbation)
    if a == 0.0:
        return 0.0
    b = centred @ perturbation
    if objective == "min_max":  # max_i distance <= max benign pairwise distance
        roots = (b + np.sqrt(np.maximum(b**2 - a * (norms - pairwise.max()), 0.0))) / a
        return max(float(roots.min()), 0.0)
    # min_sum: sum_i distance <= max_i sum_j benign distance
    m = int(rows.shape[0])
    sb, excess = float(b.sum()), float(norms.sum() - pairwise.sum(axis=1).max())
    return max((sb + math.sqrt(max(sb * sb - m * a * excess, 0.0))) / (m * a), 0.0)


def min_max_attack(
    benign_updates: Sequence[Update], *, direction: Direction = "inverse_std"
) -> dict[str, npt.NDArray[np.floating]]:
    """Min-max (Shejwalkar & Houmansadr, NDSS 2021): ``mean + gamma * p`` with the
    largest ``gamma`` such that its largest squared distance to a benign update is at
    most the largest squared distance between two benign updates.

    Knows: the benign updates given (the colluders' own or all). ``p`` is ``-std``,
    ``-mean/|mean|`` or ``-sign(mean)`` (``direction``). Distance-based defences
    (Krum, trimming by distance) then cannot tell it from a benign outlier.
    """
    rows = _stack(benign_updates)
    p = _perturbation(rows, direction)
    gamma = _largest_gamma(rows, p, objective="min_max")
    return _unstack(rows.mean(axis=0) + gamma * p, benign_updates[0])


def min_sum_attack(
    benign_updates: Sequence[Update], *, direction: Direction = "inverse_std"
) -> dict[str, npt.NDArray[np.floating]]:
    """Min-sum (Shejwalkar & Houmansadr, NDSS 2021): as :func:`min_max_attack`, but the
    *sum* of squared distances to the benign updates must stay within the largest
    such sum of a benign update. Knows: the benign updates given."""
    rows = _stack(benign_updates)
    p = _perturbation(rows, direction)
    gamma = _largest_gamma(rows, p, objective="min_sum")
    return _unstack(rows.mean(axis=0) + gamma * p, benign_updates[0])


# ---------------------------------------------------------------- data poisoning


def flip_labels(
    labels: npt.NDArray[np.integer],
    *,
    num_classes: int,
    rule: FlipRule = "reverse",
    rng: np.random.Generator | None = None,
    source_class: int | None = None,
    target_class: int | None = None,
) -> npt.NDArray[np.integer]:
    """Label-flipping data poisoning on a malicious client's own training labels.

    Knows: only its own data. Rules: ``"reverse"`` ``y -> C - 1 - y``; ``"shift"``
    ``y -> (y + 1) mod C``; ``"random"`` a uniformly drawn *other* class (needs
    ``rng``); ``"targeted"`` ``source_class -> target_class``, others unchanged.
    Returns a new array of the same dtype; ``labels`` is not modified.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes: must be at least 2, got {num_classes}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels: must lie in [0, {num_classes})")
    if rule == "reverse":
        flipped = (num_classes - 1) - labels
    elif rule == "shift":
        flipped = (labels + 1) % num_classes
    elif rule == "random":
        if rng is None:
            raise ValueError("rng: the random rule needs a Generator")
        flipped = (labels + rng.integers(1, num_classes, size=labels.shape)) % num_classes
    else:
        if source_class is None or target_class is None:
            raise ValueError("source_class, target_class: the targeted rule needs both")
        flipped = np.where(labels == source_class, target_class, labels)
    return flipped.astype(labels.dtype)
