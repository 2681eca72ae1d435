"""The privacy report of a results folder is read from its settings and ledgers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrank.cli import main
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.privacy.randomness import NOT_PRIVATE_NOTE
from fedrank.privacy.relation import NEIGHBOURING_RELATION
from fedrank.privacy.report import (
    LEDGER_FILES,
    SETTINGS_FILE,
    claim_settings,
    format_privacy_report,
    privacy_summary,
)

DELTA = 1e-5


def write_run(folder: Path, *, budget: float, noise: str | None = None) -> None:
    settings = {
        "dp": "sample",
        "delta": DELTA,
        "accountant": "rdp",
        "record": {"budget": budget, "noise_multiplier": 1.0, "clip_norm": 1.0},
        "client": None,
        **(claim_settings(noise) if noise else {}),  # type: ignore[arg-type]
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


@pytest.mark.parametrize("noise", ["secure", "reproducible"])
def test_the_report_states_the_relation_and_flags_reproducible_noise(
    tmp_path: Path, noise: str
) -> None:
    write_run(tmp_path, budget=8.0, noise=noise)

    report = format_privacy_report(tmp_path)
    settings = json.loads((tmp_path / SETTINGS_FILE).read_text())

    assert settings["neighbouring_relation"] == NEIGHBOURING_RELATION
    assert f"neighbouring relation: {NEIGHBOURING_RELATION}" in report
    assert (NOT_PRIVATE_NOTE.upper() in report) == (noise == "reproducible")
    assert settings["note"] == (NOT_PRIVATE_NOTE if noise == "reproducible" else None)
