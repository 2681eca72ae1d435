"""Flower 1.41 command lines for a fedrank deployment, secure unless named otherwise.

``fedrank superlink`` and ``fedrank supernode`` run these; the tests start the
same command lines as real processes. Two modes:

- ``secure`` (the default): TLS on every API, SuperNode authentication on the
  SuperLink, each SuperNode signing with its key, and TLS on the SuperNode's
  loopback Runtime API too;
- ``insecure-demo``: plaintext and no authentication, for a demo on one
  machine. It is the only way ``--insecure`` gets onto a command line
  (Flower refuses SuperNode authentication without TLS).

The file layout is what ``fedrank certs`` writes (names as in the k8s Secrets):
the SuperLink's ``ca.crt``, ``tls.crt``, ``tls.key``; a site's ``auth.key``,
``runtime.crt``, ``runtime.key``, ``runtime-ca.crt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from fedrank.deploy import certs
from fedrank.errors import ConfigError
from fedrank.privacy.site_policy import load_policy

Mode = Literal["secure", "insecure-demo"]
MODES: tuple[Mode, ...] = ("secure", "insecure-demo")


def environment_bin() -> Path:
    """The folder of this Python's commands (a venv's ``bin``), symlinks left unresolved.

    A venv's ``python`` is a symlink to the base interpreter: resolving it would
    name the base installation's folder, which lacks the venv's Flower commands.
    """
    return Path(sys.executable).parent


def flower_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a Flower process that fedrank starts.

    Flower's SuperLink and SuperNode start ``flower-superexec`` by name, and the
    SuperExec starts ``flwr-serverapp``/``flwr-clientapp`` by name, each from
    ``PATH``. Started by path from a venv that is not activated
    (``.venv/bin/fedrank superlink``), they would find another installation's
    commands or none (the SuperLink then exits at start-up). This environment puts
    :func:`environment_bin` first on ``PATH``, keeps everything else of ``base``
    (default: this process's environment), and turns off Flower's update check,
    telemetry and run-time dependency installation (fedrank is installed).

    Parameters
    ----------
    base : Mapping[str, str], optional
        The environment to start from (not modified).
    **extra : str
        Variables to set on top (``FLWR_HOME=...``).
    """
    env = dict(os.environ if base is None else base)
    bin_dir = str(environment_bin())
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *rest])
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    env.update(extra)
    return env


def flower_executable(name: str) -> str:
    """The Flower command ``name`` of this installation (beside this Python), else PATH's."""
    beside = environment_bin() / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ConfigError("flower", f"{name} not found beside {sys.executable} nor on PATH")
    return found


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ConfigError("mode", f"must be one of {list(MODES)}, got {mode!r}")


def _check_port(name: str, port: int) -> None:
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ConfigError(name, f"must be a port in 1..65535, got {port!r}")


def _require_files(name: str, paths: tuple[Path | None, ...]) -> None:
    for path in paths:
        if path is None:
            raise ConfigError(name, "TLS files are required unless the mode is insecure-demo")
        if not path.is_file():
            raise ConfigError(name, f"no such file: {path}")


