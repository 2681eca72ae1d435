"""Whole federations with a foreign faulty site, and the same federation where it sent nothing.

:func:`faulty_and_silent` runs a scenario twice through ``simulate`` (``local`` or
``ray``): once with the foreign ClientApp misbehaving as planned, once with every
planned misbehaviour replaced by sending nothing (raising: an error reply, no payload).
:func:`check_same_result` then asserts the acceptance of issue 16: each misbehaviour is
counted once under its reason, every round completes, and the final model is bit for
bit the silent run's.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.client import app as fedrank_client
from fedrank.config import Scenario
from fedrank.simulations.run import Backend, simulate
from tests.faults.foreign_client import foreign_client_app


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the faulty sites do: ``train[(partition, round)]`` and ``query[partition]``."""

    train: Mapping[tuple[int, int], str]
    query: Mapping[int, str] = dataclasses.field(default_factory=dict)
    victim: int = 0

    def silent(self) -> Plan:
        """Every misbehaviour replaced by sending nothing.

        A ``duplicate`` discovery answer leaves out its victim too (two nodes claim one
        partition: neither is trusted), so in the silent run the victim is silent at
        discovery as well.
        """
        query = dict.fromkeys(self.query, "raise")
        if "duplicate" in self.query.values():
            query[self.victim] = "raise"
        return Plan(train=dict.fromkeys(self.train, "raise"), query=query, victim=self.victim)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A finished run: its metrics rows and final global state."""

    rows: list[dict[str, Any]]
    state: dict[str, np.ndarray]
    summary: dict[str, Any]
    received: frozenset[tuple[int, int]]  # (partition, round) of every train message


def run(scenario: Scenario, plan: Plan, *, backend: Backend, late_seconds: float = 3.0) -> Outcome:
    """``scenario`` with the foreign site misbehaving as ``plan`` says."""
    folder = Path(scenario.output.results_dir)
    received = folder.with_name(folder.name + "-received")
    received.mkdir(parents=True)
    app = foreign_client_app(
        fedrank_client.app,
        train=plan.train,
        query=plan.query,
        victim=plan.victim,
        late_seconds=late_seconds,
        received=received,
    )
    summary = simulate(scenario, client_app=app, backend=backend)
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    delivered = frozenset(
        (int(p), int(r)) for p, r in (f.name.split("-") for f in received.iterdir())
    )
    return Outcome(rows, read_arrays(folder / FINAL_STATE), summary, delivered)


def faulty_and_silent(
    scenario: Scenario, plan: Plan, results: Path, *, backend: Backend, late_seconds: float = 3.0
) -> tuple[Outcome, Outcome]:
    """The run with ``plan``, and the same run where the faulty sites sent nothing."""
    faulty = run(
        scenario.replace(results_dir=str(results / "faulty")),
        plan,
        backend=backend,
        late_seconds=late_seconds,
    )
    silent = run(
        scenario.replace(results_dir=str(results / "silent")), plan.silent(), backend=backend
    )
    return faulty, silent


def rejected(row: Mapping[str, Any]) -> dict[str, int]:
    """A row's ``rejected.<reason>`` counts."""
    return {
        k.removeprefix("rejected."): int(v) for k, v in row.items() if k.startswith("rejected.")
    }


def check_same_result(
    faulty: Outcome, silent: Outcome, expected: Mapping[int, dict[str, int]]
) -> None:
    """Issue 16's acceptance: counted once under its reason, every round run, same model.

    ``expected``: round -> its rejection counts in the faulty run.
    """
    rounds = [row["round"] for row in faulty.rows]
    assert rounds == list(range(rounds[-1] + 1)), rounds  # every round, each once
    assert [row["round"] for row in silent.rows] == rounds
    for row in faulty.rows[1:]:
        assert not row["skipped"], row
        assert rejected(row) == expected.get(row["round"], {}), (row["round"], rejected(row))
        assert row["rejected"] == sum(expected.get(row["round"], {}).values()), row
    for ours, theirs in zip(faulty.rows[1:], silent.rows[1:], strict=True):
        assert ours["replies"] == theirs["replies"]
        assert ours["accuracy"] == theirs["accuracy"]
    assert faulty.state.keys() == silent.state.keys()
    for name in faulty.state:
        np.testing.assert_array_equal(faulty.state[name], silent.state[name], err_msg=name)
