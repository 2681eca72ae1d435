"""The privacy grid: its cells, its CSV (resumable), its table, and one real small grid."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.head_federation import HeadCell
from fedrank.simulations.privacy_grid import (
    cell_scenario,
    grid_cells,
    parse_epsilons,
    plot_grid,
    read_rows,
    run_privacy_grid,
    table_markdown,
)

TINY = Scenario.of(
    strategy="lora", dataset="rotten-tomatoes", model="tiny-bert", num_clients=12,
    clients_per_round=6, rounds=3, local_epochs=1, partitioner="iid", batch_size=4,
    lr=0.01, lora_head_lr=0.05, max_length=16, train_records=96, test_records=64,
    dp="client", dp_client_target_epsilon=8.0, dp_client_clip_norm=0.5,
)  # fmt: skip


def test_epsilons_parse_with_the_twin() -> None:
    assert parse_epsilons("1, 2,none") == [1.0, 2.0, None]
    for bad in ("0", "x", "-1"):
        with pytest.raises(ConfigError):
            parse_epsilons(bad)


def test_cells_the_twin_once_per_seed_and_local_mechanisms_at_each_bit_width() -> None:
    cells = grid_cells(
        ["sample", "client"], [4.0, None], mechanisms=["gaussian", "rqm"], bits=[2, 4],
        seeds=[0, 1],
    )  # fmt: skip

    assert cells.count(HeadCell("none", None, seed=0)) == 1
    assert HeadCell("client", 4.0, "rqm", 2, 1) in cells
    assert not any(c.level == "sample" and c.mechanism == "rqm" for c in cells)
    assert len(cells) == 2 * (1 + 1 + 1 + 2)


def test_a_cells_scenario_carries_its_dp_settings() -> None:
    sample = cell_scenario(TINY, HeadCell("sample", 2.0, seed=4))
    client = cell_scenario(TINY, HeadCell("client", 2.0))
    twin = cell_scenario(TINY, HeadCell("none", None))

    assert (sample.dp.mode, sample.dp.target_epsilon, sample.run.seed) == ("sample", 2.0, 4)
    assert (client.dp.mode, client.dp.client_target_epsilon) == ("client", 2.0)
    assert client.dp.client_clip_norm == 0.5
    assert twin.dp.mode == "none"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_small_grid_runs_resumes_and_tabulates(tmp_path: Path) -> None:
    # Arrange: 12 clients, Poisson q = 1/2, the twin and each level at epsilon 8.
    cells = grid_cells(["sample", "client"], [8.0, None], mechanisms=["gaussian", "rqm"],
                       bits=[2])  # fmt: skip
    out, cache = tmp_path / "grid", tmp_path / "cache"

    # Act
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = run_privacy_grid(TINY, cells, out, cache=cache)
        again = run_privacy_grid(TINY, cells, out, cache=cache)  # nothing left to run

    # Assert
    assert len(rows) == len(cells) == 4
    assert again == rows == read_rows(out / "privacy.csv")
    by_level = {(r["level"], r["mechanism"]): r for r in rows}
    assert by_level[("none", "-")]["epsilon"] == float("inf")
    for key in (("sample", "-"), ("client", "gaussian"), ("client", "rqm")):
        assert 7.9 <= by_level[key]["epsilon"] <= 8.0
        assert 0.0 <= by_level[key]["accuracy"] <= 1.0
    table = table_markdown(rows)
    assert "| head | client | rqm | 2 |" in table
    plot_grid(rows, out / "privacy.png")
    assert (out / "privacy.png").stat().st_size > 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_lora_path_runs_real_dp_lora_federations(tmp_path: Path) -> None:
    # Arrange: one client-level cell at epsilon 8 on a tiny base, 2 rounds.
    base = TINY.replace(rounds=2)
    cells = [HeadCell("client", 8.0, seed=0)]

    # Act
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows = run_privacy_grid(base, cells, tmp_path / "grid", train="lora")

    # Assert: a real run's ledger epsilon, within the budget, and its results folder.
    (row,) = rows
    assert row["train"] == "lora"
    assert row["level"] == "client"
    assert 0.0 < row["epsilon"] <= 8.0
    assert row["rounds"] == 2
    assert (tmp_path / "grid" / "client-8.0-seed0" / "summary.json").exists()
    with pytest.raises(ConfigError, match="Gaussian"):
        run_privacy_grid(base, [HeadCell("client", 8.0, "rqm", 2)], tmp_path / "g2", train="lora")
