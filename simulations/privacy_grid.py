"""``fedrank experiment privacy``: accuracy against epsilon, sample- and client-level DP.

Every cell (privacy level x epsilon x mechanism x seed) runs one federation of the base
scenario with that cell's DP settings and appends a CSV row as soon as it finishes; a
cell already in the CSV is not run again, so an interrupted grid resumes. The table
(markdown) and the plot (accuracy against epsilon, one line per level and mechanism,
the non-private twin as a horizontal line) are written from the CSV.

``train="head"`` (the default, minutes on two cores) federates the classification
head on cached frozen features (:mod:`fedrank.simulations.head_federation`);
``train="lora"`` runs each cell as a real DP-LoRA simulation (the adapter and the head,
hours), Gaussian mechanisms only. The epsilon ``None`` is the non-private twin.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from fedrank.config import Scenario
from fedrank.config.fields import RunConfigValue
from fedrank.errors import ConfigError
from fedrank.simulations.grid_csv import append_row, read_csv
from fedrank.simulations.head_federation import (
    HeadCell,
    Level,
    Mechanism,
    frozen_features,
    run_head_federation,
)

Train = Literal["head", "lora"]
CSV_FIELDS = (
    "train", "level", "mechanism", "bits", "target_epsilon", "epsilon", "noise", "accuracy",
    "clients", "expected_per_round", "mean_sampled", "rounds", "seed", "seconds",
)  # fmt: skip
Row = dict[str, Any]


def parse_epsilons(text: str) -> list[float | None]:
    """``"1,2,4,8,none"`` -> ``[1.0, 2.0, 4.0, 8.0, None]``."""
    out: list[float | None] = []
    for item in (x.strip() for x in text.split(",") if x.strip()):
        if item == "none":
            out.append(None)
            continue
        try:
            value = float(item)
        except ValueError as err:
            raise ConfigError("epsilons", f"{item!r} is neither a number nor 'none'") from err
        if not (math.isfinite(value) and value > 0):
            raise ConfigError("epsilons", f"must be > 0, got {item!r}")
        out.append(value)
    return out


def grid_cells(
    levels: Sequence[Level],
    epsilons: Sequence[float | None],
    *,
    mechanisms: Sequence[Mechanism] = ("gaussian",),
    bits: Sequence[int] = (),
    seeds: Sequence[int] = (0,),
) -> list[HeadCell]:
    """Every cell: the non-private twin once per seed, then each level x epsilon x
    mechanism (RQM and the local Gaussian at each of ``bits``; client level only)."""
    cells: list[HeadCell] = []
    for seed in seeds:
        if None in epsilons:
            cells.append(HeadCell("none", None, seed=seed))
        for level in levels:
            if level not in ("sample", "client"):
                raise ConfigError("levels", f"must be sample or client, got {level!r}")
            for eps in (e for e in epsilons if e is not None):
                cells.append(HeadCell(level, eps, seed=seed))
                if level != "client":
                    continue
                for mechanism in (m for m in mechanisms if m != "gaussian"):
                    cells += [HeadCell(level, eps, mechanism, b, seed) for b in bits]
    return cells


def cell_scenario(base: Scenario, cell: HeadCell) -> Scenario:
    """The base scenario with the cell's DP settings (and seed)."""
    off: dict[str, RunConfigValue] = {
        "dp": "none", "dp_target_epsilon": 0.0, "dp_noise_multiplier": 0.0,
        "dp_client_target_epsilon": 0.0, "dp_client_noise_multiplier": 0.0,
        "dp_adaptive_clipping": False, "dp_clip_quantile": 0.5, "dp_clip_learning_rate": 0.2,
        "dp_count_stddev": 0.0, "dp_publish_diagnostics": False, "dp_reproducible_noise": False,
        "seed": cell.seed,
    }  # fmt: skip
    if cell.level == "sample":
        return base.replace(**{**off, "dp": "sample", "dp_target_epsilon": cell.epsilon or 0.0})
    if cell.level == "client":
        # The client-level options of the base (adaptive clipping) stay as they are.
        adaptive = ("dp_adaptive_clipping", "dp_clip_quantile", "dp_clip_learning_rate",
                    "dp_count_stddev")  # fmt: skip
        keep: dict[str, RunConfigValue] = {
            k: getattr(base.dp, k.removeprefix("dp_")) for k in adaptive
        }
        return base.replace(
            **{**off, **keep, "dp": "client", "dp_client_target_epsilon": cell.epsilon or 0.0}
        )
    return base.replace(**off)


def row_key(row: Row) -> tuple[str, ...]:
    """What identifies a cell's row in the CSV."""
    eps = row["target_epsilon"]
    return tuple(
        str(x)
        for x in (
            row["train"], row["level"], row["mechanism"], row["bits"],
            "none" if eps in (None, "", "None") else float(eps), row["seed"],
        )
    )  # fmt: skip


def _cell_key(train: Train, cell: HeadCell) -> tuple[str, ...]:
    mechanism = cell.mechanism if cell.level == "client" else "-"
    bits = cell.bits if cell.level == "client" else 32
    return row_key(
        {"train": train, "level": cell.level, "mechanism": mechanism, "bits": bits,
         "target_epsilon": cell.epsilon, "seed": cell.seed}
    )  # fmt: skip


