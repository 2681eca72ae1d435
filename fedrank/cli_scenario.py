"""The scenario fields as flags of the ``fedrank`` command, and the scenario they give.

Every field of :data:`fedrank.config.FIELDS` is a flag of the same name
(:func:`add_scenario_flags`); :func:`scenario_from_args` applies the flags given to the
scenario ``--scenario`` names. Shared by ``simulate``, the experiment grids and
``audit``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from fedrank.config import FIELDS, Scenario


def add_scenario_flags(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` one flag per scenario field (``--rounds``, ``--model``, ...)."""
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


def scenario_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The scenario keys given as flags."""
    return {
        key: getattr(args, _dest(key)) for key in FIELDS if getattr(args, _dest(key)) is not None
    }


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario ``--scenario`` names (else the defaults) with the flags given applied."""
    from fedrank.simulations.run import scenario_path

    base = Scenario.from_toml(scenario_path(args.scenario)) if args.scenario else Scenario()
    changes = scenario_overrides(args)
    # A dataset or model folder given relative to where fedrank runs: every process of
    # the run (Ray's workers included) must find the same one.
    for key in ("dataset", "model"):
        value = changes.get(key, base.to_run_config()[key])
        if isinstance(value, str) and value and Path(value).exists():
            changes[key] = str(Path(value).resolve())
    return base.replace(**changes) if changes else base


def user_project_on_path() -> None:
    """Make ``package.module:factory`` models importable from the folder fedrank runs in,
    in this process and in the Ray workers it starts (they inherit ``PYTHONPATH``)."""
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if here not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([here, *filter(None, paths)])
