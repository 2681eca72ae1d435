"""The ``fedrank`` command.

``fedrank simulate`` runs a scenario (a packaged name, a TOML file, or the
defaults) with any field overridden by a flag of the same name::

    fedrank simulate --scenario frl-mnist --rounds 10 --model cnn

``fedrank simulate --resume RESULTS_DIR`` continues an interrupted run from its
last complete round (the scenario is read from the folder).
``fedrank experiment robustness`` runs a grid of aggregator x attack x malicious
fraction x seed around such a scenario (docs/robustness.md); ``fedrank experiment
baselines`` compares FRL with Flower's baselines per round and per uplink byte
(docs/baselines.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from fedrank.config import FIELDS, Scenario
from fedrank.deploy.commands import add_commands as add_deploy_commands
from fedrank.errors import ConfigError, FedrankError
from fedrank.privacy import commands as privacy_commands

if TYPE_CHECKING:
    from fedrank.server.checkpoint import CheckpointState


def _add_scenario_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scenario fields (override the scenario file)")
    for key, info in FIELDS.items():
        kind = type(info.default)
        group.add_argument(
            f"--{key}",
            dest=_dest(key),
            type=_parse_bool if kind is bool else kind,
            default=None,
            choices=info.choices or None,
            metavar=None if info.choices else kind.__name__.upper(),
            help=f"{info.help} (default: {info.default!r})",
        )


def _dest(key: str) -> str:
    return "set_" + key.replace("-", "_")


def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario keys given as flags."""
    return {
        key: getattr(args, _dest(key)) for key in FIELDS if getattr(args, _dest(key)) is not None
    }


def _scenario_from_args(args: argparse.Namespace) -> Scenario:
    from fedrank.simulations.run import scenario_path

    base = Scenario.from_toml(scenario_path(args.scenario)) if args.scenario else Scenario()
    changes = _overrides(args)
    # A dataset or model folder given relative to where fedrank runs: every process of
    # the run (Ray's workers included) must find the same one.
    for key in ("dataset", "model"):
        value = changes.get(key, base.to_run_config()[key])
        if isinstance(value, str) and value and Path(value).exists():
            changes[key] = str(Path(value).resolve())
    return base.replace(**changes) if changes else base


