"""Flower's simulation engine with a message dispatcher that does not scan per node.

Flower 1.41's simulation engine (``flwr.server.superlink.fleet.vce.vce_api``) moves
messages from the SuperLink's in-memory state to the Ray workers with a thread that,
every 0.1 s, asks the state for each registered node's next message in turn; each ask
scans every stored message. A sweep therefore costs (registered nodes) x (stored
messages): measured here, about 12 us a pair, 1.2 s a sweep with 10,000 nodes and 10
messages, 12 s with 100, and about 20 minutes for the 10,000 discovery queries. Rounds
then wait on the sweep, and the sweep holds the state's lock the server needs to
collect replies.

:func:`dispatch_pending` does what a sweep does (at most one undelivered message per
node, the first stored, checked and marked delivered exactly as
``InMemoryLinkState.get_message_ins`` checks and marks it) in one pass over the stored
messages, so a sweep costs the messages, not the nodes. :func:`fast_dispatch` puts it
in place of Flower's poller for the length of a simulation (and back after). It reads
the in-memory state's message store, so it is tied to the pinned Flower (1.41); a test
checks it against Flower's own poller on a real state.

The engine hands its poller the node id -> partition id map it registered its nodes
with (the one it writes into each node's ``partition-id``). :class:`EngineNodes` keeps
that map for the ServerApp, which then needs no discovery query to every node: asking
10,000 nodes cost 2.6 ms each, start-up 41.5 s against 14.2 s at 1,000
(``benchmarks.scale``); see :func:`fedrank.strategies.sampling.find_partitions`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from queue import Queue
from typing import Any

from flwr.app import Message
from flwr.server.superlink.fleet.vce import vce_api
from flwr.supercore.date import now

__all__ = ["EngineNodes", "dispatch_pending", "fast_dispatch", "poll_messages"]

_POLL_SECONDS = 0.1  # Flower's poller waits this long between sweeps


def dispatch_pending(state: Any, nodes: Mapping[int, int] | set[int]) -> list[Message]:
    """One sweep: the first undelivered, still valid message of each node, marked delivered.

    Parameters
    ----------
    state : InMemoryLinkState
        The simulation's SuperLink state.
    nodes : mapping or set of int
        The registered nodes (node id -> partition id, or ids).

    Returns
    -------
    list of Message
        In the order they were stored; at most one per node (a node's next message
        waits for the next sweep, as in Flower, so one node never runs two at once).
    """
    taken: list[Message] = []
    busy: set[int] = set()
    with state.lock:
        for message_id in list(state.message_ins_store):
            # Drops the message if it expired or left the federation, as get_message_ins does.
            state._check_stored_messages({message_id})
            message = state.message_ins_store.get(message_id)
            if message is None:
                continue
            node = message.metadata.dst_node_id
            if message.metadata.delivered_at != "" or node not in nodes or node in busy:
                continue
            busy.add(node)
            taken.append(message)
    delivered_at = now().isoformat()
    for message in taken:
        message.metadata.delivered_at = delivered_at
    return taken


def poll_messages(
    state: Any, queue: Queue[Message], nodes_mapping: Mapping[int, int], f_stop: threading.Event
) -> None:
    """Flower's ``add_messages_to_queue`` (same arguments), a sweep per :func:`dispatch_pending`."""
    nodes = set(nodes_mapping)
    while not f_stop.is_set():
        for message in dispatch_pending(state, nodes):
            queue.put(message)
        f_stop.wait(_POLL_SECONDS)


class EngineNodes:
    """The engine's node id -> partition id map, once its dispatcher starts.

    Filled from the engine's thread, read from the ServerApp's: :meth:`wait` returns
    the map once :meth:`publish` has been called, or None after ``timeout`` seconds.
    """

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._mapping: dict[int, int] = {}

    def publish(self, nodes_mapping: Mapping[int, int]) -> None:
        """Keep a copy of the engine's map and wake whoever waits for it."""
        self._mapping = {int(node): int(pid) for node, pid in nodes_mapping.items()}
        self._ready.set()

    def wait(self, timeout: float) -> dict[int, int] | None:
        """The map (node id -> partition id), or None if not published within ``timeout``."""
        return dict(self._mapping) if self._ready.wait(timeout) else None


@contextmanager
def fast_dispatch(nodes: EngineNodes | None = None) -> Iterator[None]:
    """Run Flower's simulation engine with :func:`poll_messages` as its dispatcher, handing
    the engine's node map to ``nodes`` when the dispatcher starts."""
    flowers = vce_api.add_messages_to_queue

    def dispatcher(
        state: Any,
        queue: Queue[Message],
        nodes_mapping: Mapping[int, int],
        f_stop: threading.Event,
    ) -> None:
        if nodes is not None:
            nodes.publish(nodes_mapping)
        poll_messages(state, queue, nodes_mapping, f_stop)

    vce_api.add_messages_to_queue = dispatcher if nodes is not None else poll_messages
    try:
        yield
    finally:
        vce_api.add_messages_to_queue = flowers
