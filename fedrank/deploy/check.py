"""Checks of certificates and keys a site brings itself (``fedrank certs check``).

A consortium often has its own PKI. These checks tell, before any Flower
process starts, whether given files will work with Flower 1.41: the server
certificate chains to the CA, names every address it will be dialled by, is
valid now and matches its key; a SuperNode key is an elliptic-curve key on a
NIST curve in OpenSSH format. Each function returns a list of problems (empty:
fine), each saying what is wrong.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification

NIST_CURVES = (ec.SECP192R1, ec.SECP224R1, ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


def _subject(address: str) -> x509.DNSName | x509.IPAddress:
    if address.startswith("[") and "]" in address:  # [IPv6]:port
        host = address[1 : address.index("]")]
    elif address.count(":") == 1:  # host:port
        host = address.split(":")[0]
    else:  # a bare host or IPv6 address
        host = address
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def server_certificate_problems(
    *, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, addresses: Sequence[str]
) -> list[str]:
    """What would stop Flower's clients from accepting this server certificate.

    Parameters
    ----------
    ca_pem, cert_pem, key_pem : bytes
        The files given to ``--ssl-ca-certfile``, ``--ssl-certfile``, ``--ssl-keyfile``.
    addresses : Sequence[str]
        Hosts (or ``host:port``) SuperNodes, SuperExecs and the ``flwr`` CLI dial.
    """
    try:
        cas = x509.load_pem_x509_certificates(ca_pem)
    except ValueError as err:
        return [f"CA file is not a PEM certificate: {err}"]
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as err:
        return [f"server certificate is not PEM: {err}"]
    problems: list[str] = []
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        problems.append(f"server key is not an unencrypted PEM private key: {err}")
    else:
        if key.public_key() != cert.public_key():
            problems.append("server key does not belong to the server certificate")
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        problems.append(
            f"server certificate is valid from {cert.not_valid_before_utc:%Y-%m-%d} "
            f"to {cert.not_valid_after_utc:%Y-%m-%d}, not now"
        )
    store = verification.Store(cas)
    for address in addresses:
        verifier = (
            verification.PolicyBuilder()
            .store(store)
            .time(now)
            .build_server_verifier(_subject(address))
        )
        try:
            verifier.verify(cert, [])
        except verification.VerificationError as err:
            problems.append(f"a client dialling {address} would refuse the certificate: {err}")
    return problems


def node_key_problems(data: bytes) -> list[str]:
    """What would stop Flower 1.41 from using this SuperNode key (private or public)."""
    text = data.lstrip()
    try:
        if text.startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            key: object = serialization.load_ssh_private_key(data, password=None).public_key()
        elif text.startswith(b"-----"):
            return [
                "a PEM key: Flower wants OpenSSH format "
                "(`fedrank certs site`, or `ssh-keygen -t ecdsa -b 384`)"
            ]
        else:
            key = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        return [f"not an OpenSSH key: {err}"]
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return [f"a {type(key).__name__}: Flower wants an elliptic-curve (ECDSA) key"]
    if not isinstance(key.curve, NIST_CURVES):
        return [f"curve {key.curve.name} is not a NIST curve (use P-384)"]
    return []
