"""Certificates and keys for a fedrank deployment on Flower 1.41.

What Flower 1.41 needs, checked in its sources:

- the SuperLink serves Fleet, Control and Runtime APIs on one HTTPS port and
  takes ``--ssl-ca-certfile --ssl-certfile --ssl-keyfile`` (PEM); SuperNodes,
  SuperExecs and the ``flwr`` CLI verify it against the CA
  (``--root-certificates`` / ``root-certificates``), so the server
  certificate's SANs must name every address they dial;
- SuperNode authentication (``--enable-supernode-auth``, TLS required): each
  SuperNode signs its requests with ``--auth-supernode-private-key``, an
  elliptic-curve key on a NIST curve in OpenSSH format
  (``load_ssh_private_key``); its public key (OpenSSH format,
  ``load_ssh_public_key``) is registered with
  ``flwr supernode register KEY.pub CONNECTION``;
- a SuperNode's own Runtime API (used by its ClientApp SuperExec on loopback)
  takes the same three ``--ssl-*`` flags; fedrank gives every site a
  certificate for ``127.0.0.1``/``localhost`` from a throwaway site-local CA
  whose key is discarded, so it can sign nothing else.

Keys and serial numbers come from the operating system's cryptographic random
source on purpose: a seeded generator would make them predictable.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedrank.errors import ConfigError

# Names a SuperLink is dialled by: loopback, and its Service in the k8s/ manifests
# (namespace fedrank), so the same certificate serves a laptop demo and the cluster.
DEFAULT_SANS: tuple[str, ...] = (
    "127.0.0.1",
    "localhost",
    "superlink",
    "superlink.fedrank",
    "superlink.fedrank.svc",
    "superlink.fedrank.svc.cluster.local",
)
RUNTIME_SANS: tuple[str, ...] = ("127.0.0.1", "localhost")
CURVE = ec.SECP384R1  # the curve `flwr supernode register` and Flower's docs use

# File names match the keys of the Secrets in k8s/ (superlink-tls, supernode-credentials-N).
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
SUPEREXEC_SECRET = "superexec-auth-secret"
NODE_KEY = "auth.key"
NODE_PUBLIC_KEY = "auth.key.pub"
RUNTIME_CERT = "runtime.crt"
RUNTIME_KEY = "runtime.key"
RUNTIME_CA = "runtime-ca.crt"


@dataclasses.dataclass(frozen=True)
class Issued:
    """A private key and its certificate, both PEM-encoded."""

    key_pem: bytes
    cert_pem: bytes


@dataclasses.dataclass(frozen=True)
class NodeKeys:
    """A SuperNode authentication key pair in the OpenSSH formats Flower loads."""

    private_openssh: bytes
    public_openssh: bytes


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrank"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _general_name(san: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(san))
    except ValueError:
        if not san or any(c.isspace() for c in san) or "/" in san or ":" in san:
            raise ConfigError("san", f"not a DNS name or IP address: {san!r}") from None
        return x509.DNSName(san)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_days(days: int) -> None:
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("days", f"must be an integer >= 1, got {days!r}")


def make_ca(*, common_name: str = "fedrank consortium CA", days: int = 825) -> Issued:
    """A self-signed certificate authority (EC P-384) for one federation."""
    _check_days(days)
    key = ec.generate_private_key(CURVE())
    now = _now()
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def issue_server_certificate(
    ca: Issued, *, sans: Sequence[str], common_name: str | None = None, days: int = 825
) -> Issued:
    """A TLS server certificate signed by ``ca`` for every name and address in ``sans``."""
    _check_days(days)
    if not sans:
        raise ConfigError("san", "a server certificate needs at least one name or address")
    names = [_general_name(s) for s in dict.fromkeys(sans)]
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError("ca", "the CA key must be an elliptic-curve key")
    key = ec.generate_private_key(CURVE())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name or sans[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    return Issued(_key_pem(key), cert.public_bytes(serialization.Encoding.PEM))


def make_node_keys(*, comment: str = "") -> NodeKeys:
    """A SuperNode authentication key pair (EC P-384, OpenSSH private and public key)."""
    key = ec.generate_private_key(CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    if comment:
        public += b" " + comment.encode()
    return NodeKeys(private, public + b"\n")


# ------------------------------------------------------------------ files


def _write(path: Path, data: bytes, *, private: bool, force: bool) -> None:
    """Write ``data``; private files are created 0600 and never readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not force:
        raise ConfigError("out", f"{path} exists; pass --force to overwrite it")
    if path.exists():
        path.unlink()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    fd = os.open(path, flags, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_superlink_files(
    out: Path,
    *,
    sans: Sequence[str] = DEFAULT_SANS,
    days: int = 825,
    force: bool = False,
) -> dict[str, Path]:
    """Create a CA and the SuperLink's TLS files under ``out``; return the paths by role.

    Layout: ``ca.crt``/``ca.key`` (keep the key offline), and ``superlink/``
    with ``ca.crt``, ``tls.crt``, ``tls.key`` (the ``--ssl-*`` flags of
    ``flower-superlink``) and ``superexec-auth-secret`` (for
    ``--superexec-auth-secret-file`` in process isolation).
    """
    ca = make_ca(days=days)
    server = issue_server_certificate(ca, sans=sans, common_name="fedrank superlink", days=days)
    paths = {
        "ca-cert": out / CA_CERT,
        "ca-key": out / CA_KEY,
        "superlink-ca": out / "superlink" / CA_CERT,
        "superlink-cert": out / "superlink" / TLS_CERT,
        "superlink-key": out / "superlink" / TLS_KEY,
        "superexec-secret": out / "superlink" / SUPEREXEC_SECRET,
    }
    _write(paths["ca-cert"], ca.cert_pem, private=False, force=force)
    _write(paths["ca-key"], ca.key_pem, private=True, force=force)
    _write(paths["superlink-ca"], ca.cert_pem, private=False, force=force)
    _write(paths["superlink-cert"], server.cert_pem, private=False, force=force)
    _write(paths["superlink-key"], server.key_pem, private=True, force=force)
    _write(paths["superexec-secret"], secrets.token_bytes(32), private=True, force=force)
    return paths


def write_site_files(
    out: Path, *, site: str, days: int = 825, force: bool = False
) -> dict[str, Path]:
    """Create one site's credentials under ``out``; return the paths by role.

    ``auth.key`` (``--auth-supernode-private-key``; never leaves the site),
    ``auth.key.pub`` (sent to the coordinator, who registers it), and
    ``runtime.crt``/``runtime.key``/``runtime-ca.crt`` for the SuperNode's
    loopback Runtime API (``--ssl-certfile``/``--ssl-keyfile``/``--ssl-ca-certfile``).
    """
    keys = make_node_keys(comment=f"fedrank-{site}")
    local_ca = make_ca(common_name=f"fedrank {site} runtime CA", days=days)
    runtime = issue_server_certificate(
        local_ca, sans=RUNTIME_SANS, common_name=f"fedrank {site} runtime", days=days
    )
    paths = {
        "node-key": out / NODE_KEY,
        "node-public-key": out / NODE_PUBLIC_KEY,
        "runtime-cert": out / RUNTIME_CERT,
        "runtime-key": out / RUNTIME_KEY,
        "runtime-ca": out / RUNTIME_CA,
    }
    _write(paths["node-key"], keys.private_openssh, private=True, force=force)
    _write(paths["node-public-key"], keys.public_openssh, private=False, force=force)
    _write(paths["runtime-cert"], runtime.cert_pem, private=False, force=force)
    _write(paths["runtime-key"], runtime.key_pem, private=True, force=force)
    _write(paths["runtime-ca"], local_ca.cert_pem, private=False, force=force)
    return paths
