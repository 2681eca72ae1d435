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
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, RecordDict

from fedrank.errors import CheckpointError, ConfigError, InvalidUpdate, PrivacyBudgetExhausted
from fedrank.privacy.accountant import (
    compute_epsilon,
    history_from_array,
    history_to_array,
    run_lengths,
)
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.privacy.plan import planned_release, sample_noise_multiplier
from fedrank.privacy.release import dp_sgd_release, state_digest
from fedrank.privacy.site_policy import (
    INLINE_KEYS,
    LEDGER_FILE,
    POLICY_KEY,
    SITE_ROOT_ENV,
    SitePolicy,
    load_policy,
    party_of,
    requested_policy,
)

__all__ = [
    "HISTORY_STATE",
    "INLINE_KEYS",
    "LEDGER_FILE",
    "POLICY_KEY",
    "REFUSAL_REASONS",
    "SITES_FOLDER",
    "SITE_ROOT_ENV",
    "AccountantHistory",
    "Refusal",
    "RefusalReason",
    "SiteGuard",
    "SitePolicy",
    "load_policy",
    "party_of",
    "read_history",
    "requested_policy",
    "simulated_sites",
    "write_history",
]

AccountantHistory = tuple[tuple[float, float, int], ...]

if TYPE_CHECKING:
    from fedrank.config import Scenario

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
        release = dp_sgd_release(
            server_round=server_round,
            party=self.party,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            clip_norm=clip_norm,
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
