"""Discovery of the nodes' partitions, and seeded client sampling by partition id.

Flower's strategies sample node ids with the global ``random`` module, and node
ids are random in simulation, so two runs with the same seed train different
clients. Here the server first asks every node for its ``partition-id`` (one
``query`` message, :func:`discover_partitions`; a node whose answer is not valid is
left out with a reason), then samples partitions from ``numpy`` seeded by (seed,
round): the same seed trains the same clients in the same rounds. Beside Flower's
simulation engine the server reads the engine's own map instead and asks only a few
nodes to confirm it (:func:`find_partitions`): start-up does not grow with the
federation.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrank.errors import FedrankError, InvalidUpdate
from fedrank.protos import keys
from fedrank.protos.gate import check_records
from fedrank.strategies.exchange import send_and_receive

PARTITION_KEY = keys.PARTITION_ID
SPOT_CHECKS = 8
"""Nodes :func:`find_partitions` asks to confirm the engine's node map."""
EngineMap = Callable[[float], Mapping[int, int] | None]
"""(timeout) -> the simulation engine's node id -> partition id map, or None."""
_LOG_EVERY = 5.0  # seconds between "waiting for ..." lines
_log = logging.getLogger(__name__)


def discover_partitions(
    grid: Grid,
    *,
    expected: int,
    minimum: int | None = None,
    timeout: float = 120.0,
    connect_timeout: float = 20.0,
    poll: float = 0.5,
    settings: ConfigRecord | None = None,
) -> dict[int, int]:
    """Map partition id -> node id for every node that gives a valid answer.

    First waits (at most ``connect_timeout`` seconds, saying what it waits for) until
    exactly ``expected`` nodes are connected: more nodes than that, or fewer once the
    wait is over, is a federation that does not match its ``num-clients`` and fails
    naming both numbers. Then sends every node a ``query`` asking for its partition id,
    with the run's client ``settings`` (the client keeps them for the run), and waits
    at most ``timeout`` seconds for the answers. A node whose answer is missing, an
    error, malformed, out of ``[0, expected)`` or claimed by another node too is left
    out with its reason (logged; :func:`read_partition_claims`); the run goes on while
    at least ``minimum`` nodes (default: all ``expected``) remain.

    Raises
    ------
    FedrankError
        The node count does not match ``expected``, or fewer than ``minimum`` nodes
        gave a valid answer (the message names each reason and its count).
    """
    minimum = expected if minimum is None else minimum
    nodes = wait_for_nodes(grid, expected=expected, timeout=connect_timeout, poll=poll)
    replies = _collect(grid, _queries(nodes, settings), timeout=timeout)
    mapping, excluded = read_partition_claims(replies, nodes, expected=expected)
    for node, reason in sorted(excluded.items()):
        _log.warning("discovery: node %d left out, %s", node, reason)
    if len(mapping) < minimum:
        counts = Counter(reason.split(":")[0] for reason in excluded.values())
        raise FedrankError(
            f"only {len(mapping)} of {expected} nodes gave a valid partition id, the run "
            f"needs {minimum} (min-clients); left out: "
            + ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
        )
    if excluded:
        _log.warning(
            "discovery: %d of %d nodes left out; the run goes on with partitions %s",
            len(excluded),
            expected,
            sorted(mapping),
        )
    return mapping


