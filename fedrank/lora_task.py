"""What both sides of a LoRA run build from a scenario (the text twin of ``fedrank.task``).

The server and every client derive the same adapter spec, the same training subset,
the same partition and the same held-out test records from the scenario alone; only
adapter tensors and privacy reports cross the wire. Everything heavy (the base model,
the tokenised corpus) is built once per process and reused across rounds.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedrank.config import Scenario
from fedrank.data.partition import partition
from fedrank.data.text import TokenizedText, load_rotten_tomatoes, tokenize
from fedrank.models.evaluation import evaluate_lora
from fedrank.models.lora import (
    LoraSpec,
    build_lora_model,
    load_tokenizer,
    set_adapter_tensors,
    trainable_tensors,
)
from fedrank.privacy.accountant import noise_multiplier_for_epsilon

# The test records a run evaluates on (``test-records``) are a prefix of one fixed
# permutation, the same for every run and seed, so every table row sees the same ones.
_TEST_ORDER_SEED = 20240601


def lora_spec(scenario: Scenario) -> LoraSpec:
    """The adapter every party builds: FFA-LoRA freezes A when aggregation is ``ffa``."""
    return LoraSpec(
        base=scenario.model,
        r=scenario.lora_rank,
        lora_alpha=scenario.lora_alpha,
        lora_dropout=scenario.lora_dropout,
        target_modules=tuple(t.strip() for t in scenario.lora_targets.split(",")),
        mode="ffa" if scenario.lora_aggregation == "ffa" else "lora",
        init_seed=scenario.seed,
        pooling=scenario.lora_pooling,
    )


@functools.cache
def _train_tokens(train_records: int, seed: int, max_length: int) -> TokenizedText:
    texts = load_rotten_tomatoes("train")
    if train_records:
        # A seeded random subset: the file is ordered, a prefix would not be a sample.
        chosen = np.random.default_rng(seed).permutation(len(texts))[:train_records]
        texts = texts.subset(np.sort(chosen))
    return tokenize(texts, load_tokenizer(), max_length=max_length)


@functools.cache
def _test_tokens(test_records: int, max_length: int) -> TokenizedText:
    texts = load_rotten_tomatoes("test")
    if test_records:
        order = np.random.default_rng(_TEST_ORDER_SEED).permutation(len(texts))
        texts = texts.subset(np.sort(order[:test_records]))
    return tokenize(texts, load_tokenizer(), max_length=max_length)


@functools.cache
def _partitions(
    train_records: int,
    seed: int,
    max_length: int,
    scheme: str,
    num_clients: int,
    alpha: float,
    classes_per_client: int,
) -> tuple[np.ndarray, ...]:
    labels = _train_tokens(train_records, seed, max_length).labels.numpy()
    parts = partition(
        labels,
        scheme=scheme,
        num_clients=num_clients,
        rng=np.random.default_rng(seed),
        alpha=alpha,
        classes_per_client=classes_per_client,
    )
    return tuple(parts)


def client_text(scenario: Scenario, partition_id: int) -> TokenizedText:
    """The tokenised training records of one client (partition), from the seed."""
    if not 0 <= partition_id < scenario.num_clients:
        raise ValueError(
            f"partition-id {partition_id} outside [0, {scenario.num_clients - 1}] (num-clients)"
        )
    key = (scenario.train_records, scenario.seed, scenario.max_length)
    idx = _partitions(
        *key,
        scenario.partitioner,
        scenario.num_clients,
        scenario.alpha,
        scenario.classes_per_client,
    )[partition_id]
    return _train_tokens(*key).subset(idx)


def heldout_text(scenario: Scenario) -> TokenizedText:
    """The held-out test records (all, or ``test-records`` of them)."""
    return _test_tokens(scenario.test_records, scenario.max_length)


def initial_adapter(scenario: Scenario) -> dict[str, np.ndarray]:
    """Round-0 global adapter: the tensors that train, at their seeded values."""
    return trainable_tensors(build_lora_model(lora_spec(scenario)))


def client_sample_rate(scenario: Scenario) -> float:
    """q of client-level accounting: m / N under Poisson sampling, else 1 (no amplification)."""
    if scenario.dp_client_sampling == "poisson":
        return scenario.clients_per_round / scenario.num_clients
    return 1.0


@functools.cache
def client_noise_multiplier(scenario: Scenario) -> float:
    """Client-level sigma: as configured, or the least that keeps the budget over the rounds."""
    if scenario.dp_client_noise_multiplier > 0:
        return scenario.dp_client_noise_multiplier
    return noise_multiplier_for_epsilon(
        target_epsilon=scenario.dp_client_target_epsilon,
        delta=scenario.dp_delta,
        sample_rate=client_sample_rate(scenario),
        steps=scenario.rounds,
        accountant=scenario.dp_accountant,
    )


def round_seed(scenario: Scenario, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round (sampling, dropout, DP noise)."""
    state = np.random.SeedSequence([scenario.seed, server_round, partition_id]).generate_state(1)
    return int(state[0])


_WORKING_MODELS: dict[LoraSpec, Any] = {}


def evaluate_adapter(scenario: Scenario, tensors: Mapping[str, np.ndarray]) -> tuple[float, float]:
    """Loss and accuracy of the global adapter ``tensors`` on the held-out test records.

    The process keeps one working model per spec (the base loads once) and overwrites
    every tensor that trains before use; the frozen ones never change.
    """
    spec = lora_spec(scenario)
    if spec not in _WORKING_MODELS:
        _WORKING_MODELS[spec] = build_lora_model(spec)
    model = _WORKING_MODELS[spec]
    set_adapter_tensors(model, tensors)
    accuracy, loss = evaluate_lora(model, heldout_text(scenario))
    return loss, accuracy
