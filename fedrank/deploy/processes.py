"""Processes fedrank starts, watched and stopped by PID, descendants included.

Flower's SuperLink and SuperNodes start SuperExec children in sessions of their
own, which start a ``flwr-serverapp``/``flwr-clientapp`` per task; a SuperLink
that runs a simulation starts Ray, whose DashboardAgent and RuntimeEnvAgent
outlive a killed parent and ignore SIGTERM. Stopping "the processes we started"
therefore needs more than their PIDs: a watcher thread records every descendant
of every started process (PID and start time, so a reused PID is never
touched), and :meth:`ProcessGroup.stop_all` ends exactly those, nothing found by
name: the started processes first (SIGTERM, then SIGKILL after a grace period),
then every recorded descendant and every member of a session this group created
that is still alive (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil  # type: ignore[import-untyped]  # psutil ships no type information

from fedrank.errors import FedrankError

log = logging.getLogger(__name__)

# (pid, start time): a PID alone may have been reused by the time it is stopped.
ProcessKey = tuple[int, float]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class WaitTimeout(FedrankError):
    """A bounded wait ran out; the message names what was awaited and for how long."""


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    poll: float = 0.25,
    check: Callable[[], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> float:
    """Poll ``condition()`` until it is true; return the seconds it took.

    Parameters
    ----------
    condition : callable
        Returns true once the awaited state is reached.
    timeout : float
        Seconds before giving up.
    what : str
        What is awaited, for the log line and the error ("the SuperLink's API on ...").
    poll : float
        Seconds between two calls of ``condition``.
    check : callable, optional
        Called before each poll; raises to abort the wait (a process died).
    say : callable, optional
        Receives "waiting up to N s for WHAT" once (default: the module's logger).

    Raises
    ------
    WaitTimeout
        ``condition`` stayed false for ``timeout`` seconds.
    """
    (say or log.info)(f"waiting up to {timeout:g} s for {what}")
    started = time.monotonic()
    while True:
        if check is not None:
            check()
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise WaitTimeout(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when its parent dies.

    It covers the one case :meth:`ProcessGroup.stop_all` cannot: this process
    being killed with SIGKILL. Elsewhere (not Linux) there is none.
    """
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded before the fork, not in the child
    prctl = libc.prctl

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return preexec


class ProcessGroup:
    """Processes started here, their logs, and every descendant seen.

    Parameters
    ----------
    logs : Path
        Folder for ``NAME.log`` (stdout and stderr of each started process).
    new_session : bool
        Start each process in a session of its own: a terminal's Ctrl-C then
        reaches only this process, which stops the group in order, and every
        member of those sessions can be found again at the end.
    die_with_parent : bool
        On Linux, have each started process receive SIGTERM when the thread that
        started it ends; start processes from the main thread then.
    poll : float
        Seconds between two scans for descendants.
    """

    def __init__(
        self,
        logs: Path,
        *,
        new_session: bool = False,
        die_with_parent: bool = False,
        poll: float = 0.3,
    ) -> None:
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self._new_session = new_session
        self._preexec = _die_with_parent() if die_with_parent else None
        self._seen: dict[ProcessKey, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._poll = poll
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="descendants")
        self._watcher.start()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr going to ``logs/NAME.log``."""
        if name in self.started:
            raise ValueError(f"a process named {name!r} was started already")
        with self.log_path(name).open("wb") as out:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=self._new_session,
                preexec_fn=self._preexec,  # one prctl call in the child, nothing that takes a lock
            )
        with self._lock:
            self.started[name] = proc
        return proc

    def log_path(self, name: str) -> Path:
        """Where the output of process ``name`` goes."""
        return self.logs / f"{name}.log"

    def log(self, name: str) -> str:
        """Everything process ``name`` wrote so far."""
        return self.log_path(name).read_text(errors="replace")

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last ``lines`` lines process ``name`` wrote."""
        return "\n".join(self.log(name).splitlines()[-lines:])

    def exited(self) -> dict[str, int]:
        """Started processes that have ended: name -> exit status."""
        with self._lock:
            started = list(self.started.items())
        return {name: code for name, proc in started if (code := proc.poll()) is not None}

    def descendants(self) -> dict[ProcessKey, str]:
        """Every descendant recorded so far: (pid, start time) -> "started name: its command"."""
        self.record_descendants()
        with self._lock:
            return dict(self._seen)

    def record_descendants(self) -> None:
        """Record every current descendant of every started process."""
        with self._lock:
            started = list(self.started.items())
        for name, proc in started:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.Error:
                continue
            for child in children:
                with contextlib.suppress(psutil.Error):
                    key = (child.pid, child.create_time())
                    what = f"{name}: {' '.join(Path(a).name for a in child.cmdline()[:2])}"
                    # Overwritten on every scan: a child seen between fork and exec
                    # still shows its parent's command line.
                    with self._lock:
                        self._seen[key] = what

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            self.record_descendants()

    def _sessions(self) -> set[int]:
        if not self._new_session:
            return set()
        with self._lock:
            return {proc.pid for proc in self.started.values()}

    def _leftovers(self) -> list[tuple[psutil.Process, str]]:
        """Recorded descendants and session members still alive (zombies excluded)."""
        found: dict[ProcessKey, tuple[psutil.Process, str]] = {}
        with self._lock:
            seen = dict(self._seen)
        for (pid, created), what in seen.items():
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    found[(pid, created)] = (proc, what)
        sessions = self._sessions()
        if sessions:
            for proc in psutil.process_iter():
                with contextlib.suppress(psutil.Error, OSError):
                    if os.getsid(proc.pid) in sessions and proc.status() != psutil.STATUS_ZOMBIE:
                        key = (proc.pid, proc.create_time())
                        found.setdefault(key, (proc, f"session {os.getsid(proc.pid)}"))
        return list(found.values())

    def stop_all(self, *, grace: float = 10.0) -> list[str]:
        """Stop every started process and every descendant seen; return what was killed.

        Started processes get SIGTERM (the newest first, so sites leave before their
        coordinator), and SIGKILL after ``grace`` seconds. Then every recorded
        descendant or session member still alive (orphans such as Ray's agents)
        gets SIGTERM and, ``grace`` seconds later, SIGKILL. Returns a line for
        each process that needed SIGKILL or outlived its parent.
        """
        self.record_descendants()
        self._stop.set()
        if self._watcher.is_alive() and self._watcher is not threading.current_thread():
            self._watcher.join(timeout=5)
        killed: list[str] = []
        with self._lock:
            started = list(self.started.items())
        for _, proc in reversed(started):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + grace
        for name, proc in started:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                killed.append(f"{name} [{proc.pid}] (SIGKILL)")
        leftovers = self._leftovers()
        for proc, _ in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs([p for p, _ in leftovers], timeout=grace)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)
        alive_pids = {p.pid for p in alive}
        for proc, what in leftovers:
            how = "SIGKILL" if proc.pid in alive_pids else "SIGTERM"
            killed.append(f"{what} [{proc.pid}] outlived its parent ({how})")
        return killed


