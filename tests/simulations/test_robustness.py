"""The robustness grid: cells, table, and the experiment command end to end (local backend)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from fedrank.cli import main
from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.robustness import (
    grid_cells,
    parse_aggregators,
    read_rows,
    run_grid,
    table_markdown,
)


def test_no_attacker_runs_once_per_aggregator_and_attacks_pair_with_their_strategy() -> None:
    cells = grid_cells(
        parse_aggregators("frl:borda,fedavg:krum"),
        ["reverse_ranking", "scaling", "label_flip", "withhold"],
        [0.0, 0.2],
        [0, 1],
    )
    names = {(c.strategy, c.aggregator, c.attack, c.fraction, c.seed) for c in cells}
    assert len(cells) == len(names) == 2 * (4 + 4)
    assert ("frl", "borda", "none", 0.0, 1) in names
    assert ("frl", "borda", "scaling", 0.2, 0) not in names
    assert ("fedavg", "krum", "reverse_ranking", 0.2, 0) not in names
    assert ("fedavg", "krum", "label_flip", 0.2, 0) in names
    assert ("fedavg", "krum", "withhold", 0.2, 1) in names
    assert ("frl", "borda", "withhold", 0.2, 1) in names


@pytest.mark.parametrize(
    ("text", "field"),
    [("frl:krum", "aggregators"), ("", "aggregators"), ("sgd:mean", "aggregators")],
)
def test_bad_aggregators_name_the_option(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_aggregators(text)
    assert info.value.field == field


def test_table_shows_each_attack_against_the_fraction_with_the_loss_at_20_percent() -> None:
    def row(aggregator: str, attack: str, fraction: float, accuracy: float) -> dict[str, object]:
        return {"strategy": "frl", "aggregator": aggregator, "attack": attack,
                "malicious_fraction": fraction, "seed": 0, "final_accuracy": accuracy}  # fmt: skip

    rows = [
        row("borda", "none", 0.0, 0.92), row("borda", "reverse_ranking", 0.2, 0.82),
        row("filtered", "none", 0.0, 0.915), row("filtered", "reverse_ranking", 0.2, 0.91),
    ]  # fmt: skip

    table = table_markdown(rows)

    assert "| frl:borda | reverse_ranking | 92.0 | 82.0 | +10.0 |" in table
    assert "| frl:filtered | reverse_ranking | 91.5 | 91.0 | +0.5 |" in table


def test_a_cell_that_cannot_run_fails_the_grid_before_any_run(tmp_path: Path) -> None:
    cells = grid_cells(parse_aggregators("frl:borda,lora:median"), ["sign_flip"], [0.0, 0.2], [0])
    ran: list[Scenario] = []

    def record(scenario: Scenario) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        ran.append(scenario)
        return {}, []

    with pytest.raises(ConfigError, match="dataset"):
        run_grid(Scenario.of(dataset="digits"), cells, tmp_path, runner=record)

    assert ran == []


@pytest.mark.integration
def test_experiment_command_writes_csv_table_and_plot_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "grid"
    argv = [
        "experiment", "robustness", "--backend", "local", "--out", str(out), "--quiet",
        "--aggregators", "frl:borda,frl:filtered", "--attacks", "reverse_ranking",
        "--fractions", "0,0.5", "--seeds", "0",
        "--dataset", "digits", "--num-clients", "4", "--clients-per-round", "2",
        "--rounds", "2", "--local-epochs", "1",
    ]  # fmt: skip

    assert main(argv) == 0

    rows = read_rows(out / "robustness.csv")
    assert sorted((r["aggregator"], r["attack"], r["malicious_fraction"]) for r in rows) == [
        ("borda", "none", 0.0), ("borda", "reverse_ranking", 0.5),
        ("filtered", "none", 0.0), ("filtered", "reverse_ranking", 0.5),
    ]  # fmt: skip
    attacked = [r for r in rows if r["attack"] != "none"]
    assert all(r["malicious_replies"] > 0 for r in attacked)
    assert all(0.0 <= r["final_accuracy"] <= 1.0 for r in rows)
    assert "| frl:filtered | reverse_ranking |" in (out / "robustness.md").read_text()
    assert (out / "robustness.png").stat().st_size > 5000
    assert (out / "runs" / "frl-borda-reverse_ranking-50pct-seed0" / "metrics.jsonl").exists()

    # A second invocation finds every run in the CSV and runs nothing.
    assert main(argv) == 0
    with (out / "robustness.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4


@pytest.mark.integration
def test_the_clipped_vote_under_reversal_ends_where_withholding_the_attackers_does(
    tmp_path: Path,
) -> None:
    # `withhold` is the reference of docs/robustness.md: the vote over the benign replies
    # alone. The clipped vote sets every reversed reply aside and keeps every benign one,
    # so the two runs must end in the same global ranking, byte for byte.
    out = tmp_path / "grid"
    argv = [
        "experiment", "robustness", "--backend", "local", "--out", str(out), "--quiet",
        "--aggregators", "frl:clipped", "--attacks", "reverse_ranking,withhold",
        "--fractions", "0.3", "--seeds", "0", "--vote-smoothing", "0.1",
        "--dataset", "digits", "--num-clients", "10", "--clients-per-round", "5",
        "--rounds", "3", "--local-epochs", "1",
    ]  # fmt: skip

    assert main(argv) == 0

    rows = {r["attack"]: r for r in read_rows(out / "robustness.csv")}
    assert rows["withhold"]["malicious_replies"] == rows["reverse_ranking"]["malicious_replies"]
    assert rows["withhold"]["malicious_replies"] > 0
    assert rows["withhold"]["filtered_replies"] == 0
    assert (
        rows["reverse_ranking"]["filtered_replies"] == rows["reverse_ranking"]["malicious_replies"]
    )
    runs = out / "runs"
    withheld = (runs / "frl-clipped-withhold-30pct-seed0" / "state.safetensors").read_bytes()
    reversed_ = (
        runs / "frl-clipped-reverse_ranking-30pct-seed0" / "state.safetensors"
    ).read_bytes()
    assert withheld == reversed_
