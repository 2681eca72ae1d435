"""The robustness experiment: aggregator x attack x malicious fraction x seed.

``fedrank experiment robustness`` runs every cell of the grid as an ordinary
simulation (Ray by default, or the ``local`` in-process backend), appends one CSV
row per finished run, and writes a markdown table and a plot from the CSV. A run
whose row is already in the CSV is not run again, so an interrupted grid resumes.

A fraction of 0 has no attacker: it is run once per aggregator and seed and shared
by every attack's panel. Ranking attacks pair with FRL aggregators, update attacks
with FedAvg ones, label flipping with both. Each seed sets both the scenario seed
(data split, model, sampling) and the attack seed (which clients are malicious).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedrank.config import ANY_STRATEGY_ATTACKS, RANKING_ATTACKS, UPDATE_ATTACKS, Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.grid_csv import append_row, read_csv
from fedrank.tasks import load_task
from fedrank.tasks.registry import STRATEGIES

__all__ = [
    "CSV_FIELDS",
    "GridCell",
    "cell_scenario",
    "grid_cells",
    "parse_aggregators",
    "plot_grid",
    "read_rows",
    "row_key",
    "run_grid",
    "table_markdown",
]

CSV_FIELDS = (
    "strategy", "aggregator", "attack", "malicious_fraction", "seed", "model", "dataset",
    "rounds", "final_accuracy", "best_accuracy", "malicious_replies", "filtered_replies",
    "rejected_replies", "seconds", "results_dir",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class GridCell:
    """One run of the grid."""

    strategy: str
    aggregator: str
    attack: str
    fraction: float
    seed: int

    @property
    def key(self) -> tuple[str, str, str, float, int]:
        """What identifies the run in the CSV."""
        return (self.strategy, self.aggregator, self.attack, round(self.fraction, 6), self.seed)

    @property
    def name(self) -> str:
        """The run's folder name."""
        pct = round(100 * self.fraction)
        return f"{self.strategy}-{self.aggregator}-{self.attack}-{pct:02d}pct-seed{self.seed}"


def parse_aggregators(text: str) -> list[tuple[str, str]]:
    """``"frl:borda,fedavg:krum"`` -> ``[("frl", "borda"), ("fedavg", "krum")]``, validated."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        strategy, _, aggregator = item.partition(":")
        spec = STRATEGIES.get(strategy)
        if spec is None or aggregator not in spec.aggregators:
            choices = [f"{s.name}:{a}" for s in STRATEGIES.values() for a in s.aggregators]
            raise ConfigError("aggregators", f"unknown {item!r}; choose from {choices}")
        pairs.append((strategy, aggregator))
    if not pairs:
        raise ConfigError("aggregators", "name at least one strategy:aggregator")
    return pairs


def _attacks_for(strategy: str, attacks: Sequence[str]) -> list[str]:
    fits = RANKING_ATTACKS if STRATEGIES[strategy].update == "ranking" else UPDATE_ATTACKS
    return [a for a in attacks if a in fits or a in ANY_STRATEGY_ATTACKS]


def grid_cells(
    aggregators: Sequence[tuple[str, str]],
    attacks: Sequence[str],
    fractions: Sequence[float],
    seeds: Sequence[int],
) -> list[GridCell]:
    """Every run of the grid, the no-attacker runs once per aggregator and seed."""
    known = RANKING_ATTACKS | UPDATE_ATTACKS | ANY_STRATEGY_ATTACKS
    for attack in attacks:
        if attack not in known:
            raise ConfigError("attacks", f"unknown attack {attack!r}; choose from {sorted(known)}")
    for fraction in fractions:
        if not (math.isfinite(fraction) and 0.0 <= fraction < 1.0):
            raise ConfigError("fractions", f"each must lie in [0, 1), got {fraction}")
    cells: list[GridCell] = []
    for seed in seeds:
        for strategy, aggregator in aggregators:
            if any(f == 0.0 for f in fractions):
                cells.append(GridCell(strategy, aggregator, "none", 0.0, seed))
            for attack in _attacks_for(strategy, attacks):
                cells += [
                    GridCell(strategy, aggregator, attack, f, seed) for f in fractions if f > 0.0
                ]
    return cells


def cell_scenario(base: Scenario, cell: GridCell, runs_dir: Path) -> Scenario:
    """The scenario of one cell: ``base`` with the cell's fields.

    ``base``'s learning rate applies to its own strategy; another strategy runs with
    its default.
    """
    lr = base.train.lr if cell.strategy == base.run.strategy else 0.0
    return base.replace(
        strategy=cell.strategy,
        lr=lr,
        aggregator=cell.aggregator,
        attack=cell.attack,
        malicious_fraction=cell.fraction,
        seed=cell.seed,
        attack_seed=cell.seed,
        results_dir=str(runs_dir / cell.name),
    )


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows, numbers parsed (an absent file: no rows)."""
    return read_csv(
        path,
        floats=("malicious_fraction", "final_accuracy", "best_accuracy", "seconds"),
        ints=("seed", "rounds", "malicious_replies", "filtered_replies", "rejected_replies"),
    )


def row_key(row: dict[str, Any]) -> tuple[str, str, str, float, int]:
    return (
        row["strategy"],
        row["aggregator"],
        row["attack"],
        round(float(row["malicious_fraction"]), 6),
        int(row["seed"]),
    )


