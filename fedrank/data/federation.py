"""A run's data, partitioned once per process: what a client and the server ask for.

The image and text tasks call these with the run's :class:`DataSource` and
:class:`PartitionSpec` (both frozen, hashable): the dataset is loaded and
partitioned on first use, and every later call for any partition is an index
lookup and a row selection.
"""

from __future__ import annotations

import functools

from fedrank.data.partitioners import Partitions, PartitionSpec, partition_labels
from fedrank.data.source import DataSource, load_image_data, load_text_data
from fedrank.data.splits import ImageSplit, Kind, TextSplit


@functools.lru_cache(maxsize=4)
def partitions_for(source: DataSource, spec: PartitionSpec, kind: Kind) -> Partitions:
    """The partitions of ``source``'s training split under ``spec`` (computed once).

    Call it once before any round (the server and each SuperNode) to validate the
    combination: it raises every partitioning :class:`~fedrank.errors.ConfigError`.
    """
    loader = load_image_data if kind == "image" else load_text_data
    return partition_labels(loader(source, seed=spec.seed).train.labels, spec)


def image_partition(source: DataSource, spec: PartitionSpec, partition_id: int) -> ImageSplit:
    """The training images of client ``partition_id``."""
    train = load_image_data(source, seed=spec.seed).train
    return partitions_for(source, spec, "image").take(train, partition_id)


def text_partition(source: DataSource, spec: PartitionSpec, partition_id: int) -> TextSplit:
    """The training texts of client ``partition_id``."""
    train = load_text_data(source, seed=spec.seed).train
    return partitions_for(source, spec, "text").take(train, partition_id)
