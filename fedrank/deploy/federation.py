"""A whole Flower federation on this machine, on loopback: ``fedrank federation up``.

One command does what docs/deployment.md describes step by step, with TLS and
SuperNode authentication on: certificates and keys (``fedrank certs``), the
SuperLink, a ``flwr`` CLI connection to it, the registration of every site's
public key, and one SuperNode per site with its ``partition-id`` and optional
``data-path``. Every wait is bounded and says what it waits for. Everything it
started is stopped by PID when it ends, on Ctrl-C, SIGTERM or an error,
descendants included (:class:`~fedrank.deploy.processes.ProcessGroup`).

Layout of the folder (``--dir``)::

    certs/            ca.crt, superlink/, sites/site-N/   (reused when present)
    flwr/config.toml  FLWR_HOME of the flwr CLI: the connection "fedrank-local"
    state/NAME/       FLWR_HOME of each Flower process (app bundles)
    logs/NAME.log     output of each process
    federation.json   addresses, ports and PIDs, written once everything is up
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

from fedrank.deploy import certs
from fedrank.deploy.federation_plan import FederationPlan, with_sites
from fedrank.deploy.launch import (
    SuperLinkLaunch,
    SuperNodeLaunch,
    flower_env,
    flower_executable,
)
from fedrank.deploy.processes import (
    ProcessGroup,
    free_ports,
    health_serving,
    listening,
    wait_until,
)
from fedrank.deploy.registration import (
    ONLINE,
    REGISTERED,
    key_listed,
    node_public_key,
    wait_for_nodes,
)
from fedrank.errors import FedrankError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"

Say = Callable[[str], None]


class FederationError(FedrankError):
    """A process of the local federation failed; the message names it and shows its log."""


def _credentials(directory: Path, sites: int, say: Say) -> Path:
    """Certificates and keys under ``directory/certs``: reused when complete, else created."""
    out = directory / "certs"
    link = out / "superlink"
    if all((link / name).is_file() for name in (certs.CA_CERT, certs.TLS_CERT, certs.TLS_KEY)):
        say(f"reusing the CA and SuperLink certificate in {out}")
    else:
        certs.write_superlink_files(out, force=True)
        say(f"new CA and SuperLink certificate in {out}")
    for i in range(sites):
        site = out / "sites" / f"site-{i}"
        if not (site / certs.NODE_KEY).is_file() or not (site / certs.RUNTIME_CERT).is_file():
            certs.write_site_files(site, site=f"site-{i}", force=True)
    return out


def _cli_config(connection: str, address: str, ca_cert: Path) -> str:
    return (
        f'[superlink]\ndefault = "{connection}"\n\n'
        f'[superlink.{connection}]\naddress = "{address}"\n'
        f"root-certificates = {json.dumps(str(ca_cert.resolve()))}\n"
    )


class LocalFederation:
    """A running local federation (made by :func:`local_federation`)."""

    def __init__(self, plan: FederationPlan, group: ProcessGroup, *, api_port: int) -> None:
        self.plan = plan
        self.group = group
        self.address = f"{HOST}:{api_port}"
        self.flwr_home = plan.directory / "flwr"
        self.ca_cert = plan.directory / "certs" / certs.CA_CERT
        self.daemons: list[str] = []

    @property
    def connection(self) -> str:
        """Name of the ``flwr`` CLI connection (in ``flwr_home/config.toml``)."""
        return self.plan.connection

    def cli_env(self) -> dict[str, str]:
        """Environment for ``flwr`` commands against this federation."""
        return flower_env(FLWR_HOME=str(self.flwr_home))

    def run_command(self, app: str = ".", run_config: str = "") -> list[str]:
        """The ``flwr run`` command line that submits ``app`` here (``--stream``)."""
        config = with_sites(run_config, self.plan.sites)
        return [
            flower_executable("flwr"),
            "run",
            app,
            self.connection,
            "--run-config",
            config,
            "--stream",
        ]

    def check_alive(self) -> None:
        """Raise :class:`FederationError` if the SuperLink or a SuperNode has exited."""
        ended = self.group.exited()
        for name in self.daemons:
            if name in ended:
                hint = (
                    " (Flower's code for a SuperNode that cannot connect or whose key "
                    "is not registered)"
                    if ended[name] == 305
                    else ""
                )
                raise FederationError(
                    f"{name} exited with status {ended[name]}{hint}; "
                    f"last lines of {self.group.log_path(name)}:\n{self.group.log_tail(name)}"
                )

    def submit(
        self,
        app: str,
        run_config: str = "",
        *,
        timeout: float | None = None,
        echo: Say | None = None,
    ) -> int:
        """Run ``flwr run`` against this federation until it ends; return its exit status.

        Its output goes to ``logs/flwr-run-N.log`` and, line by line, to ``echo``.

        Raises
        ------
        FederationError
            A SuperLink or SuperNode exited during the run, or ``timeout`` passed.
        """
        name = f"flwr-run-{sum(n.startswith('flwr-run') for n in self.group.started)}"
        # Unbuffered, so that its lines reach ``echo`` as they are written.
        env = {**self.cli_env(), "PYTHONUNBUFFERED": "1"}
        proc = self.group.start(name, self.run_command(app, run_config), env=env)
        deadline = None if timeout is None else time.monotonic() + timeout
        pending = b""
        run_id: str | None = None
        with self.group.log_path(name).open("rb") as out:
            while True:
                code = proc.poll()
                pending += out.read()
                *lines, pending = pending.split(b"\n")
                if code is not None and pending:  # the last line, unterminated
                    lines, pending = [*lines, pending], b""
                for line in lines:
                    text = line.decode(errors="replace")
                    run_id = run_id or _started_run(text)
                    if echo is not None:
                        echo(text)
                if code is not None:
                    return code if code != 0 or run_id is None else self._outcome(run_id, echo)
                self.check_alive()
                if deadline is not None and time.monotonic() > deadline:
                    raise FederationError(f"the run did not end within {timeout:g} s")
                time.sleep(0.5)

    def _outcome(self, run_id: str, echo: Say | None) -> int:
        """0 if run ``run_id`` completed, else 1: ``flwr run --stream`` exits 0 however
        the run ended, so its status is read back from the SuperLink (``flwr ls``)."""
        argv = [flower_executable("flwr"), "ls", self.connection, "--run-id", run_id]
        for _ in range(3):  # a read: asked again when gRPC's poller aborted the CLI (status -6)
            done = subprocess.run(
                [*argv, "--format", "json"],
                env=self.cli_env(),
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            if done.returncode >= 0:
                break
        try:
            (run,) = json.loads(done.stdout)["runs"]
            status, details = str(run["status"]), str(run.get("status-details", ""))
        except (ValueError, KeyError, TypeError) as err:
            status, details = "unknown", f"flwr ls gave no status ({err}): {done.stderr[-300:]}"
        if status == "finished:completed":
            return 0
        if echo is not None:
            echo(f"fedrank: run {run_id} ended {status}{f' ({details})' if details else ''}")
        return 1

    def wait(self) -> NoReturn:
        """Block until a SuperLink or SuperNode exits (then raise) or this process is stopped."""
        while True:
            self.check_alive()
            time.sleep(0.5)

    def describe(self) -> dict[str, Any]:
        """Addresses, files and PIDs, as written to ``federation.json``."""
        return {
            "connection": self.connection,
            "address": self.address,
            "flwr_home": str(self.flwr_home.resolve()),
            "ca_cert": str(self.ca_cert.resolve()),
            "sites": self.plan.sites,
            "pids": {name: self.group.started[name].pid for name in self.daemons},
            "logs": str(self.group.logs.resolve()),
        }


def _start_superlink(fed: LocalFederation, api_port: int, say: Say) -> None:
    plan = fed.plan
    (health_port,) = free_ports(1)
    link = SuperLinkLaunch.from_tls_dir(
        plan.directory / "certs" / "superlink",
        host=HOST,
        port=api_port,
        health_address=f"{HOST}:{health_port}",
    )
    home = plan.directory / "state" / "superlink"
    home.mkdir(parents=True, exist_ok=True)
    fed.group.start("superlink", link.argv(), env=flower_env(FLWR_HOME=str(home)))
    fed.daemons.append("superlink")
    took = wait_until(
        lambda: health_serving(f"{HOST}:{health_port}") and listening(HOST, api_port),
        timeout=plan.timeout,
        what=f"the SuperLink (health SERVING on {HOST}:{health_port}, API on {fed.address})",
        check=fed.check_alive,
        say=say,
    )
    say(f"SuperLink up after {took:.1f} s")


def _register(fed: LocalFederation, keys: Mapping[str, Path], say: Say) -> None:
    """``flwr supernode register`` every key, then confirm through the Control API."""
    fed.flwr_home.mkdir(parents=True, exist_ok=True)
    (fed.flwr_home / "config.toml").write_text(
        _cli_config(fed.connection, fed.address, fed.ca_cert), encoding="utf-8"
    )
    flwr = flower_executable("flwr")

    def start(name: str, attempt: int = 1) -> tuple[str, subprocess.Popen[bytes]]:
        label = f"register-{name}" + (f"-{attempt}" if attempt > 1 else "")
        argv = [flwr, "supernode", "register", str(keys[name]), fed.connection]
        return label, fed.group.start(label, argv, env=fed.cli_env())

    running = {name: start(name) for name in keys}
    done: set[str] = set()

    def registered() -> bool:
        for name, (label, proc) in list(running.items()):
            code = proc.poll()
            if code is None or name in done:
                continue
            if code == 0 or (code < 0 and key_listed(fed.address, keys[name], fed.ca_cert)):
                done.add(name)
            elif code < 0 and label == f"register-{name}":
                # Killed by a signal (seen once under load: gRPC's poller aborting the CLI,
                # SIGABRT) before the key reached the SuperLink: once more.
                say(f"`flwr supernode register` of {name} died (status {code}); again")
                running[name] = start(name, attempt=2)
            else:
                raise FederationError(
                    f"`flwr supernode register` of {name} failed "
                    f"(status {code}):\n{fed.group.log_tail(label)}"
                )
        return len(done) == len(keys)

    wait_until(
        registered,
        timeout=fed.plan.timeout,
        what=f"`flwr supernode register` of {', '.join(keys)}",
        check=fed.check_alive,
        say=say,
    )
    wait_for_nodes(
        fed.address,
        {name: node_public_key(key) for name, key in keys.items()},
        root_certificates=fed.ca_cert,
        states=REGISTERED,
        timeout=fed.plan.timeout,
        check=fed.check_alive,
        say=say,
    )


def _start_sites(fed: LocalFederation, say: Say) -> None:
    plan = fed.plan
    ports = free_ports(2 * plan.sites)
    keys = {}
    for i in range(plan.sites):
        name = f"site-{i}"
        credentials = plan.directory / "certs" / "sites" / name
        data, policy = plan.data_paths.get(i), plan.dp_policies.get(i)
        node = SuperNodeLaunch.from_credentials(
            ca_cert=fed.ca_cert,
            credentials=credentials,
            superlink=fed.address,
            partition_id=i,
            data_path="" if data is None else str(data),
            dp_policy="" if policy is None else str(policy),
            runtime_port=ports[2 * i],
            health_address=f"{HOST}:{ports[2 * i + 1]}",
        )
        home = plan.directory / "state" / name
        home.mkdir(parents=True, exist_ok=True)
        fed.group.start(name, node.argv(), env=flower_env(FLWR_HOME=str(home)))
        fed.daemons.append(name)
        keys[name] = node_public_key(credentials / certs.NODE_KEY)
    wait_for_nodes(
        fed.address,
        keys,
        root_certificates=fed.ca_cert,
        states=ONLINE,
        timeout=plan.timeout,
        check=fed.check_alive,
        say=say,
    )


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM (main thread only): a second Ctrl-C must not cut a stop short."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def local_federation(plan: FederationPlan, *, say: Say = print) -> Iterator[LocalFederation]:
    """Bring a local federation up; stop every process it started when the block ends.

    Processes are started from the calling thread (Linux ends them should this
    process be killed outright); call it from the main thread.

    Raises
    ------
    FederationError
        A process failed while starting (its log tail is in the message).
    fedrank.deploy.processes.WaitTimeout
        A start-up step took longer than ``plan.timeout`` seconds.
    """
    plan.directory.mkdir(parents=True, exist_ok=True)
    _credentials(plan.directory, plan.sites, say)
    api_port = plan.port or free_ports(1)[0]
    group = ProcessGroup(plan.directory / "logs", new_session=True, die_with_parent=True)
    fed = LocalFederation(plan, group, api_port=api_port)
    try:
        _start_superlink(fed, api_port, say)
        sites = plan.directory / "certs" / "sites"
        _register(
            fed,
            {f"site-{i}": sites / f"site-{i}" / certs.NODE_PUBLIC_KEY for i in range(plan.sites)},
            say,
        )
        _start_sites(fed, say)
        (plan.directory / "federation.json").write_text(
            json.dumps(fed.describe(), indent=2) + "\n", encoding="utf-8"
        )
        yield fed
    finally:
        with _signals_ignored():
            say(f"stopping the {len(group.started)} processes started here, and their descendants")
            killed = group.stop_all(grace=10.0)
        for line in killed:
            say(f"stopped {line}")
        with contextlib.suppress(FileNotFoundError):
            (plan.directory / "federation.json").unlink()


def _started_run(line: str) -> str | None:
    """The run id in ``flwr run``'s "Successfully started run N" line, if it is one."""
    found = re.search(r"Successfully started run (\d+)", line)
    return found[1] if found else None