Runner = Callable[[Scenario], tuple[dict[str, Any], list[dict[str, Any]]]]


def run_grid(
    base: Scenario,
    cells: Sequence[GridCell],
    out_dir: Path,
    *,
    runner: Runner,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every cell not yet in ``out_dir/robustness.csv``; return all rows.

    ``runner(scenario) -> (summary, per-round rows)`` runs one simulation. Every
    pending cell's scenario is built (and so validated) before the first run: a cell
    that cannot run (a LoRA pair beside an image scenario, say) fails the grid at once.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "robustness.csv"
    done = {row_key(row) for row in read_rows(csv_path)}
    pending = [
        (cell, cell_scenario(base, cell, out_dir / "runs"))
        for cell in cells
        if cell.key not in done
    ]
    for _, scenario in pending:
        load_task(scenario).check()
    for cell, scenario in pending:
        summary, rounds = runner(scenario)
        row = {
            "strategy": cell.strategy,
            "aggregator": cell.aggregator,
            "attack": cell.attack,
            "malicious_fraction": cell.fraction,
            "seed": cell.seed,
            "model": scenario.effective.model,
            "dataset": scenario.effective.dataset,
            "rounds": scenario.run.rounds,
            "final_accuracy": summary["final_accuracy"],
            "best_accuracy": summary["best_accuracy"],
            "malicious_replies": sum(int(r.get("malicious", 0)) for r in rounds),
            "filtered_replies": sum(int(r.get("filtered", 0)) for r in rounds),
            "rejected_replies": summary["rejected_replies"],
            "seconds": round(float(summary["seconds"]), 1),
            "results_dir": scenario.output.results_dir,
        }
        append_row(csv_path, CSV_FIELDS, row)
        done.add(cell.key)
        if on_run:
            on_run(row)
    return read_rows(csv_path)


def _accuracy(rows: Sequence[dict[str, Any]]) -> tuple[float, float] | None:
    values = [100.0 * r["final_accuracy"] for r in rows]
    if not values:
        return None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _cell(stat: tuple[float, float] | None) -> str:
    if stat is None:
        return "-"
    mean, std = stat
    return f"{mean:.1f}" + (f" ± {std:.1f}" if std > 0 else "")


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Final test accuracy (%) per aggregator and attack against the malicious fraction.

    Every attack's row repeats the aggregator's no-attacker accuracy under 0%;
    ``loss @20%`` is that minus the accuracy at 20% attackers, in points.
    """
    fractions = sorted({r["malicious_fraction"] for r in rows})
    pairs = list(dict.fromkeys((r["strategy"], r["aggregator"]) for r in rows))
    header = ["strategy:aggregator", "attack", *(f"{round(100 * f)}%" for f in fractions)]
    lines = ["| " + " | ".join([*header, "loss @20% (pts)"]) + " |"]
    lines.append("|" + "---|" * (len(header) + 1))
    for strategy, aggregator in pairs:
        mine = [r for r in rows if (r["strategy"], r["aggregator"]) == (strategy, aggregator)]
        clean = _accuracy([r for r in mine if r["malicious_fraction"] == 0.0])
        attacks = list(dict.fromkeys(r["attack"] for r in mine if r["attack"] != "none"))
        for attack in attacks or ["none"]:
            cells = []
            for f in fractions:
                chosen = [r for r in mine if r["malicious_fraction"] == f and r["attack"] == attack]
                cells.append(_cell(clean if f == 0.0 else _accuracy(chosen)))
            at20 = _accuracy(
                [
                    r
                    for r in mine
                    if r["attack"] == attack and abs(r["malicious_fraction"] - 0.2) < 1e-9
                ]
            )
            loss = f"{clean[0] - at20[0]:+.1f}" if clean and at20 else "-"
            lines.append(
                f"| {strategy}:{aggregator} | {attack} | " + " | ".join(cells) + f" | {loss} |"
            )
    return "\n".join(lines) + "\n"


def plot_grid(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against malicious fraction, one panel per attack, one line per aggregator."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attacks = list(dict.fromkeys(r["attack"] for r in rows if r["attack"] != "none")) or ["none"]
    columns = min(3, len(attacks))
    lines_of_panels = math.ceil(len(attacks) / columns)
    figure, axes = plt.subplots(
        lines_of_panels, columns, figsize=(4.2 * columns, 3.4 * lines_of_panels), squeeze=False
    )
    for index, attack in enumerate(attacks):
        axis = axes[index // columns][index % columns]
        pairs = list(
            dict.fromkeys((r["strategy"], r["aggregator"]) for r in rows if r["attack"] == attack)
        )
        for strategy, aggregator in pairs:
            mine = [r for r in rows if (r["strategy"], r["aggregator"]) == (strategy, aggregator)]
            points = []
            for f in sorted({r["malicious_fraction"] for r in mine}):
                chosen = [
                    r
                    for r in mine
                    if r["malicious_fraction"] == f and r["attack"] in (attack, "none")
                ]
                stat = _accuracy([r for r in chosen if (r["attack"] == "none") == (f == 0.0)])
                if stat:
                    points.append((100 * f, stat[0]))
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, marker="o", label=f"{strategy}:{aggregator}")
        axis.set_title(attack)
        axis.set_xlabel("malicious clients (%)")
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for index in range(len(attacks), lines_of_panels * columns):
        axes[index // columns][index % columns].set_visible(False)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
