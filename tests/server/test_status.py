"""The coordinator's health and status service, on loopback, and ``fedrank status``."""

from __future__ import annotations

import json
import math
import socket

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedrank.cli import main
from fedrank.config import Scenario
from fedrank.errors import ConfigError, FedrankError
from fedrank.protos.status_codec import RunStatus
from fedrank.server.status import (
    STATUS_SERVICE,
    StatusBoard,
    fetch_status,
    serve_status,
    status_after_round,
)


def _free_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


def _health(address: str, service: str = "") -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
    return int(reply.status)


ROW0 = {"round": 0, "accuracy": 0.1, "loss": 2.3, "seconds": 0.0}
ROW1 = {"round": 1, "accuracy": 0.7, "rejected": 2, "dp-epsilon": 0.4}
ROW2 = {"round": 2, "accuracy": 0.8, "rejected": 1, "dp-epsilon": 0.9}


def test_status_follows_the_rows_of_the_round_loop():
    start = RunStatus(state="starting", total_rounds=5)

    after = status_after_round(status_after_round(status_after_round(start, ROW0), ROW1), ROW2)

    assert after == RunStatus(
        state="running",
        round=2,
        total_rounds=5,
        last_accuracy=0.8,
        epsilon_spent=0.9,
        rejected_replies=3,
    )
    assert math.isnan(status_after_round(start, ROW0).epsilon_spent)  # no accounting yet


def test_chained_callback_records_then_forwards():
    board = StatusBoard(total_rounds=3)
    seen = []

    board.chain(seen.append)(dict(ROW1))

    assert seen == [ROW1]
    assert board.snapshot().round == 1


@pytest.mark.integration
def test_health_and_status_answer_during_the_block_and_not_after(capsys):
    address = _free_address()

    with serve_status(address, total_rounds=4) as board:
        waiting, _ = fetch_status(address)
        board.record_round(ROW0)
        board.record_round(ROW1)
        running, health_name = fetch_status(address)
        serving = (_health(address), _health(address, STATUS_SERVICE))
        cli_status = main(["status", address])
        cli_out = capsys.readouterr().out
        json_status = main(["status", address, "--json"])
        as_json = json.loads(capsys.readouterr().out)

    assert waiting.state == "starting"
    assert math.isnan(waiting.last_accuracy)
    assert (running.state, running.round, running.total_rounds) == ("running", 1, 4)
    assert (running.last_accuracy, running.epsilon_spent, running.rejected_replies) == (0.7, 0.4, 2)
    assert health_name == "SERVING"
    assert serving == (health_pb2.HealthCheckResponse.SERVING,) * 2
    assert cli_status == json_status == 0
    assert "round:            1 of 4" in cli_out
    assert "last accuracy:    70.00%" in cli_out
    assert as_json["epsilon_spent"] == 0.4
    assert board.snapshot().state == "finished"
    with pytest.raises(FedrankError, match="nothing answers"):
        fetch_status(address, timeout=0.5)


@pytest.mark.integration
def test_a_failing_run_ends_failed():
    address = _free_address()

    with pytest.raises(RuntimeError, match="boom"), serve_status(address, total_rounds=1) as board:
        raise RuntimeError("boom")

    assert board.snapshot().state == "failed"


def test_empty_address_serves_nothing_but_still_keeps_the_board():
    with serve_status("", total_rounds=2) as board:
        board.record_round(ROW0)

    final = board.snapshot()
    assert (final.state, final.round, final.total_rounds, final.last_accuracy) == (
        "finished",
        0,
        2,
        0.1,
    )


@pytest.mark.integration
def test_an_address_in_use_is_a_config_error():
    address = _free_address()

    with serve_status(address, total_rounds=1), pytest.raises(ConfigError, match="status-address"):  # noqa: SIM117
        with serve_status(address, total_rounds=1):
            pass


def test_status_command_fails_clearly_when_nothing_answers(capsys):
    status = main(["status", _free_address(), "--timeout", "0.5"])

    assert status != 0
    assert "nothing answers" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["9095", "host:", ":9095", "h:70000", "h:x", "::1:9095"])
def test_status_address_is_validated(value):
    with pytest.raises(ConfigError, match="status-address"):
        Scenario.of(status_address=value)


@pytest.mark.parametrize("value", ["", "0.0.0.0:9095", "localhost:0", "[::1]:9095"])
def test_status_address_accepts_host_and_port(value):
    assert Scenario.of(status_address=value).output.status_address == value