# Ray's worker processes listen on 10002-19999 by default; ports from here up to the
# kernel's ephemeral range are taken by neither.
FIRST_LISTENING_PORT = 20000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports free on ``host`` now (all held while they are chosen).

    Drawn below the kernel's ephemeral range when it leaves room: a port the kernel gives
    out for binding to port 0 is also one it gives to outgoing connections, and one of
    those (a SuperNode polling, a Ray worker) could take it before its listener starts.
    Another program may still take one; a listener started on it then fails at once,
    naming the address.
    """
    try:
        first_ephemeral = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        first_ephemeral = FIRST_LISTENING_PORT
    room = range(FIRST_LISTENING_PORT, first_ephemeral)
    # Its own draw, whatever a caller seeded; a few spares for ports in use.
    candidates = random.Random(os.urandom(16)).sample(room, min(len(room), 20 * count))
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for port in candidates:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind((host, port))
            except OSError:
                continue
            ports.append(port)
            if len(ports) == count:
                break
        while len(ports) < count:  # no room below the ephemeral range: as the kernel says
            sock = stack.enter_context(socket.socket())
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def listening(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on ``host:port`` (within 1 s)."""
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def health_serving(address: str) -> bool:
    """Whether the ``grpc.health.v1`` service at ``address`` (plaintext) says SERVING."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1.0
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
