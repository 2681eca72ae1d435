"""FRL against the baselines users pick, at equal rounds and at equal uplink bytes.

``fedrank experiment baselines`` runs every variant (``strategy:aggregator``, optionally
with settings of its own: ``fedavg:bulyan+trim-fraction=0.1``, ``frl:borda+rank-bits=4``)
for every seed as an ordinary simulation of the base scenario, appends one CSV row per
finished run (a run already in the CSV is not run again), and writes a markdown table and
a plot: test accuracy against the round, and against the cumulative uplink bytes (every
client's reply counted). The table gives, per variant, the final accuracy (mean and
standard deviation over the seeds), the mean of the last five rounds, the uplink per
client and round, bits per parameter, and the accuracy each variant had when its uplink
reached the reference's (the first variant's) whole-run uplink.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tomllib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fedrank.config import Scenario
from fedrank.config.fields import RunConfigValue
from fedrank.errors import ConfigError
from fedrank.simulations.grid_csv import append_row, read_csv
from fedrank.tasks import load_task
from fedrank.tasks.registry import STRATEGIES

__all__ = [
    "CSV_FIELDS",
    "Variant",
    "accuracy_at_budget",
    "parse_variants",
    "plot_comparison",
    "read_rows",
    "run_comparison",
    "table_markdown",
    "uplink_curve",
]

CSV_FIELDS = (
    "variant", "strategy", "aggregator", "seed", "rounds", "final_accuracy", "best_accuracy",
    "last5_accuracy", "bytes_up_per_client", "parameters", "bits_per_parameter",
    "uplink_bytes", "seconds", "results_dir",
)  # fmt: skip
CSV_FILE = "baselines.csv"


@dataclasses.dataclass(frozen=True)
class Variant:
    """One line of the comparison: a strategy, its aggregator and settings of its own."""

    strategy: str
    aggregator: str
    settings: tuple[tuple[str, RunConfigValue], ...] = ()

    @property
    def label(self) -> str:
        """As written on the command line (``fedavg:bulyan+trim-fraction=0.1``)."""
        extra = "".join(f"+{key}={value}" for key, value in self.settings)
        return f"{self.strategy}:{self.aggregator}{extra}"

    def folder(self, seed: int) -> str:
        """The run's folder name."""
        name = self.label.replace(":", "-").replace("+", "-").replace("=", "")
        return f"{name}-seed{seed}"


