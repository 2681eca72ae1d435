"""What ``fedrank federation up`` starts: sites, their data, ports, time limits, the run config."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from fedrank.errors import ConfigError

CONNECTION = "fedrank-local"
_CONNECTION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclasses.dataclass(frozen=True)
class FederationPlan:
    """What ``fedrank federation up`` starts.

    Attributes
    ----------
    directory : Path
        Folder for certificates, logs and Flower's state (created if missing).
    sites : int
        Number of SuperNodes; site ``i`` has ``partition-id = i``.
    data_paths : Mapping[int, Path]
        Site number -> that site's own data file (its ``data-path``).
    dp_policies : Mapping[int, Path]
        Site number -> that site's DP policy file (its ``dp-policy``).
    port : int
        The SuperLink's API port; 0 picks a free one.
    timeout : float
        Seconds each start-up step may take (SuperLink up, keys registered,
        sites online).
    connection : str
        Name of the ``flwr`` CLI connection written to ``flwr/config.toml``.
    """

    directory: Path
    sites: int = 2
    data_paths: Mapping[int, Path] = dataclasses.field(default_factory=dict)
    dp_policies: Mapping[int, Path] = dataclasses.field(default_factory=dict)
    port: int = 0
    timeout: float = 60.0
    connection: str = CONNECTION

    def __post_init__(self) -> None:
        if isinstance(self.sites, bool) or not isinstance(self.sites, int) or self.sites < 1:
            raise ConfigError("sites", f"must be an integer >= 1, got {self.sites!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError("port", f"must be an integer, got {self.port!r}")
        if not 0 <= self.port < 65536:
            raise ConfigError("port", f"must be 0 (any free port) or 1..65535, got {self.port}")
        if not self.timeout > 0:
            raise ConfigError("timeout", f"must be > 0 seconds, got {self.timeout!r}")
        if not _CONNECTION_NAME.match(self.connection):
            raise ConfigError(
                "connection", f"letters, digits, - and _ only, got {self.connection!r}"
            )
        for site, path in self.data_paths.items():
            if not 0 <= site < self.sites:
                raise ConfigError(
                    "data-path", f"site {site} does not exist (sites are 0..{self.sites - 1})"
                )
            if not Path(path).exists():  # a file or a folder (the data layer reads both)
                raise ConfigError("data-path", f"site {site}: no such file or folder: {path}")


def parse_data_paths(items: Sequence[str]) -> dict[int, Path]:
    """``["0=/data/a.npz", ...]`` -> ``{0: Path("/data/a.npz")}`` (absolute paths)."""
    paths: dict[int, Path] = {}
    for item in items:
        site, sep, path = item.partition("=")
        if not sep or not site.strip().isdigit() or not path:
            raise ConfigError(
                "data-path", f"expected SITE=PATH (e.g. 0=/data/site-0.npz), got {item!r}"
            )
        if int(site) in paths:
            raise ConfigError("data-path", f"site {int(site)} given twice")
        paths[int(site)] = Path(path).expanduser().resolve()
    return paths


def with_sites(run_config: str, sites: int) -> str:
    """``run_config`` with ``num-clients`` and ``clients-per-round`` = ``sites`` where unset.

    The server waits for ``num-clients`` SuperNodes; the app's defaults (10 and 5)
    would not fit a federation of ``sites`` SuperNodes.
    """
    from flwr.common.config import parse_config_args

    try:  # Flower's own reading of --run-config, so quoted values cannot mislead
        given = parse_config_args([run_config]) if run_config.strip() else {}
    except (ValueError, TypeError) as err:
        raise ConfigError("run-config", f"{run_config!r} is not KEY=VALUE pairs: {err}") from err
    added = [f"{key}={sites}" for key in ("num-clients", "clients-per-round") if key not in given]
    return " ".join([*added, run_config]).strip()
