"""A real federation with RQM at the client level: every reply on the grid, every
client's release accounted, the budget kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrank.config import Scenario
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.privacy.report import LEDGER_FILES, format_privacy_report
from fedrank.simulations.run import simulate

pytestmark = pytest.mark.integration


def test_an_rqm_federation_records_one_release_per_client_reply(tmp_path: Path) -> None:
    scenario = Scenario.of(
        strategy="lora", dataset="rotten-tomatoes", model="tiny-bert", num_clients=8,
        clients_per_round=4, rounds=2, local_epochs=1, partitioner="iid", batch_size=4,
        lr=0.01, max_length=16, train_records=64, test_records=16, dp="client",
        dp_mechanism="rqm", dp_client_target_epsilon=8.0, dp_client_clip_norm=0.1,
        results_dir=str(tmp_path),
    )  # fmt: skip

    summary = simulate(scenario, backend="local")

    ledger = PrivacyLedger(
        tmp_path / LEDGER_FILES["client"], budget_epsilon=8.0, delta=1e-5, accountant="rdp"
    )
    parties = {r.party for r in ledger.releases}
    assert ledger.releases
    assert {r.mechanism for r in ledger.releases} == {"client-rqm"}
    assert all(p.startswith("partition-") for p in parties)
    spent = [ledger.spent(unit="client", party=p) for p in parties]
    assert max(spent) <= 8.0
    assert summary["privacy"]["client"]["max_epsilon"] == max(spent)
    assert summary["rejected_replies"] == 0  # every reply was on the grid
    assert "RQM (randomized quantization on the client)" in format_privacy_report(tmp_path)
    card = (tmp_path / "adapter" / "README.md").read_text(encoding="utf-8")
    assert "| client | " in card
    assert "| RQM | rdp |" in card  # no Gaussian noise multiplier is claimed
