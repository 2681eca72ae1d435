"""Text classification by LoRA adapters of a pretrained transformer, optionally under DP.

The server and every client derive the same adapter spec, training subset, partition
and held-out records from the scenario alone; only adapter tensors and privacy
reports cross the wire. The base model and the tokenised corpus load once per process.

Under sample-level DP each client runs Opacus DP-SGD and keeps its accountant history
in the node's persistent state (Flower's ``context.state``): the epsilon it reports is
cumulative over every round it trained in. That state dies with a killed simulation;
the server sends each client the history its ledger recorded for it, and the client
starts from the longer of the two (:func:`starting_history`), so a resumed run never
restarts a client's epsilon at zero.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fedrank.config import Scenario
from fedrank.data.partition import partition
from fedrank.data.text import TokenizedText, load_rotten_tomatoes, tokenize
from fedrank.errors import ConfigError
from fedrank.lora_training import AccountantHistory, DpSgdConfig, train_lora
from fedrank.models.evaluation import evaluate_lora
from fedrank.models.export import export_adapter
from fedrank.models.lora import (
    LoraSpec,
    build_lora_model,
    load_tokenizer,
    set_adapter_tensors,
    trainable_tensors,
)
from fedrank.privacy.accountant import history_from_array, history_to_array
from fedrank.privacy.plan import sample_noise_multiplier
from fedrank.protos import PrivacyReportData, keys
from fedrank.protos.codecs import ArraysCodec, Codec, Reply
from fedrank.protos.records import to_array_record
from fedrank.tasks.base import State, proximal_mu

ADAPTER_DIR = "adapter"
"""The exported PEFT adapter folder inside the results folder."""
ACCOUNTANT_KEY = "dp-accountant"
"""Name of the ArrayRecord in a node's state that holds its accountant history."""

# The test records a run evaluates on (``test-records``) are a prefix of one fixed
# permutation, the same for every run and seed, so every table row sees the same ones.
_TEST_ORDER_SEED = 20240601
_MAX_POSITIONS = {"minilm": 512, "tiny-bert": 128}


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


def round_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed of one client's local training in one round (sampling, dropout, DP noise)."""
    state = np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)
    return int(state[0])


def starting_history(own: AccountantHistory, recorded: AccountantHistory) -> AccountantHistory:
    """The history to account from: the one with more steps (``own`` on a tie).

    ``own`` is lost when the simulation is killed; ``recorded`` lacks a round whose
    reply the server never received. Starting from the longer never undercounts what
    either side knows; in an uninterrupted run the two are equal.
    """
    if sum(t for _, _, t in recorded) > sum(t for _, _, t in own):
        return recorded
    return own


def _history_in(records: RecordDict, record: str) -> AccountantHistory:
    found = records.array_records.get(record)
    if found is None or keys.HISTORY not in found:
        return ()
    return history_from_array(found[keys.HISTORY].numpy())