def _value(text: str) -> RunConfigValue:
    """A setting's value as TOML reads it (``0.1``, ``4``, ``true``), else the text."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
    return value if isinstance(value, bool | int | float | str) else text


def parse_variants(text: str) -> list[Variant]:
    """``"frl:borda,fedavg:bulyan+trim-fraction=0.1"`` -> variants, names checked."""
    variants = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        head, *extras = item.split("+")
        strategy, _, aggregator = head.partition(":")
        spec = STRATEGIES.get(strategy)
        if spec is None or aggregator not in spec.aggregators:
            choices = [f"{s.name}:{a}" for s in STRATEGIES.values() for a in s.aggregators]
            raise ConfigError("variants", f"unknown {head!r}; choose from {choices}")
        settings = []
        for extra in extras:
            key, sep, value = extra.partition("=")
            if not sep or not key:
                raise ConfigError("variants", f"{item!r}: settings are written +key=value")
            settings.append((key.strip(), _value(value.strip())))
        variants.append(Variant(strategy, aggregator, tuple(settings)))
    if not variants:
        raise ConfigError("variants", "name at least one strategy:aggregator")
    return variants


def variant_scenario(base: Scenario, variant: Variant, seed: int, runs_dir: Path) -> Scenario:
    """``base`` run as ``variant`` with ``seed`` (base's lr only for base's own strategy)."""
    lr = base.train.lr if variant.strategy == base.run.strategy else 0.0
    return base.replace(
        strategy=variant.strategy,
        aggregator=variant.aggregator,
        lr=lr,
        seed=seed,
        results_dir=str(runs_dir / variant.folder(seed)),
        **dict(variant.settings),
    )


def uplink_curve(rounds: Sequence[dict[str, Any]]) -> list[tuple[float, float]]:
    """``(cumulative uplink bytes, accuracy)`` after every round (round 0: no bytes)."""
    total, points = 0.0, []
    for row in sorted(rounds, key=lambda r: int(r["round"])):
        total += float(row.get("bytes_up_per_client", 0.0)) * int(row.get("replies", 0))
        points.append((total, float(row["accuracy"])))
    return points


def accuracy_at_budget(curve: Sequence[tuple[float, float]], budget: float) -> float:
    """The accuracy of the last round whose cumulative uplink is within ``budget``."""
    within = [accuracy for spent, accuracy in curve if spent <= budget * (1 + 1e-9)]
    return within[-1] if within else curve[0][1]


def read_rounds(results_dir: str | Path) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` rows."""
    path = Path(results_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows, numbers parsed (an absent file: no rows)."""
    return read_csv(path, floats=CSV_FIELDS[5:12], ints=("seed", "rounds"))


Runner = Callable[[Scenario], dict[str, Any]]


def run_comparison(
    base: Scenario,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    out_dir: Path,
    *,
    runner: Runner,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every (variant, seed) not yet in ``out_dir/baselines.csv``; return all rows.

    ``runner(scenario) -> summary`` runs one simulation. Every pending scenario is built
    (so validated) and checked before the first run starts.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / CSV_FILE
    done = {(row["variant"], row["seed"]) for row in read_rows(csv_path)}
    pending = [
        (variant, seed, variant_scenario(base, variant, seed, out_dir / "runs"))
        for seed in seeds
        for variant in variants
        if (variant.label, seed) not in done
    ]
    for _, _, scenario in pending:
        load_task(scenario).check()
    for variant, seed, scenario in pending:
        summary = runner(scenario)
        rounds = read_rounds(scenario.output.results_dir)
        trained = [r for r in rounds if int(r["round"]) > 0]
        parameters = sum(int(v.size) for v in load_task(scenario).initial_state().values())
        per_client = statistics.fmean(float(r["bytes_up_per_client"]) for r in trained)
        row = {
            "variant": variant.label,
            "strategy": variant.strategy,
            "aggregator": variant.aggregator,
            "seed": seed,
            "rounds": scenario.run.rounds,
            "final_accuracy": summary["final_accuracy"],
            "best_accuracy": summary["best_accuracy"],
            "last5_accuracy": statistics.fmean(float(r["accuracy"]) for r in trained[-5:]),
            "bytes_up_per_client": round(per_client, 1),
            "parameters": parameters,
            "bits_per_parameter": round(8 * per_client / parameters, 4),
            "uplink_bytes": uplink_curve(rounds)[-1][0],
            "seconds": round(float(summary["seconds"]), 1),
            "results_dir": scenario.output.results_dir,
        }
        append_row(csv_path, CSV_FIELDS, row)
        if on_run:
            on_run(row)
    return read_rows(csv_path)


def _mean_std(values: Sequence[float]) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")


def table_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """Per variant: accuracy (%) at equal rounds and at the reference's uplink budget.

    The reference is the first variant in the rows; ``@ref uplink`` is each run's
    accuracy when its cumulative uplink reached the reference run's (same seed) total.
    """
    labels = list(dict.fromkeys(r["variant"] for r in rows))
    reference = {r["seed"]: r for r in rows if r["variant"] == labels[0]} if labels else {}
    lines = [
        "| variant | final | last 5 | best | @ref uplink | uplink/client/round (KB) "
        "| bits/param | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label in labels:
        mine = [r for r in rows if r["variant"] == label]
        at_budget = [
            100 * accuracy_at_budget(
                uplink_curve(read_rounds(r["results_dir"])), reference[r["seed"]]["uplink_bytes"]
            )
            for r in mine
            if r["seed"] in reference
        ]  # fmt: skip
        lines.append(
            f"| {label} | {_mean_std([100 * r['final_accuracy'] for r in mine])} "
            f"| {_mean_std([100 * r['last5_accuracy'] for r in mine])} "
            f"| {_mean_std([100 * r['best_accuracy'] for r in mine])} "
            f"| {_mean_std(at_budget)} "
            f"| {statistics.fmean(r['bytes_up_per_client'] for r in mine) / 1000:.1f} "
            f"| {statistics.fmean(r['bits_per_parameter'] for r in mine):.2f} | {len(mine)} |"
        )
    return "\n".join(lines) + "\n"


def plot_comparison(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Accuracy against the round and against cumulative uplink bytes (seed mean)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in dict.fromkeys(r["variant"] for r in rows):
        curves = [
            uplink_curve(read_rounds(r["results_dir"])) for r in rows if r["variant"] == label
        ]
        length = min(len(c) for c in curves)
        spent = [statistics.fmean(c[i][0] for c in curves) / 1e6 for i in range(length)]
        accuracy = [100 * statistics.fmean(c[i][1] for c in curves) for i in range(length)]
        by_round.plot(range(length), accuracy, label=label)
        by_bytes.plot(spent[1:], accuracy[1:], label=label)
    by_round.set_xlabel("round")
    by_bytes.set_xlabel("cumulative uplink, all clients (MB, log scale)")
    by_bytes.set_xscale("log")
    for axis in (by_round, by_bytes):
        axis.set_ylabel("test accuracy (%)")
        axis.grid(alpha=0.3)
    by_round.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
