from __future__ import annotations

import numpy as np
import pytest

from fedrank.strategies.filtered_vote import filtered_vote
from fedrank.strategies.ranking import vote_layers
from fedrank.strategies.robust_vote import median_vote, trimmed_borda_vote
from fedrank.strategies.votes import RANK_VOTES, rank_vote


def _round(seed: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    reference = {"a": rng.permutation(30), "b": rng.permutation(7)}
    replies = [{n: rng.permutation(r.shape[0]) for n, r in reference.items()} for _ in range(6)]
    return reference, replies


@pytest.mark.parametrize("seed", range(3))
def test_each_named_vote_is_its_math(seed: int) -> None:
    reference, replies = _round(seed)
    expected = {
        "borda": (vote_layers(replies), 0),
        "trimmed": (
            {
                n: trimmed_borda_vote(np.stack([u[n] for u in replies]), trim_fraction=0.3)
                for n in reference
            },
            0,
        ),
        "median": ({n: median_vote(np.stack([u[n] for u in replies])) for n in reference}, 0),
    }
    outcome = filtered_vote(replies, reference, mads=1.0)
    expected["filtered"] = (outcome.state, int((~outcome.kept).sum()))
    clipped = filtered_vote(replies, reference, mads=1.0, clip=True)
    expected["clipped"] = (clipped.state, int((~(clipped.kept | clipped.clipped)).sum()))

    for name in RANK_VOTES:
        state, left_out = rank_vote(name, trim_fraction=0.3, filter_mads=1.0)(
            replies, reference, 0.0
        )
        assert left_out == expected[name][1]
        for layer, ranks in expected[name][0].items():
            np.testing.assert_array_equal(state[layer], ranks)


def test_an_unknown_vote_is_refused() -> None:
    with pytest.raises(ValueError, match="must be one of"):
        rank_vote("mean")


@pytest.mark.parametrize("name", RANK_VOTES)
def test_an_anchor_pulls_every_vote_towards_the_reference(name: str) -> None:
    reference, replies = _round(4)
    vote = rank_vote(name, trim_fraction=0.3, filter_mads=1.0)
    plain, _ = vote(replies, reference, 0.0)
    held, _ = vote(replies, reference, 1e9)  # the reference outweighs every reply
    for layer, g in reference.items():
        np.testing.assert_array_equal(held[layer], g)
        assert not np.array_equal(plain[layer], g)


def test_the_anchored_borda_vote_ranks_the_mean_position_plus_the_anchored_reference() -> None:
    reference = {"l": np.array([0, 1, 2, 3])}
    replies = [{"l": np.array([3, 2, 1, 0])}, {"l": np.array([2, 3, 0, 1])}]
    # mean positions 2.5 2.5 0.5 0.5; plus 0.5 x reference: 2.5 3.0 1.5 2.0 -> ranks 2 3 0 1
    state, left_out = rank_vote("borda")(replies, reference, 0.5)
    assert left_out == 0
    np.testing.assert_array_equal(state["l"], [2, 3, 0, 1])