def read_rows(path: Path) -> list[Row]:
    """The CSV's rows, numbers as numbers."""
    rows = read_csv(
        path,
        floats=("epsilon", "noise", "accuracy", "mean_sampled", "seconds"),
        ints=("bits", "clients", "expected_per_round", "rounds", "seed"),
    )
    for row in rows:
        eps = row["target_epsilon"]
        row["target_epsilon"] = None if eps in ("", "None") else float(eps)
    return rows


def _lora_row(scenario: Scenario, cell: HeadCell, out: Path) -> Row:
    from fedrank.simulations.run import simulate

    if cell.mechanism != "gaussian":
        raise ConfigError("mechanisms", "train lora runs the Gaussian mechanisms only")
    name = f"{cell.level}-{cell.epsilon or 'none'}-seed{cell.seed}"
    summary = simulate(scenario.replace(results_dir=str(out / name)), backend="local")
    privacy = summary.get("privacy") or {}
    unit = {"sample": "record", "client": "client"}.get(cell.level)
    return {
        "level": cell.level, "mechanism": "gaussian" if cell.level == "client" else "-",
        "bits": 32, "target_epsilon": cell.epsilon,
        "epsilon": (privacy.get(unit) or {}).get("max_epsilon", math.inf) if unit else math.inf,
        "noise": math.nan, "accuracy": summary["final_accuracy"],
        "clients": scenario.run.num_clients, "expected_per_round": scenario.run.clients_per_round,
        "mean_sampled": math.nan, "rounds": summary["rounds"], "seed": cell.seed,
        "seconds": summary["seconds"],
    }  # fmt: skip


def run_privacy_grid(
    base: Scenario,
    cells: Sequence[HeadCell],
    out: Path,
    *,
    train: Train = "head",
    cache: Path = Path("build/privacy-grid"),
    on_row: Callable[[Row], None] | None = None,
) -> list[Row]:
    """Run every cell not yet in ``out/privacy.csv``; return all its rows."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "privacy.csv"
    done = {row_key(r) for r in read_rows(path)}
    features = frozen_features(base, cache) if train == "head" else None
    for cell in cells:
        if _cell_key(train, cell) in done:
            continue
        scenario = cell_scenario(base, cell)
        if features is not None:
            row = run_head_federation(scenario, cell, features)
        else:
            row = _lora_row(scenario, cell, out)
        row = {"train": train, **row}
        append_row(path, CSV_FIELDS, row)
        if on_row is not None:
            on_row(row)
    return read_rows(path)


def _mean(values: Sequence[float]) -> str:
    return f"{100 * sum(values) / len(values):.1f}%" if values else "-"


def table_markdown(rows: Sequence[Row]) -> str:
    """Accuracy (mean over seeds) per level and mechanism (rows) and epsilon (columns)."""
    epsilons = sorted({r["target_epsilon"] for r in rows if r["target_epsilon"] is not None})
    twin = [r["accuracy"] for r in rows if r["level"] == "none"]
    series = sorted(
        {(r["train"], r["level"], r["mechanism"], r["bits"]) for r in rows if r["level"] != "none"}
    )
    head = "| train | level | mechanism | bits | " + " | ".join(f"eps {e:g}" for e in epsilons)
    lines = [head + " | non-private |", "|" + "---|" * (len(epsilons) + 5)]
    for train, level, mechanism, bits in series:
        cells = [
            _mean([r["accuracy"] for r in rows if (r["train"], r["level"], r["mechanism"],
                   r["bits"], r["target_epsilon"]) == (train, level, mechanism, bits, e)])
            for e in epsilons
        ]  # fmt: skip
        lines.append(
            f"| {train} | {level} | {mechanism} | {bits} | "
            + " | ".join(cells)
            + f" | {_mean(twin)} |"
        )
    return "\n".join(lines)


def plot_grid(rows: Sequence[Row], path: Path) -> None:
    """Accuracy against epsilon, one line per level and mechanism; the twin dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    series = sorted({(r["level"], r["mechanism"], r["bits"]) for r in rows if r["level"] != "none"})
    for level, mechanism, bits in series:
        mine = [
            r for r in rows if (r["level"], r["mechanism"], r["bits"]) == (level, mechanism, bits)
        ]
        eps = sorted({r["target_epsilon"] for r in mine})
        acc = [
            100
            * sum(r["accuracy"] for r in mine if r["target_epsilon"] == e)
            / sum(1 for r in mine if r["target_epsilon"] == e)
            for e in eps
        ]
        label = f"{level}-level" + (
            "" if mechanism in ("-", "gaussian") else f" {mechanism} {bits}b"
        )
        axis.plot(eps, acc, marker="o", label=label)
    twin = [r["accuracy"] for r in rows if r["level"] == "none"]
    if twin:
        axis.axhline(100 * sum(twin) / len(twin), linestyle="--", color="grey", label="no DP")
    axis.set_xscale("log", base=2)
    axis.set_xlabel("epsilon (delta 1e-5)")
    axis.set_ylabel("test accuracy (%)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