@dataclasses.dataclass(frozen=True)
class SuperLinkLaunch:
    """How to start the coordinator's ``flower-superlink``.

    Fleet, Control and Runtime APIs share ``host:port`` (HTTPS in 1.41). With
    the default subprocess isolation the SuperLink starts its own SuperExec,
    which runs the ServerApp.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    ca_cert: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    health_address: str = ""
    database: str = ""
    mode: Mode = "secure"

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        _check_port("port", self.port)
        if self.mode == "secure":
            _require_files("tls", (self.ca_cert, self.cert, self.key))

    @classmethod
    def from_tls_dir(cls, tls_dir: Path, **kwargs: object) -> SuperLinkLaunch:
        """Files from a folder laid out as ``fedrank certs superlink`` writes ``superlink/``."""
        return cls(
            ca_cert=tls_dir / certs.CA_CERT,
            cert=tls_dir / certs.TLS_CERT,
            key=tls_dir / certs.TLS_KEY,
            **kwargs,  # type: ignore[arg-type]
        )

    def argv(self) -> list[str]:
        """The command line."""
        argv = [flower_executable("flower-superlink")]
        argv += ["--host", self.host, "--port", str(self.port)]
        if self.mode == "insecure-demo":
            argv.append("--insecure")
        else:
            argv += [
                "--ssl-ca-certfile",
                str(self.ca_cert),
                "--ssl-certfile",
                str(self.cert),
                "--ssl-keyfile",
                str(self.key),
                "--enable-supernode-auth",
            ]
        # fedrank is installed; never let Flower install an app's dependencies at run time.
        argv.append("--disable-runtime-dependency-installation")
        if self.health_address:
            argv += ["--health-server-address", self.health_address]
        if self.database:
            argv += ["--database", self.database]
        return argv


def node_config(*, partition_id: int, data_path: str = "", dp_policy: str = "") -> str:
    """The ``--node-config`` value: the site's partition and, optionally, its own data and
    its own DP policy file (:mod:`fedrank.privacy.site_policy`)."""
    if isinstance(partition_id, bool) or not isinstance(partition_id, int) or partition_id < 0:
        raise ConfigError("partition-id", f"must be an integer >= 0, got {partition_id!r}")
    text = f"partition-id={partition_id}"
    for key, value in (("data-path", data_path), ("dp-policy", dp_policy)):
        if value:
            if '"' in value or "'" in value:
                raise ConfigError(key, f"must not contain quotes, got {value!r}")
            text += f" {key}={json.dumps(value)}"
    return text


@dataclasses.dataclass(frozen=True)
class SuperNodeLaunch:
    """How to start one site's ``flower-supernode``.

    Its Runtime API (for the ClientApp's SuperExec, started by the SuperNode)
    listens on ``127.0.0.1:runtime_port`` only.
    """

    superlink: str
    partition_id: int
    ca_cert: Path | None = None
    auth_key: Path | None = None
    runtime_cert: Path | None = None
    runtime_key: Path | None = None
    runtime_ca: Path | None = None
    data_path: str = ""
    dp_policy: str = ""
    runtime_port: int = 9094
    health_address: str = ""
    mode: Mode = "secure"

    def __post_init__(self) -> None:
        _check_mode(self.mode)
        _check_port("runtime-port", self.runtime_port)
        if not self.superlink:
            raise ConfigError("superlink", "must be the SuperLink's host:port")
        node_config(
            partition_id=self.partition_id, data_path=self.data_path, dp_policy=self.dp_policy
        )
        if self.data_path and not Path(self.data_path).exists():  # a file or a folder
            raise ConfigError("data-path", f"no such file or folder on this site: {self.data_path}")
        if self.dp_policy:  # read and checked now, not at the run's discovery
            load_policy({"dp-policy": self.dp_policy})
        if self.mode == "secure":
            _require_files(
                "tls",
                (self.ca_cert, self.auth_key, self.runtime_cert, self.runtime_key, self.runtime_ca),
            )

    @classmethod
    def from_credentials(
        cls, *, ca_cert: Path, credentials: Path, **kwargs: object
    ) -> SuperNodeLaunch:
        """Files from a site folder laid out as ``fedrank certs site`` writes it."""
        return cls(
            ca_cert=ca_cert,
            auth_key=credentials / certs.NODE_KEY,
            runtime_cert=credentials / certs.RUNTIME_CERT,
            runtime_key=credentials / certs.RUNTIME_KEY,
            runtime_ca=credentials / certs.RUNTIME_CA,
            **kwargs,  # type: ignore[arg-type]
        )

    def argv(self) -> list[str]:
        """The command line."""
        argv = [flower_executable("flower-supernode"), "--superlink", self.superlink]
        if self.mode == "insecure-demo":
            argv.append("--insecure")
        else:
            argv += [
                "--root-certificates",
                str(self.ca_cert),
                "--auth-supernode-private-key",
                str(self.auth_key),
            ]
        argv += [
            "--node-config",
            node_config(
                partition_id=self.partition_id, data_path=self.data_path, dp_policy=self.dp_policy
            ),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.runtime_port),
        ]
        if self.mode == "secure":
            argv += [
                "--ssl-certfile",
                str(self.runtime_cert),
                "--ssl-keyfile",
                str(self.runtime_key),
                "--ssl-ca-certfile",
                str(self.runtime_ca),
            ]
        if self.health_address:
            argv += ["--health-server-address", self.health_address]
        return argv
