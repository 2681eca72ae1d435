"""The ``fedrank`` command.

``fedrank simulate`` runs a scenario (a packaged name, a TOML file, or the
defaults) with any field overridden by a flag of the same name::

    fedrank simulate --scenario frl-mnist --rounds 10 --model cnn
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from fedrank.config import Scenario
from fedrank.errors import FedrankError


def _add_scenario_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scenario fields (override the scenario file)")
    for field in dataclasses.fields(Scenario):
        flag = "--" + field.name.replace("_", "-")
        kind = float if field.default is None else type(field.default)  # lr: None = per strategy
        group.add_argument(
            flag,
            dest=f"set_{field.name}",
            type=kind,
            default=None,
            metavar=kind.__name__.upper(),
            help=f"default: {field.default}",
        )


def _scenario_from_args(args: argparse.Namespace) -> Scenario:
    from fedrank.simulations.run import scenario_path

    base = Scenario.from_toml(scenario_path(args.scenario)) if args.scenario else Scenario()
    changes = {
        f.name: getattr(args, f"set_{f.name}")
        for f in dataclasses.fields(Scenario)
        if getattr(args, f"set_{f.name}") is not None
    }
    return base.replace(**changes) if changes else base


def _simulate(args: argparse.Namespace) -> int:
    scenario = _scenario_from_args(args)  # validated before anything starts
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    from tqdm import tqdm

    from fedrank.simulations.run import simulate

    print(
        f"fedrank: {scenario.strategy} {scenario.model} on {scenario.dataset}, "
        f"{scenario.num_clients} clients ({scenario.partitioner}), "
        f"{scenario.clients_per_round} per round, {scenario.rounds} rounds"
    )
    bar = tqdm(total=scenario.rounds, unit="round", disable=args.quiet, file=sys.stdout)

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

    summary = simulate(scenario, ray_address=args.ray_address, on_round=on_round)
    bar.close()
    print(
        f"fedrank: final accuracy {100 * summary['final_accuracy']:.2f}% "
        f"(best {100 * summary['best_accuracy']:.2f}%) after {summary['rounds']} rounds "
        f"in {summary['seconds']:.0f} s; results in {scenario.results_dir}"
    )
    if summary.get("stopped"):
        print(f"fedrank: stopped early: {summary['stopped']}")
    return 0


def _privacy(args: argparse.Namespace) -> int:
    from fedrank.privacy.report import format_privacy_report

    print(format_privacy_report(args.results_dir))
    return 0


def _scenarios(args: argparse.Namespace) -> int:
    from fedrank.simulations.run import list_scenarios

    print("\n".join(list_scenarios()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedrank`` command."""
    parser = argparse.ArgumentParser(prog="fedrank", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="run a federation on Ray (this machine or a cluster)")
    sim.add_argument("--scenario", help="packaged scenario name or TOML path (default: built-in)")
    sim.add_argument(
        "--ray-address", help="existing Ray cluster (default: $RAY_ADDRESS, else local)"
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    _add_scenario_flags(sim)
    sim.set_defaults(func=_simulate)
    lst = sub.add_parser("scenarios", help="list the packaged scenarios")
    lst.set_defaults(func=_scenarios)
    priv = sub.add_parser("privacy", help="print the privacy report of a results folder")
    priv.add_argument("results_dir", metavar="RESULTS_DIR", help="a DP-LoRA run's results folder")
    priv.set_defaults(func=_privacy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fedrank`` command; return its exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except FedrankError as err:
        print(f"fedrank: error: {err}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    raise SystemExit(main())
