"""The ``Task`` protocol: everything both sides of a run need for one kind of learning.

A task is built from a :class:`~fedrank.config.Scenario` in every process of a run (the
coordinator, each Ray worker, each SuperNode's ClientApp) and gives the same model,
data partition and wire format everywhere. The ServerApp (:mod:`fedrank.server.run`)
and the ClientApp (:mod:`fedrank.client.app`) only call these methods; nothing outside
``fedrank/tasks/`` knows which kind of learning runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from flwr.app import RecordDict

from fedrank.config import Scenario
from fedrank.protos.codecs import Codec, Reply

State = dict[str, np.ndarray]


class Task(Protocol):
    """One kind of learning (image classification with FRL or FedAvg, text LoRA, ...).

    Implementations are registered in :mod:`fedrank.tasks.registry` and built by
    :func:`fedrank.tasks.load_task`. Heavy resources (data, base models) are loaded
    on first use and kept for the process.
    """

    scenario: Scenario

    @property
    def num_classes(self) -> int:
        """Classes of the scenario's dataset."""
        ...

    # -- both sides -------------------------------------------------------------

    def check(self) -> None:
        """Load what the run needs and refuse what cannot run, before anything starts.

        Raises
        ------
        ConfigError
            Naming the field or file at fault (a model factory that cannot be
            imported, a dataset column that is missing, an empty partition, ...).
        """
        ...

    def initial_state(self) -> State:
        """The round-0 global state (rank vectors, weights or adapter tensors)."""
        ...

    def codec(self, run_id: object) -> Codec:
        """How this run's messages are encoded and validated."""
        ...

    # -- client side --------------------------------------------------------------

    def partition_data(self, partition_id: int) -> Any:
        """The training examples of one partition of the scenario's dataset."""
        ...

    def site_data(self, path: str) -> Any:
        """A site's own training examples at ``path``, validated for this run.

        Raises
        ------
        ConfigError
            ``data-path``: what is wrong with the file or folder.
        """
        ...

    def train(
        self,
        state: State,
        data: Any,
        *,
        server_round: int,
        partition_id: int,
        message: RecordDict,
        node_state: RecordDict,
    ) -> Reply:
        """One client's local training from the global ``state`` on ``data``.

        ``message`` is the server's whole message (task-specific records, such as the
        recorded privacy history); ``node_state`` is the node's persistent state
        (Flower's ``context.state``), kept across the rounds of a run.
        """
        ...

    # -- server side --------------------------------------------------------------

    def evaluate(self, state: State) -> tuple[float, float]:
        """Loss and accuracy of the global ``state`` on the held-out test split."""
        ...

    def load_model(self, state: State) -> Any:
        """A ready torch module holding the global ``state`` (eval mode)."""
        ...

    def export(self, state: State, directory: Path, facts: Mapping[str, Any]) -> dict[str, Any]:
        """Write the final model into the results ``directory``; return its summary.

        ``facts`` are the run's figures (rounds, accuracy, privacy) for model cards.
        """
        ...
