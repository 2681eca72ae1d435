"""The LoRA side of the ClientApp: one round of local adapter training, with or without DP.

Reply content: ``"arrays"`` (the trained tensors, in the order the server sent them),
``"metrics"`` (``num-examples``, ``train-loss``, ``partition-id``, ``steps``, and
``dp-epsilon`` under DP) and, with sample-level DP, ``"privacy"``: a ConfigRecord whose
``"report"`` is a ``fedrank.v1.PrivacyReport`` (:func:`fedrank.protos.encode_privacy_report`).

The client's privacy accountant lives in its Flower ``context.state`` (an ArrayRecord
under :data:`ACCOUNTANT_KEY`), which Flower keeps for the node across rounds: the
epsilon a client reports is cumulative over every round it trained in. That state
dies with a killed simulation; the server sends each client the history its ledger
recorded for it, and the client starts from the longer of the two
(:func:`starting_history`), so a resumed run never restarts a client's epsilon at zero.
"""

from __future__ import annotations

import functools

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.typing import MetricRecordValues

from fedrank.client.app import LocalRecords
from fedrank.client.lora_trainer import (
    AccountantHistory,
    DpSgdConfig,
    steps_per_epoch,
    train_lora,
)
from fedrank.config import Scenario
from fedrank.lora_task import client_text, lora_spec, round_seed
from fedrank.models.lora import build_lora_model, set_adapter_tensors
from fedrank.privacy.accountant import (
    history_from_array,
    history_to_array,
    noise_multiplier_for_epsilon,
)
from fedrank.protos import PrivacyReportData, encode_privacy_report
from fedrank.strategies.dp_sample_level import HISTORY_ARRAY as RECORDED_ARRAY
from fedrank.strategies.dp_sample_level import HISTORY_RECORD
from fedrank.strategies.records import from_array_record, to_array_record

ACCOUNTANT_KEY = "dp-accountant"
"""Name of the ArrayRecord in ``context.state`` that holds the accountant history."""
HISTORY_ARRAY = "history"
PRIVACY_RECORD = "privacy"
REPORT_KEY = "report"


def planned_steps(scenario: Scenario, num_examples: int) -> int:
    """DP-SGD steps of a client with ``num_examples`` records if it joins every round.

    An upper bound on what it takes when sampled in fewer rounds: noise planned for
    it keeps the budget whatever rounds the client is sampled in.
    """
    per_epoch = steps_per_epoch(num_examples=num_examples, batch_size=scenario.batch_size)
    return scenario.rounds * scenario.local_epochs * per_epoch


@functools.cache
def sample_noise_multiplier(scenario: Scenario, num_examples: int) -> float:
    """The client's sigma: ``dp-noise-multiplier``, or the least keeping the budget.

    With ``dp-target-epsilon`` the whole run's planned steps
    (:func:`planned_steps`) at this client's sampling rate must spend at most it.
    """
    if scenario.dp_noise_multiplier > 0:
        return scenario.dp_noise_multiplier
    per_epoch = steps_per_epoch(num_examples=num_examples, batch_size=scenario.batch_size)
    return noise_multiplier_for_epsilon(
        target_epsilon=scenario.dp_target_epsilon,
        delta=scenario.dp_delta,
        sample_rate=1.0 / per_epoch,
        steps=planned_steps(scenario, num_examples),
        accountant=scenario.dp_accountant,
    )


def sample_dp_config(scenario: Scenario, num_examples: int) -> DpSgdConfig | None:
    """The client's DP-SGD settings, or None when the run has no sample-level DP."""
    if scenario.dp not in ("sample", "both"):
        return None
    return DpSgdConfig(
        noise_multiplier=sample_noise_multiplier(scenario, num_examples),
        max_grad_norm=scenario.dp_clip_norm,
        delta=scenario.dp_delta,
        physical_batch_size=scenario.physical_batch_size,
        accountant=scenario.dp_accountant,
        epsilon_budget=scenario.dp_target_epsilon or None,
    )


def load_history(context: Context) -> AccountantHistory:
    """The accountant history this node kept from earlier rounds (empty at first)."""
    if ACCOUNTANT_KEY not in context.state.array_records:
        return ()
    return history_from_array(context.state.array_records[ACCOUNTANT_KEY][HISTORY_ARRAY].numpy())


def recorded_history(msg: Message) -> AccountantHistory:
    """The history the server's ledger holds for this client (empty if none was sent)."""
    record = msg.content.array_records.get(HISTORY_RECORD)
    if record is None or RECORDED_ARRAY not in record:
        return ()
    return history_from_array(record[RECORDED_ARRAY].numpy())


def starting_history(own: AccountantHistory, recorded: AccountantHistory) -> AccountantHistory:
    """The history to account from: the one with more steps (``own`` on a tie).

    ``own`` is lost when the simulation is killed; ``recorded`` lacks a round whose
    reply the server never received. Starting from the longer never undercounts what
    either side knows; in an uninterrupted run the two are equal.
    """
    if sum(t for _, _, t in recorded) > sum(t for _, _, t in own):
        return recorded
    return own


def save_history(context: Context, history: AccountantHistory) -> None:
    """Keep ``history`` in the node's state for the next round."""
    context.state.array_records[ACCOUNTANT_KEY] = to_array_record(
        {HISTORY_ARRAY: history_to_array(history)}
    )


def lora_train(
    msg: Message,
    context: Context,
    scenario: Scenario,
    server_round: int,
    partition_id: int,
    *,
    records: LocalRecords | None = None,
) -> Message:
    """Train the global adapter on this client's records for one round and reply
    (``records``: where they come from, by default the partition's)."""
    global_tensors = from_array_record(msg.content.array_records["arrays"])
    model = build_lora_model(lora_spec(scenario))
    set_adapter_tensors(model, global_tensors)
    data = (records or client_text)(scenario, partition_id)
    result = train_lora(
        model,
        data,
        epochs=scenario.local_epochs,
        lr=scenario.learning_rate,
        batch_size=scenario.batch_size,
        head_lr=scenario.lora_head_lr or None,
        seed=round_seed(scenario, server_round, partition_id),
        dp=sample_dp_config(scenario, len(data)),
        accountant_state=starting_history(load_history(context), recorded_history(msg)),
    )
    metrics: dict[str, MetricRecordValues] = {
        "num-examples": len(data),
        "train-loss": result.metrics["train_loss"],
        "partition-id": partition_id,
        "steps": result.metrics["steps"],
    }
    content = RecordDict(
        {"arrays": to_array_record({name: result.tensors[name] for name in global_tensors})}
    )
    if result.privacy is not None:
        save_history(context, result.accountant_state)
        report = PrivacyReportData(
            mechanism="dp_sgd",
            noise_multiplier=float(result.privacy["noise_multiplier"]),
            sample_rate=float(result.privacy["sample_rate"]),
            steps=round(float(result.privacy["steps"])),
            clipping_norm=float(result.privacy["max_grad_norm"]),
            epsilon_spent=float(result.privacy["epsilon"]),
            delta=float(result.privacy["delta"]),
        )
        content[PRIVACY_RECORD] = ConfigRecord({REPORT_KEY: encode_privacy_report(report)})
        metrics["dp-epsilon"] = report.epsilon_spent
    content["metrics"] = MetricRecord(metrics)
    return Message(content=content, reply_to=msg)
