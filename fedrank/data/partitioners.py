"""Federated partitions of a training split by Flower Datasets' partitioners.

``iid`` (``IidPartitioner`` over the split shuffled by the run seed, as Flower's
``FederatedDataset`` does), ``dirichlet`` (``DirichletPartitioner``, Yurochkin et al.
2019, arXiv 1905.12022), ``pathological`` (``PathologicalPartitioner``, label skew:
exactly ``classes-per-client`` classes each, Li et al. 2021, arXiv 2102.02079) and
``shard`` (``ShardPartitioner``, sort-and-shard of McMahan et al. 2017, arXiv
1602.05629). The partition logic is Flower's; this module decides how it is run:

- the partitioners see a two-column table (``label`` and the row index ``idx``), in
  Arrow format, never the examples: their ``dataset[column]`` then reads a column
  at once (in ``datasets`` 4 the default format walks it row by row, 3 s for 200k);
- the non-IID partitioners compute every partition in one call; their assignment
  is read once into two arrays (rows grouped by partition, and offsets), 8 bytes
  per example plus 8 per partition, instead of a ``Dataset`` per client;
- IID partitions are contiguous shards of the shuffled index column, each cut by
  ``IidPartitioner.load_partition`` when asked for (about a millisecond);
- Dirichlet draws are repeated from derived seeds, at most ``max-draws`` times,
  until every partition holds ``min-partition-size`` examples (Flower's own retry
  loop gives up after 10 draws and spends O(partitions^2) on each warning).

Partition indices are sorted row numbers of the training split, reproducible from
(labels, scheme, parameters, seed).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import warnings
from typing import Any, Literal, TypeVar, get_args

import numpy as np

from fedrank.data.splits import Split
from fedrank.errors import ConfigError

Scheme = Literal["iid", "dirichlet", "pathological", "shard"]
SCHEMES: tuple[str, ...] = get_args(Scheme)
_LOG = logging.getLogger(__name__)
SplitT = TypeVar("SplitT", bound=Split)


def _check_int(value: object, name: str, *, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(name, f"must be an integer >= {low}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PartitionSpec:
    """How a training split is divided among clients (the scenario's partition settings).

    Parameters
    ----------
    scheme : {"iid", "dirichlet", "pathological", "shard"}
        Scenario field ``partitioner``.
    num_clients : int
        Number of partitions (``num-clients``).
    seed : int
        The run seed; every draw of the partitioner follows from it.
    alpha : float
        Dirichlet concentration (``alpha``): smaller is more skewed.
    classes_per_client : int
        Pathological: the exact number of classes of each partition (``classes-per-client``).
    shards_per_client : int
        Shard: equal-size label-sorted shards per partition (``shards-per-client``).
    min_partition_size : int
        Dirichlet: every partition holds at least this many examples (``min-partition-size``).
    max_draws : int
        Dirichlet: draws tried before giving up (``max-draws``).
    """

    scheme: str = "iid"
    num_clients: int = 10
    seed: int = 0
    alpha: float = 1.0
    classes_per_client: int = 2
    shards_per_client: int = 2
    min_partition_size: int = 1
    max_draws: int = 10

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ConfigError("partitioner", f"must be one of {list(SCHEMES)}, got {self.scheme!r}")
        _check_int(self.num_clients, "num-clients", low=1)
        _check_int(self.seed, "seed", low=0)
        _check_int(self.classes_per_client, "classes-per-client", low=1)
        _check_int(self.shards_per_client, "shards-per-client", low=1)
        _check_int(self.min_partition_size, "min-partition-size", low=1)
        _check_int(self.max_draws, "max-draws", low=1)
        if not (isinstance(self.alpha, int | float) and math.isfinite(self.alpha)) or not (
            self.alpha > 0
        ):
            raise ConfigError("alpha", f"must be a positive finite number, got {self.alpha!r}")


class Partitions:
    """Which rows of a training split each client holds; built by :func:`partition_labels`.

    Holds no example, only row numbers: one shuffled index column (IID) or one
    row array grouped by partition with its offsets (the other schemes).
    """

    def __init__(
        self, spec: PartitionSpec, *, rows: np.ndarray, offsets: np.ndarray | None, iid: Any
    ) -> None:
        self.spec = spec
        self._rows = rows
        self._offsets = offsets
        self._iid = iid

    def __len__(self) -> int:
        return self.spec.num_clients

    def indices(self, partition_id: int) -> np.ndarray:
        """Sorted training-row indices of partition ``partition_id`` (a new array)."""
        if isinstance(partition_id, bool) or not 0 <= partition_id < len(self):
            raise ConfigError(
                "partition-id",
                f"must lie in [0, {len(self) - 1}] (num-clients), got {partition_id}",
            )
        if self._offsets is None:
            shard = self._iid.load_partition(int(partition_id))
            return np.sort(shard["idx"].to_numpy())
        start, stop = self._offsets[partition_id], self._offsets[partition_id + 1]
        return self._rows[start:stop].copy()

    def take(self, split: SplitT, partition_id: int) -> SplitT:
        """The examples of partition ``partition_id`` out of the training ``split``."""
        return split.subset(self.indices(partition_id))


def partition_labels(labels: np.ndarray, spec: PartitionSpec) -> Partitions:
    """Divide a training split, given by its labels, into ``spec.num_clients`` partitions.

    Parameters
    ----------
    labels : np.ndarray
        Integer class of every training example, ``(N,)``.
    spec : PartitionSpec

    Returns
    -------
    Partitions

    Raises
    ------
    ConfigError
        More clients than examples (``num-clients``), more classes per client than
        classes (``classes-per-client``), too few examples for the shards
        (``shards-per-client``), a Dirichlet draw that keeps leaving a partition
        under ``min-partition-size`` (``alpha``), or any partition that comes out empty.
    """
    from fedrank.data.files import dataset_from_arrays

    labels = np.asarray(labels, dtype=np.int64)
    n, clients = len(labels), spec.num_clients
    if clients > n:
        raise ConfigError(
            "num-clients", f"{clients} clients but the training split has only {n} examples"
        )
    if spec.scheme == "iid":
        from flwr_datasets.partitioner import IidPartitioner

        iid = IidPartitioner(num_partitions=clients)
        rows: Any = dataset_from_arrays({"idx": np.arange(n, dtype=np.int64)})
        iid.dataset = rows.with_format("arrow").shuffle(seed=spec.seed)
        return Partitions(spec, rows=np.zeros(0, dtype=np.int64), offsets=None, iid=iid)
    classes = len(np.unique(labels))
    if spec.scheme == "pathological" and spec.classes_per_client > classes:
        raise ConfigError(
            "classes-per-client",
            f"{spec.classes_per_client} exceeds the {classes} classes of the training split",
        )
    if spec.scheme == "shard" and clients * spec.shards_per_client > n:
        raise ConfigError(
            "shards-per-client",
            f"{clients} clients x {spec.shards_per_client} shards need at least "
            f"{clients * spec.shards_per_client} examples, the training split has {n}",
        )
    # The partitioners see the labels sorted (stably) by class, and every partitioner
    # here reads rows per class in table order, so the assignment mapped back through
    # ``order`` is the one they make on the split as it is; ShardPartitioner's own
    # sort by label is then the identity, which spares reading its sorted copy back.
    order = np.argsort(labels, kind="stable")
    table = dataset_from_arrays({"label": labels[order]})
    table = table.with_format("arrow")  # type: ignore[attr-defined]
    draw = _dirichlet if spec.scheme == "dirichlet" else _once
    positions, offsets = draw(table, spec)
    rows = _sorted_within(order[positions], offsets)
    sizes = np.diff(offsets)
    if sizes.min() < 1:
        raise ConfigError(
            "num-clients",
            f"partition {int(np.argmin(sizes))} of {clients} came out empty ({spec.scheme}); "
            "lower num-clients",
        )
    return Partitions(spec, rows=rows, offsets=offsets, iid=None)


def _dirichlet(table: Any, spec: PartitionSpec) -> tuple[np.ndarray, np.ndarray]:
    from flwr_datasets.partitioner import DirichletPartitioner

    smallest = 0
    for draw in range(spec.max_draws):
        # The first draw uses the run seed as Flower would; later ones derived seeds.
        seed = spec.seed if draw == 0 else _derived_seed(spec.seed, draw)
        partitioner = DirichletPartitioner(
            num_partitions=spec.num_clients,
            partition_by="label",
            alpha=float(spec.alpha),
            min_partition_size=0,  # checked here, so that a failed draw costs one draw
            self_balancing=False,
            shuffle=False,
            seed=seed,
        )
        positions, offsets = _assignment(partitioner, table)
        smallest = int(np.diff(offsets).min())
        if smallest >= spec.min_partition_size:
            return positions, offsets
    raise ConfigError(
        "alpha",
        f"Dirichlet({spec.alpha}) over {spec.num_clients} clients left a partition with "
        f"{smallest} < {spec.min_partition_size} examples (min-partition-size) in "
        f"{spec.max_draws} draws (max-draws); raise alpha or lower num-clients",
    )


def _once(table: Any, spec: PartitionSpec) -> tuple[np.ndarray, np.ndarray]:
    from flwr_datasets.partitioner import PathologicalPartitioner, ShardPartitioner

    partitioner: Any
    if spec.scheme == "pathological":
        # "first-deterministic" (the paper's mode): partition p's first class is
        # p mod C, so every class is used once there are at least C clients.
        partitioner = PathologicalPartitioner(
            num_partitions=spec.num_clients,
            partition_by="label",
            num_classes_per_partition=spec.classes_per_client,
            class_assignment_mode="first-deterministic",
            shuffle=False,
            seed=spec.seed,
        )
    else:
        partitioner = ShardPartitioner(
            num_partitions=spec.num_clients,
            partition_by="label",
            num_shards_per_partition=spec.shards_per_client,
            shuffle=False,
            seed=spec.seed,
        )
    # Flower warns (logged here) when some class ends up in no partition: fewer
    # clients than classes. Its ValueError: a class needed by more clients than it has rows.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # datasets' sort (ShardPartitioner) still passes an option pyarrow deprecated;
        # nothing a user can act on, so not shown on every run.
        warnings.filterwarnings("ignore", "Specifying null_placement", FutureWarning)
        try:
            result = _assignment(partitioner, table)
        except ValueError as err:
            raise ConfigError("num-clients", f"{spec.scheme}: {err}") from err
    # Re-issued outside the recording block (inside it, they would be recorded again).
    for w in caught:
        if "flwr_datasets" in w.filename:
            _LOG.warning("%s partitioner: %s", spec.scheme, w.message)
        else:  # not Flower's (e.g. a deprecation inside datasets): passed on as it was
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result


def _assignment(partitioner: Any, table: Any) -> tuple[np.ndarray, np.ndarray]:
    """Run ``partitioner`` once on ``table``: (positions grouped by partition, offsets).

    Reading ``_partition_id_to_indices`` (flwr-datasets 0.6.1, pinned) is the one
    use of a private name: ``load_partition`` per client would build a ``Dataset``
    each, 1-3 ms, 10-30 s for 10,000 clients. ``tests/data/test_partitioners.py``
    checks every scheme against ``load_partition``.
    """
    partitioner.dataset = table
    count = partitioner.num_partitions  # the public property computes every partition
    assigned = partitioner._partition_id_to_indices
    sizes = np.fromiter((len(assigned[p]) for p in range(count)), dtype=np.int64, count=count)
    positions = np.fromiter(
        itertools.chain.from_iterable(assigned[p] for p in range(count)),
        dtype=np.int64,
        count=int(sizes.sum()),
    )
    return positions, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _sorted_within(rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``rows`` sorted inside each partition's slice ``offsets[p]:offsets[p + 1]``."""
    owner = np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))
    return rows[np.lexsort((rows, owner))]


def _derived_seed(seed: int, draw: int) -> int:
    return int(np.random.SeedSequence([seed, draw]).generate_state(1, np.uint64)[0])
