"""The rank votes ``FrlVote`` can take, by name (the scenario's ``aggregator``).

Each vote maps the round's valid rank-vector replies, the reference (the global
ranking sent this round) and the anchor (how many mean replies the reference counts
as: the smoothing across rounds, :func:`~fedrank.strategies.ranking.anchored_ranks`)
to the new global ranking and the number of replies it left out. The math lives in
:mod:`fedrank.strategies.ranking` (Borda), :mod:`fedrank.strategies.robust_vote`
(trimmed, median) and :mod:`fedrank.strategies.filtered_vote` (the robust vote).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedrank.strategies.filtered_vote import filtered_vote
from fedrank.strategies.ranking import anchored_ranks, borda_sums
from fedrank.strategies.robust_vote import (
    median_scores,
    median_vote,
    trim_count,
    trimmed_borda_scores,
)

Rankings = Mapping[str, np.ndarray]
RankVote = Callable[[Sequence[Rankings], Rankings, float], tuple[dict[str, np.ndarray], int]]

__all__ = ["RANK_VOTES", "RankVote", "rank_vote"]

RANK_VOTES = ("borda", "filtered", "clipped", "trimmed", "median")


def _per_layer(
    updates: Sequence[Rankings],
    reference: Rankings,
    vote: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
) -> dict[str, np.ndarray]:
    if not updates:
        raise ValueError("updates: need at least one client update to vote")
    return {
        name: vote(np.stack([u[name] for u in updates]), reference.get(name)) for name in updates[0]
    }


def _trimmed(
    stacked: np.ndarray, g: np.ndarray | None, *, trim_fraction: float, anchor: float
) -> np.ndarray:
    m = stacked.shape[0]
    trim = trim_count(m, trim_fraction=trim_fraction)
    return anchored_ranks(trimmed_borda_scores(stacked, trim=trim), m - 2 * trim, g, anchor=anchor)


def _median(stacked: np.ndarray, g: np.ndarray | None, *, anchor: float) -> np.ndarray:
    if anchor == 0.0:
        return median_vote(stacked)  # ties among equal medians by mean position
    median2, _ = median_scores(stacked)
    return anchored_ranks(median2, 2.0, g, anchor=anchor)  # median2 is twice the median


def rank_vote(name: str, *, trim_fraction: float = 0.2, filter_mads: float = 5.0) -> RankVote:
    """The vote called ``name`` (one of :data:`RANK_VOTES`) with its parameter.

    Parameters
    ----------
    name : str
        ``borda`` (FRL's plain vote), ``filtered`` (the robust vote of
        :func:`~fedrank.strategies.filtered_vote.filtered_vote`), ``clipped`` (the
        same, clipping the replies below its threshold instead of dropping them; those
        do not count as left out), ``trimmed``
        (per-edge trimmed-mean Borda, ``trim_fraction`` at each end), ``median``
        (per-edge median position).
    trim_fraction, filter_mads : float
        The parameter of the trimmed and of the filtered and clipped votes.

    Returns
    -------
    RankVote
        ``vote(replies, reference, anchor) -> (new ranking, replies left out)``; with
        ``anchor = 0`` each vote is its plain rule, with ``anchor > 0`` the reference
        enters every layer's mean positions as ``anchor`` mean replies
        (:func:`~fedrank.strategies.ranking.anchored_ranks`; the median's ties then
        go by the reference, not by mean position).
    """
    if name == "borda":

        def borda(
            updates: Sequence[Rankings], reference: Rankings, anchor: float
        ) -> tuple[dict[str, np.ndarray], int]:
            if not updates:
                raise ValueError("updates: need at least one client update to vote")
            state = {
                layer: anchored_ranks(
                    borda_sums([u[layer] for u in updates]),
                    len(updates),
                    reference.get(layer),
                    anchor=anchor,
                )
                for layer in updates[0]
            }
            return state, 0

        return borda
    if name == "trimmed":
        return lambda updates, reference, anchor: (
            _per_layer(
                updates,
                reference,
                lambda s, g: _trimmed(s, g, trim_fraction=trim_fraction, anchor=anchor),
            ),
            0,
        )
    if name == "median":
        return lambda updates, reference, anchor: (
            _per_layer(updates, reference, lambda s, g: _median(s, g, anchor=anchor)),
            0,
        )
    if name in ("filtered", "clipped"):
        clip = name == "clipped"

        def vote(
            updates: Sequence[Rankings], reference: Rankings, anchor: float
        ) -> tuple[dict[str, np.ndarray], int]:
            outcome = filtered_vote(updates, reference, mads=filter_mads, anchor=anchor, clip=clip)
            return dict(outcome.state), int((~(outcome.kept | outcome.clipped)).sum())

        return vote
    raise ValueError(f"name: must be one of {list(RANK_VOTES)}, got {name!r}")