class TextLoraTask:
    """LoRA (Hu et al., arXiv 2106.09685) on a pretrained text classifier; DP-LoRA
    with sample-level DP-SGD (Abadi et al., arXiv 1607.00133) on the clients and/or
    client-level DP at the server (arXiv 2312.17493 for the federated setting)."""

    def __init__(self, scenario: Scenario) -> None:
        model = scenario.effective.model
        if model not in _MAX_POSITIONS:
            raise ConfigError(
                "model", f"strategy lora needs one of {sorted(_MAX_POSITIONS)}, got {model!r}"
            )
        self.scenario = scenario
        self.spec = LoraSpec(
            base=scenario.effective.model,  # type: ignore[arg-type]  # checked in check()
            r=scenario.lora.rank,
            lora_alpha=scenario.lora.alpha,
            lora_dropout=scenario.lora.dropout,
            target_modules=scenario.lora.target_modules or ("query", "value"),
            mode="ffa" if scenario.lora.aggregation == "ffa" else "lora",
            init_seed=scenario.run.seed,
            pooling=scenario.lora.pooling,
        )
        self._working: Any = None
        self._codec: ArraysCodec | None = None

    # -- data ----------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Classes of the corpus (the head's labels)."""
        return self.spec.num_labels

    def _key(self) -> tuple[int, int, int]:
        s = self.scenario
        return s.data.train_records, s.run.seed, s.model.max_length

    def partition_data(self, partition_id: int) -> TokenizedText:
        """The tokenised training records of one partition, from the seed."""
        s = self.scenario
        if not 0 <= partition_id < s.run.num_clients:
            raise ConfigError(
                "partition-id", f"{partition_id} outside [0, {s.run.num_clients - 1}] (num-clients)"
            )
        idx = _partitions(
            *self._key(),
            s.data.partitioner,
            s.run.num_clients,
            s.data.alpha,
            s.data.classes_per_client,
        )[partition_id]
        return _train_tokens(*self._key()).subset(idx)

    def site_data(self, path: str) -> TokenizedText:
        """A site's own records: not supported for text yet."""
        raise ConfigError("data-path", f"{path}: a site's own text data is not supported yet")

    def heldout(self) -> TokenizedText:
        """The held-out test records (all, or ``test-records`` of them)."""
        return _test_tokens(self.scenario.data.test_records, self.scenario.model.max_length)

    # -- both sides ----------------------------------------------------------------

    def check(self) -> None:
        """Refuse what cannot run: an unknown base, too long texts, empty partitions."""
        s = self.scenario
        model = s.effective.model
        if model not in _MAX_POSITIONS:
            raise ConfigError(
                "model", f"strategy lora needs one of {sorted(_MAX_POSITIONS)}, got {model!r}"
            )
        if s.effective.dataset != "rotten-tomatoes":
            raise ConfigError(
                "dataset", f"strategy lora needs 'rotten-tomatoes', got {s.effective.dataset!r}"
            )
        if s.model.max_length > _MAX_POSITIONS[model]:
            raise ConfigError(
                "max-length",
                f"{s.model.max_length} exceeds {model}'s {_MAX_POSITIONS[model]} positions",
            )
        attack = s.attack
        if attack.kind == "label_flip" and attack.flip_rule == "targeted":
            for key, value in (
                ("attack-source-class", attack.source_class),
                ("attack-target-class", attack.target_class),
            ):
                if value >= self.num_classes:
                    raise ConfigError(
                        key,
                        f"{s.effective.dataset} has classes 0..{self.num_classes - 1}, got {value}",
                    )
        for pid in range(s.run.num_clients):
            if len(self.partition_data(pid)) == 0:
                raise ConfigError(
                    "num-clients",
                    f"partition {pid} of {s.run.num_clients} is empty; lower num-clients",
                )

    def initial_state(self) -> State:
        """Round 0: the tensors that train, at their seeded values."""
        return trainable_tensors(build_lora_model(self.spec))

    def codec(self, run_id: object) -> Codec:
        """Adapter arrays; under sample-level DP each reply carries its privacy report."""
        if self._codec is None:
            self._codec = ArraysCodec.for_state(
                self.initial_state(), privacy_report=self.scenario.dp.sample
            )
        return self._codec

    # -- client side -----------------------------------------------------------------

    def dp_sgd(self, num_examples: int) -> DpSgdConfig | None:
        """The client's DP-SGD settings, or None without sample-level DP."""
        dp = self.scenario.dp
        if not dp.sample:
            return None
        return DpSgdConfig(
            noise_multiplier=sample_noise_multiplier(self.scenario, num_examples),
            max_grad_norm=dp.clip_norm,
            delta=dp.delta,
            physical_batch_size=dp.physical_batch_size,
            accountant=dp.accountant,
            epsilon_budget=dp.target_epsilon or None,
        )

    def train(
        self,
        state: State,
        data: TokenizedText,
        *,
        server_round: int,
        partition_id: int,
        message: RecordDict,
        node_state: RecordDict,
    ) -> Reply:
        """Train the global adapter on ``data`` for one round (DP-SGD under sample DP)."""
        s = self.scenario
        model = build_lora_model(self.spec)
        set_adapter_tensors(model, state)
        history = starting_history(
            _history_in(node_state, ACCOUNTANT_KEY), _history_in(message, keys.PRIVACY_HISTORY)
        )
        result = train_lora(
            model,
            data,
            epochs=s.train.local_epochs,
            lr=s.effective.lr,
            batch_size=s.train.batch_size,
            head_lr=s.lora.head_lr or None,
            seed=round_seed(s.run.seed, server_round, partition_id),
            dp=self.dp_sgd(len(data)),
            accountant_state=history,
            proximal_mu=proximal_mu(message),
        )
        metrics = {
            keys.TRAIN_LOSS: result.metrics["train_loss"],
            keys.STEPS: result.metrics["steps"],
        }
        report = None
        if result.privacy is not None:
            node_state.array_records[ACCOUNTANT_KEY] = to_array_record(
                {keys.HISTORY: history_to_array(result.accountant_state)}
            )
            report = PrivacyReportData(
                mechanism="dp_sgd",
                noise_multiplier=float(result.privacy["noise_multiplier"]),
                sample_rate=float(result.privacy["sample_rate"]),
                steps=round(float(result.privacy["steps"])),
                clipping_norm=float(result.privacy["max_grad_norm"]),
                epsilon_spent=float(result.privacy["epsilon"]),
                delta=float(result.privacy["delta"]),
            )
            metrics[keys.DP_EPSILON] = report.epsilon_spent
        return Reply(
            state={name: result.tensors[name] for name in state},
            num_examples=len(data),
            metrics=metrics,
            privacy=report,
        )

    # -- server side -----------------------------------------------------------------

    def evaluate(self, state: State) -> tuple[float, float]:
        """Loss and accuracy of the global adapter on the held-out test records.

        The process keeps one working model (the base loads once) and overwrites every
        tensor that trains before use; the frozen ones never change.
        """
        if self._working is None:
            self._working = build_lora_model(self.spec)
        set_adapter_tensors(self._working, state)
        accuracy, loss = evaluate_lora(self._working, self.heldout())
        return loss, accuracy

    def export(self, state: State, directory: Path, facts: Mapping[str, Any]) -> dict[str, Any]:
        """The global adapter as a PEFT folder (``adapter/``); its settings for the summary."""
        export_adapter(self.spec, state, directory / ADAPTER_DIR)
        spec = self.spec
        return {
            "base": spec.base,
            "adapter": ADAPTER_DIR,
            "r": spec.r,
            "lora_alpha": spec.lora_alpha,
            "target_modules": list(spec.target_modules),
            "mode": spec.mode,
            "pooling": spec.pooling,
            "aggregation": self.scenario.lora.aggregation,
            "init_seed": spec.init_seed,
        }
