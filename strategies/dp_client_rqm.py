"""Client-level DP by randomized quantization on each client (RQM), accounted per client.

Youn, Hu, Ziani and Abernethy 2023 (arXiv 2306.11913): each sampled client clips its
update and sends it through RQM (:mod:`fedrank.privacy.rqm`) with its own secure
randomness; the server adds no noise. The guarantee is each client's own (a local
randomizer: the server learns nothing beyond RQM's output, whoever it is), so the
server's ledger records one ``client-rqm`` release per reply, for that client's party,
accounted exactly by :mod:`fedrank.privacy.rqm_accounting` (no amplification by
sampling: the server sees who sends). A reply whose update is not on the RQM level grid
(a client that skipped the quantizer) is refused (``rqm_not_quantized``): it would
carry more than the release accounts for.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, Message, MetricRecord

from fedrank.errors import InvalidUpdate, PrivacyBudgetExhausted
from fedrank.privacy.ledger import Release
from fedrank.privacy.release import state_digest
from fedrank.privacy.rqm import RqmParams
from fedrank.privacy.site import party_of
from fedrank.protos.gate import read_refusal, rejection_metrics
from fedrank.strategies.dp_client_level import ClientLevelDp
from fedrank.strategies.sampling import in_partition_order

_log = logging.getLogger(__name__)
RQM_NOT_QUANTIZED = "rqm_not_quantized"


def snap_to_levels(
    update: Mapping[str, npt.NDArray[np.float64]], params: RqmParams
) -> dict[str, npt.NDArray[np.float64]]:
    """Each coordinate on RQM's nearest level, or InvalidUpdate if one is not on the grid.

    The client sends ``reference + level`` in float32: a coordinate may lie a rounding
    error away from its level, never a thousandth of a level spacing.
    """
    levels = params.level_values()
    out = {}
    for name, value in update.items():
        index = np.clip(
            np.rint((value + params.half_range) / params.spacing), 0, params.levels - 1
        ).astype(np.int64)
        snapped = levels[index]
        if np.any(np.abs(snapped - value) > 1e-3 * params.spacing):
            raise InvalidUpdate(RQM_NOT_QUANTIZED, f"{name}: values off the RQM level grid")
        out[name] = snapped
    return out


class ClientLevelRqm(ClientLevelDp):
    """Client-level DP with RQM on the clients, Poisson sampling and the fixed divisor.

    Sampling, the reference arrays and the budget refusal are :class:`ClientLevelDp`'s;
    aggregation averages the snapped RQM updates (sum over the expected m), with no
    server noise. ``noise_multiplier`` is unused (give 1.0); ``params`` are the run's
    RQM parameters (the clip norm ``c`` is ``clip_norm``).
    """

    def __init__(self, *args: Any, params: RqmParams, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params = params
        # The largest epsilon any client has spent, as published (the ledger has all).
        self.max_epsilon = max(
            (
                self.ledger.spent(unit="client", party=r.party)
                for r in {r.party: r for r in self.ledger.releases}.values()
            ),
            default=0.0,
        )

    def _check_budget(self, server_round: int) -> None:
        """Each client's release is checked when it arrives (its own budget)."""

    def _client_release(self, server_round: int, party: str, digest: str, size: int) -> Release:
        p = self.params
        return Release(
            round=server_round, mechanism="client-rqm", noise_multiplier=0.0, sample_rate=0.0,
            steps=0, clip_norm=p.clip, unit="client", party=party, digest=digest,
            rqm_levels=p.levels, rqm_extension=p.extension,
            rqm_keep_probability=p.keep_probability, rqm_coordinates=size,
        )  # fmt: skip

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Snap, record each client's release, average over the expected m."""
        reference = self._pending.pop(server_round, None)
        if reference is None:
            return None, None
        party_of_node = {node: party_of(pid) for pid, node in self.partitions.items()}
        size = sum(v.size for v in reference.values())
        total = {name: np.zeros(v.shape, dtype=np.float64) for name, v in reference.items()}
        rejected: Counter[str] = Counter()
        accepted = 0
        epsilons = []
        for reply in in_partition_order(replies, self.partitions):
            node = reply.metadata.src_node_id
            refusal = read_refusal(reply) if not reply.has_error() else ("client_error", "")
            if refusal is not None:
                rejected[refusal[0]] += 1
                continue
            try:
                state = self.codec.decode_reply(server_round, reply).state
                update = snap_to_levels(
                    {n: state[n].astype(np.float64) - b.astype(np.float64)
                     for n, b in reference.items()},
                    self.params,
                )  # fmt: skip
                party = party_of_node.get(node, f"node-{node}")
                release = self._client_release(server_round, party, state_digest(state), size)
                epsilons.append(self.ledger.record(release))
            except InvalidUpdate as err:
                rejected[err.reason] += 1
                _log.warning("round %d: rejected reply of node %d: %s", server_round, node, err)
                continue
            except PrivacyBudgetExhausted as err:
                rejected["over_budget"] += 1
                _log.warning("round %d: node %d is over its budget: %s", server_round, node, err)
                continue
            accepted += 1
            for name in total:
                total[name] += update[name]
        values = {
            name: np.asarray(b.astype(np.float64) + total[name] / self.expected_clients, b.dtype)
            for name, b in reference.items()
        }
        self.max_epsilon = max([self.max_epsilon, *epsilons])
        metrics: dict[str, Any] = {
            "dp-epsilon": self.max_epsilon,
            "dp-delta": self.ledger.delta,
            "dp-rqm-bits": self.params.bits_per_coordinate,
        }
        if self.publish_diagnostics:
            metrics.update(rejection_metrics(accepted, rejected))
        arrays = ArrayRecord({name: Array(value) for name, value in values.items()})
        return arrays, MetricRecord(metrics)
