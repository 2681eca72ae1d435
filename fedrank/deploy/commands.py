"""``fedrank certs``, ``superlink``, ``supernode``, ``federation``, ``status``: deployment.

::

    fedrank certs superlink --out certs --san superlink.example.org   # coordinator
    fedrank certs site --out site-0                                   # at each site
    fedrank certs local --out certs --sites 3                         # everything, one machine
    fedrank certs check --ca ca.crt --cert tls.crt --key tls.key --address superlink:8000
    fedrank superlink --tls-dir certs/superlink --host 0.0.0.0 --port 8000
    fedrank supernode --superlink superlink.example.org:8000 --ca ca.crt \
        --credentials site-0 --partition-id 0 [--data-path /data/site-0.npz]
    fedrank federation up --sites 2 --dir fed      # all of the above on loopback, until Ctrl-C
    fedrank federation wait-registered --superlink superlink:8000 --ca ca.crt --node-key auth.key
    fedrank status 127.0.0.1:9095
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shlex
from pathlib import Path
from typing import Any

from fedrank.deploy.certs import (
    DEFAULT_SANS,
    NODE_PUBLIC_KEY,
    write_site_files,
    write_superlink_files,
)
from fedrank.deploy.check import node_key_problems, server_certificate_problems
from fedrank.deploy.federation_commands import add_federation_commands
from fedrank.deploy.launch import Mode, SuperLinkLaunch, SuperNodeLaunch, flower_env
from fedrank.deploy.run_config import add_check_command
from fedrank.deploy.site_data import check_site_data
from fedrank.errors import ConfigError


def add_commands(sub: Any) -> None:
    """Add ``certs``, ``superlink``, ``supernode``, ``federation``, ``check-run-config``,
    ``status`` to ``sub``."""
    certs = sub.add_parser("certs", help="create or check TLS certificates and SuperNode keys")
    kinds = certs.add_subparsers(dest="certs_command", required=True)

    link = kinds.add_parser("superlink", help="a CA and the SuperLink's TLS certificate")
    _common(link)
    _sans(link)
    link.set_defaults(func=_superlink)

    site = kinds.add_parser("site", help="one site's SuperNode key pair and Runtime API TLS")
    _common(site)
    site.add_argument("--name", default="site", help="label in the public key (default: site)")
    site.set_defaults(func=_site)

    local = kinds.add_parser("local", help="superlink + N sites in one folder (one machine)")
    _common(local)
    _sans(local)
    local.add_argument("--sites", type=int, default=3, help="number of sites (default: 3)")
    local.set_defaults(func=_local)

    check = kinds.add_parser("check", help="check certificates and keys you bring yourself")
    check.add_argument("--ca", type=Path, help="CA certificate (PEM) clients verify against")
    check.add_argument("--cert", type=Path, help="SuperLink certificate (--ssl-certfile)")
    check.add_argument("--key", type=Path, help="SuperLink key (--ssl-keyfile)")
    check.add_argument(
        "--address",
        action="append",
        default=[],
        help="an address clients dial (repeat; default: 127.0.0.1 and localhost)",
    )
    check.add_argument(
        "--node-key", type=Path, action="append", default=[], help="a SuperNode key (repeat)"
    )
    check.set_defaults(func=_check)

    _add_launchers(sub)
    add_federation_commands(sub)
    add_check_command(sub)

    status = sub.add_parser("status", help="health and status of a running federation")
    status.add_argument("address", help="the run's status-address, e.g. 127.0.0.1:9095")
    status.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        help="seconds to wait for an answer, finite and > 0 (default: 5)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.set_defaults(func=_status)


def _seconds(text: str) -> float:
    """A finite number of seconds > 0 (``nan`` would wait forever, ``inf`` overflows)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text!r}")
    return value


def _add_launchers(sub: Any) -> None:
    link = sub.add_parser("superlink", help="start flower-superlink (TLS + SuperNode auth)")
    link.add_argument("--tls-dir", type=Path, help="folder with ca.crt, tls.crt, tls.key")
    link.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    link.add_argument("--port", type=int, default=8000, help="API port (default: 8000)")
    link.add_argument(
        "--health-address", default="", help="serve grpc.health.v1 on HOST:PORT (default: off)"
    )
    link.add_argument(
        "--database", default="", help="state file, kept across restarts (default: in memory)"
    )
    _launch_flags(link)
    link.set_defaults(func=_run_superlink)

    node = sub.add_parser("supernode", help="start one site's flower-supernode")
    node.add_argument("--superlink", required=True, help="the SuperLink's host:port")
    node.add_argument("--ca", type=Path, help="the consortium CA certificate (ca.crt)")
    node.add_argument(
        "--credentials", type=Path, help="site folder (auth.key, runtime.crt, runtime.key, ...)"
    )
    node.add_argument("--partition-id", type=int, required=True, help="this site's number")
    node.add_argument(
        "--data-path", default="", help="this site's own data file (default: its partition)"
    )
    node.add_argument(
        "--dp-policy",
        default="",
        help="this site's DP policy file (TOML: min-noise-multiplier, max-epsilon, delta, "
        "ledger; docs/privacy.md), checked now; a run asking for less is refused",
    )
    node.add_argument(
        "--runtime-port",
        type=int,
        default=9094,
        help="port of the SuperNode's Runtime API on 127.0.0.1 (default: 9094)",
    )
    node.add_argument(
        "--health-address", default="", help="serve grpc.health.v1 on HOST:PORT (default: off)"
    )
    _launch_flags(node)
    node.set_defaults(func=_run_supernode)


