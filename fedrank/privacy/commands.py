"""The privacy commands of ``fedrank``: ``audit`` and ``experiment privacy``.

Kept apart from :mod:`fedrank.cli` (which adds them) so that the CLI stays one file of
its own size; the scenario flags and the scenario built from them are the CLI's.
"""

from __future__ import annotations

import argparse
import functools
import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fedrank.errors import ConfigError

if TYPE_CHECKING:
    from fedrank.config import Scenario

ScenarioFlags = Callable[[argparse.ArgumentParser], None]
ScenarioFromArgs = Callable[[argparse.Namespace], "Scenario"]


def _integer(text: str, item: str, kind: type[int]) -> int:
    try:
        return kind(item)
    except ValueError as err:
        raise ConfigError("grid", f"{item!r} in {text!r} is not an integer") from err


def _audit(args: argparse.Namespace, scenario_from_args: ScenarioFromArgs) -> int:
    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    from fedrank.simulations.audit import run_audit

    report = run_audit(
        scenario_from_args(args),
        level=args.level,
        canaries=args.canaries,
        noise_off=args.noise_off,
        confidence=args.confidence,
        backend=args.backend,
    )
    print(f"fedrank: {report.line()}")
    print(f"fedrank: wrote {report.results_dir}/audit.json")
    return 0 if report.consistent or args.noise_off else 1


def add_audit(
    sub: Any, scenario_flags: ScenarioFlags, scenario_from_args: ScenarioFromArgs
) -> None:
    """``fedrank audit``: one DP-LoRA federation with canaries, its empirical epsilon."""
    aud = sub.add_parser(
        "audit",
        help="empirical epsilon lower bound of one DP-LoRA run with canaries, beside the claim",
    )
    aud.add_argument("--scenario", help="a LoRA scenario (packaged name or TOML path)")
    aud.add_argument("--level", choices=("sample", "client"), required=True)
    aud.add_argument("--canaries", type=int, default=200, help="m (default 200)")
    aud.add_argument(
        "--noise-off",
        action="store_true",
        help="self-test: the same run with its noise switched off and its claim kept",
    )
    aud.add_argument("--confidence", type=float, default=0.95)
    aud.add_argument("--backend", choices=("ray", "local"), default="local")
    aud.add_argument("--verbose", action="store_true", help="show Flower's and Ray's logs")
    scenario_flags(aud)
    aud.set_defaults(func=functools.partial(_audit, scenario_from_args=scenario_from_args))


def _privacy_grid(args: argparse.Namespace, scenario_from_args: ScenarioFromArgs) -> int:
    from pathlib import Path

    import torch

    from fedrank.simulations import privacy_grid as grid

    if not args.verbose:
        logging.getLogger("flwr").setLevel(logging.ERROR)
    torch.set_num_threads(1)  # one core a grid: the other one is someone else's
    # Opacus' hooks warn on every step that the frozen features need no gradient.
    warnings.filterwarnings("ignore", message="Full backward hook")
    base = scenario_from_args(args)
    cells = grid.grid_cells(
        [x.strip() for x in args.levels.split(",") if x.strip()],
        grid.parse_epsilons(args.epsilons),
        mechanisms=[x.strip() for x in args.mechanisms.split(",") if x.strip()],
        bits=[_integer(args.bits, x, int) for x in args.bits.split(",") if x.strip()],
        seeds=[_integer(args.seeds, x, int) for x in args.seeds.split(",")],
    )
    out = Path(args.out)

    def on_row(row: dict[str, Any]) -> None:
        if not args.quiet:
            eps = row["target_epsilon"]
            print(
                f"fedrank: {row['level']} {row['mechanism']} {row['bits']}b epsilon "
                f"{'none' if eps is None else f'{eps:g}'} seed {row['seed']}: "
                f"{100 * row['accuracy']:.2f}% ({row['seconds']:.0f} s)",
                flush=True,
            )

    print(f"fedrank: privacy grid of {len(cells)} cells ({args.train}); results in {out}")
    rows = grid.run_privacy_grid(
        base, cells, out, train=args.train, cache=Path(args.cache), on_row=on_row
    )
    (out / "privacy.md").write_text(grid.table_markdown(rows) + "\n", encoding="utf-8")
    grid.plot_grid(rows, out / "privacy.png")
    print(grid.table_markdown(rows))
    print(f"fedrank: wrote {out / 'privacy.csv'}, privacy.md, privacy.png")
    return 0


def add_privacy_grid(
    grids: Any, scenario_flags: ScenarioFlags, scenario_from_args: ScenarioFromArgs
) -> None:
    """``fedrank experiment privacy`` (:mod:`fedrank.simulations.privacy_grid`)."""
    grid = grids.add_parser(
        "privacy",
        help="accuracy against epsilon for sample- and client-level DP: CSV, table, plot",
    )
    grid.add_argument("--scenario", default="dp-cross-device", help="base scenario")
    grid.add_argument("--levels", default="sample,client", help="sample,client")
    grid.add_argument("--epsilons", default="1,2,4,8,none", help="'none': the twin")
    grid.add_argument(
        "--mechanisms", default="gaussian", help="client level: gaussian,rqm,local-gaussian"
    )
    grid.add_argument("--bits", default="2,4", help="bits a coordinate of rqm, local-gaussian")
    grid.add_argument("--seeds", default="0")
    grid.add_argument(
        "--train", choices=("head", "lora"), default="head",
        help="head: the head on cached frozen features (fast); lora: real DP-LoRA runs",
    )  # fmt: skip
    grid.add_argument("--cache", default="build/privacy-grid", help="frozen features cache")
    grid.add_argument("--out", default="results/privacy-grid", help="output folder")
    grid.add_argument("--quiet", action="store_true", help="no line per finished cell")
    grid.add_argument("--verbose", action="store_true", help="show Flower's logs")
    scenario_flags(grid)
    grid.set_defaults(func=functools.partial(_privacy_grid, scenario_from_args=scenario_from_args))


def _rqm_table(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedrank.simulations.rqm_comparison import compare, comparison_markdown

    rows = compare(
        [float(x) for x in args.epsilons.split(",")],
        [_integer(args.bits, x, int) for x in args.bits.split(",")],
        clients=args.clients,
        trials=args.trials,
    )
    table = comparison_markdown(rows, clients=args.clients)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rqm.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"fedrank: wrote {out / 'rqm.md'}")
    return 0


def add_rqm_table(grids: Any) -> None:
    """``fedrank experiment rqm`` (:mod:`fedrank.simulations.rqm_comparison`)."""
    rqm = grids.add_parser(
        "rqm", help="RQM against the Gaussian mechanism at equal epsilon and bits"
    )
    rqm.add_argument("--epsilons", default="1,2,4,8")
    rqm.add_argument("--bits", default="1,2,4")
    rqm.add_argument("--clients", type=int, default=1000)
    rqm.add_argument("--trials", type=int, default=20)
    rqm.add_argument("--out", default="results/rqm")
    rqm.set_defaults(func=_rqm_table)
