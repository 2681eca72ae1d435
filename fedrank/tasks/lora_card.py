"""The model card of a LoRA run's exported adapter, from the facts of the run.

:func:`lora_model_card` gathers what the card states (data, rounds, clients, accuracy,
and each DP guarantee the run's privacy summary holds) for
:meth:`fedrank.tasks.text_lora.TextLoraTask.export`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedrank.config import Scenario
from fedrank.models.model_card import DpGuarantee, ModelCard


def lora_model_card(
    scenario: Scenario, facts: Mapping[str, Any], *, test_records: int
) -> ModelCard:
    """The facts of the run for the exported adapter's model card.

    Parameters
    ----------
    scenario : Scenario
        The run's settings.
    facts : Mapping[str, Any]
        The run's summary: ``rounds``, ``final_accuracy``, optionally ``privacy`` (the
        ledgers' summary per unit) and ``stopped``.
    test_records : int
        How many held-out records the accuracy was measured on.
    """
    s, dp = scenario, scenario.dp
    privacy = []
    summary = facts.get("privacy") or {}
    for unit in ("record", "client"):
        figures = summary.get(unit)
        if figures and figures["releases"]:
            # RQM releases add no Gaussian noise (their sigma is recorded as 0).
            sigmas = [
                sigma
                for party in figures["parties"].values()
                for sigma in party["noise_multipliers"]
                if sigma > 0
            ]
            privacy.append(
                DpGuarantee(
                    unit,
                    epsilon=figures["max_epsilon"],
                    delta=dp.delta,
                    clip_norm=dp.clip_norm if unit == "record" else dp.client_clip_norm,
                    noise_multiplier=min(sigmas) if sigmas else None,
                    accountant=dp.accountant,
                )
            )
    stopped = facts.get("stopped")
    return ModelCard(
        data=f"{s.effective.dataset} ({s.data.train_records or 'all'} training records, "
        f"{s.data.partitioner} partition)",
        rounds=int(facts["rounds"]),
        clients=s.run.num_clients,
        clients_per_round=s.run.clients_per_round,
        aggregation=s.lora.aggregation,
        accuracy=float(facts["final_accuracy"]),
        test_records=test_records,
        privacy=tuple(privacy),
        notes=f"The run stopped early: {stopped.rstrip('.')}." if stopped else "",
    )
