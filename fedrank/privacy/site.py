"""A site protects its own records: its DP policy, its own ledger, its refusals.

Sample-level DP is the site's guarantee to the people in its data, so the site, not
the server, decides what it accepts and keeps the books:

- **Policy** (:class:`SitePolicy`), from the SuperNode's node config: either a TOML
  file (``--node-config 'dp-policy="/etc/site/dp-policy.toml"'``) or the same keys
  inline with a ``dp-`` prefix (``dp-min-noise-multiplier``, ``dp-max-epsilon``,
  ``dp-delta``, ``dp-ledger``, ``dp-accountant``, ``dp-allow-reproducible-noise``). A
  malformed or contradictory policy is refused when the run's discovery query reaches
  the site, before anything trains, with a one-line reason (:func:`load_policy`).
- **Ledger**: every DP-SGD release the site makes is appended (fsynced) to its own
  :class:`~fedrank.privacy.ledger.PrivacyLedger` on its own disk before the reply
  leaves; its epsilon, its budget and the accountant history its Opacus engine
  restarts from are read from that file, so they survive a restart of the SuperNode
  (or a killed simulation) and count every run the site took part in. The server's
  record ledger is an audit copy.
- **Refusal**: a train message whose run asks for less than the policy (a smaller
  noise multiplier, a larger delta, no sample-level DP, reproducible noise, or a round
  that would take the site over its budget) is answered with a refusal record and a
  reason code (:data:`REFUSAL_REASONS`); nothing is trained, nothing recorded.

In a simulation each site has the default policy *equal to the scenario's request*
(:func:`requested_policy`), its ledger at ``$FEDRANK_SITE_ROOT/partition-N/`` (set by
``fedrank simulate`` to ``<results>/sites``).
"""

from __future__ import annotations

import contextlib
import math
import os
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, RecordDict

from fedrank.errors import CheckpointError, ConfigError, InvalidUpdate, PrivacyBudgetExhausted
from fedrank.privacy.accountant import (
    ACCOUNTANTS,
    AccountantName,
    compute_epsilon,
    history_from_array,
    history_to_array,
    run_lengths,
)
from fedrank.privacy.bounds import (
    ABSOLUTE_MAX_DELTA,
    ABSOLUTE_MAX_NOISE_MULTIPLIER,
    ABSOLUTE_MIN_DELTA,
)
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.privacy.plan import planned_release, sample_noise_multiplier
from fedrank.privacy.release import state_digest

AccountantHistory = tuple[tuple[float, float, int], ...]

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

RefusalReason = Literal[
    "site_policy_no_dp",
    "site_policy_noise",
    "site_policy_delta",
    "site_policy_reproducible",
    "site_policy_budget",
    "site_policy_out_of_range",
]
REFUSAL_REASONS: tuple[RefusalReason, ...] = (
    "site_policy_no_dp",
    "site_policy_noise",
    "site_policy_delta",
    "site_policy_reproducible",
    "site_policy_budget",
    "site_policy_out_of_range",
)
"""Reason codes of a site's refusal (counted by the server as ``rejected.<reason>``)."""


@dataclass(frozen=True)
class Refusal:
    """A site's answer to a train message asking for less than its policy."""

    reason: RefusalReason
    detail: str


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


