"""fedrank's process group on real processes: orphans, SIGTERM-deaf processes, sessions.

The orphan cases stand in for Ray's DashboardAgent and RuntimeEnvAgent, which a
killed SuperLink leaves behind and which ignore SIGTERM: a grandchild that
ignores SIGTERM, in a session of its own, whose parent dies.
"""

from __future__ import annotations

import signal
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from fedrank.deploy.processes import (
    FIRST_LISTENING_PORT,
    ProcessGroup,
    WaitTimeout,
    free_ports,
    wait_until,
)

# Starts a grandchild that ignores SIGTERM (in its own session when asked),
# writes the grandchild's PID to argv[1], then sleeps (or exits when argv[3] is "exit").
PARENT = textwrap.dedent(
    """
    import subprocess, sys, time
    deaf = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    child = subprocess.Popen([sys.executable, "-c", deaf], start_new_session=sys.argv[2] == "own")
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(child.pid))
    import os; os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    if sys.argv[3] == "exit":
        sys.exit(0)
    time.sleep(600)
    """
)


def _read_pid(path: Path) -> int:
    wait_until(path.is_file, timeout=30, what=f"{path.name}", poll=0.05)
    return int(path.read_text())


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_orphan_that_ignores_sigterm_is_killed(tmp_path):
    group = ProcessGroup(tmp_path / "logs", poll=0.05)
    parent = group.start(
        "parent",
        [sys.executable, "-c", PARENT, str(tmp_path / "pid"), "own", "stay"],
        env={},
    )
    orphan = _read_pid(tmp_path / "pid")
    wait_until(
        lambda: any(pid == orphan for pid, _ in group.descendants()),
        timeout=30,
        what="the watcher to record the grandchild",
        poll=0.05,
    )
    parent.kill()  # as a crashed SuperLink: its children stay
    parent.wait(timeout=30)

    killed = group.stop_all(grace=0.5)

    assert not _alive(orphan)
    assert any(f"[{orphan}] outlived its parent (SIGKILL)" in line for line in killed), killed


def test_a_started_process_deaf_to_sigterm_gets_sigkill(tmp_path):
    group = ProcessGroup(tmp_path / "logs")
    deaf = "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    deaf += "print('ready', flush=True); time.sleep(600)"
    proc = group.start("deaf", [sys.executable, "-c", deaf], env={})
    wait_until(lambda: "ready" in group.log("deaf"), timeout=30, what="ready", poll=0.05)

    killed = group.stop_all(grace=0.5)

    assert proc.returncode == -signal.SIGKILL
    assert killed == [f"deaf [{proc.pid}] (SIGKILL)"]


def test_a_session_member_never_seen_by_the_watcher_is_found(tmp_path):
    # The watcher never scans (poll 600 s); the parent exits at once, so the
    # grandchild is no descendant any more when the group stops: only its session
    # (the one the group created for "parent") ties it to the group.
    group = ProcessGroup(tmp_path / "logs", new_session=True, poll=600)
    parent = group.start(
        "parent",
        [sys.executable, "-c", PARENT, str(tmp_path / "pid"), "same", "exit"],
        env={},
    )
    member = _read_pid(tmp_path / "pid")
    parent.wait(timeout=30)

    killed = group.stop_all(grace=0.5)

    assert not _alive(member)
    assert any(f"session {parent.pid} [{member}]" in line for line in killed), killed


def test_children_die_with_the_thread_that_started_them(tmp_path):
    group = ProcessGroup(tmp_path / "logs", die_with_parent=True)
    started: list[object] = []
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    thread = threading.Thread(target=lambda: started.append(group.start("s", sleeper, env={})))
    thread.start()
    thread.join()

    code = group.started["s"].wait(timeout=30)

    assert code == -signal.SIGTERM
    group.stop_all(grace=0.5)


def test_a_name_is_started_once(tmp_path):
    with ProcessGroup(tmp_path / "logs") as group:
        group.start("x", [sys.executable, "-c", "pass"], env={})
        with pytest.raises(ValueError, match="'x'"):
            group.start("x", [sys.executable, "-c", "pass"], env={})


def test_wait_until_names_what_it_waited_for():
    said: list[str] = []

    with pytest.raises(WaitTimeout, match=r"after 0.2 s waiting for the moon"):
        wait_until(lambda: False, timeout=0.2, what="the moon", poll=0.05, say=said.append)

    assert said == ["waiting up to 0.2 s for the moon"]


def test_wait_until_stops_when_the_check_raises():
    def check() -> None:
        raise RuntimeError("site-1 exited")

    with pytest.raises(RuntimeError, match="site-1 exited"):
        wait_until(lambda: False, timeout=60, what="x", check=check, say=lambda _: None)


def test_wait_until_returns_how_long_it_took():
    start = time.monotonic()

    took = wait_until(lambda: time.monotonic() - start > 0.1, timeout=30, what="x", poll=0.01)

    assert took >= 0.1


def test_free_ports_are_distinct():
    ports = free_ports(20)

    assert len(set(ports)) == 20
    assert all(0 < p < 65536 for p in ports)


def test_free_ports_lie_below_the_ports_outgoing_connections_take():
    # The kernel gives outgoing connections local ports from this range: one could take a
    # chosen port before its listener starts (a deployed test once failed so).
    first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])

    ports = free_ports(20)

    if first_ephemeral > FIRST_LISTENING_PORT + 100:  # room below it (32768 on Linux)
        assert all(FIRST_LISTENING_PORT <= p < first_ephemeral for p in ports)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports[0]))  # free indeed once released
