"""``fedrank federation``: its plan, its flags, and the pieces it is built from (no processes)."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from flwr.supercore.primitives.asymmetric import public_key_to_bytes

from fedrank.cli import build_parser, main
from fedrank.deploy import certs
from fedrank.deploy.federation import LocalFederation
from fedrank.deploy.federation_plan import FederationPlan, parse_data_paths, with_sites
from fedrank.deploy.launch import environment_bin, flower_env
from fedrank.deploy.processes import ProcessGroup
from fedrank.deploy.registration import node_public_key
from fedrank.errors import ConfigError

# The commands of the operator path: every flag has a description (and its choices).
OPERATOR_COMMANDS = (
    ("certs", "superlink"),
    ("certs", "site"),
    ("certs", "local"),
    ("certs", "check"),
    ("superlink",),
    ("supernode",),
    ("federation", "up"),
    ("federation", "wait-registered"),
    ("status",),
)


def _subparser(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> argparse.ArgumentParser:
    for name in path:
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = sub.choices[name]
    return parser


@pytest.mark.parametrize("path", OPERATOR_COMMANDS, ids=" ".join)
def test_every_flag_of_the_operator_commands_is_described(path):
    parser = _subparser(build_parser(), path)
    actions = [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]

    undescribed = [a.dest for a in actions if not (a.help and a.help.strip())]

    assert actions
    assert undescribed == []


def test_version_names_fedrank_and_flower(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])

    out = capsys.readouterr().out
    assert done.value.code == 0
    assert re.match(r"fedrank \d+\.\d+\.\d+ \(Flower 1\.41\.\d+, Python 3\.11\.\d+\)$", out.strip())


# ------------------------------------------------------------------ the environment


def test_flower_env_puts_this_environment_first_once():
    bin_dir = str(environment_bin())
    base = {"PATH": os.pathsep.join(["/usr/bin", bin_dir, "/bin"]), "KEEP": "1"}

    env = flower_env(base, FLWR_HOME="/tmp/x")

    assert env["PATH"].split(os.pathsep) == [bin_dir, "/usr/bin", "/bin"]
    assert (env["KEEP"], env["FLWR_HOME"]) == ("1", "/tmp/x")
    assert env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] == "1"
    assert base["PATH"] == os.pathsep.join(["/usr/bin", bin_dir, "/bin"])  # not mutated
    assert (environment_bin() / "flower-superexec").is_file()
    assert environment_bin() == Path(sys.executable).parent


def test_flower_env_without_path_still_finds_flower():
    env = flower_env({})

    assert env["PATH"] == str(environment_bin())


def test_superlink_command_execs_flower_with_this_environment_first(monkeypatch, tmp_path):
    calls: list[tuple[str, list[str], dict[str, str]]] = []
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))

    main(["superlink", "--insecure-demo", "--port", "9000"])

    ((path, argv, env),) = calls
    assert path == argv[0] == str(environment_bin() / "flower-superlink")
    assert env["PATH"].split(os.pathsep)[0] == str(environment_bin())


# ------------------------------------------------------------------ the plan


def test_data_paths_parse_to_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    parsed = parse_data_paths(["0=a.npz", "2=/data/b c.npz"])

    assert parsed == {0: tmp_path / "a.npz", 2: Path("/data/b c.npz")}


@pytest.mark.parametrize("item", ["a.npz", "x=a.npz", "0=", "=a.npz", "-1=a.npz"])
def test_bad_data_path_items_are_refused(item):
    with pytest.raises(ConfigError, match="SITE=PATH"):
        parse_data_paths([item])


def test_a_site_given_two_data_paths_is_refused():
    with pytest.raises(ConfigError, match="site 1 given twice"):
        parse_data_paths(["1=a", "1=b"])


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"sites": 0}, "sites"),
        ({"sites": True}, "sites"),
        ({"port": 70000}, "port"),
        ({"port": -1}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"connection": "a b"}, "connection"),
        ({"data_paths": {2: "MISSING"}}, "data-path"),
        ({"data_paths": {0: "/no/such/file.npz"}}, "data-path"),
    ],
)
def test_a_bad_plan_names_its_field(tmp_path, changes, field):
    with pytest.raises(ConfigError) as err:
        FederationPlan(directory=tmp_path, **changes)

    assert err.value.field == field


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", "num-clients=3 clients-per-round=3"),
        ("rounds=2", "num-clients=3 clients-per-round=3 rounds=2"),
        ("rounds=2 num-clients=5", "clients-per-round=3 rounds=2 num-clients=5"),
        ("num-clients=5 clients-per-round=1", "num-clients=5 clients-per-round=1"),
        (
            'results-dir="x num-clients=9"',
            'num-clients=3 clients-per-round=3 results-dir="x num-clients=9"',
        ),
    ],
)
def test_site_counts_are_added_only_when_missing(given, expected):
    assert with_sites(given, 3) == expected


def test_the_printed_run_command_uses_this_environments_flwr(tmp_path):
    with ProcessGroup(tmp_path / "logs") as group:
        fed = LocalFederation(FederationPlan(directory=tmp_path, sites=2), group, api_port=9000)

        argv = fed.run_command(".", "rounds=1")

    assert argv[0] == str(environment_bin() / "flwr")
    assert argv[1:] == [
        *("run", ".", "fedrank-local"),
        *("--run-config", "num-clients=2 clients-per-round=2 rounds=1", "--stream"),
    ]
    assert shlex.split(shlex.join(argv)) == argv
    assert fed.cli_env()["FLWR_HOME"] == str(tmp_path / "flwr")


# ------------------------------------------------------------------ keys


@pytest.mark.parametrize("name", [certs.NODE_KEY, certs.NODE_PUBLIC_KEY])
def test_node_public_key_is_what_flower_stores(tmp_path, name):
    certs.write_site_files(tmp_path, site="site-0")
    private = serialization.load_ssh_private_key(
        (tmp_path / certs.NODE_KEY).read_bytes(), password=None
    )

    pem = node_public_key(tmp_path / name)

    assert pem == public_key_to_bytes(private.public_key())  # type: ignore[arg-type]


def test_node_public_key_refuses_other_files(tmp_path):
    certs.write_site_files(tmp_path, site="site-0")

    with pytest.raises(ConfigError, match="not an OpenSSH key"):
        node_public_key(tmp_path / certs.RUNTIME_CERT)
    with pytest.raises(ConfigError, match="cannot read"):
        node_public_key(tmp_path / "missing")