class SiteGuard:
    """Checks each train message against a site's policy and keeps the site's ledger.

    Parameters
    ----------
    policy : SitePolicy
        The site's policy.
    scenario : Scenario
        The run's settings (what the server asks for).
    partition_id : int
        The site's partition (names its releases).

    Raises
    ------
    ConfigError
        The ledger file cannot be read (field ``dp-policy``, one line).
    """

    def __init__(self, policy: SitePolicy, scenario: Scenario, partition_id: int) -> None:
        self.policy = policy
        self.scenario = scenario
        self.party = party_of(partition_id)
        try:
            self.ledger = PrivacyLedger(
                policy.ledger,
                budget_epsilon=policy.max_epsilon,
                delta=policy.delta,
                accountant=policy.accountant,
            )
        except (CheckpointError, ConfigError) as err:
            raise ConfigError(POLICY_KEY, f"the site's ledger: {err}") from err

    @classmethod
    def for_node(
        cls, node_config: Mapping[str, Any], scenario: Scenario, partition_id: int
    ) -> SiteGuard | None:
        """The guard of a node: its own policy, else the run's request under sample DP.

        Raises
        ------
        ConfigError
            A bad policy (:func:`load_policy`), or a run with sample-level DP reaching a
            site that has neither a policy nor ``$FEDRANK_SITE_ROOT``: it would keep no
            ledger of its own.
        """
        policy = load_policy(node_config) or requested_policy(scenario, partition_id)
        if policy is None and scenario.dp.sample:
            raise ConfigError(
                POLICY_KEY,
                "sample-level DP, but this site keeps no privacy ledger: start the "
                "SuperNode with --node-config 'dp-policy=\"/path/policy.toml\"' (or "
                "dp-ledger and dp-delta)",
            )
        return None if policy is None else cls(policy, scenario, partition_id)

    def refusal(self, *, num_examples: int, server_round: int) -> Refusal | None:
        """Why this site will not train this round for this run, or None."""
        policy, dp = self.policy, self.scenario.dp
        if not dp.sample:
            return Refusal(
                "site_policy_no_dp",
                f"the run asks for dp {dp.mode!r}; this site trains only under DP-SGD",
            )
        if dp.reproducible_noise and not policy.allow_reproducible_noise:
            return Refusal(
                "site_policy_reproducible",
                "the run asks for reproducible (replayable) noise; this site refuses it",
            )
        if dp.delta > policy.delta:
            return Refusal(
                "site_policy_delta", f"the run's delta {dp.delta:g} exceeds {policy.delta:g}"
            )
        sigma = sample_noise_multiplier(self.scenario, num_examples)
        if sigma < policy.min_noise_multiplier:
            return Refusal(
                "site_policy_noise",
                f"the run's noise multiplier {sigma:.4g} is below this site's minimum "
                f"{policy.min_noise_multiplier:g}",
            )
        release = planned_release(
            self.scenario, num_examples, server_round=server_round, party=self.party
        )
        try:
            self.ledger.check(release)
        except PrivacyBudgetExhausted as err:
            return Refusal("site_policy_budget", str(err))
        except InvalidUpdate as err:
            return Refusal("site_policy_out_of_range", str(err))
        return None

    def history(self) -> AccountantHistory:
        """The site's DP-SGD history as an Opacus accountant holds it (every run)."""
        return run_lengths([r for r in self.ledger.releases if r.unit == "record"])

    def prepare(self, node_state: RecordDict) -> None:
        """Hand the task the history from the site's ledger (not from anywhere else)."""
        write_history(node_state, self.history())

    def record(
        self,
        *,
        server_round: int,
        noise_multiplier: float,
        sample_rate: float,
        steps: int,
        clip_norm: float,
        state: Mapping[str, npt.NDArray[np.floating]],
    ) -> float:
        """Append the round's release (digest of the tensors sent) to the site's ledger.

        Call it before the reply leaves. Returns the site's epsilon at the *run's* delta
        and accountant over its whole ledger: what its privacy report states.
        """
        release = Release(
            round=server_round,
            mechanism="dp-sgd",
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            clip_norm=clip_norm,
            unit="record",
            party=self.party,
            digest=state_digest(state),
        )
        self.ledger.record(release)
        dp = self.scenario.dp
        return compute_epsilon(
            history=[r for r in self.ledger.releases if r.unit == "record"],
            delta=dp.delta,
            accountant=dp.accountant,
        )


HISTORY_STATE = "dp-accountant"
"""The ArrayRecord of a node's state holding the history its DP-SGD accounts from."""
_HISTORY = "history"


def write_history(node_state: RecordDict, history: AccountantHistory) -> None:
    """Put the site's accountant history where its task reads it (:func:`read_history`)."""
    node_state.array_records[HISTORY_STATE] = ArrayRecord(
        {_HISTORY: Array(history_to_array(history))}
    )


def read_history(node_state: RecordDict) -> AccountantHistory:
    """The accountant history a site's DP-SGD starts from (empty if none)."""
    found = node_state.array_records.get(HISTORY_STATE)
    if found is None or _HISTORY not in found:
        return ()
    return history_from_array(found[_HISTORY].numpy())


SITES_FOLDER = "sites"
"""The simulated sites' ledgers inside a results folder."""


@contextlib.contextmanager
def simulated_sites(results_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Give a simulation's sites their ledger folder (``$FEDRANK_SITE_ROOT``) meanwhile.

    The folder is ``<results_dir>/sites``; each site creates its own part when it first
    records a release. A new run's results folder is empty (the run refuses any other),
    so its sites start new ledgers; a resumed run finds them as it left them and each
    site goes on from its own books. Nothing is ever removed. Clients in this process,
    and Ray workers started from it, inherit the variable.
    """
    root = Path(results_dir).resolve() / SITES_FOLDER
    before = os.environ.get(SITE_ROOT_ENV)
    os.environ[SITE_ROOT_ENV] = str(root)
    try:
        yield root
    finally:
        if before is None:
            os.environ.pop(SITE_ROOT_ENV, None)
        else:
            os.environ[SITE_ROOT_ENV] = before
