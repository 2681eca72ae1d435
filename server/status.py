"""Health and status of a running federation, served by the coordinator.

While a run is active the ServerApp serves, on ``status-address``:

- the standard gRPC health-checking service (``grpc.health.v1.Health``):
  ``SERVING`` for the server (``""``) and for ``fedrank.v1.Status`` while the
  service answers, ``NOT_SERVING`` as it shuts down;
- fedrank's ``Status`` service (``protos/fedrank/v1/status.proto``): current
  round, total rounds, last accuracy, epsilon spent, rejected replies, state.

When the run ends, both keep answering for ``linger`` seconds with the final
state (``finished`` or ``failed``) and figures, so that a watcher polling every
few seconds (``fedrank status``, a dashboard, a Kubernetes Job waiting on it)
learns how the run ended; then they stop and the address is free again.

Both are plaintext and read-only, like Flower's own health servers; in k8s/ a
NetworkPolicy admits the port from the namespace only. The status board is fed
by the round loop's per-round callback and never touches the run otherwise.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import threading
from collections.abc import Iterator, Mapping
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedrank.errors import ConfigError, FedrankError
from fedrank.protos import status_pb2, status_pb2_grpc
from fedrank.protos.status_codec import (
    RunState,
    RunStatus,
    status_from_proto,
    status_to_proto,
)
from fedrank.server.loop import RoundCallback

log = logging.getLogger(__name__)

STATUS_SERVICE = status_pb2.DESCRIPTOR.services_by_name["Status"].full_name
# Metrics keys that carry a cumulative epsilon (ClientLevelDp writes "dp-epsilon").
EPSILON_KEYS = ("epsilon", "dp-epsilon")


def status_after_round(status: RunStatus, row: Mapping[str, Any]) -> RunStatus:
    """The status once ``row`` (a line of metrics.jsonl) has been written.

    Epsilon keys hold cumulative figures, so the largest one reported in the
    row replaces the previous value; rejected (and missing) replies add up.
    """
    epsilons = [float(row[k]) for k in EPSILON_KEYS if k in row]
    return dataclasses.replace(
        status,
        state="running",
        round=int(row["round"]),
        last_accuracy=float(row["accuracy"]),
        epsilon_spent=max(epsilons) if epsilons else status.epsilon_spent,
        rejected_replies=status.rejected_replies + int(row.get("rejected", 0)),
    )


class StatusBoard:
    """The current :class:`RunStatus`, updated by the round loop, read by gRPC threads."""

    def __init__(self, *, total_rounds: int) -> None:
        self._lock = threading.Lock()
        self._status = RunStatus(state="starting", total_rounds=total_rounds)
        self._linger_over = threading.Event()

    def snapshot(self) -> RunStatus:
        """The status now."""
        with self._lock:
            return self._status

    def record_round(self, row: Mapping[str, Any]) -> None:
        """Per-round callback of :func:`fedrank.server.loop.run_rounds`."""
        with self._lock:
            self._status = status_after_round(self._status, row)

    def set_state(self, state: RunState) -> None:
        """Mark the run ``finished`` or ``failed``."""
        with self._lock:
            self._status = dataclasses.replace(self._status, state=state)

    def stop_lingering(self) -> None:
        """End the wait after the run (``linger`` of :func:`serve_status`) now.

        Safe from any thread, before or during that wait (a signal handler, a test).
        """
        self._linger_over.set()

    def linger(self, seconds: float) -> None:
        """Wait ``seconds`` unless :meth:`stop_lingering` is called first."""
        self._linger_over.wait(seconds)

    def chain(self, on_round: RoundCallback | None) -> RoundCallback:
        """A callback that records the row here, then calls ``on_round`` (if any)."""

        def callback(row: dict[str, Any]) -> None:
            self.record_round(row)
            if on_round is not None:
                on_round(row)

        return callback


class _StatusServicer(status_pb2_grpc.StatusServicer):
    def __init__(self, board: StatusBoard) -> None:
        self._board = board

    def Get(  # noqa: N802  (the RPC's name)
        self, request: status_pb2.StatusRequest, context: grpc.ServicerContext
    ) -> status_pb2.StatusReply:
        return status_to_proto(self._board.snapshot())


def check_linger(linger: float) -> float:
    """``linger`` if it is a number of seconds >= 0 (a ``status-linger`` setting).

    Raises
    ------
    ConfigError
        Anything else, naming the value.
    """
    if isinstance(linger, bool) or not isinstance(linger, int | float) or not linger >= 0:
        raise ConfigError("status-linger", f"must be a number of seconds >= 0, got {linger!r}")
    if math.isinf(linger):
        raise ConfigError("status-linger", "must be finite: the run would never end")
    return float(linger)


@contextlib.contextmanager
def serve_status(address: str, *, total_rounds: int, linger: float = 0.0) -> Iterator[StatusBoard]:
    """Serve health and status on ``address`` for the duration of the block, and after.

    With an empty ``address`` nothing is served and the board is still
    returned (plain simulations). The board ends ``finished`` when the block
    completes and ``failed`` when it raises an ``Exception``.

    Parameters
    ----------
    address : str
        ``HOST:PORT`` to listen on (plaintext); empty: serve nothing.
    total_rounds : int
        Rounds of the run, reported from the start.
    linger : float
        Seconds to keep answering once the block has ended (the final state and
        figures), before the server stops and the block's exit returns (or its
        exception propagates). 0: stop at once. Not applied when the block is
        left by ``KeyboardInterrupt``, ``SystemExit`` or ``GeneratorExit``:
        a stopped process must stop now.

    Raises
    ------
    ConfigError
        ``address`` cannot be listened on, or ``linger`` is not a finite number >= 0.
    """
    linger = check_linger(linger)
    board = StatusBoard(total_rounds=total_rounds)
    with contextlib.ExitStack() as stack:
        if address:
            stack.enter_context(_serving(address, board))
        try:
            yield board
        except Exception:
            board.set_state("failed")
            _linger(address, linger, board)
            raise
        except BaseException:
            board.set_state("failed")
            raise
        board.set_state("finished")
        _linger(address, linger, board)


def _linger(address: str, linger: float, board: StatusBoard) -> None:
    """Keep the server of the enclosing block answering for ``linger`` seconds."""
    if not address or linger <= 0:
        return
    final = board.snapshot()
    log.info(
        "fedrank status: run %s after round %d; still answering on %s for %g s",
        final.state,
        final.round,
        address,
        linger,
    )
    board.linger(linger)


@contextlib.contextmanager
def _serving(address: str, board: StatusBoard) -> Iterator[None]:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="status"),
        # gRPC shares ports by default (SO_REUSEPORT): a second run on the same
        # address would then answer for the first. Fail clearly instead.
        options=[("grpc.so_reuseport", 0)],
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    # The generated gRPC module is untyped (protoc writes no annotations).
    status_pb2_grpc.add_StatusServicer_to_server(  # type: ignore[no-untyped-call]
        _StatusServicer(board), server
    )
    try:
        port = server.add_insecure_port(address)
    except RuntimeError as err:
        raise ConfigError("status-address", f"cannot listen on {address}: {err}") from err
    for service in ("", STATUS_SERVICE):
        health_servicer.set(service, health_pb2.HealthCheckResponse.SERVING)
    server.start()
    log.info("fedrank status and grpc.health.v1 on %s (port %d)", address, port)
    try:
        yield
    finally:
        health_servicer.enter_graceful_shutdown()
        server.stop(grace=1.0).wait(timeout=5.0)


# ------------------------------------------------------------------ client side


def fetch_status(address: str, *, timeout: float = 5.0) -> tuple[RunStatus, str]:
    """Ask the coordinator at ``address``: its :class:`RunStatus` and health.

    Raises
    ------
    FedrankError
        When nothing answers within ``timeout`` seconds, or the answer is not
        fedrank's status service.
    """
    with grpc.insecure_channel(address) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
            stub = status_pb2_grpc.StatusStub(channel)  # type: ignore[no-untyped-call]
            reply = stub.Get(status_pb2.StatusRequest(), timeout=timeout)
            checked = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=STATUS_SERVICE), timeout=timeout
            )
        except grpc.FutureTimeoutError as err:
            raise FedrankError(
                f"nothing answers at {address} within {timeout:g} s: is a run active, "
                "started with status-address set to this address?"
            ) from err
        except grpc.RpcError as err:
            raise FedrankError(
                f"{address} answered, but not as fedrank's status service: "
                f"{err.code().name}: {err.details()}"
            ) from err
    health_name = health_pb2.HealthCheckResponse.ServingStatus.Name(checked.status)
    return status_from_proto(reply), health_name


def format_status(status: RunStatus, health_name: str) -> str:
    """Human-readable lines for ``fedrank status``."""
    accuracy = (
        "n/a (not evaluated yet)"
        if math.isnan(status.last_accuracy)
        else f"{100 * status.last_accuracy:.2f}%"
    )
    epsilon = (
        "n/a (no privacy accounting in this run)"
        if math.isnan(status.epsilon_spent)
        else f"{status.epsilon_spent:.4g}"
    )
    return "\n".join(
        [
            f"state:            {status.state}",
            f"round:            {status.round} of {status.total_rounds}",
            f"last accuracy:    {accuracy}",
            f"epsilon spent:    {epsilon}",
            f"rejected replies: {status.rejected_replies}",
            f"health:           {health_name}",
        ]
    )
