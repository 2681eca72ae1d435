"""Flower command lines of fedrank.deploy.launch: secure by default, parsed by Flower itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrank.cli import main
from fedrank.deploy.certs import write_site_files, write_superlink_files
from fedrank.deploy.launch import SuperLinkLaunch, SuperNodeLaunch, node_config
from fedrank.errors import ConfigError


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("certs")
    write_superlink_files(out)
    write_site_files(out / "site-0", site="site-0")
    return out


def _parse(command: str, argv: list[str]) -> object:
    from flwr.superlink.cli.flower_superlink import _parse_args_run_superlink
    from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

    parser = {
        "flower-superlink": _parse_args_run_superlink,
        "flower-supernode": _parse_args_run_supernode,
    }
    assert Path(argv[0]).name == command
    return parser[command]().parse_args(argv[1:])


def test_superlink_is_secure_by_default(certs):
    argv = SuperLinkLaunch.from_tls_dir(
        certs / "superlink", port=9000, health_address="127.0.0.1:9001"
    ).argv()

    args = _parse("flower-superlink", argv)

    assert "--insecure" not in argv
    assert args.enable_supernode_auth  # type: ignore[attr-defined]
    assert args.ssl_certfile == str(certs / "superlink" / "tls.crt")  # type: ignore[attr-defined]
    assert args.port == 9000  # type: ignore[attr-defined]


def test_supernode_is_secure_by_default_and_names_its_partition(certs, tmp_path):
    data = tmp_path / "site.npz"
    data.write_bytes(b"")  # existence is checked here; the format by the ClientApp
    argv = SuperNodeLaunch.from_credentials(
        ca_cert=certs / "ca.crt",
        credentials=certs / "site-0",
        superlink="link.example.org:8000",
        partition_id=2,
        data_path=str(data),
    ).argv()

    args = _parse("flower-supernode", argv)

    assert "--insecure" not in argv
    assert args.auth_supernode_private_key == str(certs / "site-0" / "auth.key")  # type: ignore[attr-defined]
    assert args.ssl_certfile == str(certs / "site-0" / "runtime.crt")  # type: ignore[attr-defined]
    assert args.host == "127.0.0.1"  # type: ignore[attr-defined]


def test_node_config_parses_in_flower_as_partition_and_path():
    from flwr.common.config import parse_config_args

    text = node_config(partition_id=3, data_path="/data/site 3/own.npz")

    assert parse_config_args([text]) == {"partition-id": 3, "data-path": "/data/site 3/own.npz"}


def test_insecure_only_when_named(certs):
    link = SuperLinkLaunch(port=9000, mode="insecure-demo").argv()
    node = SuperNodeLaunch(superlink="127.0.0.1:9000", partition_id=0, mode="insecure-demo").argv()

    _parse("flower-superlink", link)
    _parse("flower-supernode", node)
    assert "--insecure" in link
    assert "--enable-supernode-auth" not in link
    assert "--insecure" in node
    assert "--auth-supernode-private-key" not in node


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda c: SuperLinkLaunch(), "tls"),
        (lambda c: SuperLinkLaunch.from_tls_dir(c / "nowhere"), "tls"),
        (lambda c: SuperLinkLaunch(mode="plain"), "mode"),  # type: ignore[arg-type]
        (lambda c: SuperLinkLaunch(port=0, mode="insecure-demo"), "port"),
        (lambda c: SuperNodeLaunch(superlink="x:1", partition_id=0), "tls"),
        (
            lambda c: SuperNodeLaunch(superlink="", partition_id=0, mode="insecure-demo"),
            "superlink",
        ),
        (
            lambda c: SuperNodeLaunch(superlink="x:1", partition_id=-1, mode="insecure-demo"),
            "partition-id",
        ),
        (
            lambda c: SuperNodeLaunch(
                superlink="x:1", partition_id=0, data_path=str(c / "none.npz"), mode="insecure-demo"
            ),
            "data-path",
        ),
    ],
)
def test_bad_launch_settings_name_the_field(certs, make, field):
    with pytest.raises(ConfigError) as err:
        make(certs)

    assert err.value.field == field


def test_cli_prints_the_command_it_would_run(certs, capsys):
    status = main(
        ["supernode", "--superlink", "127.0.0.1:8000", "--ca", str(certs / "ca.crt"),
         "--credentials", str(certs / "site-0"), "--partition-id", "1", "--print"]
    )  # fmt: skip

    out = capsys.readouterr().out
    assert status == 0
    assert "flower-supernode --superlink 127.0.0.1:8000" in out
    assert "--auth-supernode-private-key" in out
    assert "--node-config partition-id=1 " in out


def test_cli_refuses_a_secure_superlink_without_certificates(capsys):
    status = main(["superlink", "--print"])

    assert status == 2
    assert "insecure-demo" in capsys.readouterr().err


def test_a_sites_dp_policy_travels_in_its_node_config(tmp_path):
    from flwr.common.config import parse_config_args

    text = node_config(partition_id=2, data_path="/d/own.csv", dp_policy="/etc/site/policy.toml")

    assert parse_config_args([text]) == {
        "partition-id": 2,
        "data-path": "/d/own.csv",
        "dp-policy": "/etc/site/policy.toml",
    }


def test_a_bad_dp_policy_is_refused_when_the_site_starts(certs, tmp_path, capsys):
    policy = tmp_path / "policy.toml"
    policy.write_text("min-noise-multiplier = 1.0\n", encoding="utf-8")  # no delta, no ledger

    status = main(
        ["supernode", "--superlink", "127.0.0.1:8000", "--ca", str(certs / "ca.crt"),
         "--credentials", str(certs / "site-0"), "--partition-id", "1",
         "--dp-policy", str(policy), "--print"]
    )  # fmt: skip

    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1
    assert err[0].startswith("fedrank: error: dp-policy: ")
    assert "policy.toml" in err[0]
