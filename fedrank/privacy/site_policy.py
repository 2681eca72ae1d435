"""A site's DP policy: what it accepts for its records and where it keeps its books.

:class:`SitePolicy` comes from the SuperNode's node config (:func:`load_policy`: a TOML
file named by ``dp-policy`` or the same keys inline with a ``dp-`` prefix), or, in a
simulation, from the scenario's own request (:func:`requested_policy`). The guard that
applies it is :class:`fedrank.privacy.site.SiteGuard`.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import ACCOUNTANTS, AccountantName
from fedrank.privacy.bounds import (
    ABSOLUTE_MAX_DELTA,
    ABSOLUTE_MAX_NOISE_MULTIPLIER,
    ABSOLUTE_MIN_DELTA,
)

if TYPE_CHECKING:
    from fedrank.config import Scenario


POLICY_KEY = "dp-policy"
"""Node config key: path of the site's DP policy file (TOML)."""
SITE_ROOT_ENV = "FEDRANK_SITE_ROOT"
"""Environment variable: folder of the sites' ledgers when no policy names one
(``fedrank simulate`` sets it to ``<results>/sites``)."""
LEDGER_FILE = "privacy-ledger.jsonl"

_FIELDS = {
    "min-noise-multiplier": "min_noise_multiplier",
    "max-epsilon": "max_epsilon",
    "delta": "delta",
    "ledger": "ledger",
    "accountant": "accountant",
    "allow-reproducible-noise": "allow_reproducible_noise",
}
INLINE_KEYS = {f"dp-{key}": key for key in _FIELDS}
"""Node config keys of an inline policy -> policy file keys."""


@dataclass(frozen=True)
class SitePolicy:
    """What a site accepts for its records, and where it keeps its books.

    Parameters
    ----------
    min_noise_multiplier : float
        The smallest DP-SGD sigma it trains with (0: any), at most 100.
    max_epsilon : float or None
        Its budget over its whole ledger at ``delta`` (None: no budget).
    delta : float
        The delta of its budget, and the largest delta a run may claim for it.
    ledger : Path
        Its ledger file (its folder must exist).
    accountant : {"rdp", "prv"}
        How it computes its epsilon.
    allow_reproducible_noise : bool
        Whether it trains when a run asks for reproducible (replayable) noise.
    origin : str
        Where the policy came from (for messages).
    """

    min_noise_multiplier: float
    max_epsilon: float | None
    delta: float
    ledger: Path
    accountant: AccountantName = "rdp"
    allow_reproducible_noise: bool = False
    origin: str = "node config"

    def __post_init__(self) -> None:
        where = self.origin
        sigma = self.min_noise_multiplier
        if (
            isinstance(sigma, bool)
            or not isinstance(sigma, int | float)
            or not (0 <= sigma <= ABSOLUTE_MAX_NOISE_MULTIPLIER)
        ):
            raise ConfigError(
                POLICY_KEY,
                f"min-noise-multiplier in {where} must lie in "
                f"[0, {ABSOLUTE_MAX_NOISE_MULTIPLIER:g}], got {sigma!r}",
            )
        eps = self.max_epsilon
        if eps is not None and (
            isinstance(eps, bool)
            or not isinstance(eps, int | float)
            or not (math.isfinite(eps) and eps > 0)
        ):
            raise ConfigError(
                POLICY_KEY, f"max-epsilon in {where} must be a number > 0, got {eps!r}"
            )
        delta = self.delta
        if (
            isinstance(delta, bool)
            or not isinstance(delta, int | float)
            or not (ABSOLUTE_MIN_DELTA <= delta <= ABSOLUTE_MAX_DELTA)
        ):
            raise ConfigError(
                POLICY_KEY,
                f"delta in {where} must lie in [{ABSOLUTE_MIN_DELTA:g}, "
                f"{ABSOLUTE_MAX_DELTA:g}], got {delta!r}",
            )
        if sigma == 0 and eps is None:
            raise ConfigError(
                POLICY_KEY,
                f"{where} protects nothing: set min-noise-multiplier > 0 or max-epsilon",
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                POLICY_KEY, f"accountant in {where} must be one of {ACCOUNTANTS}, got "
                f"{self.accountant!r}",
            )  # fmt: skip
        if not isinstance(self.allow_reproducible_noise, bool):
            raise ConfigError(
                POLICY_KEY, f"allow-reproducible-noise in {where} must be true or false"
            )
        if not self.ledger.parent.is_dir():
            raise ConfigError(
                POLICY_KEY, f"ledger {self.ledger} in {where}: its folder does not exist"
            )
        object.__setattr__(self, "min_noise_multiplier", float(sigma))
        object.__setattr__(self, "delta", float(delta))


