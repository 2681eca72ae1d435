"""Check a ``flwr run --run-config`` before submitting it: ``fedrank check-run-config``.

Flower refuses a key the app's ``[tool.flwr.app.config]`` does not list with only
``[code: 15] Invalid run configuration.``, and a bad value (a typo in a choice, a
number out of range) only surfaces when the ServerApp starts on the coordinator.
:func:`check_run_config` reads the string with Flower's own parser, names every
unknown key (with the nearest known ones), and builds the whole scenario the
ServerApp would build from the app's defaults plus these values, so every error a
run would meet at start is met here, on the submitting machine, before anything runs.
``fedrank federation up --run`` calls it before it starts a process.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrank.config import Scenario
from fedrank.config.app_config import app_config
from fedrank.errors import ConfigError

FIELD = "run-config"


def parse_run_config(text: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (TOML values) read as ``flwr run --run-config`` reads them.

    Raises
    ------
    ConfigError
        ``run-config``: not ``KEY=VALUE`` pairs, or a value TOML cannot read.
    """
    import click
    from flwr.common.config import parse_config_args

    if not text.strip():
        return {}
    try:
        values = parse_config_args([text])
    except (ValueError, TypeError, OSError, click.ClickException) as err:
        reason = err.format_message() if isinstance(err, click.ClickException) else str(err)
        raise ConfigError(FIELD, f"{text!r} cannot be read: {reason}") from err
    if not values:
        raise ConfigError(FIELD, f"{text!r} holds no KEY=VALUE pair")
    return dict(values)


def app_defaults(app: Path | None = None) -> dict[str, Any]:
    """The app's ``[tool.flwr.app.config]``: from ``app/pyproject.toml`` when given,
    else the table fedrank generates (:func:`fedrank.config.app_config.app_config`)."""
    if app is None:
        return dict(app_config())
    path = app / "pyproject.toml"
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError("app", f"cannot read {path}: {err}") from err
    config = table.get("tool", {}).get("flwr", {}).get("app", {}).get("config")
    if not isinstance(config, dict):
        raise ConfigError("app", f"{path} has no [tool.flwr.app.config] table: not a Flower app")
    return config


def deployable(scenario: Scenario) -> Scenario:
    """``scenario`` if a deployment can run it (attacks and replayable DP noise are for
    simulations only).

    Raises
    ------
    ConfigError
        ``attack``: a simulated attack asked of a deployment; ``dp-reproducible-noise``:
        a deployment must be private, and anyone with the seed could replay that noise.
    """
    if scenario.attack.enabled:
        raise ConfigError("attack", "attacks are simulated by `fedrank simulate`, not `flwr run`")
    if scenario.dp.reproducible_noise:
        raise ConfigError(
            "dp-reproducible-noise",
            "a deployment refuses it (anyone with the seed could replay the DP noise); "
            "it is for `fedrank simulate` only",
        )
    return scenario


def check_run_config(text: str, *, app: Path | None = None) -> Scenario:
    """The scenario ``flwr run --run-config TEXT`` would start, or the error it would meet.

    Parameters
    ----------
    text : str
        The ``--run-config`` string (``'num-clients=3 dp="sample"'``).
    app : Path, optional
        The app folder whose ``pyproject.toml`` holds the defaults (default: fedrank's).

    Raises
    ------
    ConfigError
        Naming the key at fault: an unknown key (with the nearest known ones), a value
        of the wrong type or out of range, settings that cannot run together.
    """
    defaults = app_defaults(app)
    given = parse_run_config(text)
    unknown = sorted(key for key in given if key not in defaults)
    if unknown:
        raise ConfigError(unknown[0], _unknown_message(unknown, defaults))
    return deployable(Scenario.from_mapping({**defaults, **given}, source="the run config"))


def _unknown_message(unknown: list[str], known: Mapping[str, Any]) -> str:
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, list(known), n=3)
        hints.append(f"{key}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
    return (
        f"unknown run-config key{'s' if len(unknown) > 1 else ''} {'; '.join(hints)}; "
        "Flower would refuse the run with only '[code: 15] Invalid run configuration'. "
        "The keys: `fedrank simulate --help`"
    )


def add_check_command(sub: Any) -> None:
    """Add ``check-run-config`` to the ``fedrank`` subcommands ``sub``."""
    parser = sub.add_parser(
        "check-run-config",
        help="check a `flwr run --run-config` string before submitting it",
        description="Read RUN_CONFIG as `flwr run --run-config` does and build the run it "
        "asks for; exit status 2 and the key at fault if it would fail. Nothing is started.",
    )
    parser.add_argument("run_config", metavar="RUN_CONFIG", help="e.g. 'rounds=3 dp=\"sample\"'")
    parser.add_argument(
        "--app",
        type=Path,
        default=None,
        help="the app folder submitted to flwr run, for its defaults (default: fedrank's)",
    )
    parser.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    scenario = check_run_config(args.run_config, app=args.app)
    print("fedrank: the run config is valid:", file=sys.stdout)
    print("\n".join(f"  {line}" for line in scenario.describe()), file=sys.stdout)
    return 0
