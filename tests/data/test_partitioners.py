"""Partitions by Flower Datasets' partitioners: exact, deterministic, Flower's own, validated."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    PathologicalPartitioner,
    ShardPartitioner,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.data.federation import image_partition, partitions_for, text_partition
from fedrank.data.partitioners import Partitions, PartitionSpec, partition_labels
from fedrank.data.source import DataSource, load_image_data, load_text_data
from fedrank.errors import ConfigError

CLASSES = 5


def _balanced(n: int, seed: int, classes: int = CLASSES) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % classes)


def _all(parts: Partitions) -> list[np.ndarray]:
    return [parts.indices(p) for p in range(len(parts))]


SPECS = {
    "iid": {},
    "dirichlet": {"alpha": 2.0},
    "pathological": {"classes_per_client": 2},
    "shard": {"shards_per_client": 2},
}


@given(
    scheme=st.sampled_from(sorted(SPECS)),
    clients=st.integers(CLASSES, 12),
    extra=st.integers(0, 100),
    seed=st.integers(0, 2**32),
)
@settings(max_examples=40, deadline=None)
def test_partitions_are_sorted_disjoint_and_cover_the_split(scheme, clients, extra, seed) -> None:
    labels = _balanced(20 * clients + extra, seed)
    spec = PartitionSpec(scheme, clients, seed=seed, **SPECS[scheme])

    parts = _all(partition_labels(labels, spec))

    joined = np.concatenate(parts)
    assert all(len(p) > 0 and np.all(np.diff(p) > 0) for p in parts)
    assert len(np.unique(joined)) == len(joined)  # disjoint
    if scheme == "shard":  # equal shards of floor(N / (clients x 2)) rows; the rest unused
        assert {len(p) for p in parts} == {2 * (len(labels) // (2 * clients))}
    else:
        np.testing.assert_array_equal(np.sort(joined), np.arange(len(labels)))


@pytest.mark.parametrize("scheme", sorted(SPECS))
def test_same_seed_same_partitions_other_seed_other_partitions(scheme) -> None:
    labels = _balanced(400, 0)

    def run(seed: int) -> list[np.ndarray]:
        return _all(partition_labels(labels, PartitionSpec(scheme, 8, seed=seed, **SPECS[scheme])))

    first, again, other = run(3), run(3), run(4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def _flower_reference(scheme: str, labels: np.ndarray, clients: int, seed: int) -> list[list[int]]:
    """Flower's partitioner used the plain way: load_partition on the split as it is."""
    table = datasets.Dataset.from_dict({"label": labels, "idx": np.arange(len(labels))})
    partitioner: object
    if scheme == "iid":
        partitioner, table = IidPartitioner(clients), table.shuffle(seed=seed)
    elif scheme == "dirichlet":
        partitioner = DirichletPartitioner(clients, "label", 2.0, min_partition_size=0, seed=seed)
    elif scheme == "pathological":
        partitioner = PathologicalPartitioner(
            clients, "label", 2, class_assignment_mode="first-deterministic", seed=seed
        )
    else:
        partitioner = ShardPartitioner(clients, "label", num_shards_per_partition=2, seed=seed)
    partitioner.dataset = table  # type: ignore[attr-defined]
    return [
        sorted(partitioner.load_partition(p)["idx"])  # type: ignore[attr-defined]
        for p in range(clients)
    ]


@pytest.mark.parametrize("scheme", sorted(SPECS))
def test_assignment_is_the_one_flowers_load_partition_gives(scheme) -> None:
    labels = np.random.default_rng(1).integers(0, CLASSES, 300)  # unsorted, unbalanced

    ours = _all(partition_labels(labels, PartitionSpec(scheme, 7, seed=11, **SPECS[scheme])))

    assert [p.tolist() for p in ours] == _flower_reference(scheme, labels, 7, 11)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_label_skew_gives_each_client_exactly_k_classes(k) -> None:
    labels = _balanced(1000, 2, classes=10)

    parts = partition_labels(
        labels, PartitionSpec("pathological", 20, seed=5, classes_per_client=k)
    )

    assert [len(np.unique(labels[p])) for p in _all(parts)] == [k] * 20


