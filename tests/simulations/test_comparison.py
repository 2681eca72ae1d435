"""The baselines comparison: variants, uplink curves, the equal-bytes column, the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.comparison import (
    Variant,
    accuracy_at_budget,
    parse_variants,
    plot_comparison,
    read_rows,
    run_comparison,
    table_markdown,
    uplink_curve,
    variant_scenario,
)


def test_variants_carry_settings_of_their_own() -> None:
    variants = parse_variants("frl:borda, fedavg:bulyan+trim-fraction=0.1,frl:borda+rank-bits=4")

    assert variants == [
        Variant("frl", "borda"),
        Variant("fedavg", "bulyan", (("trim-fraction", 0.1),)),
        Variant("frl", "borda", (("rank-bits", 4),)),
    ]
    assert variants[1].label == "fedavg:bulyan+trim-fraction=0.1"
    assert variants[2].folder(3) == "frl-borda-rank-bits4-seed3"


@pytest.mark.parametrize("text", ["frl:mean", "lora", "fedavg:mean+lr", ""])
def test_unknown_variants_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="variants"):
        parse_variants(text)


def test_a_variants_scenario_keeps_the_base_and_refuses_bad_settings(tmp_path: Path) -> None:
    base = Scenario.of(rounds=7, lr=0.5)
    bulyan = variant_scenario(
        base, parse_variants("fedavg:bulyan+trim-fraction=0.1")[0], 2, tmp_path
    )
    assert (bulyan.run.rounds, bulyan.run.seed, bulyan.effective.lr) == (7, 2, 0.1)  # fedavg's lr
    assert bulyan.aggregation.trim_fraction == 0.1
    with pytest.raises(ConfigError, match="trim-fraction"):
        variant_scenario(base, parse_variants("fedavg:bulyan")[0], 0, tmp_path)


def rounds_of(per_client: float, accuracies: list[float]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"round": 0, "accuracy": accuracies[0]}]
    rows += [
        {"round": i, "accuracy": a, "bytes_up_per_client": per_client, "replies": 10}
        for i, a in enumerate(accuracies[1:], start=1)
    ]
    return rows


def test_the_uplink_curve_counts_every_reply_and_the_budget_cuts_it() -> None:
    curve = uplink_curve(rounds_of(100.0, [0.1, 0.5, 0.7, 0.8]))

    assert curve == [(0.0, 0.1), (1000.0, 0.5), (2000.0, 0.7), (3000.0, 0.8)]
    assert accuracy_at_budget(curve, 2000.0) == 0.7
    assert accuracy_at_budget(curve, 2999.0) == 0.7
    assert accuracy_at_budget(curve, 10.0) == 0.1  # not one round fits: the start


def write_run(folder: Path, per_client: float, accuracies: list[float]) -> None:
    folder.mkdir(parents=True)
    lines = [json.dumps(row) for row in rounds_of(per_client, accuracies)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_resumed_comparison_runs_only_what_is_missing_and_writes_its_files(
    tmp_path: Path,
) -> None:
    base = Scenario.of(dataset="digits", num_clients=4, clients_per_round=2, rounds=3)
    variants = parse_variants("frl:borda,fedavg:mean")
    ran: list[str] = []

    def runner(scenario: Scenario) -> dict[str, Any]:
        ran.append(scenario.run.strategy)
        dense = scenario.run.strategy == "fedavg"
        accuracies = [0.1, 0.6, 0.8, 0.9] if dense else [0.1, 0.5, 0.7, 0.85]
        write_run(Path(scenario.output.results_dir), 2000.0 if dense else 1000.0, accuracies)
        return {"final_accuracy": accuracies[-1], "best_accuracy": max(accuracies), "seconds": 1}

    run_comparison(base, variants[:1], [0], tmp_path, runner=runner)
    rows = run_comparison(base, variants, [0], tmp_path, runner=runner)

    assert ran == ["frl", "fedavg"]
    assert read_rows(tmp_path / "baselines.csv") == rows
    assert [r["uplink_bytes"] for r in rows] == [30_000.0, 60_000.0]  # 3 rounds x 10 replies
    assert rows[1]["bits_per_parameter"] > rows[0]["bits_per_parameter"]
    table = table_markdown(rows)
    # At FRL's 30 kB the dense run had done 1 round (20 kB each): 60%.
    assert "| fedavg:mean | 90.0 | 76.7 | 90.0 | 60.0 |" in table
    assert "| frl:borda | 85.0 | 68.3 | 85.0 | 85.0 |" in table
    plot_comparison(rows, tmp_path / "baselines.png")
    assert (tmp_path / "baselines.png").stat().st_size > 1000
