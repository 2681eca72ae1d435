"""``SampleLevelDpAudit``: check and record the clients' own DP-SGD reports.

Sample-level DP is applied by each client (Opacus DP-SGD); the server cannot add it,
but it can refuse updates that do not come with a valid privacy report, record every
report in the privacy ledger before the update is used, and publish the epsilon.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.errors import InvalidUpdate, PrivacyBudgetExhausted
from fedrank.privacy.accountant import history_to_array
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.protos import PrivacyReportData, keys
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.records import to_array_record
from fedrank.strategies.sampling import in_partition_order
from fedrank.strategies.wrapping import WrappingStrategy

log = logging.getLogger(__name__)

# A client's epsilon and the ledger's come from the same accountant code and history;
# only a lost reply (the client counted a round the server never saw) separates them.
_AGREEMENT = 1e-9


def party_of(partition_id: int) -> str:
    """The ledger's name for a client."""
    return f"partition-{partition_id}"


def report_release(
    report: PrivacyReportData,
    *,
    server_round: int,
    party: str,
    delta: float,
    clip_norm: float,
    noise_multiplier: float | None,
) -> Release:
    """The ledger entry of a report that matches the run's settings.

    Raises
    ------
    InvalidUpdate
        ``privacy_mechanism`` (not DP-SGD), ``privacy_delta``, ``privacy_clip``,
        ``privacy_noise`` (another sigma than the run's, when it is fixed),
        ``privacy_empty`` (no steps or no sampling: no DP-SGD was run).
    """
    if report.mechanism != "dp_sgd":
        raise InvalidUpdate("privacy_mechanism", f"expected dp_sgd, got {report.mechanism}")
    if report.delta != delta:
        raise InvalidUpdate("privacy_delta", f"expected delta {delta}, got {report.delta}")
    if report.clipping_norm != clip_norm:
        raise InvalidUpdate(
            "privacy_clip", f"expected clip norm {clip_norm}, got {report.clipping_norm}"
        )
    if noise_multiplier is not None and report.noise_multiplier != noise_multiplier:
        raise InvalidUpdate(
            "privacy_noise",
            f"expected noise multiplier {noise_multiplier}, got {report.noise_multiplier}",
        )
    if report.steps < 1 or not report.sample_rate > 0 or not report.noise_multiplier > 0:
        raise InvalidUpdate("privacy_empty", f"no DP-SGD steps in the report: {report}")
    return Release(
        round=server_round,
        mechanism="dp-sgd",
        noise_multiplier=report.noise_multiplier,
        sample_rate=report.sample_rate,
        steps=report.steps,
        clip_norm=report.clipping_norm,
        unit="record",
        party=party,
    )


def _count(metrics: Mapping[str, MetricRecordValues], key: str) -> int:
    value = metrics.get(key, 0)
    return int(value) if isinstance(value, int | float) else 0


