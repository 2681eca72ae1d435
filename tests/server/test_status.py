"""The coordinator's health and status service, on loopback, and ``fedrank status``."""

from __future__ import annotations

import json
import math
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedrank.cli import main
from fedrank.config import Scenario
from fedrank.deploy.processes import free_ports
from fedrank.errors import ConfigError, FedrankError
from fedrank.protos.status_codec import RunStatus
from fedrank.server.status import (
    STATUS_SERVICE,
    StatusBoard,
    check_linger,
    fetch_status,
    serve_status,
    status_after_round,
)


def _free_address() -> str:
    return f"127.0.0.1:{free_ports(1)[0]}"


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


# ------------------------------------------------------------------ after the run


def _run_in_thread(address: str, *, linger: float, fail: bool = False):
    """A run on a thread: two rounds, then the block ends (raising if ``fail``).

    Returns the thread, the board (once the block has been entered), an event set
    when the block's body is done, and a list that receives what the block raised.
    """
    entered, done = threading.Event(), threading.Event()
    holder: dict[str, StatusBoard] = {}
    raised: list[BaseException] = []

    def run() -> None:
        try:
            with serve_status(address, total_rounds=2, linger=linger) as board:
                holder["board"] = board
                entered.set()
                board.record_round(ROW1)
                board.record_round(ROW2)
                done.set()
                if fail:
                    raise RuntimeError("boom")
        except BaseException as err:  # the thread reports it to the test
            raised.append(err)
            entered.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert entered.wait(30)
    return thread, holder["board"], done, raised


@pytest.mark.integration
@pytest.mark.parametrize(("fail", "state"), [(False, "finished"), (True, "failed")])
def test_the_final_state_and_figures_keep_answering_after_the_run(fail, state):
    address = _free_address()
    thread, board, done, raised = _run_in_thread(address, linger=600, fail=fail)
    assert done.wait(30)

    # The run is over (its block has ended), the answer stays.
    for _ in range(600):
        if board.snapshot().state in ("finished", "failed"):
            break
        time.sleep(0.05)
    after, health_name = fetch_status(address)
    still_serving = _health(address, STATUS_SERVICE)
    board.stop_lingering()
    thread.join(30)

    assert (after.state, after.round, after.total_rounds) == (state, 2, 2)
    assert (after.last_accuracy, after.epsilon_spent, after.rejected_replies) == (0.8, 0.9, 3)
    assert health_name == "SERVING"
    assert still_serving == health_pb2.HealthCheckResponse.SERVING
    assert not thread.is_alive()
    assert [type(e) for e in raised] == ([RuntimeError] if fail else [])
    with pytest.raises(FedrankError, match="nothing answers"):
        fetch_status(address, timeout=0.5)


@pytest.mark.integration
def test_an_interrupted_run_does_not_linger():
    address = _free_address()
    stopped = threading.Event()

    def run() -> None:
        with pytest.raises(KeyboardInterrupt), serve_status(address, total_rounds=1, linger=600):
            raise KeyboardInterrupt
        stopped.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)

    assert stopped.is_set()  # not held for 600 s
    with pytest.raises(FedrankError, match="nothing answers"):
        fetch_status(address, timeout=0.5)


def test_without_an_address_nothing_lingers():
    with serve_status("", total_rounds=1, linger=600) as board:
        board.record_round(ROW0)

    assert board.snapshot().state == "finished"  # returned at once: nothing to answer with


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), "5", True, None])
def test_linger_must_be_finite_seconds(value):
    with pytest.raises(ConfigError, match="status-linger"):
        check_linger(value)


@pytest.mark.parametrize("value", [0, 0.5, 60])
def test_linger_accepts_seconds(value):
    assert check_linger(value) == float(value)
