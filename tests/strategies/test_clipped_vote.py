"""The clipped vote: replies below the filtered vote's agreement threshold are clipped to
it (centred clipping in rank space), not dropped; implausible replies are still dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from fedrank.config import Scenario
from fedrank.simulations.inprocess import run_in_process
from fedrank.strategies.displacements import clip_scales
from fedrank.strategies.filtered_vote import MAD_TO_SIGMA, filtered_vote, spearman_to_reference
from fedrank.strategies.ranking import anchored_ranks, borda_sums, ranks_from_order
from fedrank.strategies.votes import rank_vote

IntArray = npt.NDArray[np.int64]
N = 400


def ranks_of(scores: npt.NDArray[np.float64]) -> IntArray:
    return ranks_from_order(np.argsort(scores, kind="stable")).astype(np.int64)


def heterogeneous_round(seed: int) -> tuple[IntArray, list[IntArray]]:
    """Nine clients that move the reference a little along the round's direction and one
    whose data differ: it moves much further, the same way on the whole."""
    rng = np.random.default_rng(seed)
    reference = rng.permutation(N).astype(np.int64)
    learning = rng.normal(0.0, 0.1 * N, size=N)
    near = [ranks_of(reference + learning + rng.normal(0.0, 0.15 * N, size=N)) for _ in range(9)]
    far = ranks_of(reference + 2 * learning + rng.normal(0.0, 0.9 * N, size=N))
    return reference, [*near, far]


def threshold(rho: npt.NDArray[np.float64], mads: float) -> float:
    """The agreement threshold, written out: median - mads * 1.4826 * MAD."""
    median = float(np.median(rho))
    return median - mads * MAD_TO_SIGMA * float(np.median(np.abs(rho - median)))


@pytest.mark.parametrize("seed", range(4))
def test_a_far_plausible_reply_is_voted_at_the_thresholds_distance(seed: int) -> None:
    reference, replies = heterogeneous_round(seed)
    updates = [{"l": r} for r in replies]

    dropped = filtered_vote(updates, {"l": reference}, mads=3.0)
    clipped = filtered_vote(updates, {"l": reference}, mads=3.0, clip=True)

    assert not dropped.kept[-1]
    assert dropped.kept[:-1].all()
    np.testing.assert_array_equal(clipped.kept, dropped.kept)
    assert clipped.clipped.tolist() == [False] * 9 + [True]
    assert not dropped.clipped.any()
    rho = spearman_to_reference(np.stack(replies), reference)
    tau = threshold(rho, 3.0)
    assert rho[-1] < tau
    g = reference.astype(np.float64)
    moved = g + np.sqrt((1 - tau) / (1 - rho[-1])) * (replies[-1] - g)
    # As far from the reference as a reply at the threshold: rho = 1 - 6 d^2 / (n (n^2 - 1)).
    distance = float(np.sum((moved - g) ** 2))
    assert 1 - 6 * distance / (N * (N**2 - 1)) == pytest.approx(tau, abs=1e-12)
    sums = borda_sums(replies[:-1]).astype(np.float64) + moved
    expected = anchored_ranks(sums, 10.0, reference, anchor=0.0)
    np.testing.assert_array_equal(clipped.state["l"], expected)
    assert not np.array_equal(clipped.state["l"], dropped.state["l"])


def test_implausible_replies_are_still_dropped_not_clipped() -> None:
    reference, replies = heterogeneous_round(7)
    rng = np.random.default_rng(3)
    attackers = [N - 1 - replies[0], rng.permutation(N).astype(np.int64)]
    updates = [{"l": r} for r in [*replies[:-1], *attackers]]

    outcome = filtered_vote(updates, {"l": reference}, mads=5.0, clip=True)

    assert not (outcome.kept[-2:] | outcome.clipped[-2:]).any()
    assert rank_vote("clipped", filter_mads=5.0)(updates, {"l": reference}, 0.0)[1] == 2


def test_with_nothing_below_the_threshold_it_is_the_filtered_vote() -> None:
    reference, replies = heterogeneous_round(2)  # nine near replies, all kept at 5 MADs
    updates = [{"l": r} for r in replies[:-1]]
    for anchor in (0.0, 0.7):
        one = filtered_vote(updates, {"l": reference}, mads=5.0, anchor=anchor)
        two = filtered_vote(updates, {"l": reference}, mads=5.0, anchor=anchor, clip=True)
        assert one.kept.all()
        assert not two.clipped.any()
        np.testing.assert_array_equal(one.state["l"], two.state["l"])


def test_a_clipped_reply_is_not_counted_as_left_out() -> None:
    reference, replies = heterogeneous_round(0)
    updates = [{"l": r} for r in replies]
    assert rank_vote("filtered", filter_mads=3.0)(updates, {"l": reference}, 0.0)[1] == 1
    state, left_out = rank_vote("clipped", filter_mads=3.0)(updates, {"l": reference}, 0.0)
    assert left_out == 0
    assert sorted(state["l"].tolist()) == list(range(N))


def test_clip_scales_shrink_only_replies_below_the_threshold() -> None:
    scales = clip_scales(np.array([0.9, 0.5, 0.2, 1.0]), 0.5)
    np.testing.assert_allclose(scales, [1.0, 1.0, np.sqrt(0.5 / 0.8), 1.0])


def test_a_federation_under_the_clipped_vote_leaves_its_reversing_attacker_out(
    tmp_path: Path,
) -> None:
    scenario = Scenario.of(
        dataset="digits", model="mlp", num_clients=6, clients_per_round=3, rounds=3,
        local_epochs=1, seed=11, aggregator="clipped", attack="reverse_ranking",
        malicious_fraction=0.34, attack_seed=4, results_dir=str(tmp_path),
    )  # fmt: skip
    rows: list[dict[str, Any]] = []

    run_in_process(scenario, on_round=rows.append)

    attacked = [row for row in rows[1:] if row["malicious"] > 0]
    assert attacked  # the seeds put an attacker into some round
    assert all(row["filtered"] >= row["malicious"] for row in attacked)
    assert rows[-1]["accuracy"] > rows[0]["accuracy"]
