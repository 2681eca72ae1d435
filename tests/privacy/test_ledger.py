"""Privacy ledger: durable appends, resume, crash tolerance, idempotence, budget."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import fedrank.privacy.ledger as ledger_module
from fedrank.errors import CheckpointError, PrivacyBudgetExhausted
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.ledger import PrivacyLedger, Release

DELTA = 1e-5


def server_release(round_: int, sigma: float = 1.0, q: float = 1.0) -> Release:
    return Release(
        round=round_,
        mechanism="client-gaussian",
        noise_multiplier=sigma,
        sample_rate=q,
        steps=1,
        clip_norm=0.5,
        unit="client",
        party="server",
    )


def client_release(round_: int, party: str, steps: int = 50) -> Release:
    return Release(
        round=round_,
        mechanism="dp-sgd",
        noise_multiplier=1.1,
        sample_rate=0.02,
        steps=steps,
        clip_norm=1.0,
        unit="record",
        party=party,
    )


def make(path: Path, budget: float | None = None) -> PrivacyLedger:
    return PrivacyLedger(path, budget_epsilon=budget, delta=DELTA, accountant="rdp")


def test_record_appends_one_fsynced_json_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(ledger_module.os, "fsync", spy)
    path = tmp_path / "run" / "privacy.jsonl"
    ledger = make(path)

    epsilon = ledger.record(server_release(1))

    lines = path.read_text().splitlines()
    assert len(lines) == 1
    assert Release.from_json(lines[0]) == server_release(1)
    assert json.loads(lines[0])["party"] == "server"
    assert len(synced) == 2  # the file, then its new directory entry
    assert epsilon == ledger.spent(unit="client", party="server") > 0


def test_resume_reads_the_ledger_back(tmp_path: Path) -> None:
    path = tmp_path / "privacy.jsonl"
    first = make(path)
    first.record(server_release(1))
    first.record(client_release(1, "client-3"))
    first.record(server_release(2))

    resumed = make(path)

    assert resumed.releases == first.releases
    assert resumed.spent(unit="client", party="server") == first.spent(
        unit="client", party="server"
    )
    assert resumed.spent(unit="record", party="client-3") > 0
    assert resumed.spent(unit="record", party="client-9") == 0.0


def test_epsilon_is_cumulative_over_rounds(tmp_path: Path) -> None:
    ledger = make(tmp_path / "privacy.jsonl")
    for r in (1, 2, 3):
        ledger.record(client_release(r, "client-0", steps=40))

    spent = ledger.spent(unit="record", party="client-0")

    all_steps = compute_epsilon(history=[(1.1, 0.02, 120)], delta=DELTA, accountant="rdp")
    last_round = compute_epsilon(history=[(1.1, 0.02, 40)], delta=DELTA, accountant="rdp")
    assert spent == pytest.approx(all_steps, rel=1e-12)
    assert spent > last_round


def test_parties_and_units_are_accounted_separately(tmp_path: Path) -> None:
    ledger = make(tmp_path / "privacy.jsonl")
    ledger.record(client_release(1, "a"))
    ledger.record(client_release(2, "a"))
    ledger.record(client_release(1, "b"))

    assert ledger.spent(unit="record", party="a") > ledger.spent(unit="record", party="b") > 0
    assert ledger.spent(unit="client", party="server") == 0.0


def test_truncated_last_line_is_ignored_and_cut_at_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "privacy.jsonl"
    make(path).record(server_release(1))
    whole = server_release(2).to_json()
    with path.open("a") as f:
        f.write(whole[: len(whole) // 2])  # a crash mid-write

    with pytest.warns(RuntimeWarning, match="truncated last line"):
        ledger = make(path)
    assert ledger.releases == (server_release(1),)

    ledger.record(server_release(2))
    reread = make(path)  # no warning, no error: the partial line is gone
    assert reread.releases == (server_release(1), server_release(2))
    assert path.read_text().count("\n") == 2


def test_complete_last_line_without_newline_counts(tmp_path: Path) -> None:
    path = tmp_path / "privacy.jsonl"
    path.write_text(server_release(1).to_json())  # the newline never made it

    ledger = make(path)
    ledger.record(server_release(2))

    assert ledger.releases == (server_release(1), server_release(2))
    assert make(path).releases == ledger.releases


@pytest.mark.parametrize(
    "corrupt",
    ['{"round": 2, "mechanism"', "not json", json.dumps({"round": 2}), '{"round": "2"}'],
)
def test_corrupt_middle_line_raises(tmp_path: Path, corrupt: str) -> None:
    path = tmp_path / "privacy.jsonl"
    path.write_text(
        server_release(1).to_json() + "\n" + corrupt + "\n" + server_release(3).to_json() + "\n"
    )

    with pytest.raises(CheckpointError, match="line 2"):
        make(path)


def test_record_is_idempotent_across_resumes(tmp_path: Path) -> None:
    path = tmp_path / "privacy.jsonl"
    ledger = make(path)
    eps = ledger.record(server_release(1))

    again = ledger.record(server_release(1))
    resumed = make(path)
    replay = resumed.record(server_release(1))

    assert eps == again == replay
    assert len(path.read_text().splitlines()) == 1
    assert resumed.check(server_release(1)) == eps  # a recorded release is not counted twice


def test_a_different_release_for_the_same_round_counts_too(tmp_path: Path) -> None:
    ledger = make(tmp_path / "privacy.jsonl")
    once = ledger.record(server_release(1, sigma=2.0))

    with pytest.warns(RuntimeWarning, match="counting both"):
        twice = ledger.record(server_release(1, sigma=3.0))

    assert len(ledger.releases) == 2
    assert twice > once


def test_budget_check_raises_before_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "privacy.jsonl"
    one_round = compute_epsilon(history=[(1.0, 1.0, 1)], delta=DELTA, accountant="rdp")
    two_rounds = compute_epsilon(history=[(1.0, 1.0, 2)], delta=DELTA, accountant="rdp")
    budget = (one_round + two_rounds) / 2
    ledger = make(path, budget=budget)
    ledger.record(server_release(1))
    before = path.read_bytes()

    assert ledger.check(server_release(1)) == one_round
    with pytest.raises(PrivacyBudgetExhausted, match=r"round 2") as info:
        ledger.check(server_release(2))
    with pytest.raises(PrivacyBudgetExhausted):
        ledger.record(server_release(2))

    message = str(info.value)
    assert f"{two_rounds:.4f}" in message
    assert f"{budget:g}" in message
    assert path.read_bytes() == before
    assert ledger.releases == (server_release(1),)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("round", -1),
        ("round", True),
        ("mechanism", "laplace"),
        ("noise_multiplier", -1.0),
        ("sample_rate", 1.5),
        ("steps", 2.5),
        ("clip_norm", 0.0),
        ("unit", "record"),  # a client-gaussian release protects clients
        ("party", ""),
        ("digest", "abc"),
    ],
)
def test_release_validation_names_the_field(field: str, value: object) -> None:
    fields = {
        "round": 1,
        "mechanism": "client-gaussian",
        "noise_multiplier": 1.0,
        "sample_rate": 1.0,
        "steps": 1,
        "clip_norm": 1.0,
        "unit": "client",
        "party": "server",
    }
    fields[field] = value

    with pytest.raises(ValueError, match=field):
        Release(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"budget_epsilon": 0.0}, "budget_epsilon"),
        ({"delta": 0.0}, "delta"),
        ({"accountant": "gdp"}, "accountant"),
    ],
)
def test_ledger_validation_names_the_argument(
    tmp_path: Path, kwargs: dict[str, object], named: str
) -> None:
    args: dict[str, object] = {"budget_epsilon": None, "delta": DELTA, "accountant": "rdp"}
    args.update(kwargs)

    with pytest.raises(ValueError, match=named):
        PrivacyLedger(tmp_path / "l.jsonl", **args)  # type: ignore[arg-type]


def test_history_is_the_partys_releases_before_a_round_merged_as_opacus_does(
    tmp_path: Path,
) -> None:
    # Arrange: two clients' DP-SGD releases over three rounds, and a server release.
    ledger = PrivacyLedger(tmp_path / "l.jsonl", budget_epsilon=None, delta=DELTA, accountant="rdp")
    for round_ in (1, 2, 3):
        for party in ("partition-0", "partition-1"):
            ledger.record(
                Release(
                    round=round_,
                    mechanism="dp-sgd",
                    noise_multiplier=1.0,
                    sample_rate=0.25,
                    steps=4 if party == "partition-0" else 2,
                    clip_norm=1.0,
                    unit="record",
                    party=party,
                )
            )
    ledger.record(server_release(1))

    # Act
    before_three = ledger.history(unit="record", party="partition-0", before_round=3)
    first = ledger.history(unit="record", party="partition-1", before_round=1)
    server = ledger.history(unit="client", party="server", before_round=2)

    # Assert
    assert before_three == ((1.0, 0.25, 8),)
    assert first == ()
    assert server == ((1.0, 1.0, 1),)
