"""Certificates and keys from fedrank.deploy.certs, checked by OpenSSL, Flower and our checks."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from fedrank.deploy.certs import (
    DEFAULT_SANS,
    issue_server_certificate,
    make_ca,
    make_node_keys,
    write_site_files,
    write_superlink_files,
)
from fedrank.deploy.check import node_key_problems, server_certificate_problems
from fedrank.errors import ConfigError


@pytest.fixture(scope="module")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_superlink_files(
        tmp_path_factory.mktemp("certs"), sans=[*DEFAULT_SANS, "link.example.org"]
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_site_files(tmp_path_factory.mktemp("site"), site="site-0")


def _handshake(*, cert: Path, key: Path, ca: Path, server_hostname: str) -> str:
    """One real TLS handshake on loopback (OpenSSL both ends); the negotiated version."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            version = str(tls.version())
            tls.sendall(b"x")
        thread.join(timeout=10)
    return version


@pytest.mark.parametrize("name", ["127.0.0.1", "localhost", "superlink.fedrank.svc"])
def test_superlink_certificate_passes_a_real_tls_handshake(superlink, name):
    version = _handshake(
        cert=superlink["superlink-cert"],
        key=superlink["superlink-key"],
        ca=superlink["ca-cert"],
        server_hostname=name,
    )

    assert version.startswith("TLSv1.")


def test_a_name_outside_the_sans_fails_the_handshake(superlink):
    with pytest.raises(ssl.SSLCertVerificationError, match="match"):
        _handshake(
            cert=superlink["superlink-cert"],
            key=superlink["superlink-key"],
            ca=superlink["ca-cert"],
            server_hostname="elsewhere.example.org",
        )


def test_our_check_agrees_with_the_handshake(superlink):
    def problems(*addresses: str) -> list[str]:
        return server_certificate_problems(
            ca_pem=superlink["ca-cert"].read_bytes(),
            cert_pem=superlink["superlink-cert"].read_bytes(),
            key_pem=superlink["superlink-key"].read_bytes(),
            addresses=addresses,
        )

    assert problems("127.0.0.1:8000", "localhost", "link.example.org", "superlink:8000") == []
    (problem,) = problems("127.0.0.1", "elsewhere.example.org")
    assert "elsewhere.example.org" in problem
    (problem,) = problems("[::1]:8000")  # IPv6 loopback is not among the default SANs
    assert "[::1]:8000" in problem


def test_check_finds_a_key_of_another_certificate_and_a_foreign_ca(superlink, site):
    other_ca = make_ca()

    wrong_key = server_certificate_problems(
        ca_pem=superlink["ca-cert"].read_bytes(),
        cert_pem=superlink["superlink-cert"].read_bytes(),
        key_pem=site["runtime-key"].read_bytes(),
        addresses=["127.0.0.1"],
    )
    foreign_ca = server_certificate_problems(
        ca_pem=other_ca.cert_pem,
        cert_pem=superlink["superlink-cert"].read_bytes(),
        key_pem=superlink["superlink-key"].read_bytes(),
        addresses=["127.0.0.1"],
    )

    assert wrong_key == ["server key does not belong to the server certificate"]
    assert len(foreign_ca) == 1
    assert "would refuse" in foreign_ca[0]


def test_site_runtime_certificate_is_for_loopback_under_its_own_ca(site, superlink):
    own = _handshake(
        cert=site["runtime-cert"],
        key=site["runtime-key"],
        ca=site["runtime-ca"],
        server_hostname="127.0.0.1",
    )

    assert own.startswith("TLSv1.")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(
            cert=site["runtime-cert"],
            key=site["runtime-key"],
            ca=superlink["ca-cert"],
            server_hostname="127.0.0.1",
        )


def test_flower_loads_the_node_keys(site):
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    private = serialization.load_ssh_private_key(site["node-key"].read_bytes(), password=None)
    registered = try_load_public_key(site["node-public-key"])

    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert isinstance(private.curve, ec.SECP384R1)
    assert registered == public_key_to_bytes(private.public_key())
    assert node_key_problems(site["node-key"].read_bytes()) == []
    assert node_key_problems(site["node-public-key"].read_bytes()) == []


def _openssh_public(key: object) -> bytes:
    return key.public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (_openssh_public(rsa.generate_private_key(public_exponent=65537, key_size=1024)), "RSA"),
        (_openssh_public(ed25519.Ed25519PrivateKey.generate()), "Ed25519"),
        (
            ec.generate_private_key(ec.SECP384R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "OpenSSH format",
        ),
        (b"not a key", "not an OpenSSH key"),
    ],
    ids=["rsa", "ed25519", "pem", "garbage"],  # the keys are random: stable ids for xdist workers
)
def test_node_keys_flower_cannot_use_are_reported(data, needle):
    (problem,) = node_key_problems(data)

    assert needle in problem


def test_private_files_are_owner_only_and_never_overwritten_silently(tmp_path):
    paths = write_site_files(tmp_path, site="s")
    before = paths["node-key"].read_bytes()

    with pytest.raises(ConfigError, match="--force"):
        write_site_files(tmp_path, site="s")
    again = write_site_files(tmp_path, site="s", force=True)

    for role in ("node-key", "runtime-key"):
        assert stat.S_IMODE(paths[role].stat().st_mode) == 0o600
    assert stat.S_IMODE(paths["node-public-key"].stat().st_mode) == 0o644
    assert again["node-key"].read_bytes() != before


def test_keys_differ_every_time():
    first, second = make_node_keys(), make_node_keys()

    assert first.private_openssh != second.private_openssh
    assert first.public_openssh.startswith(b"ecdsa-sha2-nistp384 ")


@pytest.mark.parametrize("san", ["", "has space", "http://x", "a/b"])
def test_a_san_that_is_neither_name_nor_address_is_refused(san):
    with pytest.raises(ConfigError, match="san"):
        issue_server_certificate(make_ca(), sans=["localhost", san])


def test_days_must_be_positive():
    with pytest.raises(ConfigError, match="days"):
        make_ca(days=0)
