"""``Scenario``: one object per concern, composed, validated once, flat on the outside.

A scenario is written as a flat TOML table (``simulations/scenarios/*.toml``), as
Flower run config (``[tool.flwr.app.config]``, ``flwr run --run-config``) or as
``fedrank simulate`` flags, all with the same dashed keys (``clients-per-round``).
Inside, it is a set of frozen sections (run, training, data, model, FRL, aggregation,
LoRA, DP, attack, output), each validated when it is built; the scenario adds the
rules that tie sections together and resolves the strategy-dependent defaults (``lr``,
``model``, ``dataset`` and ``aggregator`` left at 0 / empty / auto) after every
override. A bad scenario fails before Ray or any Flower process starts, with a
:class:`~fedrank.errors.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedrank.config.attack import RANKING_ATTACKS, UPDATE_ATTACKS, AttackConfig
from fedrank.config.fields import FieldInfo, RunConfigValue, Section, coerce, fields_of
from fedrank.config.learning import AggregationConfig, FrlConfig, LoraConfig
from fedrank.config.privacy import DpConfig
from fedrank.config.sections import (
    DataConfig,
    ModelConfig,
    OutputConfig,
    RunConfig,
    TrainConfig,
)
from fedrank.errors import ConfigError
from fedrank.privacy.relation import client_sampling_rate
from fedrank.tasks.registry import FLOWER_BASELINES, STRATEGIES, StrategySpec

SECTIONS: dict[str, type[Section]] = {
    "run": RunConfig,
    "train": TrainConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "frl": FrlConfig,
    "aggregation": AggregationConfig,
    "lora": LoraConfig,
    "dp": DpConfig,
    "attack": AttackConfig,
    "output": OutputConfig,
}
"""Section attribute of :class:`Scenario` -> its class, in the order they print."""

CLIENT_SECTIONS = ("run", "train", "data", "model", "frl", "lora", "dp")
"""What a client needs to rebuild the model and train: sent to it once per run."""


def _index() -> dict[str, FieldInfo]:
    index: dict[str, FieldInfo] = {}
    for name, section in SECTIONS.items():
        for info in fields_of(name, section):
            if info.key in index:
                raise RuntimeError(f"two configuration fields are called {info.key!r}")
            index[info.key] = info
    return index


FIELDS: dict[str, FieldInfo] = _index()
"""Every flat key -> where it lives, its default, description and choices."""


@dataclasses.dataclass(frozen=True)
class Effective:
    """The values a run uses where the scenario leaves the choice to the strategy."""

    spec: StrategySpec
    lr: float
    model: str
    dataset: str
    aggregator: str


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Everything that defines one federated run, one section per concern.

    Build one from flat keys with :meth:`of` (``Scenario.of(rounds=5, strategy="fedavg")``),
    :meth:`from_mapping` or :meth:`from_toml`, or from sections
    (``Scenario(run=RunConfig(rounds=5))``); change it with :meth:`replace`. The
    resolved defaults are in :attr:`effective`.
    """

    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    frl: FrlConfig = dataclasses.field(default_factory=FrlConfig)
    aggregation: AggregationConfig = dataclasses.field(default_factory=AggregationConfig)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    dp: DpConfig = dataclasses.field(default_factory=DpConfig)
    attack: AttackConfig = dataclasses.field(default_factory=AttackConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)
    effective: Effective = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name, kind in SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(name, f"must be a {kind.__name__}")
        spec = STRATEGIES.get(self.run.strategy)
        if spec is None:
            raise ConfigError(
                "strategy", f"must be one of {sorted(STRATEGIES)}, got {self.run.strategy!r}"
            )
        rule = self.aggregation.rule
        if rule != "auto" and rule not in spec.aggregators:
            raise ConfigError(
                "aggregator",
                f"{rule!r} is not a {spec.name} aggregator; "
                f"use one of {['auto', *spec.aggregators]}",
            )
        effective = Effective(
            spec=spec,
            lr=self.train.lr or spec.default_lr,
            model=self.model.name or spec.default_model,
            dataset=self.data.dataset or spec.default_dataset,
            aggregator=spec.aggregators[0] if rule == "auto" else rule,
        )
        object.__setattr__(self, "effective", effective)
        _check_across(self)

    # ------------------------------------------------------------ building

    @classmethod
    def of(cls, **values: RunConfigValue) -> Scenario:
        """A scenario from flat keys written with underscores (``num_clients=3``)."""
        return cls.from_mapping(values, source="arguments")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> Scenario:
        """A scenario from flat dashed (or underscored) keys; unknown keys are refused.

        Parameters
        ----------
        values : Mapping[str, Any]
            Keys as in a scenario file.
        source : str
            Where the values came from, for error messages.
        """
        grouped: dict[str, dict[str, RunConfigValue]] = {name: {} for name in SECTIONS}
        for raw_key, value in values.items():
            if not isinstance(raw_key, str):
                raise ConfigError(str(raw_key), f"keys in {source} must be strings")
            key = raw_key.replace("_", "-")
            info = FIELDS.get(key)
            if info is None:
                raise ConfigError(raw_key, f"unknown key in {source}{_did_you_mean(key)}")
            grouped[info.section][info.name] = coerce(key, value, info.default)
        sections = {name: SECTIONS[name](**kwargs) for name, kwargs in grouped.items()}
        return cls(**sections)  # type: ignore[arg-type]

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Load a scenario file (a flat TOML table of dashed keys)."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError as err:
            raise ConfigError("scenario", f"no such file: {path}") from err
        except IsADirectoryError as err:
            raise ConfigError("scenario", f"{path} is a folder, not a TOML file") from err
        except UnicodeDecodeError as err:
            raise ConfigError("scenario", f"{path} is not UTF-8 text: {err.reason}") from err
        except OSError as err:
            raise ConfigError("scenario", f"cannot read {path}: {err.strerror}") from err
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("scenario", f"{path} is not valid TOML: {err}") from err
        return cls.from_mapping(data, source=str(path))

    def replace(self, **changes: RunConfigValue) -> Scenario:
        """A copy with flat keys changed (``replace(rounds=3)``), validated again."""
        return Scenario.from_mapping({**self.to_run_config(), **changes}, source="changes")

    # ------------------------------------------------------------ flat views

    def to_run_config(self) -> dict[str, RunConfigValue]:
        """Every key as written (defaults unresolved): run config / scenario.json form."""
        return {
            key: getattr(getattr(self, info.section), info.name) for key, info in FIELDS.items()
        }

    def client_settings(self) -> dict[str, RunConfigValue]:
        """The keys a client needs to rebuild the model and train (sent once per run)."""
        return {
            key: value
            for key, value in self.to_run_config().items()
            if FIELDS[key].section in CLIENT_SECTIONS
        }

    def settings_digest(self) -> str:
        """A short hash of :meth:`client_settings` (a client checks it every round)."""
        text = json.dumps(self.client_settings(), sort_keys=True)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]

    def describe(self) -> list[str]:
        """One line per section in use with its effective values (what a run prints)."""
        eff = self.effective
        resolved = {"lr": eff.lr, "model": eff.model, "dataset": eff.dataset,
                    "aggregator": eff.aggregator}  # fmt: skip
        optional = {"frl", "lora", "dp", "attack"}
        shown = (set(SECTIONS) - optional) | set(eff.spec.sections)
        shown |= {"attack"} if self.attack.enabled else set()
        lines = []
        for name in SECTIONS:
            if name not in shown:
                continue
            items = [
                f"{key}={resolved.get(key, value)!r}".replace("'", "")
                for key, value in self.to_run_config().items()
                if FIELDS[key].section == name
            ]
            lines.append(f"{name}: " + " ".join(items))
        return lines

    # ------------------------------------------------------------ resolved values

    @property
    def spec(self) -> StrategySpec:
        """The strategy's registry entry."""
        return self.effective.spec


