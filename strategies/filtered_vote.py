"""Reference-filtered Borda vote for FRL: drop replies that disagree with the global ranking.

The FRL server (arXiv 2110.04350, Alg. 1) knows one thing no attacker can change
within a round: the global ranking ``g`` it sent. Every benign client starts its
local training from ``g`` and, after a few local epochs, still ranks the edges much
like it (measured on MNIST-5k, 50 clients, Dirichlet 1.0, 2 local epochs: Spearman
correlation with ``g`` 0.92-0.999 in the two large layers from round 1 on, with a
spread of about 0.01). The attacks FRL is meant to withstand do not: the reverse of
the benign ranking (FRL Sec. 5) has correlation about ``-rho_benign``, a random
permutation about ``0 +- 1/sqrt(n)``, and a ranking that moves the edges around the
top-k boundary to the extremes (``mask_boundary_attack``) about 0.8.

So the vote first scores every reply, layer by layer, by its Spearman correlation
with the reference and drops those far below the others, then takes the plain Borda
vote over the survivors. The threshold is robust, so that the attackers (a minority)
cannot move it far: Hampel's identifier (F. R. Hampel, "The influence curve and its
role in robust estimation", JASA 69, 1974), ``median - c * 1.4826 * MAD`` with the
consistency constant of Rousseeuw & Croux (JASA 88, 1993); one-sided, since a reply
*closer* to the reference than the others can only slow learning, not steer it.
A reply must pass in every layer (an attacker who reverses only a small layer is not
diluted by the large ones), and at least half of the replies always survive (those
that agree best), so the vote never starves.

Before the median is taken, replies that are not even positively correlated with
the reference in some layer (``rho <= MIN_AGREEMENT = 0``) are set aside: no
benign client training from ``g`` ends up there (measured minimum 0.53, in the
small output layer in round 1), and it keeps a round in which reversing or random
attackers happen to be half of the sample or more from moving the median
(sampling 10 of 50 clients with 15 malicious gives 5 or more attackers in about
15% of the rounds). Only when every reply is set aside are they all considered.

Agreement alone is not enough (measured): an attacker who knows the rule sends the
ranking of ``g`` minus an amplified copy of the benign update, with just the
agreement of a benign reply. Benign displacements ``r - g`` are mostly each
client's own noise around a shared direction of learning; the attacker's is all
anti-signal, so two such replies cancel most of eight benign ones' progress (MLP,
20% attackers: -3.3 points). So a second test asks where a reply *went*: the
median cosine of its displacement with the other replies' displacements
(:func:`direction_agreement`). Benign replies score 0.1-0.6 (the shared
direction), the amplified reversal below 0, and a cluster of identical colluders
cannot vote itself into the centre, since each colluder's median is taken over the
others, mostly benign. A reply is set aside before the agreement threshold is set
when, in some layer, its direction is at most 0 *and* more than ``mads`` robust
standard deviations below the round's median direction. Both conditions, because
either alone costs benign replies (measured on MNIST-5k, CNN): in the small
convolution layers (288 and 18k edges) a benign reply's median cosine straddles 0
by noise alone, and the spread of directions is wide, so a threshold alone also
cuts benign replies that point the right way. A reply that agrees at all can only
slow learning by its orthogonal part, not reverse it.

The threshold ``mads`` is 5 by default (``filter-mads``), not Hampel's usual 3:
agreements across ten benign replies are heavy-tailed (clients with few or skewed
examples), and with four layers tested at 3 MADs (direction test not gated) a
CNN run without attackers dropped 132 of its 400 benign replies and ended 1.5 points
below plain Borda (seed 1; 1.0 and 1.2 for seeds 0 and 2); at 5, gated, the same run
dropped 38 and ended 1.0 above it. What it gives an adaptive attacker is a little
more room: the threshold it can sit at moves from ``median - 3 s`` to ``median - 5 s``.

Where the idea comes from: FLTrust (Cao et al., NDSS 2021, arXiv 2012.13995) scores
each update by its agreement with a server-side reference update, which needs a
clean root dataset at the server; centred clipping (Karimireddy et al., ICML 2021,
arXiv 2012.10333) anchors robustness on the previous aggregate ("learning from
history"). Here the reference is the previous aggregate itself, which costs nothing
and needs no server data, and the agreement measure is the rank correlation the
rankings already are (Spearman 1904).

Why not symmetric trimming alone: :func:`~fedrank.strategies.robust_vote.trimmed_borda_vote`
drops the extreme positions of *every* edge; against a reversal, all attackers sit
at one end, so trimming also throws away benign positions at the other end, and it
did worse than plain Borda there. Filtering removes the attackers' whole replies and
keeps every benign position.

What it does not stop (bound): an attacker who knows the rule and the reference can
send any ranking whose correlation with ``g`` stays above the threshold ``tau``.
Spearman's rho of two permutations is ``1 - 6 ||r - g||^2 / (n (n^2 - 1))``, so a
surviving reply is within squared distance ``(1 - tau) n (n^2 - 1) / 6`` of ``g``:
it can shift the Borda sums no further than a benign client at the threshold, about
``sqrt((1 - tau) / (1 - median))`` times a typical benign client's shift, and, by
the direction test, only in directions that still agree, on balance, with the
benign replies: what it can add against learning is the part orthogonal to them.
The adaptive attacks in :mod:`fedrank.simulations.attacks.adaptive` sit just above the
agreement threshold and just on the right side of the direction test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrank.strategies.displacements import (
    clip_scales,
    direction_from_gram,
    displacement_gram,
    rho_from_squares,
    spearman_from_gram,
)
from fedrank.strategies.ranking import anchored_ranks, borda_sums

__all__ = [
    "MAD_TO_SIGMA",
    "MIN_AGREEMENT",
    "FilteredVote",
    "agreement_z_scores",
    "cosines",
    "direction_agreement",
    "filtered_vote",
    "keep_agreeing",
    "spearman_to_reference",
]

# 1 / Phi^{-1}(3/4): makes the MAD a consistent estimate of a normal's sigma.
MAD_TO_SIGMA = 1.482602218505602
# A reply at most this correlated with the reference in a layer is not a benign one.
MIN_AGREEMENT = 0.0

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]


def _check_shapes(rankings: npt.NDArray[np.integer], reference: npt.NDArray[np.integer]) -> None:
    if rankings.ndim != 2 or reference.ndim != 1 or rankings.shape[1] != reference.shape[0]:
        raise ValueError(
            f"rankings, reference: expected shapes (m, n) and (n,), "
            f"got {rankings.shape} and {reference.shape}"
        )


def spearman_to_reference(
    rankings: npt.NDArray[np.integer], reference: npt.NDArray[np.integer]
) -> FloatArray:
    """Spearman correlation of every rank vector with the reference rank vector (exact).

    Parameters
    ----------
    rankings : numpy.ndarray
        Shape ``(m, n)``, each row a permutation of ``0..n-1``.
    reference : numpy.ndarray
        Shape ``(n,)``, a permutation of ``0..n-1``.

    Returns
    -------
    numpy.ndarray
        ``float64`` of shape ``(m,)``: ``1 - 6 sum (r - g)^2 / (n (n^2 - 1))``, in
        ``[-1, 1]``; ``1.0`` for ``n == 1``.
    """
    _check_shapes(rankings, reference)
    n = reference.shape[0]
    diff = rankings.astype(np.int64) - reference.astype(np.int64)
    if n >= 2_000_000:  # sum d^2 <= n^3 / 3 would overflow int64; float64 is exact enough
        diff = diff.astype(np.float64)
    return rho_from_squares(np.einsum("ij,ij->i", diff, diff), n)


def direction_agreement(
    rankings: npt.NDArray[np.integer], reference: npt.NDArray[np.integer]
) -> FloatArray:
    """Median cosine of every reply's displacement ``r - g`` with the other replies'.

    The median over the *others* rather than a cosine with a median displacement:
    colluders sending the same (or nearly the same) reply would pull a coordinate-wise
    median towards themselves, but each of them still has only its fellow colluders
    on its side of the median of its own cosines, so a minority cluster scores as
    the rest of the round sees it (the benign replies' displacements share the
    direction of learning: median pairwise cosine 0.1-0.6 on MNIST-5k; a reversal
    points against it). A reply that stayed at ``g`` has cosine 0 with everything;
    a lone reply scores 1 (nothing to disagree with).

    Parameters
    ----------
    rankings : numpy.ndarray
        Shape ``(m, n)``, each row a permutation of ``0..n-1``.
    reference : numpy.ndarray
        Shape ``(n,)``, the global ranking sent this round.

    Returns
    -------
    numpy.ndarray
        ``float64`` of shape ``(m,)``, in ``[-1, 1]``.
    """
    _check_shapes(rankings, reference)
    return direction_from_gram(displacement_gram(list(rankings), reference))


def cosines(vectors: npt.NDArray[np.floating], direction: npt.NDArray[np.floating]) -> FloatArray:
    """Cosine of every row of ``vectors`` (shape ``(m, n)``) with ``direction`` (``(n,)``).

    A zero row or a zero direction has cosine 0: it points nowhere.
    """
    norms = np.linalg.norm(vectors, axis=1) * float(np.linalg.norm(direction))
    cosine: FloatArray = np.divide(
        vectors @ direction,
        norms,
        out=np.zeros(vectors.shape[0], dtype=np.float64),
        where=norms > 0.0,
    )
    return np.clip(cosine, -1.0, 1.0)


def agreement_z_scores(agreement: npt.NDArray[np.floating]) -> FloatArray:
    """Robust z-scores ``(x - median) / (1.4826 MAD)`` of one layer's agreements.

    A MAD of zero (at least half the values equal) gives ``0`` to the values at the
    median and ``+-inf`` to the others: they differ from a tied majority.
    """
    values, median, spread = _centre_and_spread(agreement)
    deviation = values - median
    if spread > 0.0:
        z: FloatArray = deviation / spread
        return z
    return np.where(deviation == 0.0, 0.0, np.copysign(np.inf, deviation))


def _centre_and_spread(agreement: npt.NDArray[np.floating]) -> tuple[FloatArray, float, float]:
    """The values as float64, their median and their robust standard deviation."""
    values = np.asarray(agreement, dtype=np.float64)
    if values.ndim != 1 or values.shape[0] == 0:
        raise ValueError(f"agreement: expected a non-empty 1-D array, got {values.shape}")
    median = float(np.median(values))
    return values, median, MAD_TO_SIGMA * float(np.median(np.abs(values - median)))


def keep_agreeing(z_scores: npt.NDArray[np.floating], *, mads: float) -> BoolArray:
    """Which replies survive: every layer's z-score at least ``-mads``.

    Parameters
    ----------
    z_scores : numpy.ndarray
        Shape ``(layers, m)``: :func:`agreement_z_scores` of each layer.
    mads : float
        Threshold ``c`` in robust standard deviations below the median.

    Returns
    -------
    numpy.ndarray
        Boolean mask over the ``m`` replies. If fewer than ``ceil(m / 2)`` pass,
        the ``ceil(m / 2)`` with the highest worst-layer score are kept instead
        (with every reply tied with the last of them), so an honest majority
        always reaches the vote.
    """
    if not (math.isfinite(mads) and mads > 0.0):
        raise ValueError(f"mads: must be a positive number, got {mads}")
    scores = np.asarray(z_scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"z_scores: expected shape (layers, m) with m >= 1, got {scores.shape}")
    worst = scores.min(axis=0)
    keep: BoolArray = worst >= -mads
    half = math.ceil(worst.shape[0] / 2)
    if int(keep.sum()) < half:
        cut = np.sort(worst)[::-1][half - 1]
        keep = worst >= cut  # replies tied at the cut all stay: the order they came in is no merit
    return keep


@dataclass(frozen=True)
class FilteredVote:
    """Outcome of :func:`filtered_vote`.

    Attributes
    ----------
    state : dict
        The global rank vector of every layer (Borda over the kept replies).
    kept : numpy.ndarray
        Boolean mask over the replies, in the order given.
    agreement : dict
        Per layer, every reply's Spearman correlation with the reference.
    clipped : numpy.ndarray
        Boolean mask over the replies voted clipped (``clip=True``): below the agreement
        threshold, but neither uncorrelated with the reference nor pointing against
        the round. A reply is kept, clipped or set aside.
    """

    state: dict[str, npt.NDArray[np.int64]]
    kept: BoolArray
    agreement: dict[str, FloatArray]
    clipped: BoolArray


def filtered_vote(
    updates: Sequence[Mapping[str, npt.NDArray[np.integer]]],
    reference: Mapping[str, npt.NDArray[np.integer]],
    *,
    mads: float,
    anchor: float = 0.0,
    clip: bool = False,
) -> FilteredVote:
    """Drop the replies that disagree with the reference, Borda-vote the rest.

    Replies with ``rho <= MIN_AGREEMENT`` in some layer are dropped first (unless
    all are), then those of the rest whose :func:`direction_agreement` is at most
    ``MIN_AGREEMENT`` and more than ``mads`` robust standard deviations below the
    median in some layer (unless all are); the threshold is then set on the
    agreements of the others (:func:`keep_agreeing`).

    With ``clip`` a reply below that threshold is not dropped but clipped: in each
    layer where it is below, its displacement from the reference is shrunk to the
    threshold's distance (:func:`~fedrank.strategies.displacements.clip_scales`):
    centred clipping around the last aggregate (Karimireddy, He & Jaggi, ICML 2021,
    arXiv 2012.10333) in rank space. It then weighs as one reply (a fractional Borda
    position per edge) but can move the vote no further than a reply at the
    threshold, the bound any surviving attacker has already. Under heterogeneous data
    the replies furthest from the reference are often the clients whose data differ
    most (docs/robustness.md: dropping them costs 2.7 points at Dirichlet 0.1).

    Parameters
    ----------
    updates : sequence of mappings
        Every valid reply's rank vector per layer (same layers as ``reference``).
    reference : mapping
        The global rank vectors sent this round.
    mads : float
        Threshold in robust standard deviations (see :func:`keep_agreeing`).

    Returns
    -------
    FilteredVote
        The new global state, which replies were kept, and their agreements.
    """
    if not updates:
        raise ValueError("updates: need at least one client update to vote")
    names = list(reference)
    if any(sorted(u) != sorted(names) for u in updates):
        raise ValueError(f"updates: every update must have the reference's layers {names}")
    # One pass per layer gives both the Gram matrix and the Borda sums of *all* replies;
    # the replies set aside are subtracted afterwards (exact in int64), instead of
    # reading the survivors again.
    sums = {name: np.zeros(reference[name].shape, dtype=np.int64) for name in names}
    grams = [
        displacement_gram([u[name] for u in updates], reference[name], sums=sums[name])
        for name in names
    ]
    agreement = {
        name: spearman_from_gram(gram, reference[name].shape[0])
        for name, gram in zip(names, grams, strict=True)
    }
    rho = np.stack([agreement[name] for name in names])
    candidates = np.flatnonzero((rho > MIN_AGREEMENT).all(axis=0))
    if candidates.shape[0] == 0:  # nothing plausible: judge them all by the same rule
        candidates = np.arange(len(updates))
    direction = np.stack(
        [direction_from_gram(gram[np.ix_(candidates, candidates)]) for gram in grams]
    )
    direction_z = np.stack([agreement_z_scores(layer) for layer in direction])
    # Against the round, not just below zero: in a small layer a benign reply's median
    # cosine straddles 0 by noise alone.
    misaligned = ((direction <= MIN_AGREEMENT) & (direction_z < -mads)).any(axis=0)
    if not misaligned.all():
        candidates = candidates[~misaligned]
    z = np.stack([agreement_z_scores(rho[layer, candidates]) for layer in range(len(names))])
    kept = np.zeros(len(updates), dtype=np.bool_)
    kept[candidates[keep_agreeing(z, mads=mads)]] = True
    clipped = np.zeros(len(updates), dtype=np.bool_)
    if clip:
        clipped[candidates] = ~kept[candidates]
    survivors = [u for u, keep in zip(updates, kept, strict=True) if keep]
    set_aside = [u for u, keep in zip(updates, kept, strict=True) if not keep]
    state = {}
    for layer, name in enumerate(names):
        layer_sums = _survivor_sums(
            sums[name], [u[name] for u in survivors], [u[name] for u in set_aside]
        )
        weight = float(len(survivors))
        if clipped.any():
            _, median, spread = _centre_and_spread(rho[layer, candidates])
            scales = clip_scales(rho[layer], median - mads * spread)
            g = reference[name].astype(np.float64)
            layer_sums = layer_sums.astype(np.float64)
            for index in np.flatnonzero(clipped).tolist():  # reply order: the same sums every run
                layer_sums += g + scales[index] * (updates[index][name] - g)
            weight += float(clipped.sum())
        state[name] = anchored_ranks(layer_sums, weight, reference[name], anchor=anchor)
    return FilteredVote(state=state, kept=kept, agreement=agreement, clipped=clipped)


def _survivor_sums(
    sums: npt.NDArray[np.int64],
    survivors: Sequence[npt.NDArray[np.integer]],
    set_aside: Sequence[npt.NDArray[np.integer]],
) -> npt.NDArray[np.int64]:
    """Borda sums of the survivors, from ``sums`` over all replies (updated in place).

    The sums of all replies less those set aside, or, when most were set aside, the
    survivors' sums afresh: whichever reads fewer replies (both exact in int64).
    """
    if len(set_aside) <= len(survivors):
        for ranks in set_aside:
            np.subtract(sums, ranks, out=sums, casting="unsafe")
        return sums
    return borda_sums(survivors)
