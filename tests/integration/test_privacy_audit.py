"""One-run audits of real DP-LoRA federations: below the claim, above it with the noise off."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrank.cli import main
from fedrank.config import Scenario
from fedrank.privacy.randomness import RandomSource
from fedrank.simulations.audit import AUDIT_FILE, AuditLevel, audit_table, report_of, run_audit

pytestmark = pytest.mark.integration

TINY = Scenario.of(
    strategy="lora",
    dataset="rotten-tomatoes",
    model="tiny-bert",
    num_clients=4,
    clients_per_round=4,
    rounds=3,
    local_epochs=1,
    partitioner="iid",
    batch_size=8,
    physical_batch_size=64,
    lr=0.05,
    max_length=16,
    train_records=96,
    test_records=16,
    seed=3,
)
CLAIM = 1.0
LEVELS: dict[AuditLevel, Scenario] = {
    "sample": TINY.replace(dp="sample", dp_target_epsilon=CLAIM),
    "client": TINY.replace(dp="client", dp_client_target_epsilon=CLAIM),
}
CANARIES = 200


@pytest.mark.parametrize("level", ["sample", "client"])
def test_the_audit_stays_below_the_claim_and_exceeds_it_with_the_noise_off(
    tmp_path: Path, level: AuditLevel
) -> None:
    # Arrange: one auditor's coin (replayable here, so the test is deterministic in it).
    scenario = LEVELS[level]

    # Act
    reports = [
        run_audit(
            scenario.replace(results_dir=str(tmp_path / noise)),
            level=level,
            canaries=CANARIES,
            noise_off=noise == "off",
            auditor=RandomSource.reproducible(1),
        )
        for noise in ("on", "off")
    ]
    correct, broken = reports

    # Assert: the claim is what the ledger says (epsilon 1 over the run, within 1%).
    for report in reports:
        assert report.claimed_epsilon == pytest.approx(CLAIM, rel=0.01)
        assert report.canaries == CANARIES
    assert correct.consistent
    assert correct.result.epsilon_lower_bound < CLAIM
    assert not broken.consistent
    assert broken.result.epsilon_lower_bound > 1.5 * CLAIM  # measured: 2.45 to 2.94
    written = json.loads((tmp_path / "off" / AUDIT_FILE).read_text())
    assert report_of(written) == broken
    assert "| client |" in audit_table(reports) or "| sample |" in audit_table(reports)


def test_the_audit_command_prints_the_bound_beside_the_claim(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags = [
        f"--{key}={value}"
        for key, value in LEVELS["client"].to_run_config().items()
        if value != Scenario().to_run_config().get(key)
    ]

    status = main(
        [
            "audit",
            "--level", "client",
            "--canaries", "40",
            *flags,
            "--results-dir", str(tmp_path / "cli"),
        ]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert status == 0
    assert "client-level audit, noise on: empirical epsilon >= " in out
    assert "claimed 0.99" in out
    assert (tmp_path / "cli" / AUDIT_FILE).exists()
