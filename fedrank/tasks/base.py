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
from typing import Any, Protocol, TypeVar

import numpy as np
from flwr.app import RecordDict

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.protos import keys
from fedrank.protos.codecs import Codec, Reply

State = dict[str, np.ndarray]

_HELDOUT_STREAM = 0x45564C  # keeps these draws apart from every other use of (seed, partition)


def heldout_split(
    count: int, *, fraction: float, seed: int, partition_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a site's ``count`` examples: (training, held out for evaluation).

    A seeded ``fraction`` of them (at least one, and never all) is held out, the same
    every round (seeded by the run's seed and the partition), so no held-out example
    is ever trained on. ``fraction`` 0, or fewer than two examples: nothing is held out.
    Both index arrays are ascending.
    """
    if fraction <= 0.0 or count < 2:
        return np.arange(count), np.arange(0)
    held = min(count - 1, max(1, round(fraction * count)))
    rng = np.random.default_rng(np.random.SeedSequence([seed, partition_id, _HELDOUT_STREAM]))
    chosen = np.zeros(count, dtype=bool)
    chosen[rng.permutation(count)[:held]] = True
    return np.flatnonzero(~chosen), np.flatnonzero(chosen)


class Examples(Protocol):
    """A site's examples as the tasks hold them (images or tokenised texts)."""

    def __len__(self) -> int: ...

    def subset(self, indices: np.ndarray) -> Any: ...


E = TypeVar("E", bound=Examples)


def split_local(data: E, scenario: Scenario, partition_id: int) -> tuple[E, E]:
    """A site's (training, held-out) examples: :func:`heldout_split` of ``eval-fraction``
    (nothing held out: all of ``data`` trains, the held-out part is empty)."""
    train, heldout = heldout_split(
        len(data),
        fraction=scenario.data.eval_fraction,
        seed=scenario.run.seed,
        partition_id=partition_id,
    )
    if len(heldout) == 0:
        return data, data.subset(heldout)
    return data.subset(train), data.subset(heldout)


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

    @property
    def device(self) -> Any:
        """The ``torch.device`` this process trains and evaluates on
        (:func:`fedrank.devices.resolve_device` of the scenario's ``device``).

        Raises
        ------
        ConfigError
            ``device = cuda`` where this process has no usable GPU.
        """
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

    def split_local(self, data: Any, *, partition_id: int) -> tuple[Any, Any]:
        """A site's examples as (training, held-out for federated evaluation).

        The held-out part is the seeded ``eval-fraction`` of :func:`heldout_split`; it
        never trains. Without federated evaluation it is empty.
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

    def evaluate_local(self, state: State, data: Any) -> tuple[float, float]:
        """Loss and accuracy of the global ``state`` on a site's held-out ``data``
        (federated evaluation; ``data`` is not empty)."""
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


def proximal_mu(message: RecordDict) -> float:
    """FedProx's ``mu`` in a train message (``proximal-mu`` in its config, the key Flower's
    ``FedProx`` sends); 0 when the server sends none.

    Raises
    ------
    ConfigError
        The value is not a number (its range is checked where it is used).
    """
    config = message.config_records.get(keys.CONFIG)
    value = config.get(keys.PROXIMAL_MU, 0.0) if config is not None else 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(keys.PROXIMAL_MU, f"must be a number, got {value!r}")
    return float(value)
