"""The privacy report of a results folder is read from its settings and ledgers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrank.cli import main
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.privacy.report import LEDGER_FILES, SETTINGS_FILE, privacy_summary

DELTA = 1e-5


def write_run(folder: Path, *, budget: float) -> None:
    settings = {
        "dp": "sample",
        "delta": DELTA,
        "accountant": "rdp",
        "record": {"budget": budget, "noise_multiplier": 1.0, "clip_norm": 1.0},
        "client": None,
    }
    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    ledger = PrivacyLedger(
        folder / LEDGER_FILES["record"], budget_epsilon=None, delta=DELTA, accountant="rdp"
    )
    for server_round in (1, 2, 3):
        for party in ("partition-0", "partition-1"):
            if party == "partition-1" and server_round == 2:
                continue  # not sampled in round 2
            ledger.record(
                Release(
                    round=server_round,
                    mechanism="dp-sgd",
                    noise_multiplier=1.0,
                    sample_rate=0.1,
                    steps=10,
                    clip_norm=1.0,
                    unit="record",
                    party=party,
                )
            )


def test_epsilon_per_party_is_recomputed_from_the_ledger(tmp_path: Path) -> None:
    write_run(tmp_path, budget=8.0)

    summary = privacy_summary(tmp_path)

    parties = summary["record"]["parties"]
    assert parties["partition-0"]["rounds"] == [1, 2, 3]
    assert parties["partition-1"]["rounds"] == [1, 3]
    assert parties["partition-1"]["epsilon"] == compute_epsilon(
        history=[(1.0, 0.1, 20)], delta=DELTA, accountant="rdp"
    )
    assert summary["record"]["max_epsilon"] == parties["partition-0"]["epsilon"]
    assert summary["record"]["releases"] == 5
    assert "client" not in summary


def test_the_command_prints_releases_epsilon_and_the_budget_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, budget=1e-3)

    assert main(["privacy", str(tmp_path)]) == 0

    out = capsys.readouterr().out
    assert "sample-level DP" in out
    assert "partition-1" in out
    assert "1,3" in out  # the rounds partition-1 took part in
    assert "OVER BUDGET" in out


def test_a_folder_without_privacy_settings_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["privacy", str(tmp_path)]) == 2
    assert "privacy.json not found" in capsys.readouterr().err
