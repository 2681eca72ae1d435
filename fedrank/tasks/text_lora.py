"""Text classification by LoRA adapters of a pretrained transformer, optionally under DP.

The server and every client derive the same adapter spec, training subset, partition
and held-out records from the scenario alone; only adapter tensors and privacy
reports cross the wire. The base model and the tokenised corpus load once per process.

Under sample-level DP each client runs Opacus DP-SGD from the history its site's own
ledger holds (:mod:`fedrank.privacy.site`: the ClientApp puts it in the node's state
before training), so the epsilon it reports is cumulative over every round the site
ever trained in, across restarts and killed simulations. Its noise and Poisson batches
come from a fresh secure source every round (:func:`fedrank.privacy.sources.site_source`),
from the seed only under the simulation-only ``dp-reproducible-noise``. Under any DP a
reply carries no example count and no train loss (both noiseless).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from fedrank.config import Scenario
from fedrank.data.federation import partitions_for
from fedrank.data.site import load_site_data
from fedrank.data.source import DataSource, load_text_data
from fedrank.data.text import TokenizedText, tokenize
from fedrank.devices import describe_device, resolve_device
from fedrank.errors import ConfigError
from fedrank.lora_training import DpSgdConfig, train_lora
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
from fedrank.models.model_card import ModelCard
from fedrank.privacy.canaries import read_site_canaries
from fedrank.privacy.plan import check_plan, rqm_params, sample_noise_multiplier
from fedrank.privacy.rqm import rqm_decode_update, rqm_encode_update
from fedrank.privacy.site import read_history, write_history
from fedrank.privacy.sources import site_source
from fedrank.protos import PrivacyReportData, keys
from fedrank.protos.codecs import ArraysCodec, Codec, Reply
from fedrank.tasks.base import State, proximal_mu, split_local
from fedrank.tasks.data import data_source, partition_spec
from fedrank.tasks.lora_card import lora_model_card

log = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
"""The exported PEFT adapter folder inside the results folder."""

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

    @functools.cached_property
    def device(self) -> torch.device:
        """Where this process trains and evaluates (the scenario's ``device``, resolved)."""
        device = resolve_device(self.scenario.run.device)
        log.info("fedrank: lora runs on %s", describe_device(device))
        return device

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

    def split_local(
        self, data: TokenizedText, *, partition_id: int
    ) -> tuple[TokenizedText, TokenizedText]:
        """(training, held-out) records of a site: ``eval-fraction`` held out, seeded."""
        return split_local(data, self.scenario, partition_id)

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
        check_plan(s)  # a client-level DP plan that cannot run fails here
        partitions_for(self.source, self.partitions, "text")  # refuses empty partitions
        _ = self.device  # `device = cuda` without a GPU is refused here, before anything runs

    def initial_state(self) -> State:
        """Round 0: the tensors that train, at their seeded values."""
        return trainable_tensors(build_lora_model(self.spec))

    def codec(self, run_id: object) -> Codec:
        """Adapter arrays; under sample-level DP each reply carries its privacy report."""
        if self._codec is None:
            dp = self.scenario.dp
            self._codec = ArraysCodec.for_state(
                self.initial_state(), privacy_report=dp.sample, private=dp.enabled
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
        """Train the global adapter on ``data`` for one round (DP-SGD under sample DP).

        Under DP-SGD it accounts from the history in ``node_state`` (the site's ledger's,
        put there by the ClientApp) and writes the extended one back.
        """
        s = self.scenario
        model = build_lora_model(self.spec).to(self.device)
        set_adapter_tensors(model, state)
        dp = s.dp
        # A privacy audit's canaries, if this simulated site was given some (its own
        # state; never from a message): fedrank.privacy.canaries.
        audit = read_site_canaries(node_state) if dp.sample else None
        result = train_lora(
            model,
            data,
            epochs=s.train.local_epochs,
            lr=s.effective.lr,
            batch_size=s.train.batch_size,
            head_lr=s.lora.head_lr or None,
            seed=round_seed(s.run.seed, server_round, partition_id),
            dp=self.dp_sgd(len(data)),
            accountant_state=read_history(node_state),
            randomness=site_source(
                reproducible=dp.reproducible_noise,
                seed=s.run.seed,
                partition_id=partition_id,
                server_round=server_round,
            )
            if dp.sample
            else None,
            canaries=audit,
            optimizer=audit.optimizer if audit is not None else "adamw",
            proximal_mu=proximal_mu(message),
        )
        # Under DP nothing noiseless about the data leaves: no loss, no example count.
        metrics = (
            {}
            if dp.enabled
            else {
                keys.TRAIN_LOSS: result.metrics["train_loss"],
                keys.STEPS: result.metrics["steps"],
            }
        )
        report = None
        if result.privacy is not None:
            write_history(node_state, result.accountant_state)
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
        tensors = {name: result.tensors[name] for name in state}
        if dp.rqm:
            tensors = self._rqm(state, tensors, server_round, partition_id)
        return Reply(
            state=tensors,
            num_examples=None if dp.enabled else len(data),
            metrics=metrics,
            privacy=report,
        )

    def _rqm(self, state: State, trained: State, server_round: int, partition_id: int) -> State:
        """The global state plus this client's update sent through RQM (client-level DP
        by randomized quantization, with the site's own secure randomness)."""
        s = self.scenario
        update = {n: trained[n].astype(np.float64) - state[n].astype(np.float64) for n in state}
        params = rqm_params(s, sum(v.size for v in state.values()))
        source = site_source(
            reproducible=s.dp.reproducible_noise,
            seed=s.run.seed,
            partition_id=partition_id,
            server_round=server_round,
        ).derive("rqm")
        sent = rqm_decode_update(
            rqm_encode_update(update, params=params, norm="l2", source=source), params
        )
        return {n: (state[n].astype(np.float64) + sent[n]).astype(state[n].dtype) for n in state}

    # -- server side -----------------------------------------------------------------

    def evaluate(self, state: State) -> tuple[float, float]:
        """Loss and accuracy of the global adapter on the held-out test records."""
        return self.evaluate_local(state, self.heldout())

    def evaluate_local(self, state: State, data: TokenizedText) -> tuple[float, float]:
        """Loss and accuracy of the global adapter on ``data`` (a site's held-out part).

        The process keeps one working model on its device (the base loads once) and
        overwrites every tensor that trains before use; the frozen ones never change.
        """
        if self._working is None:
            self._working = build_lora_model(self.spec).to(self.device)
        set_adapter_tensors(self._working, state)
        accuracy, loss = evaluate_lora(self._working, data)
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
        return lora_model_card(self.scenario, facts, test_records=len(self.heldout()))
