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

A site's DP policy (``dp-policy`` or ``dp-*`` keys in its node config,
:mod:`fedrank.privacy.site`) is checked at discovery (a bad one is refused there, in
one line) and before every round: a train message asking for less is answered with a
refusal and a reason code, nothing trained; every DP-SGD release is recorded in the
site's own ledger before the reply leaves.

With ``eval-fraction`` > 0 a seeded share of the site's examples is held out: it
never trains, and each round's global state is evaluated on it when the server asks
(an ``evaluate`` message; federated evaluation, :mod:`fedrank.strategies.evaluation`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedrank.config import Scenario
from fedrank.errors import ConfigError, FedrankError
from fedrank.privacy.site import SiteGuard
from fedrank.protos import keys
from fedrank.protos.evaluation import SiteEvaluation, evaluation_reply
from fedrank.protos.gate import refusal_content
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


@functools.lru_cache(maxsize=16)
def _parsed(items: tuple[tuple[str, Any], ...], source: str) -> tuple[Scenario, str]:
    scenario = Scenario.from_mapping(dict(items), source=source)
    return scenario, scenario.settings_digest()


def _scenario_of(record: ConfigRecord, source: str) -> tuple[Scenario, str]:
    """The settings in ``record`` as a scenario, and its digest: parsed once per process.

    A simulation's thousands of nodes share a few processes and the same settings;
    parsing and hashing them for each node made discovery grow with the federation.
    """
    items = tuple(sorted(record.items()))
    try:
        return _parsed(items, source)
    except TypeError:  # an unhashable value: not valid settings, say why uncached
        scenario = Scenario.from_mapping(dict(items), source=source)
        return scenario, scenario.settings_digest()


def _config_record(records: RecordDict, name: str) -> ConfigRecord | None:
    """The ConfigRecord called ``name`` in ``records``, if there is one.

    (``RecordDict.config_records`` builds a checked view of every record on each use:
    the larger part of a discovery query's cost.)
    """
    record = records.get(name)
    return record if isinstance(record, ConfigRecord) else None


def run_settings(msg: Message, context: Context) -> Scenario:
    """The run's client settings: from the message if it carries them (kept in the node's
    state for later rounds), else from the node's state; checked against the digest the
    message names."""
    record = _config_record(msg.content, keys.RUN)
    if record is not None:
        scenario, own_digest = _scenario_of(record, "the server's run settings")
        # The record itself, not a copy: building a ConfigRecord checks each of its values
        # again, which every node of a large federation paid for at discovery. Nothing
        # writes to it; Flower copies a message's content wherever it crosses a process.
        context.state[SETTINGS_STATE] = record
    elif (stored := _config_record(context.state, SETTINGS_STATE)) is not None:
        scenario, own_digest = _scenario_of(stored, "this node's run settings")
    else:
        raise FedrankError(
            "this node has no settings for the run (it lost its state); they are re-sent"
        )
    config = _config_record(msg.content, keys.CONFIG)
    digest = config.get(keys.SETTINGS_DIGEST) if config is not None else None
    if digest is not None and digest != own_digest:
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


def local_examples(task: Task, context: Context) -> tuple[Any, Any]:
    """This site's examples as (training, held out for federated evaluation): its own
    ``data-path``, or its partition of the scenario's dataset."""
    pid = partition_id(context)
    data = site_data(task, context)
    if data is None:
        data = task.partition_data(pid)
    return task.split_local(data, partition_id=pid)


def message_round(msg: Message) -> int:
    """The ``server-round`` a train or evaluate message names."""
    config = msg.content.config_records.get(keys.CONFIG)
    server_round = config.get(keys.SERVER_ROUND) if config is not None else None
    if isinstance(server_round, bool) or not isinstance(server_round, int):
        raise FedrankError(f"the message names no round ({keys.SERVER_ROUND})")
    return server_round


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Discovery: keep the run's settings, check this site's data and device, name the
    partition."""
    pid = partition_id(context)
    scenario = run_settings(msg, context)
    task = load_task(scenario)
    _ = task.device  # `device = cuda` on a site without a GPU is refused now
    site_data(task, context)  # a site whose data cannot serve the run says so now
    SiteGuard.for_node(context.node_config, scenario, pid)  # and one whose DP policy is bad
    content = RecordDict({keys.CONFIG: ConfigRecord({keys.PARTITION_ID: pid})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Federated evaluation: the global state on this site's held-out examples."""
    scenario = run_settings(msg, context)
    server_round = message_round(msg)
    torch.set_num_threads(max(1, int(scenario.run.num_cpus_per_client)))
    task = load_task(scenario)
    state = task.codec(msg.metadata.run_id).decode_global(server_round, msg.content)
    _, heldout = local_examples(task, context)
    if len(heldout) == 0:
        raise FedrankError(
            "this site holds no example out for evaluation (eval-fraction is 0, or it has "
            "fewer than two examples)"
        )
    loss, accuracy = task.evaluate_local(state, heldout)
    return Message(
        content=evaluation_reply(SiteEvaluation(loss, accuracy, len(heldout))), reply_to=msg
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train on this site's data and reply with the task's update."""
    return train_reply(msg, context)


def train_reply(msg: Message, context: Context, *, data_hook: DataHook | None = None) -> Message:
    """The train handler around any data hook (simulated poisoning replaces the data)."""
    scenario = run_settings(msg, context)
    server_round = message_round(msg)
    pid = partition_id(context)
    # This process serves one client at a time: its CPU share sets torch's threads (and
    # float sums depend on the count, so it is the same on every backend).
    torch.set_num_threads(max(1, int(scenario.run.num_cpus_per_client)))
    task = load_task(scenario)
    codec = task.codec(msg.metadata.run_id)
    state = codec.decode_global(server_round, msg.content)
    data, _ = local_examples(task, context)
    if data_hook is not None:
        data = data_hook(task, pid, data)
    guard = SiteGuard.for_node(context.node_config, scenario, pid)
    if guard is not None:
        refusal = guard.refusal(num_examples=len(data), server_round=server_round)
        if refusal is not None:  # nothing trained, nothing recorded
            return Message(content=refusal_content(refusal.reason, refusal.detail), reply_to=msg)
        guard.prepare(context.state)
    reply = task.train(
        state,
        data,
        server_round=server_round,
        partition_id=pid,
        message=msg.content,
        node_state=context.state,
    )
    if guard is not None and reply.privacy is not None:
        # The site's books, before the reply leaves; its epsilon is the ledger's (a
        # replay of a release already recorded is not counted twice).
        epsilon = guard.record(
            server_round=server_round,
            noise_multiplier=reply.privacy.noise_multiplier,
            sample_rate=reply.privacy.sample_rate,
            steps=reply.privacy.steps,
            clip_norm=reply.privacy.clipping_norm,
            state=reply.state,
        )
        reply = dataclasses.replace(
            reply,
            privacy=dataclasses.replace(reply.privacy, epsilon_spent=epsilon),
            metrics={**reply.metrics, keys.DP_EPSILON: epsilon},
        )
    return Message(content=codec.encode_reply(server_round, reply), reply_to=msg)
