"""Processes a test started, read from /proc (Linux): ancestry and whole sessions.

Tests kill only processes they can show they started: a descendant of the test
process, or a member of a session the test created (``start_new_session=True``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, session id) of ``pid``, or None if it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: fields after it follow its ")".
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # dead, waiting for its parent to reap it
        return None
    return int(fields[1]), int(fields[3])


def is_descendant(pid: int, ancestor: int) -> bool:
    """Whether ``ancestor`` is ``pid``'s parent, grandparent, ..."""
    seen = 0
    while pid > 1 and seen < 64:
        stat = _stat(pid)
        if stat is None:
            return False
        pid = stat[0]
        if pid == ancestor:
            return True
        seen += 1
    return False


def session_members(session: int) -> list[int]:
    """Every live process of session ``session``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None and stat[1] == session:
                members.append(int(entry.name))
    return members


def kill_session(session: int, *, timeout: float = 30.0) -> list[int]:
    """SIGKILL every process of a session the test created; wait until none is left.

    Returns the processes that were still alive when the call began (they may exit
    of their own accord once the session leader is gone, so each is killed by PID).

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
