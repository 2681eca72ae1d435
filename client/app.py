"""The fedrank Flower ``ClientApp``.

A client learns the scenario from the server's message (so a deployed SuperNode
needs only its ``partition-id`` in ``--node-config``, and optionally a
``data-path`` to its own examples), rebuilds the model from the
seed, trains on its partition and replies:

- FRL: the rank vector of every supermask layer after training its scores,
  bit-packed (:mod:`fedrank.strategies.ranking_wire`); the global ranking it
  starts from arrives the same way and is validated before use;
- FedAvg: its dense weights and its number of examples;
- LoRA: its trained adapter tensors and, under sample-level DP, its privacy report
  (``fedrank.client.lora_app``).
"""

from __future__ import annotations

from typing import Protocol, cast

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrank.client.site_data import site_examples
from fedrank.config import Scenario
from fedrank.data.digits import ImageSplit
from fedrank.data.text import TokenizedText
from fedrank.strategies.ranking_wire import RankingWire
from fedrank.strategies.records import from_array_record, to_array_record
from fedrank.strategies.sampling import PARTITION_KEY
from fedrank.task import client_threads, is_dense, local_update
from fedrank.training import TrainResult


class LocalUpdate(Protocol):
    """(scenario, global state, server round, partition id, data) -> (reply state, report)."""

    def __call__(
        self,
        scenario: Scenario,
        state: dict[str, np.ndarray],
        server_round: int,
        partition_id: int,
        *,
        data: ImageSplit | None = None,
    ) -> tuple[dict[str, np.ndarray], TrainResult]: ...


app = ClientApp()


def partition_id(context: Context) -> int:
    """This node's partition (``partition-id`` in its node config)."""
    if PARTITION_KEY not in context.node_config:
        raise ValueError(
            f"node config lacks '{PARTITION_KEY}': start the SuperNode with "
            f'--node-config "{PARTITION_KEY}=N"'
        )
    return int(context.node_config[PARTITION_KEY])


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Answer the server's discovery query with this node's partition id."""
    content = RecordDict({"config": ConfigRecord({PARTITION_KEY: partition_id(context)})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on the local partition and reply with rankings (FRL) or weights (FedAvg)."""
    return train_reply(msg, context, update=local_update)


class LocalRecords(Protocol):
    """(scenario, partition id) -> a LoRA client's tokenised training records."""

    def __call__(self, scenario: Scenario, partition_id: int) -> TokenizedText: ...


def train_reply(
    msg: Message,
    context: Context,
    *,
    update: LocalUpdate,
    records: LocalRecords | None = None,
) -> Message:
    """The train handler around any local update (the benign one, or a poisoned one);
    a LoRA client trains on ``records`` (default: its partition's)."""
    config = dict(msg.content.config_records["config"])
    server_round = cast(int, config.pop("server-round"))
    scenario = Scenario.from_mapping(config, source="the server's config")
    pid = partition_id(context)
    torch.set_num_threads(client_threads(scenario))  # this worker serves one client at a time
    if scenario.strategy == "lora":
        from fedrank.client.lora_app import lora_train  # torch + PEFT: only for LoRA runs

        return lora_train(msg, context, scenario, server_round, pid, records=records)

    data = site_examples(context.node_config, scenario)  # None: partition pid
    if is_dense(scenario):
        global_state = from_array_record(msg.content.array_records["arrays"])
        state, result = update(scenario, global_state, server_round, pid, data=data)
        content = RecordDict({"arrays": to_array_record(state)})
    else:
        wire = RankingWire.for_scenario(scenario, run_id=msg.metadata.run_id)
        global_ranking = wire.decode(server_round, msg.content)
        state, result = update(scenario, global_ranking, server_round, pid, data=data)
        content = wire.encode(server_round, state)
    content["metrics"] = MetricRecord(
        {"num-examples": result.num_examples, "train-loss": result.loss, "partition-id": pid}
    )
    return Message(content=content, reply_to=msg)