def _launch_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--insecure-demo",
        action="store_true",
        help="plaintext, no authentication: a demo on one machine only",
    )
    parser.add_argument("--print", action="store_true", help="print the command, do not run it")


def _mode(args: argparse.Namespace) -> Mode:
    return "insecure-demo" if args.insecure_demo else "secure"


def _exec(argv: list[str], *, only_print: bool) -> int:
    print(shlex.join(argv), flush=True)
    if only_print:
        return 0
    # Replaces this process, so signals reach Flower directly; with this
    # environment's commands first on PATH for the SuperExec Flower starts by name.
    os.execve(argv[0], argv, flower_env())


def _run_superlink(args: argparse.Namespace) -> int:
    settings = {
        "host": args.host,
        "port": args.port,
        "health_address": args.health_address,
        "database": args.database,
        "mode": _mode(args),
    }
    if args.tls_dir is None:
        launch = SuperLinkLaunch(**settings)
    else:
        launch = SuperLinkLaunch.from_tls_dir(args.tls_dir, **settings)
    return _exec(launch.argv(), only_print=args.print)


def _run_supernode(args: argparse.Namespace) -> int:
    settings = {
        "superlink": args.superlink,
        "partition_id": args.partition_id,
        # Checked now (exists, reads as a dataset) and absolute: the ClientApp that reads
        # it runs in another process and folder.
        "data_path": str(check_site_data(args.data_path)) if args.data_path else "",
        "dp_policy": str(Path(args.dp_policy).resolve()) if args.dp_policy else "",
        "runtime_port": args.runtime_port,
        "health_address": args.health_address,
        "mode": _mode(args),
    }
    if args.ca is None or args.credentials is None:
        launch = SuperNodeLaunch(ca_cert=args.ca, **settings)
    else:
        launch = SuperNodeLaunch.from_credentials(
            ca_cert=args.ca, credentials=args.credentials, **settings
        )
    return _exec(launch.argv(), only_print=args.print)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument(
        "--days", type=int, default=825, help="days the certificates are valid (default: 825)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing files")


def _sans(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--san",
        action="append",
        default=[],
        help="another DNS name or IP of the SuperLink (repeat); always included: "
        + ", ".join(DEFAULT_SANS),
    )


def _print_paths(paths: dict[str, Path]) -> None:
    width = max(len(role) for role in paths)
    for role, path in paths.items():
        print(f"  {role:<{width}}  {path}")


def _superlink(args: argparse.Namespace) -> int:
    paths = write_superlink_files(
        args.out, sans=[*DEFAULT_SANS, *args.san], days=args.days, force=args.force
    )
    print(f"fedrank: CA and SuperLink certificate in {args.out}")
    _print_paths(paths)
    print("Keep ca.key offline; give ca.crt to every site and every flwr CLI user.")
    return 0


def _site(args: argparse.Namespace) -> int:
    paths = write_site_files(args.out, site=args.name, days=args.days, force=args.force)
    print(f"fedrank: credentials of {args.name} in {args.out}")
    _print_paths(paths)
    print(f"Send only {NODE_PUBLIC_KEY} to the coordinator; auth.key never leaves this site.")
    return 0


def _local(args: argparse.Namespace) -> int:
    if args.sites < 1:
        raise ConfigError("sites", f"must be >= 1, got {args.sites}")
    _superlink(args)
    for i in range(args.sites):
        paths = write_site_files(
            args.out / "sites" / f"site-{i}", site=f"site-{i}", days=args.days, force=args.force
        )
        print(f"fedrank: site-{i}: {paths['node-key'].parent}")
    return 0


def _check(args: argparse.Namespace) -> int:
    server_files = (args.ca, args.cert, args.key)
    if any(server_files) and not all(server_files):
        raise ConfigError("check", "--ca, --cert and --key go together")
    if not any(server_files) and not args.node_key:
        raise ConfigError("check", "nothing to check: give --ca/--cert/--key and/or --node-key")
    problems: list[str] = []
    for path in [p for p in (*server_files, *args.node_key) if p is not None]:
        if not path.is_file():
            raise ConfigError("check", f"no such file: {path}")
    if all(server_files):
        addresses = args.address or ["127.0.0.1", "localhost"]
        problems += [
            f"{args.cert}: {p}"
            for p in server_certificate_problems(
                ca_pem=args.ca.read_bytes(),
                cert_pem=args.cert.read_bytes(),
                key_pem=args.key.read_bytes(),
                addresses=addresses,
            )
        ]
    for path in args.node_key:
        problems += [f"{path}: {p}" for p in node_key_problems(path.read_bytes())]
    for problem in problems:
        print(f"fedrank: problem: {problem}")
    if problems:
        return 1
    print("fedrank: certificates and keys are usable with Flower 1.41")
    return 0


def _status(args: argparse.Namespace) -> int:
    from fedrank.server.status import fetch_status, format_status

    status, health_name = fetch_status(args.address, timeout=args.timeout)
    if args.json:
        fields = {
            name: None if isinstance(value, float) and math.isnan(value) else value
            for name, value in dataclasses.asdict(status).items()
        }
        print(json.dumps({**fields, "health": health_name}))
    else:
        print(format_status(status, health_name))
    return 0
