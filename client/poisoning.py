"""Label-flipping data poisoning: a ClientApp whose malicious partitions train on flipped labels.

Data poisoning happens where the data is, so it wraps the client, not the server:
``app`` answers like :data:`fedrank.client.app.app`, except that a partition the
scenario's attacker controls (:func:`~fedrank.client.collusion.malicious_partitions`)
trains on its own examples with labels flipped by
:func:`~fedrank.client.attacks.flip_labels` and then replies honestly. Knows: only
its own data. Benign partitions run the benign local update unchanged. LoRA clients
(text) flip their records' labels the same way (:func:`poisoned_records`, handed to
:func:`fedrank.client.lora_app.lora_train` by this app's train handler).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrank.client.app import query, train_reply
from fedrank.client.attacks import flip_labels
from fedrank.client.collusion import attack_spec, malicious_partitions
from fedrank.config import NUM_CLASSES, Scenario
from fedrank.data.digits import ImageSplit, load_dataset
from fedrank.data.text import TokenizedText
from fedrank.task import client_data, local_update
from fedrank.training import TrainResult

app = ClientApp()
app.query()(query)


def poisoned_labels(
    scenario: Scenario, partition_id: int, labels: np.ndarray, *, num_classes: int
) -> np.ndarray:
    """``labels`` flipped by the scenario's rule (images and text alike).

    The random rule draws from a Generator seeded by (attack seed, partition), so a
    client flips the same way every round.
    """
    spec = attack_spec(scenario)
    if spec is None or spec.kind != "label_flip":
        raise ValueError(f"attack: label flipping needs attack label_flip, got {scenario.attack!r}")
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
    return scenario.attack == "label_flip" and partition_id in malicious_partitions(scenario)


def poisoned_data(
    scenario: Scenario, partition_id: int, *, data: ImageSplit | None = None
) -> ImageSplit:
    """The partition's examples (or ``data``, a site's own) with labels flipped by the
    scenario's rule (:func:`poisoned_labels`)."""
    if data is None:
        data = client_data(scenario, partition_id)
    num_classes = load_dataset(scenario.dataset, test_fraction=scenario.test_fraction).num_classes
    labels = poisoned_labels(scenario, partition_id, data.labels, num_classes=num_classes)
    return ImageSplit(data.images, labels)


def poisoned_text(
    scenario: Scenario, partition_id: int, data: TokenizedText, *, num_classes: int
) -> TokenizedText:
    """A LoRA client's tokenised records with labels flipped (:func:`poisoned_labels`)."""
    labels = poisoned_labels(scenario, partition_id, data.labels.numpy(), num_classes=num_classes)
    return TokenizedText(data.input_ids, data.attention_mask, torch.from_numpy(labels))


def poisoned_records(scenario: Scenario, partition_id: int) -> TokenizedText:
    """A LoRA client's records: flipped labels if the partition is malicious."""
    from fedrank.lora_task import client_text  # PEFT + transformers: LoRA runs only

    data = client_text(scenario, partition_id)
    if is_poisoned(scenario, partition_id):
        data = poisoned_text(
            scenario, partition_id, data, num_classes=NUM_CLASSES[scenario.dataset]
        )
    return data


def poisoned_update(
    scenario: Scenario,
    state: dict[str, np.ndarray],
    server_round: int,
    partition_id: int,
    *,
    data: ImageSplit | None = None,
) -> tuple[dict[str, np.ndarray], TrainResult]:
    """The local update of this round: on flipped labels if the partition is malicious."""
    if is_poisoned(scenario, partition_id):
        data = poisoned_data(scenario, partition_id, data=data)
    return local_update(scenario, state, server_round, partition_id, data=data)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train (on flipped labels if malicious) and reply like the benign client."""
    return train_reply(msg, context, update=poisoned_update, records=poisoned_records)
