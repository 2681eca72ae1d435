"""What both sides of an image-classification run build from a scenario.

The server and every client rebuild the same model from (architecture, seed, k)
and the same partition from (dataset, partitioner, seed); nothing but rankings
or weights ever crosses the wire.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from fedrank.config import Scenario
from fedrank.data.digits import ImageSplit, load_dataset
from fedrank.data.partition import partition
from fedrank.models.supermask import build_model, get_rankings, set_rankings, supermask_layers
from fedrank.training import TrainResult, load_numpy_state, numpy_state, train_local


def is_dense(scenario: Scenario) -> bool:
    """FedAvg trains dense weights; FRL trains supermask scores."""
    return scenario.strategy == "fedavg"


@functools.cache
def _partitions(
    dataset: str,
    test_fraction: float,
    scheme: str,
    num_clients: int,
    alpha: float,
    classes_per_client: int,
    seed: int,
) -> tuple[np.ndarray, ...]:
    labels = load_dataset(dataset, test_fraction=test_fraction).train.labels
    parts = partition(
        labels,
        scheme=scheme,
        num_clients=num_clients,
        rng=np.random.default_rng(seed),
        alpha=alpha,
        classes_per_client=classes_per_client,
    )
    return tuple(parts)


def client_data(scenario: Scenario, partition_id: int) -> ImageSplit:
    """The training examples of one client (partition), reproducible from the seed."""
    if not 0 <= partition_id < scenario.num_clients:
        raise ValueError(
            f"partition-id {partition_id} outside [0, {scenario.num_clients - 1}] (num-clients)"
        )
    idx = _partitions(
        scenario.dataset,
        scenario.test_fraction,
        scenario.partitioner,
        scenario.num_clients,
        scenario.alpha,
        scenario.classes_per_client,
        scenario.seed,
    )[partition_id]
    train = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction).train
    return ImageSplit(train.images[idx], train.labels[idx])


def test_data(scenario: Scenario) -> ImageSplit:
    """The fixed held-out test split."""
    return load_dataset(scenario.dataset, test_fraction=scenario.test_fraction).test


def build_for(scenario: Scenario) -> nn.Module:
    """A fresh copy of the scenario's network as the seed defines it."""
    data = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction)
    return build_model(
        scenario.model,
        image_shape=data.image_shape,
        num_classes=data.num_classes,
        seed=scenario.seed,
        k=scenario.k,
        dense=is_dense(scenario),
    )


_WORKING_MODELS: dict[tuple[object, ...], nn.Module] = {}


def model_for(scenario: Scenario) -> nn.Module:
    """This process's working copy of the network, built once and reused.

    Its frozen weights never change, but every user overwrites the scores (or
    weights) before use; never read state from it that you did not set.
    """
    key = (
        scenario.model,
        scenario.dataset,
        scenario.test_fraction,
        scenario.seed,
        scenario.k,
        is_dense(scenario),
    )
    if key not in _WORKING_MODELS:
        _WORKING_MODELS[key] = build_for(scenario)
    return _WORKING_MODELS[key]


def initial_state(scenario: Scenario) -> dict[str, np.ndarray]:
    """Round-0 global state: rank vectors of the seed's scores, or the seed's weights."""
    return read_state(scenario, build_for(scenario))


def layer_sizes(scenario: Scenario) -> dict[str, int]:
    """Edges per supermask layer (what a valid FRL reply must contain)."""
    return {
        name: layer.weight.numel() for name, layer in supermask_layers(model_for(scenario)).items()
    }


def training_generator(scenario: Scenario, server_round: int, partition_id: int) -> torch.Generator:
    """Generator for one client's local training in one round (seed, round, partition)."""
    state = np.random.SeedSequence([scenario.seed, server_round, partition_id]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def client_threads(scenario: Scenario) -> int:
    """Torch threads of one client: its CPU share (float sums depend on the count)."""
    return max(1, int(scenario.num_cpus_per_client))


@contextlib.contextmanager
def threads_of_a_client(scenario: Scenario) -> Iterator[None]:
    """Run this process's torch with a client's thread count, then restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(client_threads(scenario))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_state(scenario: Scenario, model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Put a global state into ``model``: dense weights (FedAvg) or rank vectors (FRL)."""
    if is_dense(scenario):
        load_numpy_state(model, state)
    else:
        set_rankings(model, state)


def read_state(scenario: Scenario, model: nn.Module) -> dict[str, np.ndarray]:
    """What a client sends back: dense weights (FedAvg) or rank vectors (FRL)."""
    return numpy_state(model) if is_dense(scenario) else get_rankings(model)


def local_update(
    scenario: Scenario,
    state: dict[str, np.ndarray],
    server_round: int,
    partition_id: int,
    *,
    data: ImageSplit | None = None,
) -> tuple[dict[str, np.ndarray], TrainResult]:
    """One client's round: load the global state, train on its partition, read the reply.

    ``data`` replaces the partition's examples: a deployed site's own (``data-path``),
    or a data-poisoning client's altered copy.
    """
    model = model_for(scenario)
    load_state(scenario, model, state)
    result = train_local(
        model,
        client_data(scenario, partition_id) if data is None else data,
        epochs=scenario.local_epochs,
        lr=scenario.learning_rate,
        momentum=scenario.momentum,
        batch_size=scenario.batch_size,
        generator=training_generator(scenario, server_round, partition_id),
    )
    return read_state(scenario, model), result
