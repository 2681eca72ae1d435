"""The rank votes ``FrlVote`` can take, by name (the scenario's ``aggregator``).

Each vote maps the round's valid rank-vector replies and the reference (the global
ranking sent this round) to the new global ranking and the number of replies it
left out. The math lives in :mod:`fedrank.strategies.ranking` (Borda),
:mod:`fedrank.strategies.robust_vote` (trimmed, median) and
:mod:`fedrank.strategies.filtered_vote` (reference-filtered Borda).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from fedrank.strategies.filtered_vote import filtered_vote
from fedrank.strategies.ranking import vote_layers
from fedrank.strategies.robust_vote import median_vote, trimmed_borda_vote

Rankings = Mapping[str, np.ndarray]
RankVote = Callable[[Sequence[Rankings], Rankings], tuple[dict[str, np.ndarray], int]]

__all__ = ["RANK_VOTES", "RankVote", "rank_vote"]

RANK_VOTES = ("borda", "filtered", "trimmed", "median")


def _per_layer(
    updates: Sequence[Rankings], vote: Callable[[np.ndarray], np.ndarray]
) -> dict[str, np.ndarray]:
    if not updates:
        raise ValueError("updates: need at least one client update to vote")
    return {name: vote(np.stack([u[name] for u in updates])) for name in updates[0]}


def rank_vote(name: str, *, trim_fraction: float = 0.2, filter_mads: float = 5.0) -> RankVote:
    """The vote called ``name`` (one of :data:`RANK_VOTES`) with its parameter.

    Parameters
    ----------
    name : str
        ``borda`` (FRL's plain vote), ``filtered`` (drop replies far less correlated
        with the reference than the others, then Borda), ``trimmed`` (per-edge
        trimmed-mean Borda, ``trim_fraction`` at each end), ``median`` (per-edge
        median position).
    trim_fraction, filter_mads : float
        The parameter of the trimmed and the filtered vote.
    """
    if name == "borda":
        return lambda updates, reference: (vote_layers(updates), 0)
    if name == "trimmed":
        return lambda updates, reference: (
            _per_layer(updates, lambda s: trimmed_borda_vote(s, trim_fraction=trim_fraction)),
            0,
        )
    if name == "median":
        return lambda updates, reference: (_per_layer(updates, median_vote), 0)
    if name == "filtered":

        def vote(
            updates: Sequence[Rankings], reference: Rankings
        ) -> tuple[dict[str, np.ndarray], int]:
            outcome = filtered_vote(updates, reference, mads=filter_mads)
            return dict(outcome.state), int((~outcome.kept).sum())

        return vote
    raise ValueError(f"name: must be one of {list(RANK_VOTES)}, got {name!r}")
