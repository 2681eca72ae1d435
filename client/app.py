"""The fedrank Flower ``ClientApp``: a site asks its task to train and its codec to encode.

A SuperNode needs only its ``partition-id`` in ``--node-config`` (and optionally a
``data-path`` to its own examples). The run's client settings reach it once, in the
server's discovery query (re-sent if a node lost them); each train message carries
the global state, the round and the settings' digest, which the client checks. The
client then rebuilds the task (model, data partition, wire format) from the settings,
decodes and validates the global state, trains on its data, and encodes its reply:
rank vectors (FRL), weights (FedAvg) or adapter tensors with, under sample-level DP,
a privacy report (LoRA). Which of these is the task's business
(:mod:`fedrank.tasks`), not this module's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrank.config import Scenario
from fedrank.errors import ConfigError, FedrankError
from fedrank.protos import keys
from fedrank.tasks import load_task
from fedrank.tasks.base import Task

DATA_PATH_KEY = "data-path"
"""Node config key naming a site's own training data."""
SETTINGS_STATE = "fedrank-run"
"""The ConfigRecord of a node's state holding the run's client settings."""

DataHook = Callable[[Task, int, Any], Any]
"""(task, partition id, examples) -> examples to train on (simulated data poisoning)."""

app = ClientApp()


def partition_id(context: Context) -> int:
    """This node's partition (``partition-id`` in its node config)."""
    value = context.node_config.get(keys.PARTITION_ID)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(
            keys.PARTITION_ID,
            f"must be a non-negative integer in the node config, got {value!r}: start the "
            f'SuperNode with --node-config "{keys.PARTITION_ID}=N"',
        )
    return value


def run_settings(msg: Message, context: Context) -> Scenario:
    """The run's client settings: from the message if it carries them (kept in the node's
    state for later rounds), else from the node's state; checked against the digest the
    message names."""
    record = msg.content.config_records.get(keys.RUN)
    if record is not None:
        scenario = Scenario.from_mapping(dict(record), source="the server's run settings")
        context.state.config_records[SETTINGS_STATE] = ConfigRecord(dict(record))
    elif SETTINGS_STATE in context.state.config_records:
        stored = dict(context.state.config_records[SETTINGS_STATE])
        scenario = Scenario.from_mapping(stored, source="this node's run settings")
    else:
        raise FedrankError(
            "this node has no settings for the run (it lost its state); they are re-sent"
        )
    config = msg.content.config_records.get(keys.CONFIG)
    digest = config.get(keys.SETTINGS_DIGEST) if config is not None else None
    if digest is not None and digest != scenario.settings_digest():
        raise FedrankError("this node holds the settings of another run; they are re-sent")
    return scenario


def site_data(task: Task, context: Context) -> Any:
    """The node's own examples at its ``data-path`` (validated), or None without one."""
    path = context.node_config.get(DATA_PATH_KEY)
    if path is None:
        return None
    if not isinstance(path, str) or not path:
        raise ConfigError(DATA_PATH_KEY, f"must be a file path in quotes, got {path!r}")
    return task.site_data(path)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: keep the run's settings, check this site's data, name the partition."""
    pid = partition_id(context)
    task = load_task(run_settings(msg, context))
    site_data(task, context)  # a site whose data cannot serve the run says so now
    content = RecordDict({keys.CONFIG: ConfigRecord({keys.PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this site's data and reply with the task's update."""
    return train_reply(msg, context)


def train_reply(msg: Message, context: Context, *, data_hook: DataHook | None = None) -> Message:
    """The train handler around any data hook (simulated poisoning replaces the data)."""
    scenario = run_settings(msg, context)
    config = msg.content.config_records.get(keys.CONFIG)
    server_round = config.get(keys.SERVER_ROUND) if config is not None else None
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        raise FedrankError(f"the train message names no round ({keys.SERVER_ROUND})")
    pid = partition_id(context)
    # This process serves one client at a time: its CPU share sets torch's threads (and
    # float sums depend on the count, so it is the same on every backend).
    torch.set_num_threads(max(1, int(scenario.run.num_cpus_per_client)))
    task = load_task(scenario)
    codec = task.codec(msg.metadata.run_id)
    state = codec.decode_global(server_round, msg.content)
    data = site_data(task, context)
    if data is None:
        data = task.partition_data(pid)
    if data_hook is not None:
        data = data_hook(task, pid, data)
    reply = task.train(
        state,
        data,
        server_round=server_round,
        partition_id=pid,
        message=msg.content,
        node_state=context.state,
    )
    return Message(content=codec.encode_reply(server_round, reply), reply_to=msg)
