from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from fedrank.config import AttackConfig as AttackSpec
from fedrank.errors import ConfigError
from fedrank.simulations.attacks.attacks import (
    alie_attack,
    alie_z_max,
    estimate_benign_ranking,
    flip_labels,
    gaussian_noise_attack,
    malicious_clients,
    mask_boundary_attack,
    min_max_attack,
    min_sum_attack,
    random_ranking_attack,
    reverse_ranking_attack,
    scaling_attack,
    sign_flip_attack,
)

IntArray = npt.NDArray[np.int64]
rank_vectors = st.integers(1, 40).flatmap(lambda n: st.permutations(range(n))).map(np.array)


def is_permutation(ranks: IntArray, n: int) -> bool:
    return ranks.shape == (n,) and np.array_equal(np.sort(ranks), np.arange(n))


def benign_updates(seed: int, count: int = 6) -> list[dict[str, npt.NDArray[np.float64]]]:
    rng = np.random.default_rng(seed)
    shared = {"lora_A": rng.normal(size=(3, 4)), "lora_B": rng.normal(size=(5,))}
    return [
        {name: layer + 0.3 * rng.normal(size=layer.shape) for name, layer in shared.items()}
        for _ in range(count)
    ]


def flat(update: dict[str, npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    return np.concatenate([np.ravel(update[name]) for name in sorted(update)])


# ---------------------------------------------------------------- AttackSpec


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"kind": "bogus"}, "attack"),
        ({"fraction": 1.0}, "malicious-fraction"),
        ({"fraction": -0.1}, "malicious-fraction"),
        ({"seed": -1}, "attack-seed"),
        ({"scale": 0.0}, "attack-scale"),
        ({"noise_std": 0.0}, "attack-noise-std"),
        ({"z_max": math.nan}, "attack-z-max"),
        ({"direction": "up"}, "attack-direction"),
        ({"boundary_fraction": 0.0}, "attack-boundary-fraction"),
        (
            {"kind": "label_flip", "flip_rule": "targeted", "source_class": -1},
            "attack-source-class",
        ),
        (
            {"kind": "label_flip", "flip_rule": "targeted", "source_class": 1, "target_class": 1},
            "attack-target-class",
        ),
        ({"knowledge": "oracle"}, "attack-knowledge"),
    ],
)
def test_attack_spec_names_the_bad_field(changes: dict[str, object], field: str) -> None:
    arguments: dict[str, object] = {"kind": "sign_flip", "fraction": 0.2, **changes}
    with pytest.raises(ConfigError) as caught:
        AttackSpec(**arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_attack_spec_is_frozen() -> None:
    spec = AttackSpec(kind="alie", fraction=0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.fraction = 0.5  # type: ignore[misc]


@given(
    fraction=st.floats(0.0, 0.99), num_clients=st.integers(1, 200), seed=st.integers(0, 2**32 - 1)
)
def test_malicious_clients_is_a_seeded_subset_of_the_right_size(
    fraction: float, num_clients: int, seed: int
) -> None:
    spec = AttackSpec(kind="reverse_ranking", fraction=fraction, seed=seed)
    chosen = malicious_clients(spec, num_clients)
    assert chosen == malicious_clients(spec, num_clients)
    assert len(chosen) == math.floor(fraction * num_clients + 1e-9)
    assert chosen <= set(range(num_clients))


def test_malicious_clients_depends_on_the_seed() -> None:
    first = malicious_clients(AttackSpec(kind="alie", fraction=0.5, seed=0), 100)
    second = malicious_clients(AttackSpec(kind="alie", fraction=0.5, seed=1), 100)
    assert first != second
    assert malicious_clients(AttackSpec(kind="alie", fraction=0.29), 100).__len__() == 29


# ---------------------------------------------------------------- ranking attacks


@given(ranking=rank_vectors)
def test_reverse_of_reverse_is_identity(ranking: IntArray) -> None:
    reversed_once = reverse_ranking_attack(ranking)
    assert is_permutation(reversed_once, ranking.size)
    assert np.array_equal(reverse_ranking_attack(reversed_once), ranking)
    assert reversed_once[np.argmax(ranking)] == 0


def test_colluders_estimate_is_their_borda_vote() -> None:
    ranking = np.array([2, 0, 3, 1])
    colluders = np.vstack([ranking, ranking, [3, 0, 2, 1]])
    assert np.array_equal(estimate_benign_ranking(colluders), ranking)


@given(n=st.integers(1, 50), seed=st.integers(0, 2**32 - 1))
def test_random_ranking_is_a_seeded_permutation(n: int, seed: int) -> None:
    ranks = random_ranking_attack(n, np.random.default_rng(seed))
    assert is_permutation(ranks, n)
    assert np.array_equal(ranks, random_ranking_attack(n, np.random.default_rng(seed)))


@given(ranking=rank_vectors, k=st.floats(0.01, 1.0), width=st.floats(0.001, 1.0))
def test_mask_boundary_attack_is_a_permutation_keeping_the_rest_in_order(
    ranking: IntArray, k: float, width: float
) -> None:
    n = ranking.size
    attacked = mask_boundary_attack(ranking, k=k, boundary_fraction=width)
    assert is_permutation(attacked, n)
    w = max(1, round(width * n))
    threshold = n - round(k * n)
    boundary = (ranking >= threshold - w) & (ranking < threshold + w)
    rest = np.flatnonzero(~boundary)
    # Edges away from the boundary keep their benign relative order, shifted by <= w.
    assert np.array_equal(np.argsort(attacked[rest]), np.argsort(ranking[rest]))
    assert np.all(np.abs(attacked[rest] - ranking[rest]) <= w)


@given(ranking=rank_vectors, k=st.floats(0.05, 0.95), width=st.floats(0.001, 0.5))
def test_mask_boundary_attack_swaps_the_blocks_at_the_boundary(
    ranking: IntArray, k: float, width: float
) -> None:
    n = ranking.size
    keep = round(k * n)
    w = max(1, round(width * n))
    assume(w <= min(keep, n - keep))  # clipped blocks: see the permutation test above
    threshold = n - keep
    attacked = mask_boundary_attack(ranking, k=k, boundary_fraction=width)
    just_inside = (ranking >= threshold) & (ranking < threshold + w)
    just_outside = (ranking >= threshold - w) & (ranking < threshold)
    # The most fragile mask edge goes to position 0, the closest excluded one to n - 1.
    assert np.all(attacked[just_inside] < w)
    assert np.all(attacked[just_outside] >= n - w)
    assert attacked[np.flatnonzero(ranking == threshold)[0]] == 0
    assert attacked[np.flatnonzero(ranking == threshold - 1)[0]] == n - 1
    # Alone, the attacked vector's mask is the benign mask with the two blocks swapped.
    benign_mask, attacked_mask = ranking >= threshold, attacked >= threshold
    assert np.array_equal(benign_mask ^ attacked_mask, just_inside | just_outside)


def test_ranking_attacks_reject_non_permutations() -> None:
    with pytest.raises(ValueError, match="benign_estimate"):
        reverse_ranking_attack(np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="k"):
        mask_boundary_attack(np.array([0, 1]), k=0.0, boundary_fraction=0.1)


# ---------------------------------------------------------------- update attacks


def test_sign_flip_and_scaling() -> None:
    update = {"w": np.array([1.0, -2.0], dtype=np.float32), "b": np.array([0.5])}
    flipped = sign_flip_attack(update)
    assert np.array_equal(flipped["w"], [-1.0, 2.0])
    assert flipped["w"].dtype == np.float32
    assert np.array_equal(sign_flip_attack(flipped)["b"], update["b"])
    assert np.array_equal(scaling_attack(update, factor=-5.0)["w"], [-5.0, 10.0])
    assert np.array_equal(update["w"], [1.0, -2.0])  # not mutated


def test_gaussian_noise_has_the_requested_std() -> None:
    update = {"w": np.full((200, 250), 3.0)}
    noisy = gaussian_noise_attack(update, std=0.7, rng=np.random.default_rng(0))
    noise = noisy["w"] - update["w"]
    # 50,000 draws: the sample std is within 2% of sigma with overwhelming probability.
    assert abs(noise.std() - 0.7) < 0.014
    assert abs(noise.mean()) < 0.02
    again = gaussian_noise_attack(update, std=0.7, rng=np.random.default_rng(0))
    assert np.array_equal(again["w"], noisy["w"])


def test_alie_z_max_follows_baruch_et_al() -> None:
    # n = 50, f = 12: s = floor(26) - 12 = 14 supporters, Phi(z) = 36 / 50.
    z = alie_z_max(num_clients=50, num_malicious=12)
    assert NormalDist().cdf(z) == pytest.approx(36 / 50)
    assert alie_z_max(num_clients=50, num_malicious=20) > z > 0
    with pytest.raises(ValueError, match="num_malicious"):
        alie_z_max(num_clients=10, num_malicious=6)


@given(seed=st.integers(0, 1000), malicious=st.integers(1, 5))
def test_alie_lies_on_the_edge_of_the_benign_std_band(seed: int, malicious: int) -> None:
    benign = benign_updates(seed)
    rows = np.stack([flat(u) for u in benign])
    z = alie_z_max(num_clients=12, num_malicious=malicious)
    attacked = flat(alie_attack(benign, num_clients=12, num_malicious=malicious))
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    assert np.all(np.abs(attacked - mean) <= abs(z) * std + 1e-12)
    np.testing.assert_allclose(attacked, mean - z * std)


def squared_distances(
    point: npt.NDArray[np.float64], rows: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    return ((rows - point) ** 2).sum(axis=1)


@pytest.mark.parametrize("direction", ["inverse_std", "inverse_unit", "inverse_sign"])
@pytest.mark.parametrize("seed", range(5))
def test_min_max_is_the_largest_step_within_the_benign_max_distance(
    direction: str, seed: int
) -> None:
    benign = benign_updates(seed)
    rows = np.stack([flat(u) for u in benign])
    bound = max(squared_distances(row, rows).max() for row in rows)
    attacked = flat(min_max_attack(benign, direction=direction))  # type: ignore[arg-type]
    assert squared_distances(attacked, rows).max() <= bound * (1 + 1e-9)
    # Maximal: a step 1e-6 longer along the same direction leaves the bound.
    mean = rows.mean(axis=0)
    longer = mean + (attacked - mean) * (1 + 1e-6)
    assert squared_distances(longer, rows).max() > bound
    assert np.linalg.norm(attacked - mean) > 0


@pytest.mark.parametrize("direction", ["inverse_std", "inverse_unit", "inverse_sign"])
@pytest.mark.parametrize("seed", range(5))
def test_min_sum_is_the_largest_step_within_the_benign_sum(direction: str, seed: int) -> None:
    benign = benign_updates(seed)
    rows = np.stack([flat(u) for u in benign])
    bound = max(squared_distances(row, rows).sum() for row in rows)
    attacked = flat(min_sum_attack(benign, direction=direction))  # type: ignore[arg-type]
    assert squared_distances(attacked, rows).sum() <= bound * (1 + 1e-9)
    mean = rows.mean(axis=0)
    longer = mean + (attacked - mean) * (1 + 1e-6)
    assert squared_distances(longer, rows).sum() > bound


def test_min_max_points_against_the_benign_direction() -> None:
    benign = benign_updates(3)
    rows = np.stack([flat(u) for u in benign])
    mean = rows.mean(axis=0)
    step = flat(min_max_attack(benign, direction="inverse_unit")) - mean
    np.testing.assert_allclose(step / np.linalg.norm(step), -mean / np.linalg.norm(mean))


def test_update_attacks_reject_mismatched_layers() -> None:
    with pytest.raises(ValueError, match="layer names"):
        min_max_attack([{"a": np.zeros(2)}, {"b": np.zeros(2)}])
    with pytest.raises(ValueError, match="shapes"):
        min_sum_attack([{"a": np.zeros(2)}, {"a": np.zeros(3)}])


# ---------------------------------------------------------------- label flipping

labels_and_classes = st.integers(2, 10).flatmap(
    lambda c: st.tuples(
        st.lists(st.integers(0, c - 1), min_size=0, max_size=60).map(
            lambda xs: np.array(xs, dtype=np.int64)
        ),
        st.just(c),
    )
)


@given(data=labels_and_classes)
def test_reverse_flip_changes_exactly_the_non_middle_labels(
    data: tuple[IntArray, int],
) -> None:
    labels, classes = data
    before = labels.copy()
    flipped = flip_labels(labels, num_classes=classes, rule="reverse")
    changed = flipped != labels
    assert np.array_equal(changed, labels != classes - 1 - labels)
    assert np.array_equal(flipped, classes - 1 - labels)
    assert np.array_equal(labels, before)
    assert flipped.dtype == labels.dtype


@given(data=labels_and_classes, seed=st.integers(0, 2**32 - 1))
def test_shift_and_random_flips_change_every_label(data: tuple[IntArray, int], seed: int) -> None:
    labels, classes = data
    shifted = flip_labels(labels, num_classes=classes, rule="shift")
    assert np.array_equal(shifted, (labels + 1) % classes)
    randomised = flip_labels(
        labels, num_classes=classes, rule="random", rng=np.random.default_rng(seed)
    )
    assert np.all(randomised != labels)
    assert np.all((randomised >= 0) & (randomised < classes))


@given(data=labels_and_classes, data2=st.data())
def test_targeted_flip_changes_exactly_the_source_class(
    data: tuple[IntArray, int], data2: st.DataObject
) -> None:
    labels, classes = data
    source = data2.draw(st.integers(0, classes - 1))
    target = data2.draw(st.integers(0, classes - 1).filter(lambda t: t != source))
    flipped = flip_labels(
        labels, num_classes=classes, rule="targeted", source_class=source, target_class=target
    )
    assert np.array_equal(flipped != labels, labels == source)
    assert np.all(flipped[labels == source] == target)


def test_flip_labels_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="labels"):
        flip_labels(np.array([0, 3]), num_classes=3)
    with pytest.raises(ValueError, match="rng"):
        flip_labels(np.array([0, 1]), num_classes=3, rule="random")
