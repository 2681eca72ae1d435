"""A site's held-out examples for federated evaluation: seeded, disjoint, never trained on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedrank.config import Scenario
from fedrank.tasks import load_task
from fedrank.tasks.base import heldout_split


@given(
    count=st.integers(0, 500),
    fraction=st.floats(0.0, 0.95),
    seed=st.integers(0, 2**32 - 1),
    pid=st.integers(0, 1000),
)
def test_the_split_partitions_the_examples(
    count: int, fraction: float, seed: int, pid: int
) -> None:
    train, held = heldout_split(count, fraction=fraction, seed=seed, partition_id=pid)
    assert np.array_equal(np.sort(np.concatenate([train, held])), np.arange(count))
    assert np.all(np.diff(train) > 0)
    assert np.all(np.diff(held) > 0)
    if fraction == 0.0 or count < 2:
        assert len(held) == 0
    else:
        assert 1 <= len(held) <= count - 1
        assert len(held) == min(count - 1, max(1, round(fraction * count)))


def test_the_split_is_the_same_every_round_and_differs_between_sites() -> None:
    a = heldout_split(100, fraction=0.2, seed=3, partition_id=0)
    b = heldout_split(100, fraction=0.2, seed=3, partition_id=0)
    c = heldout_split(100, fraction=0.2, seed=3, partition_id=1)
    assert np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("strategy", ["frl", "fedavg"])
def test_image_task_holds_out_and_evaluates_locally(strategy: str) -> None:
    scenario = Scenario.of(
        strategy=strategy, dataset="digits", num_clients=3, clients_per_round=2, eval_fraction=0.25
    )
    task = load_task(scenario)
    data = task.partition_data(1)
    train, held = task.split_local(data, partition_id=1)
    assert len(train) + len(held) == len(data)
    assert len(held) == round(0.25 * len(data))
    # the held-out images are exactly the ones the training part lacks
    pairs = {tuple(x.ravel()) for x in train.images}
    assert not any(tuple(x.ravel()) in pairs for x in held.images)
    loss, accuracy = task.evaluate_local(task.initial_state(), held)
    assert np.isfinite(loss)
    assert 0.0 <= accuracy <= 1.0


def test_without_eval_fraction_the_site_trains_on_everything() -> None:
    task = load_task(Scenario.of(dataset="digits", num_clients=3, clients_per_round=2))
    data = task.partition_data(0)
    train, held = task.split_local(data, partition_id=0)
    assert train is data
    assert len(held) == 0


def test_text_task_holds_out_records() -> None:
    scenario = Scenario.of(
        strategy="lora",
        model="tiny-bert",
        num_clients=2,
        clients_per_round=2,
        train_records=80,
        max_length=16,
        eval_fraction=0.1,
    )
    task = load_task(scenario)
    data = task.partition_data(0)
    train, held = task.split_local(data, partition_id=0)
    assert len(train) + len(held) == len(data)
    assert len(held) == round(0.1 * len(data))
    loss, accuracy = task.evaluate_local(task.initial_state(), held)
    assert np.isfinite(loss)
    assert 0.0 <= accuracy <= 1.0