def config_reference() -> str:
    """``docs/configuration.md``: every key by section, its default and description."""
    lines = [
        "# Scenario settings",
        "",
        "Every key a scenario file, `fedrank simulate --KEY`, and `flwr run --run-config` "
        "accept (generated from `fedrank.config` by `python scripts/gen_config_doc.py`; a "
        "test checks it is current). Empty strings and zeros marked so mean the strategy's "
        "default.",
    ]
    for section in SECTIONS:
        lines += ["", f"## {section}", "", "| key | default | what |", "|---|---|---|"]
        for key, info in FIELDS.items():
            if info.section == section:
                choices = f" (one of: {', '.join(info.choices)})" if info.choices else ""
                lines.append(f"| `{key}` | `{info.default!r}` | {info.help}{choices} |")
    return "\n".join(lines) + "\n"


def _did_you_mean(key: str) -> str:
    close = sorted(k for k in FIELDS if k[:3] == key[:3])
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _check_coarse_rankings(s: Scenario) -> None:
    """``rank-bits`` > 0 (coarse uplink rankings): FRL, plain Borda (smoothed or not), no
    ranking attack."""
    if s.frl.rank_bits == 0:
        return
    if s.spec.update != "ranking":
        raise ConfigError("rank-bits", f"coarse rankings need strategy frl, got {s.spec.name!r}")
    if s.effective.aggregator != "borda":
        raise ConfigError(
            "rank-bits",
            f"coarse rankings are voted by Borda on bucket midpoints; aggregator "
            f"{s.effective.aggregator!r} needs full rankings (rank-bits = 0)",
        )
    if s.attack.kind in RANKING_ATTACKS:
        raise ConfigError(
            "rank-bits",
            f"the {s.attack.kind!r} attack crafts full rankings; use rank-bits = 0 with it",
        )


