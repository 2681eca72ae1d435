"""Label-flipping data poisoning: a ClientApp whose malicious partitions train on flipped labels.

Data poisoning happens where the data is, so it wraps the client, not the server:
:func:`poisoning_app` answers like :data:`fedrank.client.app.app`, except that a partition the
scenario's attacker controls (:func:`~fedrank.simulations.attacks.collusion.malicious_partitions`)
trains on its own examples with labels flipped by
:func:`~fedrank.simulations.attacks.attacks.flip_labels` and then replies honestly. Knows:
only its own data. Benign partitions train unchanged. Images and text alike: the
hook only relabels the examples its task hands it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrank.client.app import query, train_reply
from fedrank.config import Scenario
from fedrank.simulations.attacks.attacks import flip_labels
from fedrank.simulations.attacks.collusion import malicious_partitions
from fedrank.tasks.base import Task


def poisoned_labels(
    scenario: Scenario, partition_id: int, labels: np.ndarray, *, num_classes: int
) -> np.ndarray:
    """``labels`` flipped by the scenario's rule.

    The random rule draws from a Generator seeded by (attack seed, partition), so a
    client flips the same way every round.
    """
    spec = scenario.attack
    if spec.kind != "label_flip":
        raise ValueError(f"attack: label flipping needs attack label_flip, got {spec.kind!r}")
    return flip_labels(
        labels,
        num_classes=num_classes,
        rule=spec.flip_rule,
        rng=np.random.default_rng([spec.seed, partition_id]),
        source_class=spec.source_class,
        target_class=spec.target_class,
    )


def is_poisoned(scenario: Scenario, partition_id: int) -> bool:
    """Whether this partition trains on flipped labels in this scenario."""
    return scenario.attack.kind == "label_flip" and partition_id in malicious_partitions(scenario)


def poisoned(scenario: Scenario, task: Task, partition_id: int, data: Any) -> Any:
    """``data`` (a partition's or a site's examples) with flipped labels if the partition
    is malicious in ``scenario`` (the simulation's, with its attack), else unchanged."""
    if not is_poisoned(scenario, partition_id):
        return data
    labels = data.labels
    as_numpy = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    flipped = poisoned_labels(scenario, partition_id, as_numpy, num_classes=task.num_classes)
    new = torch.from_numpy(flipped) if isinstance(labels, torch.Tensor) else flipped
    return dataclasses.replace(data, labels=new)


def poisoning_app(scenario: Scenario) -> ClientApp:
    """The ClientApp of a simulation whose attack is ``scenario``'s label flipping.

    The attack is the simulation's, not the run's: clients receive the run's settings
    without it (a real site is told nothing of attacks), so the app holds it.
    """
    app = ClientApp()
    app.query()(query)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        """Train (on flipped labels if malicious) and reply like the benign client."""
        return train_reply(
            msg, context, data_hook=lambda task, pid, data: poisoned(scenario, task, pid, data)
        )

    return app