def test_dirichlet_at_alpha_0_1_splits_mnist5k_across_50_clients_with_skew() -> None:
    labels = load_image_data(DataSource("mnist5k")).train.labels

    skewed = partition_labels(labels, PartitionSpec("dirichlet", 50, seed=0, alpha=0.1))
    even = partition_labels(labels, PartitionSpec("dirichlet", 50, seed=0, alpha=100.0))

    def top_share(parts: Partitions) -> float:
        return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in _all(parts)]))

    assert min(len(p) for p in _all(skewed)) >= 1
    assert sum(len(p) for p in _all(skewed)) == len(labels)
    assert top_share(skewed) > 0.5 > 0.2 > top_share(even)


def test_ten_thousand_clients_of_two_hundred_thousand_examples() -> None:
    labels = _balanced(200_000, 3, classes=10)

    skew = partition_labels(labels, PartitionSpec("pathological", 10_000, seed=1))
    iid = partition_labels(labels, PartitionSpec("iid", 10_000, seed=1))

    parts = _all(skew)
    assert all(len(np.unique(labels[p])) == 2 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(200_000))
    assert {len(iid.indices(p)) for p in (0, 4_999, 9_999)} == {20}


def _fails(labels: np.ndarray, spec: PartitionSpec) -> ConfigError:
    with pytest.raises(ConfigError) as err:
        partition_labels(labels, spec)
    assert "\n" not in str(err.value)
    return err.value


def test_impossible_partitions_name_their_field() -> None:
    labels = _balanced(100, 0)

    assert _fails(labels, PartitionSpec("iid", 101)).field == "num-clients"
    assert _fails(labels, PartitionSpec("dirichlet", 101)).field == "num-clients"
    wide = _fails(labels, PartitionSpec("pathological", 10, classes_per_client=6))
    assert wide.field == "classes-per-client"
    assert "5 classes" in str(wide)
    assert _fails(labels, PartitionSpec("shard", 30, shards_per_client=4)).field == (
        "shards-per-client"
    )
    rare = np.concatenate([[0], np.ones(99, dtype=np.int64)])  # class 0 has one example
    assert _fails(rare, PartitionSpec("pathological", 4, classes_per_client=2)).field == (
        "num-clients"
    )


def test_a_dirichlet_draw_that_leaves_a_client_empty_is_refused_after_max_draws() -> None:
    labels = _balanced(2_000, 0, classes=10)

    err = _fails(labels, PartitionSpec("dirichlet", 500, alpha=0.05, max_draws=3))

    assert err.field == "alpha"
    assert "3 draws (max-draws)" in str(err)
    assert "min-partition-size" in str(err)


def test_min_partition_size_is_met_or_refused() -> None:
    labels = _balanced(2_000, 0, classes=10)
    spec = PartitionSpec("dirichlet", 20, alpha=1.0, min_partition_size=30)

    assert min(len(p) for p in _all(partition_labels(labels, spec))) >= 30
    too_big = PartitionSpec("dirichlet", 20, alpha=1.0, min_partition_size=101)
    assert _fails(labels, too_big).field == "alpha"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"scheme": "shards"}, "partitioner"),
        ({"num_clients": 0}, "num-clients"),
        ({"num_clients": True}, "num-clients"),
        ({"seed": -1}, "seed"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"classes_per_client": 0}, "classes-per-client"),
        ({"shards_per_client": 0}, "shards-per-client"),
        ({"min_partition_size": 0}, "min-partition-size"),
        ({"max_draws": 0}, "max-draws"),
    ],
)
def test_partition_spec_refuses_bad_settings(changes, field) -> None:
    with pytest.raises(ConfigError) as err:
        PartitionSpec(**changes)
    assert err.value.field == field


def test_a_partition_id_outside_the_federation_is_refused() -> None:
    parts = partition_labels(_balanced(50, 0), PartitionSpec("iid", 5))

    with pytest.raises(ConfigError, match="partition-id"):
        parts.indices(5)


def test_client_splits_are_the_partitions_of_the_training_split() -> None:
    source, spec = DataSource("digits"), PartitionSpec("pathological", 10, seed=2)
    train = load_image_data(source).train

    split = image_partition(source, spec, 3)

    rows = partitions_for(source, spec, "image").indices(3)
    np.testing.assert_array_equal(split.images, train.images[rows])
    assert len(np.unique(split.labels)) == 2
    assert partitions_for(source, spec, "image") is partitions_for(source, spec, "image")


def test_text_clients_partition_the_seeded_training_subset() -> None:
    source = DataSource("rotten-tomatoes", train_records=500)
    spec = PartitionSpec("dirichlet", 5, seed=4)

    texts = [text_partition(source, spec, p) for p in range(5)]

    train = load_text_data(source, seed=4).train
    assert sorted(t for split in texts for t in split.texts) == sorted(train.texts)
