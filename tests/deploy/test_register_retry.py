"""``federation up``'s key registration when a ``flwr supernode register`` process fails.

Once under load, gRPC's poller aborted the CLI (SIGABRT, status -6) and ``federation up``
gave up. A CLI killed by a signal may or may not have registered its key first: the
Control API says which, and a key it did not register is asked for once more. A fake
``flwr`` (a shell script) plays the CLI; the SuperLink's listing is a stub.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fedrank.deploy import federation
from fedrank.deploy.federation import FederationError, LocalFederation
from fedrank.deploy.federation_plan import FederationPlan
from fedrank.deploy.processes import ProcessGroup

# argv: supernode register KEY CONNECTION; KEY.plan holds one outcome per attempt.
FAKE_FLWR = """#!/bin/bash
key="$3"
attempt=$(( $(cat "$key.attempts" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$key.attempts"
outcome=$(sed -n "${attempt}p" "$key.plan")
echo "fake flwr: attempt $attempt: $outcome"
case "$outcome" in
  abort) kill -ABRT $$ ;;
  fail) exit 1 ;;
  *) exit 0 ;;
esac
"""


def _register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plans: dict[str, str], *, listed: bool
) -> tuple[dict[str, int], list[str]]:
    fake = tmp_path / "flwr"
    fake.write_text(FAKE_FLWR)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(federation, "flower_executable", lambda name: str(fake))
    monkeypatch.setattr(federation, "key_listed", lambda *args: listed)
    monkeypatch.setattr(federation, "node_public_key", lambda path: path.name.encode())
    monkeypatch.setattr(federation, "wait_for_nodes", lambda *args, **kwargs: None)
    keys = {}
    for name, plan in plans.items():
        keys[name] = tmp_path / f"{name}.pub"
        (tmp_path / f"{name}.pub.plan").write_text(plan.replace(" ", "\n") + "\n")
    group = ProcessGroup(tmp_path / "logs")
    fed = LocalFederation(FederationPlan(tmp_path / "fed", timeout=60.0), group, api_port=1)
    said: list[str] = []
    try:
        federation._register(fed, keys, said.append)
    finally:
        group.stop_all(grace=5)
    attempts = {name: int((tmp_path / f"{name}.pub.attempts").read_text()) for name in plans}
    return attempts, said


def test_a_cli_killed_before_registering_is_run_once_more(tmp_path, monkeypatch):
    attempts, said = _register(
        tmp_path, monkeypatch, {"site-0": "abort ok", "site-1": "ok"}, listed=False
    )

    assert attempts == {"site-0": 2, "site-1": 1}
    assert any("of site-0 died (status -6); again" in line for line in said)


def test_a_cli_killed_after_registering_is_not_run_again(tmp_path, monkeypatch):
    attempts, said = _register(tmp_path, monkeypatch, {"site-0": "abort ok"}, listed=True)

    assert attempts == {"site-0": 1}
    assert not any("again" in line for line in said)


def test_a_cli_killed_twice_stops_federation_up_naming_the_site(tmp_path, monkeypatch):
    with pytest.raises(FederationError, match=r"register` of site-0 failed \(status -6\)"):
        _register(tmp_path, monkeypatch, {"site-0": "abort abort ok"}, listed=False)


def test_a_cli_that_exits_with_an_error_is_not_run_again(tmp_path, monkeypatch):
    with pytest.raises(FederationError, match=r"(?s)site-0 failed \(status 1\).*attempt 1: fail"):
        _register(tmp_path, monkeypatch, {"site-0": "fail ok"}, listed=False)


# argv: ls CONNECTION --run-id ID --format json; the folder's ls.plan: one outcome per call.
FAKE_FLWR_LS = """#!/bin/bash
here=$(dirname "$0")
attempt=$(( $(cat "$here/ls.attempts" 2>/dev/null || echo 0) + 1 ))
echo "$attempt" > "$here/ls.attempts"
case "$(sed -n "${attempt}p" "$here/ls.plan")" in
  abort) kill -ABRT $$ ;;
  *) echo '{"success": true, "runs": [{"run-id": "'"$4"'", "status": "finished:completed"}]}' ;;
esac
"""


@pytest.mark.parametrize(("plan", "outcome", "calls"), [
    ("abort ok", 0, 2), ("abort abort ok", 0, 3), ("abort abort abort ok", 1, 3), ("ok", 0, 1),
])  # fmt: skip
def test_a_run_status_query_killed_by_a_signal_is_asked_again(
    tmp_path, monkeypatch, plan, outcome, calls
):
    # `flwr ls` only reads: a CLI aborted by gRPC is run again (three calls at most),
    # rather than a completed run reported as failed.
    fake = tmp_path / "flwr"
    fake.write_text(FAKE_FLWR_LS)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "ls.plan").write_text(plan.replace(" ", "\n") + "\n")
    monkeypatch.setattr(federation, "flower_executable", lambda name: str(fake))
    group = ProcessGroup(tmp_path / "logs")
    fed = LocalFederation(FederationPlan(tmp_path / "fed", timeout=60.0), group, api_port=1)
    said: list[str] = []

    assert fed._outcome("7", said.append) == outcome
    assert int((tmp_path / "ls.attempts").read_text()) == calls
    if outcome == 0:
        assert said == []
    else:
        assert len(said) == 1
        assert "run 7 ended unknown (flwr ls gave no status" in said[0]
