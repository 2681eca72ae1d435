import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.data.partition import (
    dirichlet_partition,
    iid_partition,
    partition,
    pathological_partition,
)
from fedrank.errors import ConfigError

LABELS = np.repeat(np.arange(10), 50)


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert joined.size == n
    assert np.array_equal(np.sort(joined), np.arange(n))


@given(clients=st.integers(1, 40), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_iid_is_an_even_exact_cover(clients: int, seed: int) -> None:
    parts = iid_partition(len(LABELS), num_clients=clients, rng=np.random.default_rng(seed))
    _assert_exact_cover(parts, len(LABELS))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


@given(
    clients=st.integers(2, 30), alpha=st.sampled_from([0.1, 1.0, 100.0]), seed=st.integers(0, 99)
)
@settings(max_examples=30, deadline=None)
def test_dirichlet_is_an_exact_cover_with_no_empty_client(
    clients: int, alpha: float, seed: int
) -> None:
    parts = dirichlet_partition(
        LABELS, num_clients=clients, alpha=alpha, rng=np.random.default_rng(seed)
    )
    _assert_exact_cover(parts, len(LABELS))
    assert min(len(p) for p in parts) >= 1


def test_small_alpha_skews_labels_more_than_large_alpha() -> None:
    def mean_classes(alpha: float) -> float:
        parts = dirichlet_partition(
            LABELS, num_clients=10, alpha=alpha, rng=np.random.default_rng(0)
        )
        return float(np.mean([len(np.unique(LABELS[p])) for p in parts]))

    assert mean_classes(0.05) < mean_classes(100.0)
    assert mean_classes(100.0) == 10


def test_pathological_gives_each_client_its_classes() -> None:
    parts = pathological_partition(
        LABELS, num_clients=10, classes_per_client=2, rng=np.random.default_rng(3)
    )
    _assert_exact_cover(parts, len(LABELS))
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)


def test_same_seed_same_partition() -> None:
    a = partition(LABELS, scheme="dirichlet", num_clients=7, rng=np.random.default_rng(5))
    b = partition(LABELS, scheme="dirichlet", num_clients=7, rng=np.random.default_rng(5))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_bad_parameters_raise_config_errors() -> None:
    with pytest.raises(ConfigError, match="num-clients"):
        iid_partition(5, num_clients=6, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="classes-per-client"):
        pathological_partition(
            LABELS, num_clients=5, classes_per_client=11, rng=np.random.default_rng(0)
        )
    with pytest.raises(ConfigError, match="partitioner"):
        partition(LABELS, scheme="shards", num_clients=5, rng=np.random.default_rng(0))
