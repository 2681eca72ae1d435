"""``fedrank federation up`` and ``fedrank federation wait-registered``.

::

    fedrank federation up --sites 2 --dir fed                 # until Ctrl-C
    FLWR_HOME=fed/flwr flwr run . fedrank-local --run-config 'num-clients=2' --stream
    fedrank federation up --sites 2 --dir fed --data-path 1=/data/site-1.npz \\
        --run . --run-config 'rounds=3'                          # submit one run, then stop
    fedrank federation wait-registered --superlink superlink:8000 \\
        --ca /etc/fedrank/ca/ca.crt --node-key /etc/fedrank/node/auth.key
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

from fedrank.deploy.federation import local_federation
from fedrank.deploy.federation_plan import CONNECTION, FederationPlan, parse_data_paths
from fedrank.deploy.registration import wait_until_registered


def _say(message: str) -> None:
    print(f"fedrank: {message}", flush=True)


def _echo(line: str) -> None:
    print(line, flush=True)


def add_federation_commands(sub: Any) -> None:
    """Add ``federation up`` and ``federation wait-registered`` to ``fedrank`` (``sub``)."""
    fed = sub.add_parser("federation", help="a local federation; waiting for registration")
    actions = fed.add_subparsers(dest="federation_command", required=True)

    up = actions.add_parser(
        "up",
        help="SuperLink + N SuperNodes on 127.0.0.1, TLS and node authentication on, "
        "until Ctrl-C (or until --run ends); stops everything it started",
    )
    up.add_argument("--sites", type=int, default=2, help="number of SuperNodes (default: 2)")
    up.add_argument(
        "--dir",
        type=Path,
        required=True,
        help="folder for certificates, logs and Flower's state (reused by a later up)",
    )
    up.add_argument(
        "--data-path",
        action="append",
        default=[],
        metavar="SITE=PATH",
        help="a site's own data file instead of its partition (repeat per site)",
    )
    up.add_argument(
        "--port", type=int, default=0, help="the SuperLink's API port (default: a free one)"
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds each start-up step may take (default: 120)",
    )
    up.add_argument(
        "--connection",
        default=CONNECTION,
        help=f"name of the flwr CLI connection (default: {CONNECTION})",
    )
    up.add_argument(
        "--run",
        metavar="APP",
        help="submit `flwr run APP` once the sites are online, then stop everything "
        "and exit with its status",
    )
    up.add_argument(
        "--run-config",
        default="",
        help="the run's --run-config; num-clients and clients-per-round default to --sites",
    )
    up.add_argument(
        "--run-timeout",
        type=float,
        default=None,
        help="seconds the --run may take (default: no limit)",
    )
    up.set_defaults(func=_up)

    wait = actions.add_parser(
        "wait-registered",
        help="wait until this SuperNode's key is registered at the SuperLink "
        "(a site's init container)",
    )
    wait.add_argument("--superlink", required=True, help="the SuperLink's HOST:PORT")
    wait.add_argument(
        "--ca",
        type=Path,
        help="CA certificate the SuperLink's certificate chains to (default: the system's CAs)",
    )
    wait.add_argument(
        "--node-key",
        type=Path,
        required=True,
        help="the SuperNode's key (auth.key, or its auth.key.pub)",
    )
    wait.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        help="seconds before giving up with status 2 (default: 0, no limit)",
    )
    wait.add_argument(
        "--interval",
        type=float,
        default=10.0,
        help="seconds between two questions to the SuperLink (default: 10)",
    )
    wait.set_defaults(func=_wait_registered)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _up(args: argparse.Namespace) -> int:
    plan = FederationPlan(
        directory=args.dir,
        sites=args.sites,
        data_paths=parse_data_paths(args.data_path),
        port=args.port,
        timeout=args.timeout,
        connection=args.connection,
    )
    # SIGTERM and SIGHUP stop the federation like Ctrl-C does: through the finally
    # blocks that stop every process by PID.
    saved = {s: signal.signal(s, _raise_interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        with local_federation(plan, say=_say) as fed:
            env = f"FLWR_HOME={shlex.quote(str(fed.flwr_home.resolve()))}"
            _say(f"{plan.sites} sites online at {fed.address} (connection {fed.connection})")
            if args.run is None:
                command = shlex.join(fed.run_command(".", args.run_config))
                _say(f"submit a run from the app's folder:\n  {env} {command}")
                _say("Ctrl-C stops every process started here")
                fed.wait()  # returns only by raising
            _say(f"submitting: {shlex.join(fed.run_command(args.run, args.run_config))}")
            code = fed.submit(args.run, args.run_config, timeout=args.run_timeout, echo=_echo)
            _say(f"flwr run ended with status {code}")
            return code
    except KeyboardInterrupt as stop:
        _say(f"stopped on request ({stop or 'SIGINT'})")
        return 130 if args.run is not None else 0
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _wait_registered(args: argparse.Namespace) -> int:
    wait_until_registered(
        args.superlink,
        args.node_key,
        root_certificates=args.ca,
        timeout=args.timeout,
        poll=args.interval,
        say=_say,
    )
    sys.stdout.flush()
    return 0
