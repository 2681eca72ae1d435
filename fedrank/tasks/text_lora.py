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

import contextlib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from fedrank.config import Scenario
from fedrank.data.federation import partitions_for
from fedrank.data.site import load_site_data
from fedrank.data.source import DataSource, load_text_data
from fedrank.data.text import TokenizedText, tokenize
from fedrank.errors import ConfigError
from fedrank.lora_training import AccountantHistory, DpSgdConfig, train_lora
from fedrank.models.bases import base_config, load_tokenizer
from fedrank.models.evaluation import evaluate_lora
from fedrank.models.export import export_adapter
from fedrank.models.lora import (
    LoraSpec,
    build_lora_model,
    resolved_target_modules,
    set_adapter_tensors,
    trainable_tensors,
)
from fedrank.models.model_card import DpGuarantee, ModelCard
from fedrank.privacy.accountant import history_from_array, history_to_array
from fedrank.privacy.plan import sample_noise_multiplier
from fedrank.protos import PrivacyReportData, keys
from fedrank.protos.codecs import ArraysCodec, Codec, Reply
from fedrank.protos.records import to_array_record
from fedrank.tasks.base import State
from fedrank.tasks.data import data_source, partition_spec

ADAPTER_DIR = "adapter"
"""The exported PEFT adapter folder inside the results folder."""
ACCOUNTANT_KEY = "dp-accountant"
"""Name of the ArrayRecord in a node's state that holds its accountant history."""

_SPEC_KEYS = {"base": "model", "pooling": "lora-pooling", "target_modules": "lora-targets"}


@functools.lru_cache(maxsize=8)
def _tokens(source: DataSource, seed: int, base: str, max_length: int, split: str) -> TokenizedText:
    """The tokenised ``split`` of ``source`` (tokenised once per process, base and length)."""
    data = load_text_data(source, seed=seed)
    texts = data.train if split == "train" else data.test
    return tokenize(texts, load_tokenizer(base), max_length=max_length)


@contextlib.contextmanager
def _as_scenario_keys() -> Iterator[None]:
    """Name the scenario key when the model layer refuses a base, pooling or targets."""
    try:
        yield
    except ConfigError as err:
        key = _SPEC_KEYS.get(err.field, err.field)
        raise ConfigError(key, str(err).split(": ", 1)[-1]) from err


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
        self.scenario = scenario
        self.source = data_source(scenario)
        self.partitions = partition_spec(scenario)
        with _as_scenario_keys():
            self.base_config = base_config(scenario.effective.model, pooling=scenario.lora.pooling)
            self.spec = LoraSpec(
                base=scenario.effective.model,
                r=scenario.lora.rank,
                lora_alpha=scenario.lora.alpha,
                lora_dropout=scenario.lora.dropout,
                target_modules=scenario.lora.target_modules or None,
                mode="ffa" if scenario.lora.aggregation == "ffa" else "lora",
                init_seed=scenario.run.seed,
                pooling=scenario.lora.pooling,
                num_labels=self.num_classes,
            )
        self._working: Any = None
        self._codec: ArraysCodec | None = None

    # -- data ----------------------------------------------------------------------

    @property
    def num_classes(self) -> int:
        """Classes of the corpus (the head's labels)."""
        return load_text_data(self.source, seed=self.scenario.run.seed).num_classes

    def _tokens(self, split: str) -> TokenizedText:
        s = self.scenario
        return _tokens(self.source, s.run.seed, self.spec.base, s.model.max_length, split)

    def partition_data(self, partition_id: int) -> TokenizedText:
        """The tokenised training records of one partition, from the seed."""
        s = self.scenario
        if not 0 <= partition_id < s.run.num_clients:
            raise ConfigError(
                "partition-id", f"{partition_id} outside [0, {s.run.num_clients - 1}] (num-clients)"
            )
        rows = partitions_for(self.source, self.partitions, "text").indices(partition_id)
        return self._tokens("train").subset(rows)

    def site_data(self, path: str) -> TokenizedText:
        """A site's own labelled texts at ``path`` (any format of the data layer), tokenised."""
        data = load_text_data(self.source, seed=self.scenario.run.seed)
        texts = load_site_data(
            path,
            kind="text",
            input_shape=(),
            num_classes=data.num_classes,
            class_names=data.class_names,
            columns=self.source,
        )
        base = self.spec.base
        return tokenize(texts, load_tokenizer(base), max_length=self.scenario.model.max_length)

    def heldout(self) -> TokenizedText:
        """The held-out test records (all, or ``test-records`` of them)."""
        return self._tokens("test")

    # -- both sides ----------------------------------------------------------------

    def check(self) -> None:
        """Refuse what cannot run: an unknown base, too long texts, empty partitions."""
        s = self.scenario
        positions = getattr(self.base_config, "max_position_embeddings", None) or getattr(
            self.base_config, "n_positions", None
        )
        if positions is not None and s.model.max_length > positions:
            raise ConfigError(
                "max-length",
                f"{s.model.max_length} exceeds {s.effective.model}'s {positions} positions",
            )
        with _as_scenario_keys():
            self.initial_state()  # targets that match nothing, a head that cannot be built
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
        partitions_for(self.source, self.partitions, "text")  # refuses empty partitions

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

    def load_model(self, state: State) -> Any:
        """The base classifier with the global adapter (a PEFT model, eval mode)."""
        model = build_lora_model(self.spec)
        set_adapter_tensors(model, state)
        return model.eval()

    def export(self, state: State, directory: Path, facts: Mapping[str, Any]) -> dict[str, Any]:
        """The global adapter as a PEFT folder (``adapter/``) with its model card."""
        s = self.scenario
        with _as_scenario_keys():
            export_adapter(
                self.spec,
                state,
                directory / ADAPTER_DIR,
                card=self.model_card(facts),
                max_length=s.model.max_length,
            )
            targets = resolved_target_modules(self.load_model(state))
        spec = self.spec
        return {
            "base": spec.base,
            "adapter": ADAPTER_DIR,
            "r": spec.r,
            "lora_alpha": spec.lora_alpha,
            # As resolved: PEFT's default for the architecture unless the scenario names them.
            "target_modules": targets if isinstance(targets, str) else list(targets),
            "mode": spec.mode,
            "pooling": spec.pooling,
            "aggregation": s.lora.aggregation,
            "init_seed": spec.init_seed,
        }

    def model_card(self, facts: Mapping[str, Any]) -> ModelCard:
        """The facts of the run for the exported adapter's model card."""
        s, dp = self.scenario, self.scenario.dp
        privacy = []
        summary = facts.get("privacy") or {}
        for unit in ("record", "client"):
            figures = summary.get(unit)
            if figures and figures["releases"]:
                sigmas = [s for p in figures["parties"].values() for s in p["noise_multipliers"]]
                privacy.append(
                    DpGuarantee(
                        unit,
                        epsilon=figures["max_epsilon"],
                        delta=dp.delta,
                        clip_norm=dp.clip_norm if unit == "record" else dp.client_clip_norm,
                        noise_multiplier=min(sigmas),
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
            test_records=len(self.heldout()),
            privacy=tuple(privacy),
            notes=f"The run stopped early: {stopped.rstrip('.')}." if stopped else "",
        )
