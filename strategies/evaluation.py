"""Federated evaluation: every site evaluates the global model on its own held-out data.

The server's test accuracy measures the global model on one held-out split the
coordinator holds; in a deployment the sites' data never reaches it, so each site
also measures the model on examples it keeps back from training (``eval-fraction``
of its data, :func:`fedrank.tasks.base.heldout_split`). After every round the server
sends the new global state to every site (an ``evaluate`` message); each answers with
its loss, accuracy and example count, and the round's row in ``metrics.jsonl`` gets
their example-weighted means beside the server's figures (:data:`FEDERATED_KEYS`).

:class:`FederatedEvaluation` adds this to any strategy by wrapping it (training, state
and ledgers pass through untouched); the arithmetic is :func:`weighted_evaluation`.
A reply that is not a valid evaluation is counted, never trusted: its figures are
left out. Evaluation figures are released as they are, without DP noise: the
held-out examples are not covered by a run's privacy guarantee (docs/privacy.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.protos import keys
from fedrank.protos.codecs import Codec
from fedrank.protos.evaluation import SiteEvaluation, read_evaluation
from fedrank.protos.gate import gate
from fedrank.protos.records import from_array_record
from fedrank.strategies.sampling import partition_order
from fedrank.strategies.wrapping import WrappingStrategy

FEDERATED_ACCURACY = "federated_accuracy"
FEDERATED_LOSS = "federated_loss"
FEDERATED_EXAMPLES = "federated_examples"
FEDERATED_REPLIES = "federated_replies"
FEDERATED_REJECTED = "federated_rejected"
FEDERATED_KEYS = (
    FEDERATED_ACCURACY,
    FEDERATED_LOSS,
    FEDERATED_EXAMPLES,
    FEDERATED_REPLIES,
    FEDERATED_REJECTED,
)
"""The keys a round's row gets: weighted accuracy and loss (absent when no site
answered validly), the held-out examples and valid replies behind them, and the sites
that gave no valid evaluation (failed, timed out or refused)."""


def evaluate_messages(
    payload: RecordDict,
    config: ConfigRecord,
    *,
    partitions: Mapping[int, int],
    server_round: int,
) -> list[Message]:
    """One ``evaluate`` message per site (in partition order): the global state and the
    round's config with ``server-round``. Neither input is modified."""
    round_config = ConfigRecord({**config, keys.SERVER_ROUND: server_round})
    content = RecordDict({**payload, keys.CONFIG: round_config})
    return [
        Message(content=content, message_type=MessageType.EVALUATE, dst_node_id=node)
        for node in partition_order(partitions.values(), partitions)
    ]


def weighted_evaluation(results: Sequence[SiteEvaluation]) -> dict[str, float | int]:
    """Example-weighted mean loss and accuracy of the sites' figures, with the count.

    No result: only the (zero) counts, no accuracy or loss.
    """
    total = sum(r.num_examples for r in results)
    out: dict[str, float | int] = {FEDERATED_EXAMPLES: total, FEDERATED_REPLIES: len(results)}
    if total > 0:
        out[FEDERATED_LOSS] = sum(r.loss * r.num_examples for r in results) / total
        out[FEDERATED_ACCURACY] = sum(r.accuracy * r.num_examples for r in results) / total
    return out


class FederatedEvaluation(WrappingStrategy):
    """Every site evaluates each round's global state on its held-out examples.

    Parameters
    ----------
    strategy : Strategy
        The run's strategy; everything but evaluation is its own.
    codec : Codec
        Encodes the global state as training messages carry it.
    partitions : Mapping[int, int]
        Partition id -> node id: every site is asked, every round.
    """

    def __init__(self, strategy: Strategy, *, codec: Codec, partitions: Mapping[int, int]) -> None:
        super().__init__(strategy)
        self.codec = codec
        self.partitions = dict(partitions)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The global state to every site, encoded as for training."""
        payload = self.codec.encode_global(server_round, from_array_record(arrays))
        return evaluate_messages(
            payload, config, partitions=self.partitions, server_round=server_round
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Weighted means of the valid evaluations, their count and the refused ones."""
        valid, rejected = gate(server_round, replies, read_evaluation)
        figures: dict[str, int | float | list[int] | list[float]] = {
            **weighted_evaluation(valid),
            FEDERATED_REJECTED: sum(rejected.values()),
        }
        return MetricRecord(figures)
