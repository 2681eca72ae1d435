"""Discovery: a node whose answer is missing, malformed, out of range or a duplicate is left
out with its reason, and the run goes on while ``min-clients`` nodes remain; a federation
whose node count is not ``num-clients`` fails at once, naming both numbers."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.constant import ErrorCode
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.client import app as fedrank_client
from fedrank.config import Scenario
from fedrank.errors import FedrankError
from fedrank.simulations.local_grid import InProcessGrid, server_identity
from fedrank.strategies.sampling import discover_partitions, read_partition_claims, wait_for_nodes
from tests.faults.foreign_client import QUERY_FAULTS, foreign_client_app
from tests.faults.harness import QUERY_REASON

SCENARIO = Scenario.of(dataset="digits", model="mlp", num_clients=5, clients_per_round=3)
SETTINGS = ConfigRecord(dict(SCENARIO.client_settings()))
FAULTY, VICTIM = 1, 3


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="fedrank.strategies.sampling"):
        yield caplog


def discover(grid: InProcessGrid, *, expected: int = 5, minimum: int = 3) -> dict[int, int]:
    with server_identity(grid.run):
        return discover_partitions(
            grid, expected=expected, minimum=minimum, timeout=30, connect_timeout=1.0,
            settings=SETTINGS,
        )  # fmt: skip


def test_every_query_fault_has_its_reason() -> None:
    assert set(QUERY_REASON) == {*QUERY_FAULTS, "raise"}


@pytest.mark.parametrize("fault", sorted(QUERY_REASON))
def test_a_bad_answer_leaves_its_node_out_and_the_run_goes_on(
    fault: str, log: pytest.LogCaptureFixture
) -> None:
    app = foreign_client_app(fedrank_client.app, query={FAULTY: fault}, victim=VICTIM)
    grid = InProcessGrid(app, num_nodes=5, seed=2)

    mapping = discover(grid)

    out = {FAULTY, VICTIM} if fault == "duplicate" else {FAULTY}
    assert sorted(mapping) == sorted(set(range(5)) - out)
    node_of = {pid: node for node, pid in _true_partitions(grid).items()}
    assert mapping == {pid: node_of[pid] for pid in mapping}
    left_out = [line for line in log.messages if "left out" in line and QUERY_REASON[fault] in line]
    assert len(left_out) == len(out)


def _true_partitions(grid: InProcessGrid) -> dict[int, int]:
    return {node: int(c.node_config["partition-id"]) for node, c in grid._contexts.items()}  # type: ignore[arg-type]


def test_too_few_valid_nodes_fail_naming_the_reasons() -> None:
    app = foreign_client_app(fedrank_client.app, query={0: "id_999", 1: "raise", 2: "no_config"})
    grid = InProcessGrid(app, num_nodes=5, seed=2)

    with pytest.raises(FedrankError) as caught:
        discover(grid, minimum=3)

    text = str(caught.value)
    assert "only 2 of 5 nodes gave a valid partition id, the run needs 3 (min-clients)" in text
    for reason in ("1 client_error", "1 missing_record", "1 out_of_range"):
        assert reason in text


def test_more_nodes_than_num_clients_fail_at_once_naming_both() -> None:
    grid = InProcessGrid(fedrank_client.app, num_nodes=7, seed=1)
    started = time.monotonic()

    with pytest.raises(FedrankError, match="the federation has 7 nodes but num-clients is 5"):
        discover(grid)

    assert time.monotonic() - started < 1.0


def test_fewer_nodes_than_num_clients_fail_within_the_connect_timeout(
    log: pytest.LogCaptureFixture,
) -> None:
    grid = InProcessGrid(fedrank_client.app, num_nodes=2, seed=1)
    started = time.monotonic()

    with pytest.raises(
        FedrankError, match="only 2 nodes connected within 1 s but num-clients is 10"
    ):
        discover(grid, expected=10)

    assert time.monotonic() - started < 5.0
    assert any("waiting for 10 nodes to connect: 2 connected" in line for line in log.messages)


# ------------------------------------------------------------- the claims, pure


def _answer(node: int, value: object, flower_error: bool = False) -> Message:
    from flwr.app import Error
    from flwr.app.message import make_message
    from flwr.app.metadata import Metadata

    meta = Metadata(
        run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
        group_id="", created_at=time.time(), ttl=60.0, message_type="query",
    )  # fmt: skip
    if flower_error:
        return make_message(metadata=meta, error=Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, "x"))
    record = RecordDict({"config": ConfigRecord({"partition-id": value})})  # type: ignore[dict-item]
    return make_message(metadata=meta, content=record)


answers = st.lists(
    st.tuples(
        st.integers(1, 12),
        st.one_of(st.integers(-3, 12), st.text(max_size=2), st.floats(allow_nan=True)),
        st.booleans(),
    ),
    max_size=15,
)


@settings(max_examples=300, deadline=None)
@given(answers, st.integers(1, 10))
def test_every_asked_node_is_mapped_or_left_out_with_a_reason(
    replies: list[tuple[int, object, bool]], expected: int
) -> None:
    nodes = list(range(1, expected + 1))
    messages = [_answer(node, value, error) for node, value, error in replies]

    mapping, excluded = read_partition_claims(messages, nodes, expected=expected)

    assert all(0 <= pid < expected for pid in mapping)
    assert len(set(mapping.values())) == len(mapping)  # one partition per node
    assert not set(mapping.values()) & set(excluded)
    assert set(mapping.values()) | (set(excluded) & set(nodes)) == set(nodes)
    for reason in excluded.values():
        assert reason.split(":")[0] in {
            "timeout", "client_error", "unexpected_reply", "bad_partition_id",
            "out_of_range", "duplicate_partition",
        }  # fmt: skip
    # A partition claimed by two nodes (each node's first answer) is given to neither.
    claims: dict[int, set[int]] = {}
    answered: set[int] = set()
    for node, value, error in replies:
        first = node not in answered
        answered.add(node)
        valid = not error and type(value) is int and 0 <= value < expected
        if first and valid and node <= expected:
            claims.setdefault(value, set()).add(node)
    for pid, owners in claims.items():
        if len(owners) > 1:
            assert pid not in mapping


def test_nodes_still_registering_are_counted_before_the_count_is_trusted() -> None:
    # Flower's simulation registers nodes while the ServerApp starts: 5 may be seen
    # on the way to 7.
    counts = iter([3, 5, 7, 7])

    class Growing:
        def get_node_ids(self) -> list[int]:
            return list(range(1, next(counts) + 1))

    with pytest.raises(FedrankError, match="the federation has 7 nodes but num-clients is 5"):
        wait_for_nodes(Growing(), expected=5, timeout=5, poll=0.01)  # type: ignore[arg-type]
