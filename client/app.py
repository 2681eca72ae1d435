"""The fedrank Flower ``ClientApp``.

A client learns the scenario from the server's message (so a deployed SuperNode
needs only its ``partition-id`` in ``--node-config``), rebuilds the model from the
seed, trains on its partition and replies:

- FRL: the rank vector of every supermask layer after training its scores;
- FedAvg: its dense weights and its number of examples;
- LoRA: its trained adapter tensors and, under sample-level DP, its privacy report
  (``fedrank.client.lora_app``).
"""

from __future__ import annotations

from typing import cast

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedrank.config import Scenario
from fedrank.strategies.records import from_array_record, to_array_record
from fedrank.strategies.sampling import PARTITION_KEY
from fedrank.task import client_threads, local_update

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
    config = dict(msg.content.config_records["config"])
    server_round = cast(int, config.pop("server-round"))
    scenario = Scenario.from_mapping(config, source="the server's config")
    pid = partition_id(context)
    torch.set_num_threads(client_threads(scenario))  # this worker serves one client at a time
    if scenario.strategy == "lora":
        from fedrank.client.lora_app import lora_train  # torch + PEFT: only for LoRA runs

        return lora_train(msg, context, scenario, server_round, pid)

    state, result = local_update(
        scenario, from_array_record(msg.content.array_records["arrays"]), server_round, pid
    )
    reply_arrays = to_array_record(state)
    metrics = MetricRecord(
        {"num-examples": result.num_examples, "train-loss": result.loss, "partition-id": pid}
    )
    return Message(content=RecordDict({"arrays": reply_arrays, "metrics": metrics}), reply_to=msg)