def find_partitions(
    grid: Grid,
    *,
    engine_nodes: EngineMap | None,
    expected: int,
    seed: int,
    minimum: int | None = None,
    timeout: float = 120.0,
    connect_timeout: float = 20.0,
    poll: float = 0.5,
    settings: ConfigRecord | None = None,
) -> tuple[dict[int, int], set[int]]:
    """Partition id -> node id, and the nodes not asked (they hold no ``settings`` yet).

    Without ``engine_nodes`` this is :func:`discover_partitions`: every node is asked.
    A ServerApp that runs beside Flower's simulation engine can instead read the map the
    engine registered its nodes with (``engine_nodes(timeout)``: node id -> partition id,
    None if the engine has not started within ``timeout``), since asking every node made
    start-up grow with the federation. A seeded sample of :data:`SPOT_CHECKS` nodes is
    then asked as discovery asks (each answer must name the partition the map gives that
    node); the others get the settings with their first message. A map that does not
    cover exactly the ``expected`` connected nodes and partitions, or a sampled node that
    answers anything else, sends the run back to asking every node (logged).
    """
    if engine_nodes is not None:
        nodes = wait_for_nodes(grid, expected=expected, timeout=connect_timeout, poll=poll)
        engine_map = engine_nodes(timeout)
        if engine_map is None:
            raise FedrankError(
                f"the simulation engine did not start its {expected} nodes within "
                f"{timeout:g} s (discovery-timeout)"
            )
        mapping = {pid: node for node, pid in engine_map.items()}
        checked: list[int] = []
        if sorted(engine_map) == nodes and sorted(mapping) == list(range(expected)):
            count = min(SPOT_CHECKS, expected)
            checked = sample_partitions(mapping, count=count, seed=seed, server_round=0)
            asked = [mapping[pid] for pid in checked]
            replies = _collect(grid, _queries(asked, settings), timeout=timeout)
            claims, excluded = read_partition_claims(replies, asked, expected=expected)
            if not excluded and all(claims.get(pid) == mapping[pid] for pid in checked):
                return dict(sorted(mapping.items())), set(nodes) - set(asked)
        _log.warning(
            "discovery: the simulation engine's node map does not match %s; every node is asked",
            "its nodes' answers" if checked else "the connected nodes",
        )
    everyone = discover_partitions(
        grid, expected=expected, minimum=minimum, timeout=timeout,
        connect_timeout=connect_timeout, poll=poll, settings=settings,
    )  # fmt: skip
    return everyone, set()


def _queries(nodes: Iterable[int], settings: ConfigRecord | None) -> list[Message]:
    """The discovery query to each of ``nodes``, with the run's ``settings``."""
    content = RecordDict({keys.CONFIG: ConfigRecord({keys.ASK: PARTITION_KEY})})
    if settings is not None:
        content[keys.RUN] = settings
    return [
        Message(content=content, message_type=MessageType.QUERY, dst_node_id=node) for node in nodes
    ]


def wait_for_nodes(grid: Grid, *, expected: int, timeout: float, poll: float = 0.5) -> list[int]:
    """The ids of exactly ``expected`` connected nodes, waiting at most ``timeout`` seconds.

    The count must hold for ``poll`` seconds. Logs what it waits for every few seconds.
    Raises :class:`FedrankError` naming both numbers at once when more nodes are
    connected, and after ``timeout`` when fewer are.
    """
    deadline = time.monotonic() + timeout
    next_log = time.monotonic()
    settled: list[int] | None = None
    while True:
        nodes = sorted(int(n) for n in grid.get_node_ids())
        if len(nodes) > expected:
            raise FedrankError(
                f"the federation has {len(nodes)} nodes but num-clients is {expected}: set "
                f"num-clients to {len(nodes)}, or run {expected} nodes (one per site)"
            )
        if len(nodes) == expected:
            # Flower's simulation registers its nodes while the ServerApp starts: the
            # count must hold a moment (more may be on their way) before it is trusted.
            if nodes == settled:
                return nodes
            settled = nodes
            time.sleep(poll)
            continue
        settled = None
        now = time.monotonic()
        if now >= deadline:
            raise FedrankError(
                f"only {len(nodes)} nodes connected within {timeout:g} s but num-clients is "
                f"{expected}: start {expected} nodes (one per site), set num-clients to "
                f"{len(nodes)}, or give them longer (connect-timeout)"
            )
        if now >= next_log:
            _log.warning(
                "waiting for %d nodes to connect: %d connected, %.0f s left (connect-timeout)",
                expected,
                len(nodes),
                deadline - now,
            )
            next_log = now + _LOG_EVERY
        time.sleep(min(poll, max(0.0, deadline - now)))