def _check_across(s: Scenario) -> None:
    """The rules that tie sections together (each section checked itself already)."""
    spec, rule = s.spec, s.effective.aggregator
    if s.attack.kind in RANKING_ATTACKS and spec.update != "ranking":
        raise ConfigError("attack", f"{s.attack.kind!r} attacks rankings: it needs strategy frl")
    if s.attack.kind in UPDATE_ATTACKS and spec.update == "ranking":
        raise ConfigError(
            "attack", f"{s.attack.kind!r} attacks float updates: it needs strategy fedavg or lora"
        )
    byzantine = math.floor(s.aggregation.trim_fraction * s.run.clients_per_round + 1e-9)
    if rule in ("krum", "multikrum") and s.run.clients_per_round < 2 * byzantine + 3:
        raise ConfigError(
            "trim-fraction",
            f"krum needs clients-per-round >= 2 f + 3; f = {byzantine} "
            f"of {s.run.clients_per_round}",
        )
    if rule == "bulyan" and s.run.clients_per_round < 4 * byzantine + 3:
        m = s.run.clients_per_round
        fix = f"trim-fraction {(m - 3) // 4 / m:g}" if m >= 3 else "clients-per-round >= 3"
        raise ConfigError(
            "trim-fraction",
            f"bulyan needs clients-per-round >= 4 f + 3 (f = floor(trim-fraction x "
            f"clients-per-round) = {byzantine} of {m}); use {fix} or sample more clients",
        )
    _check_coarse_rankings(s)
    if not spec.privacy:
        if s.dp.enabled:
            raise ConfigError("dp", f"only strategy 'lora' supports DP, got strategy {spec.name!r}")
        return
    if 0 < s.data.train_records < s.run.num_clients:
        raise ConfigError(
            "train-records",
            f"{s.data.train_records} leaves some of {s.run.num_clients} clients empty",
        )
    if s.dp.client:
        # Refuses what add/remove-one accounting cannot bound (fixed sampling, m < N).
        client_sampling_rate(
            sampling=s.dp.client_sampling,
            clients_per_round=s.run.clients_per_round,
            total_clients=s.run.num_clients,
        )
    if s.dp.client and rule != "mean":
        # ClientLevelDp clips and averages the updates itself (its sensitivity bound is
        # that of the mean); a robust rule behind it would never run.
        raise ConfigError("aggregator", f"{rule!r} cannot run under client-level DP; use 'mean'")
    if rule in ("median", "trimmed") and s.lora.aggregation == "svd":
        raise ConfigError(
            "aggregator",
            f"{rule!r} acts on the factors A and B; it cannot feed lora-aggregation "
            "'svd' (use fedit or ffa, or krum/multikrum)",
        )
    if rule in FLOWER_BASELINES and s.lora.aggregation == "svd":
        # SVD re-compression returns factors in a new basis every round: a pseudo-gradient
        # (global minus aggregate) of such factors, or Bulyan's per-coordinate choice among
        # them, means nothing.
        raise ConfigError(
            "aggregator",
            f"{rule!r} acts on the adapter tensors (A and B); it cannot follow "
            "lora-aggregation 'svd' (use fedit or ffa)",
        )
    if rule == "fedprox" and s.dp.sample:
        # Opacus builds each step from per-example gradients of the modules' outputs: a
        # term on the parameters alone (the proximal term) would be silently dropped.
        raise ConfigError(
            "aggregator", "'fedprox' cannot run under sample-level DP (DP-SGD drops its "
            "proximal term); use fedavgm, fedadam or fedyogi"
        )  # fmt: skip
    if s.dp.client and s.lora.aggregation == "svd":
        # Client-level DP averages the clipped updates itself; an SVD of the clients'
        # products has no sensitivity bound, so the two do not compose.
        raise ConfigError("lora-aggregation", "'svd' cannot run under client-level DP")
