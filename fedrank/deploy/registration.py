"""Whether SuperNode keys are registered with a SuperLink, and waiting until they are.

With ``--enable-supernode-auth`` a SuperNode whose public key is not registered
(``flwr supernode register KEY.pub CONNECTION``) is refused and exits with
Flower's code 305; on Kubernetes it would crash-loop until the coordinator
registers it. A site therefore waits first (the init container of
``k8s/base/site``, ``fedrank federation wait-registered``): it asks the
SuperLink's Control API for the SuperNodes it knows (``ListNodes``, what
``flwr supernode list`` shows) and looks for its own public key.

Flower 1.41 facts this relies on (its ``cli/supernode`` and ``superlink``
sources): the Control API shares the SuperLink's HTTPS port with the Fleet API;
``ListNodes`` returns each node's ``public_key`` (PEM, SubjectPublicKeyInfo) and
``status`` (``registered`` before its first connection, ``online``,
``offline``, ``unregistered``), filtered to the caller's account: without
account authentication every caller shares one account, so a site sees the
nodes the coordinator registered. With Flower's account authentication a site
would need an account of its own; that is not covered here.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from fedrank.deploy.processes import WaitTimeout, wait_until
from fedrank.errors import ConfigError

log = logging.getLogger(__name__)

# States of a node whose key the SuperLink accepts.
REGISTERED = frozenset({"registered", "online", "offline"})
ONLINE = frozenset({"online"})


def node_public_key(path: Path) -> bytes:
    """The public key of a SuperNode key file, in the form the SuperLink stores it.

    Parameters
    ----------
    path : Path
        The SuperNode's private key (``auth.key``, OpenSSH format) or its public
        key (``auth.key.pub``).

    Returns
    -------
    bytes
        PEM SubjectPublicKeyInfo, what Flower's ``public_key_to_bytes`` writes.

    Raises
    ------
    ConfigError
        The file is missing or not an OpenSSH key.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConfigError("node-key", f"cannot read {path}: {err.strerror}") from err
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
            public = serialization.load_ssh_private_key(data, password=None).public_key()
        else:
            public = serialization.load_ssh_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError("node-key", f"{path} is not an OpenSSH key: {err}") from err
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def node_states(
    superlink: str, *, root_certificates: Path | None, insecure: bool = False
) -> dict[bytes, set[str]]:
    """Every SuperNode the SuperLink at ``superlink`` lists: public key -> its states.

    A key registered again after being unregistered has two entries, hence a set.

    Raises
    ------
    httpx.HTTPError or OSError
        The SuperLink cannot be reached or refused the request.
    """
    from flwr.cli.typing import SuperLinkConnection
    from flwr.cli.utils import init_http_client_from_connection
    from flwr.proto.control_pb2 import ListNodesRequest

    connection = SuperLinkConnection(
        name="fedrank",
        address=superlink,
        root_certificates=None if root_certificates is None else str(root_certificates.resolve()),
        insecure=insecure,
    )
    # The CLI's client announces each connection on stdout; keep a poll quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        client = init_http_client_from_connection(connection)
    try:
        reply = client.ListNodes(ListNodesRequest())
    finally:
        client.close()
    states: dict[bytes, set[str]] = {}
    for node in reply.nodes_info:
        states.setdefault(bytes(node.public_key), set()).add(node.status)
    return states


def key_listed(superlink: str, key: Path, root_certificates: Path | None) -> bool:
    """Whether the SuperLink at ``superlink`` lists the SuperNode whose public key file is
    ``key`` (in any state); False when it cannot be asked."""
    try:
        return node_public_key(key) in node_states(superlink, root_certificates=root_certificates)
    except _unreachable():
        return False


def _unreachable() -> tuple[type[BaseException], ...]:
    import httpx

    return (httpx.HTTPError, OSError)


def wait_for_nodes(
    superlink: str,
    keys: Mapping[str, bytes],
    *,
    root_certificates: Path | None,
    states: frozenset[str],
    timeout: float,
    poll: float = 1.0,
    check: Callable[[], None] | None = None,
    say: Callable[[str], None] | None = None,
) -> None:
    """Wait until every key of ``keys`` (name -> public key PEM) is in one of ``states``.

    Raises
    ------
    WaitTimeout
        After ``timeout`` seconds, naming each node not there yet and its state.
    """
    last: dict[str, str] = {}

    def reached() -> bool:
        try:
            listed = node_states(superlink, root_certificates=root_certificates)
        except _unreachable() as err:
            last.update(dict.fromkeys(keys, f"SuperLink not answering ({type(err).__name__})"))
            return False
        last.clear()
        for name, key in keys.items():
            found = listed.get(key, set())
            if not found & states:
                last[name] = "/".join(sorted(found)) or "not registered"
        return not last

    wanted = "registered" if states == REGISTERED else " or ".join(sorted(states))
    try:
        took = wait_until(
            reached,
            timeout=timeout,
            what=f"{', '.join(keys)} to be {wanted} at {superlink}",
            poll=poll,
            check=check,
            say=say,
        )
    except WaitTimeout as err:
        missing = ", ".join(f"{name} ({state})" for name, state in last.items())
        raise WaitTimeout(f"{err}; not {wanted}: {missing}") from None
    (say or log.info)(f"{', '.join(keys)} {wanted} after {took:.1f} s")


def wait_until_registered(
    superlink: str,
    node_key: Path,
    *,
    root_certificates: Path | None,
    timeout: float = 0.0,
    poll: float = 10.0,
    say: Callable[[str], None] = print,
) -> float:
    """Block until the key in ``node_key`` is registered; return the seconds waited.

    Parameters
    ----------
    timeout : float
        Seconds before giving up; 0 waits for ever (an init container).
    poll : float
        Seconds between two questions to the SuperLink.
    say : callable
        Receives a line when the wait starts, every few minutes while it lasts,
        and when it ends.

    Raises
    ------
    WaitTimeout
        Still not registered after ``timeout`` seconds (never when 0).
    """
    key = node_public_key(node_key)
    started = time.monotonic()
    limit = timeout if timeout > 0 else float("inf")
    say(
        f"waiting for {node_key.name}'s public key to be registered at {superlink} "
        f"({'no limit' if timeout <= 0 else f'up to {timeout:g} s'}); the coordinator runs "
        "`flwr supernode register KEY.pub CONNECTION`"
    )
    next_note = started + 300.0
    while True:
        try:
            found = node_states(superlink, root_certificates=root_certificates).get(key, set())
            state = "/".join(sorted(found)) or "not registered"
        except _unreachable() as err:
            found, state = set(), f"SuperLink not answering ({type(err).__name__}: {err})"
        waited = time.monotonic() - started
        if found & REGISTERED:
            say(f"registered ({state}) after {waited:.0f} s")
            return waited
        if waited > limit:
            raise WaitTimeout(
                f"gave up after {timeout:g} s waiting for {node_key.name} to be registered "
                f"at {superlink}: {state}"
            )
        if time.monotonic() >= next_note:
            say(f"still waiting after {waited:.0f} s: {state}")
            next_note += 300.0
        time.sleep(poll)
