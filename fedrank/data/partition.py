"""Partitioners: split a labelled training set across clients.

Pure functions of (labels, number of clients, parameters, rng) -> index arrays,
so a partition is reproducible from the run seed alone. ``flwr-datasets``
partitioners need a Hugging Face ``Dataset``; these work on plain label arrays.
"""

from __future__ import annotations

import numpy as np

from fedrank.errors import ConfigError


def iid_partition(
    num_examples: int, *, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle and deal the examples into ``num_clients`` near-equal shards."""
    _check_clients(num_clients, num_examples)
    return [np.sort(part) for part in np.array_split(rng.permutation(num_examples), num_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = 100,
) -> list[np.ndarray]:
    """Label-skewed split: each class is divided by proportions ~ Dir(alpha).

    Smaller ``alpha`` gives more skew (Hsu et al. 2019, arXiv 1909.06335). Draws
    are repeated (bounded by ``max_tries``) until every client has at least
    ``min_size`` examples.
    """
    _check_clients(num_clients, len(labels))
    if alpha <= 0:
        raise ConfigError("alpha", f"must be positive, got {alpha}")
    classes = np.unique(labels)
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for cls in classes:
            idx = rng.permutation(np.flatnonzero(labels == cls))
            shares = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].append(chunk)
        merged = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(m) for m in merged) >= min_size:
            return merged
    raise ConfigError(
        "alpha",
        f"Dirichlet({alpha}) left a client with fewer than {min_size} examples in "
        f"{max_tries} draws; raise alpha or lower num-clients",
    )


def pathological_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    """Each client holds shards of exactly ``classes_per_client`` classes.

    The sort-and-shard scheme of McMahan et al. 2017 (arXiv 1602.05629): sort by
    label, cut into ``num_clients * classes_per_client`` shards, deal them out so
    that a client's shards come from different classes where possible.
    """
    _check_clients(num_clients, len(labels))
    num_classes = len(np.unique(labels))
    if not 1 <= classes_per_client <= num_classes:
        raise ConfigError(
            "classes-per-client", f"must lie in [1, {num_classes}], got {classes_per_client}"
        )
    order = np.argsort(labels, kind="stable")
    # Shuffle within each class so that shards are random samples of their class.
    for cls in np.unique(labels):
        members = np.flatnonzero(labels[order] == cls)
        order[members] = rng.permutation(order[members])
    shards = np.array_split(order, num_clients * classes_per_client)
    # Shard j is (mostly) of class j * num_classes // num_shards; giving client c the
    # shards c, c + num_clients, ... spreads each client over distinct classes.
    perm = rng.permutation(num_clients)
    return [
        np.sort(
            np.concatenate([shards[perm[c] + s * num_clients] for s in range(classes_per_client)])
        )
        for c in range(num_clients)
    ]


def partition(
    labels: np.ndarray,
    *,
    scheme: str,
    num_clients: int,
    rng: np.random.Generator,
    alpha: float = 1.0,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Dispatch to one of the partitioners by name (``iid``, ``dirichlet``, ``pathological``)."""
    if scheme == "iid":
        return iid_partition(len(labels), num_clients=num_clients, rng=rng)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_clients=num_clients, alpha=alpha, rng=rng)
    if scheme == "pathological":
        return pathological_partition(
            labels, num_clients=num_clients, classes_per_client=classes_per_client, rng=rng
        )
    raise ConfigError("partitioner", f"must be iid, dirichlet or pathological, got {scheme!r}")


def _check_clients(num_clients: int, num_examples: int) -> None:
    if not 1 <= num_clients <= num_examples:
        raise ConfigError(
            "num-clients", f"must lie in [1, {num_examples}] for this dataset, got {num_clients}"
        )