def _collect(grid: Grid, messages: Sequence[Message], *, timeout: float) -> list[Message]:
    """The replies to ``messages`` within ``timeout`` seconds, saying what it waits for."""
    _log.info(
        "discovery: asking %d nodes for their partition id, waiting at most %g s "
        "(discovery-timeout)",
        len(messages),
        timeout,
    )
    started = time.monotonic()
    replies = list(send_and_receive(grid, messages, timeout=timeout))
    _log.info(
        "discovery: %d of %d nodes answered in %.1f s",
        len(replies),
        len(messages),
        time.monotonic() - started,
    )
    return replies


def read_partition_claims(
    replies: Iterable[Message], nodes: Sequence[int], *, expected: int
) -> tuple[dict[int, int], dict[int, str]]:
    """The valid claims of ``nodes`` (partition id -> node id), and why each other node is out.

    A node is left out (node id -> ``"<reason>: <detail>"``) when it gave no answer
    (``timeout``), answered with an error (``client_error``), answered twice or was not
    asked (``unexpected_reply``), or its answer is not one ``config`` record holding only
    an integer ``partition-id`` (``missing_record``, ``unknown_record``,
    ``wrong_record_type``, ``bad_partition_id``), lies outside ``[0, expected)``
    (``out_of_range``), or names a partition another node claims too: every claimant of
    that partition is left out (``duplicate_partition``), since the server cannot tell
    which of them is that site.
    """
    asked = set(nodes)
    excluded: dict[int, str] = {}
    claims: dict[int, list[int]] = {}
    seen: set[int] = set()
    for reply in replies:
        node = int(reply.metadata.src_node_id)
        if node not in asked or node in seen:
            # Its first claim still counts below: a partition it claimed is nobody's.
            excluded[node] = "unexpected_reply: a second answer, or from a node not asked"
            continue
        seen.add(node)
        try:
            pid = _claimed_partition(reply, expected=expected)
        except InvalidUpdate as err:
            excluded[node] = f"{err.reason}: {err}"
            continue
        claims.setdefault(pid, []).append(node)
    for node in asked - seen:
        excluded.setdefault(node, "timeout: no answer within discovery-timeout")
    mapping: dict[int, int] = {}
    for pid, owners in claims.items():
        if len(owners) > 1:
            for node in owners:
                excluded.setdefault(
                    node, f"duplicate_partition: {len(owners)} nodes claim partition {pid}"
                )
        elif owners[0] not in excluded:
            mapping[pid] = owners[0]
    return dict(sorted(mapping.items())), excluded


def _claimed_partition(reply: Message, *, expected: int) -> int:
    """The partition id a discovery answer claims (raises ``InvalidUpdate``)."""
    if reply.has_error():
        raise InvalidUpdate("client_error", _last_line(reply.error.reason))
    content = reply.content
    check_records(content, required={keys.CONFIG: ConfigRecord})
    record = content.config_records[keys.CONFIG]
    value = record.get(PARTITION_KEY)
    if set(record) != {PARTITION_KEY} or isinstance(value, bool) or not isinstance(value, int):
        raise InvalidUpdate(
            "bad_partition_id",
            f"the answer must hold only an integer {PARTITION_KEY!r}, "
            f"got keys {sorted(record)[:5]}",
        )
    if not 0 <= value < expected:
        raise InvalidUpdate(
            "out_of_range", f"{PARTITION_KEY} {value} is outside [0, {expected}) (num-clients)"
        )
    return value


def _last_line(text: str | None, *, limit: int = 200) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    last = lines[-1] if lines else "no reason given"
    return last if len(last) <= limit else last[: limit - 3] + "..."


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