def _user_project_on_path() -> None:
    """Make ``package.module:factory`` models importable from the folder fedrank runs in,
    in this process and in the Ray workers it starts (they inherit ``PYTHONPATH``)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *filter(None, paths)])


def _resume_from_args(args: argparse.Namespace) -> tuple[Scenario, CheckpointState]:
    from fedrank.server.results import check_results_dir
    from fedrank.server.resume import latest_checkpoint, resume_scenario

    if args.scenario:
        raise ConfigError("resume", "the scenario comes from the results folder; drop --scenario")
    scenario = resume_scenario(args.resume, _overrides(args))
    checkpoint = latest_checkpoint(args.resume)
    check_results_dir(args.resume, resume_round=checkpoint.round)
    print(f"fedrank: resuming {args.resume} after round {checkpoint.round}")
    return scenario, checkpoint


def _simulate(args: argparse.Namespace) -> int:
    # Validated (and a resumed run's checkpoint read) before anything starts.
    _user_project_on_path()
    checkpoint: CheckpointState | None = None
    if args.resume:
        scenario, checkpoint = _resume_from_args(args)
    else:
        from fedrank.server.results import claim_results_dir

        scenario = _scenario_from_args(args)
        scenario = scenario.replace(results_dir=claim_results_dir(scenario.output.results_dir))
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from tqdm import tqdm

    from fedrank.simulations.run import simulate

    eff, run = scenario.effective, scenario.run
    print(
        f"fedrank: {eff.spec.name} {eff.model} on {eff.dataset}, "
        f"{run.num_clients} clients ({scenario.data.partitioner}), "
        f"{run.clients_per_round} per round, {run.rounds} rounds"
    )
    if not args.quiet:
        print("\n".join(f"  {line}" for line in scenario.describe()))
    done = checkpoint.round if checkpoint else 0
    bar = tqdm(total=run.rounds, initial=done, unit="round", disable=args.quiet, file=sys.stdout)

    def on_round(row: dict[str, Any]) -> None:
        if row["round"] == 0:
            bar.set_postfix_str(f"start acc {100 * row['accuracy']:.1f}%")
            return
        bar.update(1)
        extra = f" rejected {row['rejected']}" if row.get("rejected") else ""
        extra += "".join(
            f" {label} {row[key]:.2f}"
            for key, label in (("dp-record-epsilon", "eps/record"), ("dp-epsilon", "eps/client"))
            if key in row
        )
        bar.set_postfix_str(
            f"round {row['round']} acc {100 * row['accuracy']:.2f}% {row['seconds']:.1f}s{extra}"
        )

    summary = simulate(
        scenario,
        ray_address=args.ray_address,
        on_round=on_round,
        resume_from=checkpoint,
        backend=args.backend,
    )
    bar.close()
    print(
        f"fedrank: final accuracy {100 * summary['final_accuracy']:.2f}% "
        f"(best {100 * summary['best_accuracy']:.2f}%) after {summary['rounds']} rounds "
        f"in {summary['seconds']:.0f} s; results in {scenario.output.results_dir}"
    )
    if summary.get("stopped"):
        print(f"fedrank: stopped early: {summary['stopped']}")
    note = (summary.get("privacy") or {}).get("note")
    if note:
        print(f"fedrank: {note.upper()}: anyone with the seed can replay the DP noise")
    if summary["rounds"] > 0 and summary["skipped_rounds"] >= summary["rounds"]:
        print(
            f"fedrank: error: every round was skipped (fewer than min-replies = "
            f"{run.min_replies} valid replies each time): nothing was trained; see "
            f"{scenario.output.results_dir}/metrics.jsonl for the reasons",
            file=sys.stderr,
        )
        return 1
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from fedrank.privacy.report import format_privacy_report

    print(format_privacy_report(args.results_dir))
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from fedrank.simulations.run import list_scenarios

    print("\n".join(list_scenarios()))
    return 0


def _robustness(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedrank.simulations import robustness as grid

    _user_project_on_path()
    base = _scenario_from_args(args)
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

    base = _scenario_from_args(args)
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


def _add_experiments(sub: Any) -> None:
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
    rob.add_argument("--backend", choices=("ray", "local"), default="ray")
    rob.add_argument("--out", default="results/robustness", help="output folder")
    rob.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS)")
    rob.add_argument("--quiet", action="store_true", help="no line per finished run")
    rob.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    _add_scenario_flags(rob)
    rob.set_defaults(func=_robustness)
    privacy_commands.add_privacy_grid(grids, _add_scenario_flags, _scenario_from_args)
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
    bas.add_argument("--backend", choices=("ray", "local"), default="ray")
    bas.add_argument("--out", default="results/baselines", help="output folder")
    bas.add_argument("--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS)")
    bas.add_argument("--quiet", action="store_true", help="no line per finished run")
    bas.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    _add_scenario_flags(bas)
    bas.set_defaults(func=_baselines)


def _add_version(parser: argparse.ArgumentParser) -> None:
    """``fedrank --version``: fedrank's version, with Flower's and Python's beside it."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from fedrank import __version__

    try:
        flower = version("flwr")
    except PackageNotFoundError:  # fedrank imported from a checkout without Flower installed
        flower = "not installed"
    parser.add_argument(
        "--version",
        action="version",
        version=f"fedrank {__version__} (Flower {flower}, Python {platform.python_version()})",
        help="print fedrank's version and exit",
    )


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake said in one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedrank`` command."""
    parser = _Parser(prog="fedrank", description=__doc__.split("\n\n")[0])
    _add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a federation on Ray (this machine or a cluster)")
    sim.add_argument("--scenario", help="packaged scenario name or TOML path (default: built-in)")
    sim.add_argument(
        "--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else local)"
    )
    sim.add_argument(
        "--resume",
        metavar="RESULTS_DIR",
        help="continue the interrupted run in RESULTS_DIR from its last complete round",
    )
    sim.add_argument(
        "--backend",
        choices=("ray", "local"),
        default="ray",
        help="ray (default) or local: the same apps in this process, clients one at a time",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    _add_scenario_flags(sim)
    sim.set_defaults(func=_simulate)
    lst = sub.add_parser("scenarios", help="list the packaged scenarios")
    lst.set_defaults(func=_scenarios)
    add_deploy_commands(sub)  # certs, superlink, supernode, status
    _add_experiments(sub)
    privacy_commands.add_audit(sub, _add_scenario_flags, _scenario_from_args)
    priv = sub.add_parser("privacy", help="print the privacy report of a results folder")
    priv.add_argument("results_dir", metavar="RESULTS_DIR", help="a DP-LoRA run's results folder")
    priv.set_defaults(func=_privacy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedrank`` command; return its exit status.

    A mistake in what the user gave (a setting, a file, a folder) is one line on stderr
    and exit status 2; a file the system refuses to read or write, one line and 1; an
    interrupt, 130. Anything else is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except FedrankError as err:
        print(f"fedrank: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        where = f": {err.filename}" if err.filename else ""
        print(f"fedrank: error: {err.strerror or err}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedrank: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
