"""The simulation engine's dispatcher: what Flower's poller delivers, in one pass."""

from __future__ import annotations

import inspect
import threading
import time
from queue import Queue

import pytest
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.task_pb2 import Task  # pylint: disable=E0611
from flwr.server.superlink.fleet.vce import vce_api
from flwr.server.superlink.linkstate import LinkStateFactory
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState, RunRecord
from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation import NoOpFederationManager
from flwr.superlink.federation.noop_federation_manager import NOOP_FEDERATION_ID
from flwr.superlink.grid import InMemoryGrid

from fedrank.simulations.ray_engine import (
    EngineNodes,
    dispatch_pending,
    fast_dispatch,
    poll_messages,
)

# (destination node index, tag, ttl): node 1 gets two messages, node 3 one that expires.
PLAN = [(0, "a", None), (1, "b", None), (1, "c", None), (3, "expired", 0.05), (4, "d", None)]


def federation(num_nodes: int = 6) -> tuple[InMemoryLinkState, list[int]]:
    """A simulation's SuperLink state with ``num_nodes`` nodes and PLAN's messages stored."""
    factory = LinkStateFactory(
        FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
    )
    nodes = list(vce_api._register_nodes(num_nodes, factory))
    state = factory.state()
    assert isinstance(state, InMemoryLinkState)
    run = Run.create_empty(run_id=7)
    run.primary_task_id, run.federation_id = 1, NOOP_FEDERATION_ID
    state.run_ids[run.run_id] = RunRecord(run=run)
    state.task_store[1] = Task(task_id=1, run_id=run.run_id)
    TaskIdentity.task_id, TaskIdentity.run_id = 1, run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    grid = InMemoryGrid(state_factory=factory)
    grid.set_run(run)
    grid.push_messages(
        Message(
            RecordDict({"config": ConfigRecord({"tag": tag})}),
            dst_node_id=nodes[index],
            message_type=MessageType.TRAIN,
            ttl=ttl,
        )
        for index, tag, ttl in PLAN
    )
    return state, nodes


def flowers_sweep(state: InMemoryLinkState, nodes: list[int]) -> list[Message]:
    """What one pass of Flower's own poller takes from the state."""
    return [m for node in nodes for m in state.get_message_ins(node_id=node, limit=1)]


def seen(messages: list[Message], nodes: list[int]) -> set[tuple[int, str]]:
    return {
        (nodes.index(m.metadata.dst_node_id), str(m.content["config"]["tag"])) for m in messages
    }


def test_each_sweep_delivers_what_flowers_poller_delivers() -> None:
    flowers_state, flowers_nodes = federation()
    our_state, our_nodes = federation()
    time.sleep(0.1)  # the short-lived message expires in both

    for expected in ({(0, "a"), (1, "b"), (4, "d")}, {(1, "c")}, set()):
        theirs = flowers_sweep(flowers_state, flowers_nodes)
        ours = dispatch_pending(our_state, set(our_nodes))
        assert seen(theirs, flowers_nodes) == seen(ours, our_nodes) == expected
        assert all(m.metadata.delivered_at != "" for m in ours)
    remaining = {m.content["config"]["tag"] for m in our_state.message_ins_store.values()}
    assert remaining == {"a", "b", "c", "d"}  # the expired one was dropped, as by Flower


def test_the_poller_queues_every_message_then_stops() -> None:
    state, nodes = federation()
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    worker = threading.Thread(
        target=poll_messages, args=(state, queue, dict.fromkeys(nodes, 0), stop)
    )
    worker.start()
    deadline = time.monotonic() + 10
    while queue.qsize() < len(PLAN) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(timeout=10)
    assert not worker.is_alive()
    tags = [queue.get_nowait().content["config"]["tag"] for _ in range(queue.qsize())]
    assert sorted(tags) == ["a", "b", "c", "d", "expired"]  # c a sweep later; none expired


def test_fast_dispatch_stands_in_for_flowers_poller_with_its_signature() -> None:
    flowers = vce_api.add_messages_to_queue
    # The engine starts the poller with these arguments: a Flower upgrade that changes
    # them must fail here, not in a simulation.
    assert list(inspect.signature(flowers).parameters) == list(
        inspect.signature(poll_messages).parameters
    )
    with fast_dispatch():
        assert vce_api.add_messages_to_queue is poll_messages
    assert vce_api.add_messages_to_queue is flowers
    with pytest.raises(RuntimeError), fast_dispatch():
        raise RuntimeError
    assert vce_api.add_messages_to_queue is flowers


def test_the_engines_node_map_is_handed_over_when_its_dispatcher_starts() -> None:
    state, nodes = federation()
    engine_map = {node: pid for pid, node in enumerate(nodes)}
    holder = EngineNodes()
    assert holder.wait(0.01) is None  # nothing before the engine starts its dispatcher
    queue: Queue[Message] = Queue()
    stop = threading.Event()
    with fast_dispatch(holder):
        # What Flower's engine does once it registered its nodes and built its backend.
        worker = threading.Thread(
            target=vce_api.add_messages_to_queue, args=(state, queue, engine_map, stop)
        )
        worker.start()
        published = holder.wait(10)
        deadline = time.monotonic() + 10
        while queue.qsize() < len(PLAN) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        worker.join(timeout=10)
    assert published == engine_map
    assert published is not engine_map
    assert queue.qsize() == len(PLAN)  # and it dispatches as poll_messages does
