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
from typing import TYPE_CHECKING, Any, NoReturn

from fedrank.cli_experiments import add_experiments
from fedrank.cli_scenario import (
    add_scenario_flags,
    scenario_from_args,
    scenario_overrides,
    user_project_on_path,
)
from fedrank.config import Scenario
from fedrank.deploy.commands import add_commands as add_deploy_commands
from fedrank.errors import ConfigError, FedrankError
from fedrank.privacy import commands as privacy_commands

if TYPE_CHECKING:
    from fedrank.server.checkpoint import CheckpointState

# tests/test_config.py builds scenarios through the name this module had for it.
_scenario_from_args = scenario_from_args


def _resume_from_args(args: argparse.Namespace) -> tuple[Scenario, CheckpointState]:
    from fedrank.server.results import check_results_dir
    from fedrank.server.resume import latest_checkpoint, resume_scenario

    if args.scenario:
        raise ConfigError("resume", "the scenario comes from the results folder; drop --scenario")
    scenario = resume_scenario(args.resume, scenario_overrides(args))
    checkpoint = latest_checkpoint(args.resume)
    check_results_dir(args.resume, resume_round=checkpoint.round)
    print(f"fedrank: resuming {args.resume} after round {checkpoint.round}")
    return scenario, checkpoint


def _simulate(args: argparse.Namespace) -> int:
    # Validated (and a resumed run's checkpoint read) before anything starts; simulate()
    # checks the task, then claims the results folder, before Ray or any round starts.
    user_project_on_path()
    checkpoint: CheckpointState | None = None
    if args.resume:
        scenario, checkpoint = _resume_from_args(args)
    else:
        scenario = scenario_from_args(args)
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
    bar: tqdm[Any] | None = None  # drawn at the first row: a run refused at start-up draws none

    def on_round(row: dict[str, Any]) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(
                total=run.rounds, initial=done, unit="round", disable=args.quiet, file=sys.stdout
            )
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

    try:
        summary = simulate(
            scenario,
            ray_address=args.ray_address,
            on_round=on_round,
            resume_from=checkpoint,
            backend=args.backend,
        )
    finally:
        if bar is not None:
            bar.close()
    results_dir = summary["scenario"]["results-dir"]
    print(
        f"fedrank: final accuracy {100 * summary['final_accuracy']:.2f}% "
        f"(best {100 * summary['best_accuracy']:.2f}%) after {summary['rounds']} rounds "
        f"in {summary['seconds']:.0f} s; results in {results_dir}"
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
            f"{results_dir}/metrics.jsonl for the reasons",
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
    add_scenario_flags(sim)
    sim.set_defaults(func=_simulate)
    lst = sub.add_parser("scenarios", help="list the packaged scenarios")
    lst.set_defaults(func=_scenarios)
    add_deploy_commands(sub)  # certs, superlink, supernode, status
    add_experiments(sub)
    privacy_commands.add_audit(sub, add_scenario_flags, scenario_from_args)
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
