"""``fedrank experiment robustness`` and ``fedrank experiment baselines``.

The grids themselves live in :mod:`fedrank.simulations.robustness` and
:mod:`fedrank.simulations.comparison`; this module parses their flags, runs each cell
(resuming a cell a killed grid left with checkpoints) and writes the tables and plots.
:mod:`fedrank.cli` adds the commands (:func:`add_experiments`).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import TYPE_CHECKING, Any

from fedrank.cli_scenario import add_scenario_flags, scenario_from_args, user_project_on_path
from fedrank.errors import ConfigError
from fedrank.privacy import commands as privacy_commands

if TYPE_CHECKING:
    from fedrank.config import Scenario


def _robustness(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedrank.simulations import robustness as grid

    user_project_on_path()
    base = scenario_from_args(args)
    cells = grid.grid_cells(
        grid.parse_aggregators(args.aggregators),
        [a.strip() for a in args.attacks.split(",") if a.strip()],
        [_number(args.fractions, x, float) for x in args.fractions.split(",")],
        [_number(args.seeds, x, int) for x in args.seeds.split(",")],
    )
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from fedrank.simulations.run import simulate

    def runner(scenario: Scenario) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        # A cell a killed grid left with checkpoints is resumed, never started over.
        from fedrank.server.checkpoint import list_checkpoints
        from fedrank.server.results import ResultsWriter
        from fedrank.server.resume import checkpoint_folder, latest_checkpoint

        folder = Path(scenario.output.results_dir)
        checkpoint = None
        if list_checkpoints(checkpoint_folder(folder)):
            checkpoint = latest_checkpoint(folder)
            print(f"fedrank: resuming {folder} after round {checkpoint.round}", flush=True)
        summary = simulate(
            scenario, ray_address=args.ray_address, resume_from=checkpoint, backend=args.backend
        )
        return summary, ResultsWriter(folder, append=True).read_rounds()

    def on_run(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(
                f"fedrank: {row['strategy']}:{row['aggregator']} {row['attack']} "
                f"{100 * row['malicious_fraction']:.0f}% seed {row['seed']}: "
                f"{100 * row['final_accuracy']:.2f}% ({row['seconds']:.0f} s)",
                flush=True,
            )

    out = Path(args.out)
    print(f"fedrank: robustness grid of {len(cells)} runs ({args.backend}); results in {out}")
    rows = grid.run_grid(base, cells, out, runner=runner, on_run=on_run)  # every row in the CSV
    (out / "robustness.md").write_text(grid.table_markdown(rows), encoding="utf-8")
    grid.plot_grid(rows, out / "robustness.png")
    print(grid.table_markdown(rows))
    print(f"fedrank: wrote {out / 'robustness.csv'}, robustness.md, robustness.png")
    return 0


def _baselines(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedrank.simulations import comparison

    base = scenario_from_args(args)
    variants = comparison.parse_variants(args.variants)
    seeds = [_number(args.seeds, x, int) for x in args.seeds.split(",")]
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from fedrank.simulations.run import simulate

    def runner(scenario: Scenario) -> dict[str, Any]:
        return simulate(scenario, ray_address=args.ray_address, backend=args.backend)

    def on_run(row: dict[str, Any]) -> None:
        if not args.quiet:
            print(
                f"fedrank: {row['variant']} seed {row['seed']}: "
                f"{100 * row['final_accuracy']:.2f}% ({row['seconds']:.0f} s)",
                flush=True,
            )

    out = Path(args.out)
    runs = len(variants) * len(seeds)
    print(f"fedrank: baselines comparison of {runs} runs ({args.backend}); results in {out}")
    rows = comparison.run_comparison(base, variants, seeds, out, runner=runner, on_run=on_run)
    table = comparison.table_markdown(rows)
    (out / "baselines.md").write_text(table, encoding="utf-8")
    comparison.plot_comparison(rows, out / "baselines.png")
    print(table)
    print(f"fedrank: wrote {out / comparison.CSV_FILE}, baselines.md, baselines.png")
    return 0


def _number(text: str, item: str, kind: type[float] | type[int]) -> Any:
    try:
        return kind(item)
    except ValueError as err:
        raise ConfigError("grid", f"{item!r} in {text!r} is not a {kind.__name__}") from err


BASELINE_VARIANTS = (
    "frl:borda,fedavg:mean,fedavg:fedavgm,fedavg:fedadam,fedavg:fedyogi,fedavg:fedprox,"
    "fedavg:bulyan+trim-fraction=0.1"
)


def add_experiments(sub: Any) -> None:
    """``fedrank experiment robustness`` and ``baselines`` (the grids live in ``simulations``)."""
    from fedrank.config import RANKING_ATTACKS

    exp = sub.add_parser("experiment", help="experiment grids (robustness, baselines, privacy)")
    grids = exp.add_subparsers(dest="grid", required=True)
    rob = grids.add_parser(
        "robustness",
        help="aggregator x attack x malicious fraction x seed: CSV, markdown table, plot",
    )
    rob.add_argument("--scenario", help="base scenario (packaged name or TOML path)")
    rob.add_argument(
        "--aggregators",
        default="frl:borda,frl:filtered",
        help="strategy:aggregator list (default: frl:borda,frl:filtered), e.g. fedavg:krum",
    )
    rob.add_argument(
        "--attacks",
        default=",".join(sorted(RANKING_ATTACKS)),
        help="attack list (default: every ranking attack); each pairs with fitting strategies",
    )
    rob.add_argument("--fractions", default="0,0.1,0.2,0.3", help="malicious fractions")
    rob.add_argument("--seeds", default="0", help="seeds (scenario and attack seed)")
    _add_grid_run_flags(rob, out="results/robustness")
    rob.set_defaults(func=_robustness)
    privacy_commands.add_privacy_grid(grids, add_scenario_flags, scenario_from_args)
    privacy_commands.add_rqm_table(grids)
    bas = grids.add_parser(
        "baselines",
        help="FRL against Flower's baselines: accuracy per round and per uplink byte",
    )
    bas.add_argument("--scenario", help="base scenario (packaged name or TOML path)")
    bas.add_argument(
        "--variants",
        default=BASELINE_VARIANTS,
        help="strategy:aggregator[+key=value...] list; the first is the reference of the "
        f"equal-uplink column (default: {BASELINE_VARIANTS})",
    )
    bas.add_argument("--seeds", default="0", help="seeds")
    _add_grid_run_flags(bas, out="results/baselines")
    bas.set_defaults(func=_baselines)


def _add_grid_run_flags(parser: Any, *, out: str) -> None:
    """The flags every grid of runs takes: backend, output folder, cluster, verbosity,
    and every scenario field."""
    parser.add_argument("--backend", choices=("ray", "local"), default="ray")
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS)")
    parser.add_argument("--quiet", action="store_true", help="no line per finished run")
    parser.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    add_scenario_flags(parser)
