from __future__ import annotations

import numpy as np
import pytest

from fedrank.config import AttackConfig as AttackSpec
from fedrank.config import Scenario
from fedrank.simulations.attacks.attacks import (
    estimate_benign_ranking,
    malicious_clients,
    mask_boundary_attack,
)
from fedrank.simulations.attacks.collusion import (
    craft_rankings,
    craft_updates,
    crafter,
    malicious_partitions,
)
from fedrank.strategies.filtered_vote import spearman_to_reference

N = 40


def _rankings(seed: int, count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"a": rng.permutation(N), "b": rng.permutation(8)} for _ in range(count)]


def test_scenario_attack_becomes_its_spec_and_partition_set() -> None:
    scenario = Scenario.of(attack="reverse_ranking", malicious_fraction=0.2, attack_seed=3)
    spec = scenario.attack
    assert (spec.kind, spec.fraction, spec.seed, spec.z_max) == ("reverse_ranking", 0.2, 3, 0.0)
    assert malicious_partitions(scenario) == malicious_clients(spec, 50)
    assert len(malicious_partitions(scenario)) == 10
    assert malicious_partitions(Scenario.of()) == frozenset()
    assert crafter(Scenario.of(attack="label_flip", malicious_fraction=0.2)) is None


@pytest.mark.parametrize("knowledge", ["colluders", "all"])
def test_reversal_reverses_the_estimate_from_what_the_attacker_knows(knowledge: str) -> None:
    scenario = Scenario.of(
        attack="reverse_ranking", malicious_fraction=0.2, attack_knowledge=knowledge
    )
    craft = crafter(scenario)
    assert craft is not None
    colluders, benign = _rankings(0, 2), _rankings(1, 3)
    reference = _rankings(2, 1)[0]

    replies = craft(1, [(4, colluders[0]), (9, colluders[1])], benign, reference)

    known = colluders + (benign if knowledge == "all" else [])
    for name in ("a", "b"):
        estimate = estimate_benign_ranking(np.stack([u[name] for u in known]))
        n = estimate.shape[0]
        for reply in replies:
            np.testing.assert_array_equal(reply[name], n - 1 - estimate)


def test_random_attackers_send_their_own_seeded_permutations() -> None:
    spec = AttackSpec(kind="random_ranking", fraction=0.2, seed=1)
    colluders = [(3, u) for u in _rankings(0, 2)]
    args = {
        "colluders": colluders,
        "known": [u for _, u in colluders],
        "reference": _rankings(1, 1)[0],
    }

    first = craft_rankings(spec, server_round=2, k=0.5, filter_mads=3.0, **args)  # type: ignore[arg-type]
    again = craft_rankings(spec, server_round=2, k=0.5, filter_mads=3.0, **args)  # type: ignore[arg-type]
    later = craft_rankings(spec, server_round=3, k=0.5, filter_mads=3.0, **args)  # type: ignore[arg-type]

    np.testing.assert_array_equal(first[0]["a"], again[0]["a"])
    assert not np.array_equal(first[0]["a"], later[0]["a"])
    assert np.array_equal(np.sort(first[0]["a"]), np.arange(N))


def test_boundary_and_adaptive_attacks_target_the_estimate() -> None:
    colluders = [(1, u) for u in _rankings(4, 2)]
    known = [u for _, u in colluders]
    reference = known[0]
    kwargs = {"colluders": colluders, "known": known, "reference": reference, "k": 0.5}
    boundary = craft_rankings(
        AttackSpec(kind="mask_boundary", fraction=0.2), server_round=1, filter_mads=3.0, **kwargs
    )  # type: ignore[arg-type]
    estimate = estimate_benign_ranking(np.stack([u["a"] for u in known]))
    np.testing.assert_array_equal(
        boundary[0]["a"], mask_boundary_attack(estimate, k=0.5, boundary_fraction=0.05)
    )
    adaptive = craft_rankings(
        AttackSpec(kind="adaptive_reverse", fraction=0.2), server_round=1, filter_mads=3.0, **kwargs
    )  # type: ignore[arg-type]
    own = spearman_to_reference(np.stack([u["a"] for u in known]), reference["a"])
    aim = float(np.median(own) - 2.5 * 1.482602218505602 * np.median(np.abs(own - np.median(own))))
    assert spearman_to_reference(adaptive[0]["a"][None, :], reference["a"])[0] >= aim


def test_update_attacks_act_on_the_update_against_the_global_weights() -> None:
    reference = {"w": np.full(4, 1.0, dtype=np.float32)}
    honest = {"w": np.array([1.5, 0.5, 1.0, 2.0], dtype=np.float32)}
    colluders = [(0, honest)]

    flipped = craft_updates(
        AttackSpec(kind="sign_flip", fraction=0.1), server_round=1, colluders=colluders,
        known=[honest], reference=reference, replies_in_round=5,
    )  # fmt: skip
    scaled = craft_updates(
        AttackSpec(kind="scaling", fraction=0.1, scale=-5.0), server_round=1, colluders=colluders,
        known=[honest], reference=reference, replies_in_round=5,
    )  # fmt: skip

    np.testing.assert_allclose(flipped[0]["w"], [0.5, 1.5, 1.0, 0.0])
    np.testing.assert_allclose(scaled[0]["w"], [-1.5, 3.5, 1.0, -4.0])
    assert flipped[0]["w"].dtype == np.float32


def test_alie_colluders_send_one_update_inside_the_benign_spread() -> None:
    rng = np.random.default_rng(0)
    reference = {"w": np.zeros(6, dtype=np.float32)}
    known = [{"w": rng.normal(size=6).astype(np.float32)} for _ in range(4)]
    colluders = [(0, known[0]), (1, known[1])]

    crafted = craft_updates(
        AttackSpec(kind="alie", fraction=0.2), server_round=1, colluders=colluders,
        known=known, reference=reference, replies_in_round=10,
    )  # fmt: skip

    np.testing.assert_array_equal(crafted[0]["w"], crafted[1]["w"])
    rows = np.stack([k["w"] for k in known])
    assert np.all(crafted[0]["w"] <= rows.mean(axis=0) + 1e-6)
