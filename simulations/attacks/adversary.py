"""A simulated adversary: a strategy wrapper that controls the malicious partitions' replies.

In a simulation the colluders' replies pass through one place before the server sees
them, which is exactly what colluders sharing information can do in reality (a side
channel between them). :class:`Adversary` wraps the real strategy: each round it
lets every sampled client, malicious ones included, train honestly; it then
replaces the replies of the malicious partitions with the crafted ones
(:mod:`fedrank.simulations.attacks.collusion`) and hands all replies to the real strategy, whose
wire validation still applies. The benign code paths do not know it exists.

:func:`attack_components` picks, for a scenario, the ClientApp (the label-flipping
one for data poisoning) and the strategy wrapper (``None`` without a crafting attack);
:class:`Withholding` is the wrapper of ``attack = "withhold"``, whose malicious replies never
reach the real strategy.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message import make_message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.errors import InvalidUpdate
from fedrank.protos import keys
from fedrank.protos.codecs import Codec, Reply
from fedrank.protos.records import from_array_record
from fedrank.simulations.attacks.collusion import Crafter, State, crafter, malicious_partitions
from fedrank.strategies.wrapping import StrategyWrapper, WrappingStrategy

log = logging.getLogger(__name__)

__all__ = ["Adversary", "Withholding", "attack_components"]


class Adversary(WrappingStrategy):
    """Colluding attackers in control of some partitions, around a real strategy.

    Threat model after Shejwalkar & Houmansadr (NDSS 2021, "Manipulating the
    Byzantine"); attacks in :mod:`fedrank.simulations.attacks.attacks`.

    Parameters
    ----------
    inner : Strategy
        The server's real strategy.
    partitions : Mapping[int, int]
        Partition id -> node id.
    malicious : frozenset of int
        The partition ids the adversary controls.
    craft : Crafter
        ``(round, [(partition, honest reply)], benign replies, global state) -> replies``.

    codec : Codec
        The run's codec: the colluders read their honest replies and encode what they
        craft with it, like any client.
    """

    def __init__(
        self,
        inner: Strategy,
        *,
        partitions: Mapping[int, int],
        malicious: frozenset[int],
        craft: Crafter,
        codec: Codec,
    ) -> None:
        super().__init__(inner)
        self.malicious_nodes = {node: pid for pid, node in partitions.items() if pid in malicious}
        self.craft = craft
        self.codec = codec
        self._reference: dict[str, np.ndarray] = {}

    def summary(self) -> None:
        """Log the adversary, then the real strategy's settings."""
        log.info("Adversary controls %d partitions", len(self.malicious_nodes))
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The real strategy's messages; the adversary notes the global state sent."""
        self._reference = from_array_record(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Swap in the crafted replies of the malicious partitions, then aggregate."""
        replies = list(replies)
        honest: list[tuple[int, int, State]] = []  # (index, partition, honest reply)
        benign: list[State] = []
        for index, reply in enumerate(replies):
            state = self._read(server_round, reply)
            if state is None:
                continue
            node = reply.metadata.src_node_id
            if node in self.malicious_nodes:
                honest.append((index, self.malicious_nodes[node], state))
            else:
                benign.append(state)
        if honest:
            crafted = self.craft(
                server_round,
                [(pid, state) for _, pid, state in honest],
                benign,
                self._reference,
            )
            replies = list(replies)
            for (index, _, _), arrays in zip(honest, crafted, strict=True):
                replies[index] = self._write(server_round, replies[index], arrays)
        new_arrays, metrics = self.strategy.aggregate_train(server_round, replies)
        metrics = MetricRecord({**(metrics or {}), "malicious": len(honest)})
        return new_arrays, metrics

    def _read(self, server_round: int, reply: Message) -> State | None:
        """A reply's update, or None if it has none to read (an error, a bad payload)."""
        if reply.has_error():
            return None
        try:
            return self.codec.decode_reply(server_round, reply).state
        except InvalidUpdate:
            return None

    def _write(self, server_round: int, reply: Message, state: Mapping[str, np.ndarray]) -> Message:
        """A copy of ``reply`` carrying ``state`` instead (its other records kept)."""
        payload = self.codec.encode_reply(server_round, Reply(state=dict(state), num_examples=1))
        payload.pop(keys.METRICS)
        records = {key: record for key, record in reply.content.items() if key not in payload}
        content = RecordDict({**payload, **records})
        return make_message(metadata=copy.copy(reply.metadata), content=content)


class Withholding(WrappingStrategy):
    """Malicious partitions whose replies never reach the real strategy.

    Not a way to harm a run but its reference: the real strategy aggregates exactly the
    benign replies, what a robust rule that set aside every attacker and no one else
    would aggregate. A robust rule's loss under an attack, less this one's, is what the
    rule itself gives away; this one's is what losing the attackers' data costs.

    Parameters
    ----------
    inner : Strategy
        The server's real strategy.
    partitions : Mapping[int, int]
        Partition id -> node id.
    malicious : frozenset of int
        The partition ids whose replies are withheld.
    """

    def __init__(
        self, inner: Strategy, *, partitions: Mapping[int, int], malicious: frozenset[int]
    ) -> None:
        super().__init__(inner)
        self.malicious_nodes = {node for pid, node in partitions.items() if pid in malicious}

    def summary(self) -> None:
        """Log the withheld partitions, then the real strategy's settings."""
        log.info("Replies of %d partitions withheld from the server", len(self.malicious_nodes))
        self.strategy.summary()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The real strategy's aggregate of the benign replies alone."""
        replies = list(replies)
        benign = [r for r in replies if r.metadata.src_node_id not in self.malicious_nodes]
        new_arrays, metrics = self.strategy.aggregate_train(server_round, benign)
        metrics = MetricRecord({**(metrics or {}), "malicious": len(replies) - len(benign)})
        return new_arrays, metrics


def attack_components(scenario: Scenario) -> tuple[ClientApp, StrategyWrapper | None]:
    """The ClientApp and strategy wrapper that simulate the scenario's attack."""
    if scenario.attack.kind == "label_flip":
        from fedrank.simulations.attacks.poisoning import poisoning_app

        return poisoning_app(scenario), None
    from fedrank.client.app import app as client_app

    malicious = malicious_partitions(scenario)
    if scenario.attack.kind == "withhold" and malicious:

        def withhold(strategy: Strategy, partitions: Mapping[int, int], codec: Codec) -> Strategy:
            return Withholding(strategy, partitions=partitions, malicious=malicious)

        return client_app, withhold
    craft = crafter(scenario)
    if craft is None or not malicious:
        return client_app, None
    chosen: Crafter = craft

    def wrap(strategy: Strategy, partitions: Mapping[int, int], codec: Codec) -> Strategy:
        return Adversary(
            strategy, partitions=partitions, malicious=malicious, craft=chosen, codec=codec
        )

    return client_app, wrap
