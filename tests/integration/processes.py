"""Real processes for integration tests: started, watched, and stopped by PID.

Flower's SuperLink and SuperNodes start SuperExec children, which start a
``flwr-serverapp``/``flwr-clientapp`` per task; ``ray start --block`` starts
Ray's daemons. :class:`Processes` is fedrank's own process group
(:mod:`fedrank.deploy.processes`): a watcher thread records every descendant of
the processes a test started (PID and start time, so a reused PID is never
touched), and teardown stops exactly those: the started processes first
(SIGTERM, then SIGKILL), then any recorded descendant still alive. For a process a test put in
a session of its own (``start_new_session=True``), ``kill_session`` ends the
whole session, and ``is_descendant`` proves a PID is the test's before a test
kills it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil
import pytest

from fedrank.deploy.launch import environment_bin, flower_env
from fedrank.deploy.processes import ProcessGroup, free_ports

__all__ = [
    "ROOT",
    "VENV_BIN",
    "Processes",
    "base_env",
    "env_without_venv",
    "free_ports",
    "wait_for",
]

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = environment_bin()


def wait_for(
    condition: Callable[[], bool], *, timeout: float, what: str, poll: float = 0.2
) -> None:
    """Poll ``condition()`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)


class Processes(ProcessGroup):
    """Processes a test started, their logs, and every descendant seen.

    fedrank's own :class:`~fedrank.deploy.processes.ProcessGroup`, in the
    process group and session of the test run (a Ctrl-C of pytest reaches them).
    """

    def __init__(self, logs: Path) -> None:
        super().__init__(logs)

    def stop_all(self, *, grace: float = 15.0) -> list[str]:
        """Stop every started process and recorded descendant; return what had to be killed."""
        return super().stop_all(grace=grace)


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
    """Environment of the processes a test starts: fedrank's :func:`flower_env` (this venv
    first on PATH, Flower offline) with this checkout importable first (its code, not
    another installed copy, is tested)."""
    return flower_env(PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0", **extra)


def env_without_venv(**extra: str) -> dict[str, str]:
    """Environment of an operator who starts ``.venv/bin/fedrank`` by path, venv not activated.

    Every ``PATH`` folder holding Flower's commands is left out (this venv's ``bin``
    and any other), so a child that looks for ``flower-superexec`` on ``PATH``
    finds none; the checkout stays importable first, Flower offline.
    """
    env = base_env(**extra)
    folders = env["PATH"].split(os.pathsep)
    env["PATH"] = (
        os.pathsep.join(f for f in folders if f and not (Path(f) / "flower-superexec").exists())
        or os.defpath
    )
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
