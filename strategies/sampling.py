"""Seeded client sampling by partition id.

Flower's strategies sample node ids with the global ``random`` module, and node
ids are random in simulation, so two runs with the same seed train different
clients. Here the server first asks every node for its ``partition-id`` (one
``query`` message), then samples partitions from ``numpy`` seeded by (seed,
round): the same seed trains the same clients in the same rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrank.errors import FedrankError
from fedrank.protos import keys

PARTITION_KEY = keys.PARTITION_ID


def discover_partitions(
    grid: Grid,
    *,
    expected: int,
    timeout: float = 120.0,
    poll: float = 0.5,
    settings: ConfigRecord | None = None,
) -> dict[int, int]:
    """Map partition id -> node id for every connected node.

    Waits (bounded by ``timeout``) until ``expected`` nodes are connected, then
    sends each a ``query`` asking for its partition id, with the run's client
    ``settings`` (the client keeps them for the run).
    """
    deadline = time.monotonic() + timeout
    while len(node_ids := sorted(grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise FedrankError(
                f"only {len(node_ids)} of {expected} nodes connected within {timeout:.0f} s"
            )
        time.sleep(poll)
    content = RecordDict({keys.CONFIG: ConfigRecord({keys.ASK: PARTITION_KEY})})
    if settings is not None:
        content[keys.RUN] = settings
    messages = [
        Message(
            content=content,
            message_type=MessageType.QUERY,
            dst_node_id=node,
        )
        for node in node_ids
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue
        pid = int(reply.content[keys.CONFIG][PARTITION_KEY])  # type: ignore[arg-type]
        if pid in mapping:
            raise FedrankError(f"two nodes claim partition {pid}; check each node's node-config")
        mapping[pid] = reply.metadata.src_node_id
    if len(mapping) < expected:
        raise FedrankError(f"only {len(mapping)} of {expected} nodes reported a partition id")
    return mapping


def sample_partitions(
    partitions: Mapping[int, int] | list[int], *, count: int, seed: int, server_round: int
) -> list[int]:
    """Seeded choice of ``count`` partition ids for a round, in ascending order."""
    pool = sorted(partitions)
    rng = np.random.default_rng([seed, server_round])
    return sorted(int(p) for p in rng.choice(pool, size=count, replace=False))


def train_messages(
    payload: RecordDict,
    config: ConfigRecord,
    *,
    partitions: Mapping[int, int],
    count: int,
    seed: int,
    server_round: int,
) -> list[Message]:
    """One ``train`` message per sampled partition: the global state and the round's config.

    ``payload`` holds the global state's records (``arrays``, or an encoded
    ``update``); ``config`` is copied with ``server-round`` added. Neither is modified.
    """
    round_config = ConfigRecord({**config, keys.SERVER_ROUND: server_round})
    record = RecordDict({**payload, keys.CONFIG: round_config})
    chosen = sample_partitions(partitions, count=count, seed=seed, server_round=server_round)
    return [
        Message(content=record, message_type=MessageType.TRAIN, dst_node_id=partitions[p])
        for p in chosen
    ]


def _partition_key(partitions: Mapping[int, int] | None) -> Callable[[int], tuple[int, int]]:
    partition_of = {node: pid for pid, node in (partitions or {}).items()}

    def key(node: int) -> tuple[int, int]:
        return (partition_of[node], 0) if node in partition_of else (len(partition_of), node)

    return key


def partition_order(nodes: Iterable[int], partitions: Mapping[int, int] | None = None) -> list[int]:
    """Node ids sorted by their partition id (by node id without ``partitions``).

    Node ids are drawn anew by every simulation, partition ids are not: anything done
    in this order (a float sum, a draw per node) is the same in a resumed run as in an
    uninterrupted one. Nodes of no known partition come last, by node id.
    """
    return sorted(nodes, key=_partition_key(partitions))


def in_partition_order(
    replies: Iterable[Message], partitions: Mapping[int, int] | None = None
) -> list[Message]:
    """``replies`` sorted by their sender as :func:`partition_order` sorts nodes
    (a sender's replies in the order they came)."""
    key = _partition_key(partitions)
    return sorted(replies, key=lambda reply: key(reply.metadata.src_node_id))