class SampleLevelDpAudit(WrappingStrategy):
    """Wraps a strategy: only updates with a valid DP-SGD report reach it.

    DP-SGD (Abadi et al. 2016, arXiv 1607.00133) runs on the clients; each reply
    carries a ``fedrank.v1.PrivacyReport`` (sigma, sampling rate, steps, clip norm,
    cumulative epsilon, delta). For each reply the wrapper decodes the report, checks
    it against the run's settings, checks the party's budget and records the release
    in the ledger (party ``partition-<id>``, unit ``record``) before the inner
    strategy sees the update. A reply without a valid report, or over budget, is
    rejected and counted, never aggregated. Recording before aggregation errs on the
    side of counting: a release recorded for an update the inner strategy later
    refuses still counts.

    The ledger's epsilon for a party comes from the same accountant as the client's
    (:func:`fedrank.privacy.accountant.compute_epsilon`) over the releases it
    recorded; a client that reports more (it trained in a round whose reply was lost)
    is believed, and the disagreement is counted (``dp-record-mismatch``).

    Every train message carries the party's recorded history (releases of earlier
    rounds, :data:`fedrank.protos.keys.PRIVACY_HISTORY`). A client whose own accountant
    history was lost (a killed simulation, resumed) starts from it instead of from
    zero; one whose own history is longer keeps its own
    (:func:`fedrank.tasks.text_lora.starting_history`).

    Parameters
    ----------
    strategy : Strategy
        The inner strategy (``LoraAggregation``, or ``ClientLevelDp`` around it).
    codec : ArraysCodec
        The run's arrays layout; it requires a privacy report in every reply.
    ledger : PrivacyLedger
        Sample-level releases; its budget is each client's.
    partitions : Mapping[int, int]
        Partition id -> node id (a node is named by the partition it reported).
    clip_norm : float
        The per-example clip norm every client must have used.
    noise_multiplier : float | None
        The sigma every client must have used, or None when each derives its own
        from the budget (the budget check then bounds what it spent).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        codec: ArraysCodec,
        ledger: PrivacyLedger,
        partitions: Mapping[int, int],
        clip_norm: float,
        noise_multiplier: float | None,
    ) -> None:
        super().__init__(strategy)
        self.codec = codec
        self.ledger = ledger
        self.partitions = dict(partitions)
        self.party_by_node = {node: party_of(pid) for pid, node in partitions.items()}
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.epsilons: dict[str, float] = {}
        for release in ledger.releases:
            if release.unit == "record":
                self.epsilons[release.party] = ledger.spent(unit="record", party=release.party)

    def summary(self) -> None:
        """Log the settings, then the inner strategy's summary."""
        log.info(
            "SampleLevelDpAudit: clip %g, sigma %s, budget %s per client (delta %g)",
            self.clip_norm,
            self.noise_multiplier if self.noise_multiplier is not None else "per client",
            self.ledger.budget_epsilon,
            self.ledger.delta,
        )
        self.strategy.summary()

    def state_dict(self) -> dict[str, Any]:
        """Epsilon per party as published (with the inner strategy's state, if any)."""
        return {"epsilons": dict(sorted(self.epsilons.items())), **super().state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.epsilons = {str(p): float(e) for p, e in state["epsilons"].items()}
        super().load_state_dict(state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's messages, each with its party's recorded history."""
        messages = self.strategy.configure_train(
            server_round, arrays, ConfigRecord(dict(config)), grid
        )
        return [self._with_history(server_round, m) for m in messages]

    def _with_history(self, server_round: int, message: Message) -> Message:
        party = self.party_by_node.get(message.metadata.dst_node_id)
        if party is None:
            return message
        history = self.ledger.history(unit="record", party=party, before_round=server_round)
        if not history:
            return message
        # A new RecordDict: the inner strategy's content is shared by every message.
        content = RecordDict(
            {
                **message.content,
                keys.PRIVACY_HISTORY: to_array_record({keys.HISTORY: history_to_array(history)}),
            }
        )
        return Message(
            content=content,
            message_type=message.metadata.message_type,
            dst_node_id=message.metadata.dst_node_id,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record every valid report, then let the inner strategy aggregate those replies."""
        accepted: list[Message] = []
        rejected: Counter[str] = Counter()
        mismatch = 0
        # Partition order: the ledger's lines come in the same order in every run.
        for reply in in_partition_order(replies, self.partitions):
            if reply.has_error():
                accepted.append(reply)  # the inner strategy counts failures
                continue
            node = reply.metadata.src_node_id
            try:
                party = self.party_by_node.get(node)
                if party is None:
                    raise InvalidUpdate("unknown_node", f"node {node} has no partition")
                report = self.codec.decode_reply(server_round, reply).privacy
                if report is None:
                    raise InvalidUpdate("missing_privacy_report", "sample-level DP needs a report")
                release = report_release(
                    report,
                    server_round=server_round,
                    party=party,
                    delta=self.ledger.delta,
                    clip_norm=self.clip_norm,
                    noise_multiplier=self.noise_multiplier,
                )
                spent = self.ledger.record(release)
            except InvalidUpdate as err:
                rejected[err.reason] += 1
                log.warning("round %d: rejected reply of node %d: %s", server_round, node, err)
                continue
            except PrivacyBudgetExhausted as err:
                rejected["over_budget"] += 1
                log.warning("round %d: rejected reply of node %d: %s", server_round, node, err)
                continue
            if not math.isclose(report.epsilon_spent, spent, rel_tol=_AGREEMENT):
                mismatch += 1
                log.warning(
                    "round %d: %s reports epsilon %.6f, the ledger counts %.6f",
                    server_round,
                    party,
                    report.epsilon_spent,
                    spent,
                )
            self.epsilons[party] = max(spent, report.epsilon_spent, self.epsilons.get(party, 0.0))
            accepted.append(reply)
        arrays, inner = self.strategy.aggregate_train(server_round, accepted)
        metrics = dict(inner or {})
        metrics["rejected"] = _count(metrics, "rejected") + sum(rejected.values())
        for reason, count in rejected.items():
            metrics[f"rejected.{reason}"] = _count(metrics, f"rejected.{reason}") + count
        metrics["dp-record-epsilon"] = max(self.epsilons.values(), default=0.0)
        metrics["dp-record-mismatch"] = mismatch
        return arrays, MetricRecord(metrics)
