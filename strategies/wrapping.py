"""``WrappingStrategy``: the base of every strategy that wraps another.

fedrank composes strategies by wrapping (``server/lora.py``): client-level DP, the
sample-level DP audit and the simulated adversary each change training and pass
the rest through. This base holds the inner strategy as ``.strategy`` (where
:func:`fedrank.server.resume.ledgers_of` looks for privacy ledgers), passes
evaluation through unchanged and carries the inner strategy's checkpoint state, so
that wrapping never hides a ledger or a piece of state from a resumed run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.protos.codecs import Codec

__all__ = ["StrategyWrapper", "WrappingStrategy"]

StrategyWrapper = Callable[[Strategy, Mapping[int, int], Codec], Strategy]
"""Wraps a run's strategy once the partitions (id -> node) and the run's codec are known
(a simulated adversary)."""

INNER_STATE = "inner"


class WrappingStrategy(Strategy):
    """A strategy around ``strategy``; every step not overridden is the inner one's.

    Parameters
    ----------
    strategy : Strategy
        The wrapped strategy.
    """

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def summary(self) -> None:
        """The inner strategy's summary (subclasses log their settings first)."""
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's training messages."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The inner strategy's aggregate."""
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """The inner strategy's evaluation messages (with a copy of the config)."""
        return self.strategy.configure_evaluate(
            server_round, arrays, ConfigRecord(dict(config)), grid
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The inner strategy's evaluation aggregate."""
        return self.strategy.aggregate_evaluate(server_round, replies)

    def state_dict(self) -> dict[str, Any]:
        """The inner strategy's checkpoint state under ``"inner"``, if it has one."""
        inner = getattr(self.strategy, "state_dict", None)
        return {INNER_STATE: inner()} if callable(inner) else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Hand the inner strategy its part of what :meth:`state_dict` returned."""
        inner = getattr(self.strategy, "load_state_dict", None)
        if INNER_STATE in state and callable(inner):
            inner(state[INNER_STATE])
