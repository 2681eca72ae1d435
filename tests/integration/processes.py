"""Real processes for integration tests: started, watched, and stopped by PID.

Flower's SuperLink and SuperNodes start SuperExec children, which start a
``flwr-serverapp``/``flwr-clientapp`` per task; ``ray start --block`` starts
Ray's daemons. A watcher thread records every descendant of the processes a
test started (PID and start time, so a reused PID is never touched), and
teardown stops exactly those: the started processes first (SIGTERM, then
SIGKILL), then any recorded descendant still alive. For a process a test put in
a session of its own (``start_new_session=True``), ``kill_session`` ends the
whole session, and ``is_descendant`` proves a PID is the test's before a test
kills it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held together while chosen)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.2
) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class Processes:
    """Processes a test started, their logs, and every descendant seen."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self._seen: dict[tuple[int, float], str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def start(
        self, name: str, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with stdout and stderr to ``logs/NAME.log``."""
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            list(argv), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        with self._lock:
            self.started[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")

    def descendants(self) -> dict[tuple[int, float], str]:
        """Every descendant recorded so far: (pid, start time) -> "started name: its command"."""
        self.record_descendants()
        with self._lock:
            return dict(self._seen)

    def record_descendants(self) -> None:
        with self._lock:
            started = list(self.started.items())
        for name, proc in started:
            try:
                children = psutil.Process(proc.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                continue
            for child in children:
                with contextlib.suppress(psutil.Error):
                    key = (child.pid, child.create_time())
                    what = f"{name}: {' '.join(Path(a).name for a in child.cmdline()[:2])}"
                    with self._lock:
                        self._seen.setdefault(key, what)

    def _watch(self) -> None:
        while not self._stop.wait(0.3):
            self.record_descendants()

    def stop_all(self) -> list[str]:
        """Stop every started process and recorded descendant; return what had to be killed."""
        self.record_descendants()
        self._stop.set()
        self._watcher.join(timeout=5)
        killed: list[str] = []
        for proc in reversed(list(self.started.values())):
            if proc.poll() is None:
                proc.terminate()
        for name, proc in self.started.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
                killed.append(name)
        leftovers = []
        for (pid, created), name in self._seen.items():
            with contextlib.suppress(psutil.Error):
                child = psutil.Process(pid)
                if child.create_time() == created and child.status() != psutil.STATUS_ZOMBIE:
                    leftovers.append(child)
                    killed.append(f"{name} [{pid}]")
        for child in leftovers:
            with contextlib.suppress(psutil.Error):
                child.terminate()
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for child in alive:
            with contextlib.suppress(psutil.Error):
                child.kill()
        psutil.wait_procs(alive, timeout=10)
        return killed


def still_running(keys: Mapping[tuple[int, float], str] | Sequence[tuple[int, float]]) -> list[int]:
    """PIDs among ``keys`` (pid, start time) that are still running (zombies excluded)."""
    running = []
    for pid, created in keys:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
    return running


def base_env(**extra: str) -> dict[str, str]:
    """Environment of the processes a test starts: this venv first on PATH, Flower offline,
    and this checkout importable first (its code, not another installed copy, is tested)."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    env.update(extra)
    return env


def is_descendant(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is ``pid``'s parent, grandparent, ..."""
    try:
        return any(parent.pid == ancestor for parent in psutil.Process(pid).parents())
    except psutil.Error:
        return False


def session_members(session: int) -> list[int]:
    """Every live process (zombies excluded) of session ``session``."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if proc.status() != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == session:
                members.append(proc.pid)
    return members


def kill_session(session: int, *, timeout: float = 30.0) -> list[int]:
    """SIGKILL every process of a session the test created; wait until none is left.

    Returns the processes that were alive when the call began (each is killed by
    PID: they may outlive the session leader).

    Raises
    ------
    TimeoutError
        Some process of the session survived ``timeout`` seconds.
    """
    members = left = session_members(session)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        left = session_members(session)
    if left:
        raise TimeoutError(f"processes {left} of session {session} survived SIGKILL")
    return members
