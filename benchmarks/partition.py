"""Partitioning at scale: 1,000 and 10,000 clients of the synthetic set (200,000 images).

For each scheme (Flower Datasets' partitioners through ``fedrank.data.partitioners``):
the time to partition the training split (best of 3), the time to look up one
client's row indices and to take its examples, and the process's peak RSS; ratios
against ``iid`` at the same number of clients, measured in this process.

Run: ``python -m benchmarks.partition``
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable

import numpy as np

from benchmarks.common import best_time, report
from fedrank.data.partitioners import Partitions, PartitionSpec, partition_labels
from fedrank.data.source import DataSource, load_image_data
from fedrank.errors import ConfigError

CLIENTS = (1_000, 10_000)
SCHEMES: dict[str, dict[str, object]] = {
    "iid": {"scheme": "iid"},
    "dirichlet 1.0": {"scheme": "dirichlet", "alpha": 1.0},
    "dirichlet 0.1": {"scheme": "dirichlet", "alpha": 0.1},
    "pathological 2": {"scheme": "pathological", "classes_per_client": 2},
    "shard 2": {"scheme": "shard", "shards_per_client": 2},
}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seconds(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _lookup_ms(parts: Partitions, take: Callable[[int], object], clients: int) -> float:
    ids = np.linspace(0, clients - 1, 200).astype(int)
    return 1e3 * statistics.median(_seconds(lambda p=int(p): take(p)) for p in ids)


def main() -> dict[str, float]:
    import_s = _seconds(lambda: __import__("flwr_datasets.partitioner"))
    before = peak_rss_mb()
    load_s = _seconds(lambda: load_image_data(DataSource("synthetic-digits")))
    data = load_image_data(DataSource("synthetic-digits"))
    labels = data.train.labels
    print(
        f"\nsynthetic-digits: {len(data.train):,} train images {data.input_shape}, loaded in "
        f"{load_s:.2f} s (peak RSS {before:.0f} -> {peak_rss_mb():.0f} MiB); "
        f"flwr_datasets import {import_s:.2f} s (once per process)"
    )
    ratios: dict[str, float] = {}
    for clients in CLIENTS:
        rows: list[tuple[str, float]] = []
        lookups: list[str] = []
        for name, params in SCHEMES.items():
            spec = PartitionSpec(num_clients=clients, seed=0, **params)  # type: ignore[arg-type]
            try:
                parts = partition_labels(labels, spec)
            except ConfigError as err:
                refused = _seconds(lambda spec=spec: _refusal(labels, spec))
                lookups.append(f"  {name}: refused after {refused:.2f} s ({err})")
                continue
            seconds = best_time(lambda spec=spec: partition_labels(labels, spec), repeats=3)
            rows.append((name, seconds))
            index_ms = _lookup_ms(parts, parts.indices, clients)
            take_ms = _lookup_ms(parts, lambda p, parts=parts: parts.take(data.train, p), clients)
            lookups.append(
                f"  {name}: one client's indices {index_ms:.3f} ms, its examples {take_ms:.3f} ms"
            )
            ratios[f"{name} / iid @ {clients}"] = seconds / dict(rows)["iid"]
        report(f"Partition {len(labels):,} examples, {clients:,} clients", rows, baseline="iid")
        print("\n".join(lookups))
    print(f"\npeak RSS of the whole benchmark: {peak_rss_mb():.0f} MiB")
    return ratios


def _refusal(labels: np.ndarray, spec: PartitionSpec) -> None:
    try:
        partition_labels(labels, spec)
    except ConfigError:
        return


if __name__ == "__main__":
    main()