def _policy_from(values: Mapping[str, Any], *, origin: str, base: Path | None) -> SitePolicy:
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(
            POLICY_KEY, f"unknown key {unknown[0]!r} in {origin} (allowed: {', '.join(_FIELDS)})"
        )
    missing = [key for key in ("delta", "ledger") if key not in values]
    if missing:
        raise ConfigError(POLICY_KEY, f"{origin} lacks {missing[0]!r}")
    ledger = values["ledger"]
    if not isinstance(ledger, str) or not ledger:
        raise ConfigError(POLICY_KEY, f"ledger in {origin} must be a file path, got {ledger!r}")
    path = Path(ledger).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    return SitePolicy(
        min_noise_multiplier=values.get("min-noise-multiplier", 0.0),
        max_epsilon=values.get("max-epsilon"),
        delta=values["delta"],
        ledger=path,
        accountant=values.get("accountant", "rdp"),
        allow_reproducible_noise=values.get("allow-reproducible-noise", False),
        origin=origin,
    )


def load_policy(node_config: Mapping[str, Any]) -> SitePolicy | None:
    """The site's own DP policy from its node config, or None when it sets none.

    Raises
    ------
    ConfigError
        Field ``dp-policy``, one line: the file is missing or not TOML, a key is
        unknown or of the wrong type, a value is out of range, the policy protects
        nothing, its ledger's folder is missing, or both a file and inline keys are
        given (which would contradict each other).
    """
    inline = {INLINE_KEYS[key]: value for key, value in node_config.items() if key in INLINE_KEYS}
    file = node_config.get(POLICY_KEY)
    if file is None:
        return _policy_from(inline, origin="the node config", base=None) if inline else None
    if inline:
        raise ConfigError(
            POLICY_KEY,
            f"given as a file ({file!r}) and as node config keys ({', '.join(sorted(inline))}): "
            "keep one",
        )
    if not isinstance(file, str) or not file:
        raise ConfigError(POLICY_KEY, f"must be a file path in quotes, got {file!r}")
    path = Path(file).expanduser()
    try:
        values = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ConfigError(POLICY_KEY, f"cannot read {path}: {err.strerror}") from err
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(POLICY_KEY, f"{path} is not a TOML file: {err}") from err
    return _policy_from(values, origin=str(path), base=path.parent)


def party_of(partition_id: int) -> str:
    """The name a site's releases carry (in its ledger and the server's audit copy)."""
    return f"partition-{partition_id}"


def requested_policy(scenario: Scenario, partition_id: int) -> SitePolicy | None:
    """A simulated site's default policy: exactly what the scenario asks for.

    Its ledger lives under ``$FEDRANK_SITE_ROOT``; None when that is not set or the
    scenario asks for no sample-level DP.
    """
    root = os.environ.get(SITE_ROOT_ENV)
    dp = scenario.dp
    if not dp.sample or not root:
        return None
    folder = Path(root) / party_of(partition_id)
    folder.mkdir(parents=True, exist_ok=True)
    return SitePolicy(
        min_noise_multiplier=dp.noise_multiplier,
        max_epsilon=dp.target_epsilon or None,
        delta=dp.delta,
        ledger=folder / LEDGER_FILE,
        accountant=dp.accountant,
        allow_reproducible_noise=True,
        origin="the scenario's request (simulation default)",
    )
