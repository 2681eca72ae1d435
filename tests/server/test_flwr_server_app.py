"""The `flwr run` ServerApp: its run config, the per-round line, resume-from."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from fedrank.client.app import app as client_app
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.server.app import app as server_app
from fedrank.server.app import deployed_scenario, round_line
from fedrank.simulations.local_grid import InProcessGrid, server_identity


def test_round_line_names_every_figure() -> None:
    row = {
        "round": 3,
        "accuracy": 0.91234,
        "loss": 0.25,
        "rejected": 1,
        "seconds": 2.04,
        "federated_accuracy": 0.875,
        "federated_replies": 4,
        "dp-record-epsilon": 1.5,
        "dp-epsilon": 0.75,
    }
    assert round_line(row, total_rounds=5) == (
        "fedrank: round 3/5: accuracy 91.23%, loss 0.2500, federated accuracy 87.50% "
        "(4 sites), epsilon/record 1.500, epsilon/client 0.750, rejected 1 (2.0 s)"
    )


def test_round_line_of_the_start_and_of_a_skipped_round() -> None:
    start = {"round": 0, "accuracy": 0.1, "loss": 2.3, "seconds": 0.0}
    assert round_line(start, total_rounds=2) == (
        "fedrank: round 0/2: accuracy 10.00%, loss 2.3000 (0.0 s)"
    )
    skipped = {"round": 1, "accuracy": 0.1, "loss": 2.3, "seconds": 1.0, "skipped": True}
    assert "[skipped: too few valid replies]" in round_line(skipped, total_rounds=2)


def run_config(results: Path, **changes: Any) -> dict[str, Any]:
    scenario = Scenario.of(
        dataset="digits",
        num_clients=3,
        clients_per_round=2,
        rounds=1,
        lr=1.0,
        local_epochs=1,
        eval_fraction=0.2,
        results_dir=str(results),
        status_linger=0.0,
    )
    return {**scenario.to_run_config(), **changes}


def serve(config: dict[str, Any]) -> None:
    """The `flwr run` ServerApp on in-process nodes, with this run config."""
    grid = InProcessGrid(client_app, num_nodes=int(config["num-clients"]))
    context = Context(
        run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=config
    )
    with server_identity(grid.run):
        server_app(grid, context)


def rows(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (results / "metrics.jsonl").open()]


def test_without_resume_from_the_run_config_is_the_scenario(tmp_path: Path) -> None:
    config = run_config(tmp_path)
    scenario, checkpoint = deployed_scenario(config)
    assert checkpoint is None
    assert scenario.to_run_config() == config


def test_attacks_are_refused(tmp_path: Path) -> None:
    config = run_config(tmp_path, attack="reverse_ranking", **{"malicious-fraction": 0.3})
    with pytest.raises(ConfigError, match=r"^attack: attacks are simulated"):
        deployed_scenario(config)


def test_resume_from_a_folder_without_a_run_is_refused(tmp_path: Path) -> None:
    config = run_config(tmp_path / "new", **{"resume-from": str(tmp_path / "nothing")})
    with pytest.raises(ConfigError, match=r"^resume-from: resume: no scenario\.json"):
        deployed_scenario(config)


def test_the_deployed_app_logs_each_round_and_resumes_a_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    results = tmp_path / "run-1"
    flower = logging.getLogger("flwr")
    monkeypatch.setattr(flower, "propagate", flower.propagate)  # the app turns it off
    # INFO whatever an earlier test in this process left (`fedrank simulate` run in
    # process quiets Flower's logger to ERROR); restored after the test.
    caplog.set_level(logging.INFO, logger="flwr")
    flower.addHandler(caplog.handler)
    try:
        serve(run_config(results))
    finally:
        flower.removeHandler(caplog.handler)
    assert flower.propagate is False  # so that no line reaches the stream twice
    lines = [r.getMessage() for r in caplog.records if "fedrank: round" in r.getMessage()]
    assert [line.split(":")[1] for line in lines] == [" round 0/1", " round 1/1"]
    assert "federated accuracy" in lines[1]

    # The same settings, two more rounds, resume-from that folder (results-dir elsewhere).
    again = run_config(
        tmp_path / "ignored", rounds=3, **{"resume-from": str(results), "status-linger": 1.0}
    )
    scenario, checkpoint = deployed_scenario(again)
    assert checkpoint is not None
    assert checkpoint.round == 1
    assert scenario.output.results_dir == str(results)
    serve(again)

    summary = json.loads((results / "summary.json").read_text())
    assert summary["resumed_after_round"] == 1
    assert summary["rounds"] == 3
    assert summary["device"] == "cpu"
    assert [row["round"] for row in rows(results)] == [0, 1, 2, 3]
    assert all("federated_accuracy" in row for row in rows(results)[1:])
    assert not (tmp_path / "ignored").exists()


def test_resume_from_with_other_settings_names_them(tmp_path: Path) -> None:
    results = tmp_path / "run-1"
    serve(run_config(results))
    changed = run_config(results, lr=0.5, seed=3, rounds=2, **{"resume-from": str(results)})
    with pytest.raises(ConfigError) as err:
        deployed_scenario(changed)
    message = str(err.value)
    assert message.startswith(f"resume-from: {results} holds a run with other settings")
    assert "lr (the run: 1.0, this run config: 0.5)" in message
    assert "seed (the run: 0, this run config: 3)" in message
    assert "rounds" not in message.split("may change):")[1]
