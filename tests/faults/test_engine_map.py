"""The simulation engine's node map in place of a query to every node.

Beside Flower's simulation engine the server reads the engine's node id -> partition id
map and asks only a seeded sample of nodes to confirm it; the other nodes get the run's
settings with their first message. A map that disagrees with the nodes (or misses one)
sends the run back to asking every node. The nodes here are in-process (the local
backend's grid, whose own map is the truth); the Ray engine's map is checked in
``tests/integration/test_simulation.py``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.client import app as fedrank_client
from fedrank.config import Scenario
from fedrank.errors import FedrankError
from fedrank.protos import keys
from fedrank.server.run import run_federation
from fedrank.simulations.local_grid import InProcessGrid, server_identity
from fedrank.strategies.sampling import SPOT_CHECKS, EngineMap, find_partitions, sample_partitions
from tests.faults.foreign_client import foreign_client_app

NODES = 20
SCENARIO = Scenario.of(
    dataset="digits", model="mlp", num_clients=NODES, clients_per_round=4, rounds=3, seed=5
)
SETTINGS = ConfigRecord(dict(SCENARIO.client_settings()))


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.WARNING, logger="fedrank.strategies.sampling"):
        yield caplog


class Counted:
    """fedrank's ClientApp, counting the discovery queries and the messages that carry
    the run's settings, by partition."""

    def __init__(self, honest: ClientApp = fedrank_client.app) -> None:
        self.queried: list[int] = []
        self.settings_in: dict[str, list[int]] = {}
        self.app = ClientApp()
        handle = self._handle(honest)
        for kind in ("query", "train", "evaluate"):
            getattr(self.app, kind)()(handle)

    def _handle(self, honest: ClientApp) -> ClientApp:
        def handle(msg: Message, context: Context) -> Message:
            pid = int(context.node_config[keys.PARTITION_ID])  # type: ignore[arg-type]
            kind = msg.metadata.message_type
            if kind == "query":
                self.queried.append(pid)
            if keys.RUN in msg.content:
                self.settings_in.setdefault(kind, []).append(pid)
            reply: Message = honest(msg, context)
            return reply

        return handle  # type: ignore[return-value]


def true_map(grid: InProcessGrid) -> dict[int, int]:
    """Node id -> partition id, as the grid gave its nodes."""
    return {n: int(c.node_config[keys.PARTITION_ID]) for n, c in grid._contexts.items()}  # type: ignore[arg-type]


def engine(mapping: dict[int, int] | None) -> EngineMap:
    return lambda timeout: mapping


def find(grid: InProcessGrid, mapping: dict[int, int] | None) -> tuple[dict[int, int], set[int]]:
    with server_identity(grid.run):
        return find_partitions(
            grid, engine_nodes=engine(mapping), expected=NODES, seed=5, minimum=NODES - 1,
            timeout=30, connect_timeout=1.0, poll=0.01, settings=SETTINGS,
        )  # fmt: skip


def test_a_true_map_is_confirmed_by_a_seeded_sample_of_nodes_only() -> None:
    client = Counted()
    grid = InProcessGrid(client.app, num_nodes=NODES, seed=3)
    truth = true_map(grid)

    partitions, unasked = find(grid, truth)

    assert partitions == {pid: node for node, pid in truth.items()}
    checked = sample_partitions(list(range(NODES)), count=SPOT_CHECKS, seed=5, server_round=0)
    assert sorted(client.queried) == checked
    assert len(checked) == SPOT_CHECKS < NODES
    assert unasked == set(truth) - {partitions[pid] for pid in checked}


@pytest.mark.parametrize("flaw", ["swapped", "missing_node", "foreign_node", "bad_answer"])
def test_a_map_the_nodes_contradict_sends_the_run_to_ask_every_node(
    flaw: str, log: pytest.LogCaptureFixture
) -> None:
    checked = sample_partitions(list(range(NODES)), count=SPOT_CHECKS, seed=5, server_round=0)
    liar = checked[0]
    # A checked node that answers with another partition id is left out by discovery too.
    honest = foreign_client_app(fedrank_client.app, query={liar: "id_999"})
    client = Counted(honest if flaw == "bad_answer" else fedrank_client.app)
    grid = InProcessGrid(client.app, num_nodes=NODES, seed=3)
    truth = true_map(grid)
    wrong = dict(truth)
    nodes = sorted(wrong, key=wrong.__getitem__)
    if flaw == "swapped":  # two checked partitions' nodes exchanged
        a, b = nodes[checked[0]], nodes[checked[1]]
        wrong[a], wrong[b] = wrong[b], wrong[a]
    elif flaw == "missing_node":
        del wrong[nodes[-1]]
    elif flaw == "foreign_node":
        wrong[12345] = wrong.pop(nodes[0])

    partitions, unasked = find(grid, wrong)

    expected = {pid: node for node, pid in truth.items()}
    if flaw == "bad_answer":
        del expected[liar]
    assert partitions == expected
    assert unasked == set()  # every node was asked
    assert sorted(set(client.queried)) == list(range(NODES))  # every node asked
    because = "the connected nodes" if flaw in ("missing_node", "foreign_node") else "answers"
    assert any("every node is asked" in m and because in m for m in log.messages)


def test_an_engine_that_never_starts_its_nodes_fails_naming_the_timeout() -> None:
    grid = InProcessGrid(fedrank_client.app, num_nodes=NODES, seed=3)
    with pytest.raises(FedrankError, match=r"did not start its 20 nodes within 30 s"):
        find(grid, None)


def _run(tmp_path: Path, name: str, *, mapped: bool) -> tuple[list[dict[str, object]], Counted]:
    client = Counted()
    grid = InProcessGrid(client.app, num_nodes=NODES, seed=3)
    scenario = SCENARIO.replace(results_dir=str(tmp_path / name), eval_fraction=0.2)
    with server_identity(grid.run):
        run_federation(grid, scenario, engine_nodes=engine(true_map(grid)) if mapped else None)
    rows = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").open()]
    return rows, client


def test_unasked_nodes_get_the_settings_with_their_first_message_only(tmp_path: Path) -> None:
    asked, asked_client = _run(tmp_path, "asked", mapped=False)
    mapped, client = _run(tmp_path, "mapped", mapped=True)

    assert len(asked_client.queried) == NODES
    assert len(client.queried) == SPOT_CHECKS
    assert "train" not in asked_client.settings_in  # discovery gave every node its settings
    # Each node not asked got them once, with its first train or evaluate message.
    first = client.settings_in.get("train", []) + client.settings_in.get("evaluate", [])
    assert sorted(first) == sorted(set(first))
    assert set(first).isdisjoint(client.queried)
    assert first  # some unasked node was sampled (seeds as chosen)
    # The same run otherwise: same clients, same figures (bytes without the settings).
    for a, b in zip(asked, mapped, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }
    assert all(int(row.get("rejected", 0)) == 0 for row in mapped)  # type: ignore[call-overload]
    one, two = (read_arrays(tmp_path / name / FINAL_STATE) for name in ("asked", "mapped"))
    for layer in one:
        np.testing.assert_array_equal(one[layer], two[layer])
