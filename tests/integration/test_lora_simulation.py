"""A real Ray-backed DP-LoRA federation (tiny BERT, 2 clients): epsilon, budget stop, export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from opacus.accountants import RDPAccountant

from fedrank.cli import main
from fedrank.config import Scenario
from fedrank.models.evaluation import evaluate_lora
from fedrank.models.export import load_exported_adapter
from fedrank.models.lora import adapter_tensors, load_base_model
from fedrank.models.pooling import load_pooled_adapter
from fedrank.privacy.accountant import RDP_ORDERS, compute_epsilon
from fedrank.privacy.plan import steps_per_epoch
from fedrank.simulations.run import simulate
from fedrank.tasks import load_task
from fedrank.tasks.text_lora import TextLoraTask

pytestmark = pytest.mark.integration

DELTA = 1e-5
SIGMA, CLIENT_SIGMA = 1.0, 2.0
# The server's client-level budget allows three releases, not a fourth.
CLIENT_BUDGET = (
    sum(
        compute_epsilon(history=[(CLIENT_SIGMA, 1.0, t)], delta=DELTA, accountant="rdp")
        for t in (3, 4)
    )
    / 2
)


def lora_task(s: Scenario) -> TextLoraTask:
    task = load_task(s)
    assert isinstance(task, TextLoraTask)
    return task


def scenario(results: Path) -> Scenario:
    return Scenario.of(
        strategy="lora",
        dataset="rotten-tomatoes",
        model="tiny-bert",
        num_clients=2,
        clients_per_round=2,
        rounds=4,
        local_epochs=1,
        partitioner="iid",
        batch_size=16,
        lr=1e-2,
        max_length=16,
        train_records=64,
        test_records=64,
        physical_batch_size=16,
        dp="both",
        dp_noise_multiplier=SIGMA,
        dp_target_epsilon=100.0,
        dp_client_noise_multiplier=CLIENT_SIGMA,
        dp_client_target_epsilon=CLIENT_BUDGET,
        dp_client_clip_norm=10.0,
        results_dir=str(results),
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, dict[str, Any], list[Any]]:
    results = tmp_path_factory.mktemp("dp-lora")
    s = scenario(results)
    summary = simulate(s)
    rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    return s, summary, rows


def test_reported_epsilon_is_one_accountant_over_every_round(
    run: tuple[Scenario, dict[str, Any], list[Any]],
) -> None:
    s, _, rows = run
    per_round = steps_per_epoch(num_examples=len(lora_task(s).partition_data(0)), batch_size=16)
    q = 1 / per_round
    accountant = RDPAccountant()  # fed every step of the three rounds, one at a time
    for _ in range(3 * per_round):
        accountant.step(noise_multiplier=SIGMA, sample_rate=q)
    all_rounds = accountant.get_epsilon(delta=DELTA, alphas=list(RDP_ORDERS))
    last_round_alone = compute_epsilon(
        history=[(SIGMA, q, per_round)], delta=DELTA, accountant="rdp"
    )

    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[3]["dp-record-epsilon"] == pytest.approx(all_rounds, rel=1e-9)
    assert rows[3]["dp-record-epsilon"] > 1.5 * last_round_alone
    assert [r["dp-record-mismatch"] for r in rows[1:]] == [0, 0, 0]
    assert (
        rows[1]["dp-record-epsilon"] < rows[2]["dp-record-epsilon"] < rows[3]["dp-record-epsilon"]
    )


def test_the_run_stops_before_a_release_over_the_client_budget(
    run: tuple[Scenario, dict[str, Any], list[Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    s, summary, rows = run
    three = compute_epsilon(history=[(CLIENT_SIGMA, 1.0, 3)], delta=DELTA, accountant="rdp")

    assert summary["rounds"] == 3
    assert "round 4" in summary["stopped"]
    assert "budget" in summary["stopped"]
    assert rows[3]["dp-epsilon"] == pytest.approx(three, rel=1e-12)
    assert summary["privacy"]["client"] == {"releases": 3, "max_epsilon": rows[3]["dp-epsilon"]}
    assert main(["privacy", s.output.results_dir]) == 0
    out = capsys.readouterr().out
    assert all(party in out for party in ("partition-0", "partition-1", "server"))
    assert out.count("within budget") == 2


def test_the_exported_folder_loads_with_peft_and_reproduces_the_accuracy(
    run: tuple[Scenario, dict[str, Any], list[Any]],
) -> None:
    s, summary, _ = run
    task = lora_task(s)
    folder = Path(s.output.results_dir) / "adapter"
    model = load_pooled_adapter(load_base_model(task.spec), folder)
    accuracy, loss = evaluate_lora(model, task.heldout())

    assert accuracy == summary["final_accuracy"]
    assert loss == pytest.approx(summary["final_loss"], rel=1e-5)
    # The folder names its base (mean pooling here, the default) and loads on it alone.
    assert s.lora.pooling == "mean"
    assert evaluate_lora(load_exported_adapter(folder), task.heldout()) == (
        accuracy,
        loss,
    )
    b = [v for k, v in adapter_tensors(model).items() if k.endswith(".lora_B")]
    assert len(b) == 4
    assert all(abs(v).max() > 0 for v in b)  # B starts at zero
