"""Run configuration: one frozen, validated dataclass per run.

A scenario is written as TOML (``simulations/scenarios/*.toml``) or as Flower run
config (``[tool.flwr.app.config]``); both use dashed keys (``clients-per-round``).
Everything is checked at construction, so a bad scenario fails before Ray or any
Flower process starts, with a :class:`~fedrank.errors.ConfigError` naming the field.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args

from fedrank.errors import ConfigError

Strategy = Literal["frl", "fedavg", "lora"]
Dataset = Literal["mnist5k", "digits", "rotten-tomatoes"]
NUM_CLASSES: dict[str, int] = {"mnist5k": 10, "digits": 10, "rotten-tomatoes": 2}
ModelName = Literal["mlp", "cnn", "minilm", "tiny-bert"]
Partitioner = Literal["iid", "dirichlet", "pathological"]
LoraAggregation = Literal["fedit", "ffa", "svd"]
LoraPooling = Literal["mean", "cls"]
DpMode = Literal["none", "sample", "client", "both"]
DpAccountant = Literal["rdp", "prv"]
ClientSampling = Literal["fixed", "poisson"]

# Robustness experiments: how the server aggregates, and what the malicious clients do.
Aggregator = Literal[
    "auto", "borda", "filtered", "trimmed", "median", "mean", "krum", "multikrum"
]  # fmt: skip
AttackKind = Literal[
    "reverse_ranking", "random_ranking", "mask_boundary", "adaptive_reverse", "adaptive_boundary",
    "sign_flip", "scaling", "gaussian_noise", "alie", "min_max", "min_sum",
    "label_flip",
]  # fmt: skip
Attack = Literal["none", AttackKind]
AttackDirection = Literal["inverse_std", "inverse_unit", "inverse_sign"]
FlipRule = Literal["reverse", "shift", "random", "targeted"]
Knowledge = Literal["colluders", "all"]
RANKING_ATTACKS: frozenset[str] = frozenset(
    {"reverse_ranking", "random_ranking", "mask_boundary", "adaptive_reverse", "adaptive_boundary"}
)
UPDATE_ATTACKS: frozenset[str] = frozenset(
    {"sign_flip", "scaling", "gaussian_noise", "alie", "min_max", "min_sum"}
)
# Aggregators each strategy accepts; "auto" is the first (the plain rule).
AGGREGATORS: dict[str, tuple[str, ...]] = {
    "frl": ("borda", "filtered", "trimmed", "median"),
    "fedavg": ("mean", "trimmed", "median", "krum", "multikrum"),
    # LoRA: "mean" is the `lora-aggregation` average; the others are Flower's rules
    # applied to the validated adapters (fedrank.strategies.lora_robust).
    "lora": ("mean", "trimmed", "median", "krum", "multikrum"),
}

RunConfigValue = bool | int | float | str

# Learning rates tuned on MNIST-5k (50 clients, Dirichlet 1.0, 2 local epochs):
# scores of a supermask network need a much larger step than dense weights.
# LoRA (AdamW on the adapter and the head): the usual LoRA fine-tuning rate.
DEFAULT_LR: dict[str, float] = {"frl": 1.0, "fedavg": 0.1, "lora": 5e-4}


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Everything that defines one federated run.

    Field names use underscores; scenario files and run config use dashes
    (``num-clients``). See ``simulations/scenarios/frl-mnist.toml`` for the
    defaults written out.
    """

    strategy: Strategy = "frl"
    dataset: Dataset = "mnist5k"
    model: ModelName = "mlp"
    num_clients: int = 50
    clients_per_round: int = 10
    rounds: int = 40
    local_epochs: int = 2
    lr: float | None = None  # None: the strategy's default (DEFAULT_LR)
    momentum: float = 0.9
    batch_size: int = 16
    k: float = 0.5
    partitioner: Partitioner = "dirichlet"
    alpha: float = 1.0
    classes_per_client: int = 2
    seed: int = 0
    test_fraction: float = 0.2
    min_replies: int = 1
    round_timeout: float = 600.0
    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0
    results_dir: str = "results/latest"
    # Deployment: where the coordinator serves grpc.health.v1 and fedrank's Status
    # service during a run ("host:port"; empty: not served). k8s/ uses 0.0.0.0:9095.
    status_address: str = ""
    # Robustness (docs/robustness.md): the aggregation rule, and the attack simulated.
    aggregator: Aggregator = "auto"  # auto: borda (frl) or mean (fedavg, lora)
    trim_fraction: float = 0.2  # trimmed Borda / FedTrimmedAvg cut; Krum's f share
    filter_mads: float = 5.0  # filtered vote: drop replies this many MADs below the median
    # FRL under heterogeneous data (docs/robustness.md, "Heterogeneous data"): in round t the
    # vote counts the global ranking it sent as vote-smoothing x t mean replies.
    vote_smoothing: float = 0.1
    attack: Attack = "none"
    malicious_fraction: float = 0.0
    attack_seed: int = 0
    attack_knowledge: Knowledge = "colluders"
    attack_scale: float = -5.0
    attack_noise_std: float = 1.0
    attack_z_max: float = 0.0  # alie: 0 = Baruch et al.'s value for the round
    attack_direction: AttackDirection = "inverse_std"
    attack_boundary_fraction: float = 0.05
    attack_flip_rule: FlipRule = "reverse"
    attack_source_class: int = 1
    attack_target_class: int = 7
    # -- LoRA and DP-LoRA (strategy "lora"; docs/privacy.md). Checked by _check_lora:
    # only for strategy "lora", except that DP settings are refused for any other.
    lora_aggregation: LoraAggregation = "fedit"
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: str = "query,value"  # comma-separated nn.Linear names
    lora_head_lr: float = 0.0  # learning rate of the new classification head; 0: lr
    lora_pooling: LoraPooling = "mean"  # head on the masked mean of token states, or "cls" pooler
    max_length: int = 64  # tokens per snippet
    train_records: int = 0  # a seeded subset of the training split; 0: all of it
    test_records: int = 0  # the first N of the fixed held-out test split; 0: all of it
    physical_batch_size: int = 32  # under DP: batch-size is the logical (expected) batch
    dp: DpMode = "none"  # sample: DP-SGD on clients; client: at the server; both
    dp_delta: float = 1e-5
    dp_accountant: DpAccountant = "rdp"
    dp_target_epsilon: float = 0.0  # sample-level budget per client over the run; 0: none
    dp_noise_multiplier: float = 0.0  # 0: the least that keeps dp-target-epsilon
    dp_clip_norm: float = 1.0  # per-example gradient clip
    dp_client_target_epsilon: float = 0.0  # client-level budget over the run; 0: none
    dp_client_noise_multiplier: float = 0.0  # 0: the least that keeps the budget
    dp_client_clip_norm: float = 1.0  # clip of each client's adapter update
    dp_client_sampling: ClientSampling = "fixed"

    def __post_init__(self) -> None:
        if self.lr is None and self.strategy in DEFAULT_LR:
            object.__setattr__(self, "lr", DEFAULT_LR[self.strategy])
        for name in ("strategy", "dataset", "model", "partitioner"):
            allowed = get_args(_field_type(name))
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(_dashed(name), f"must be one of {list(allowed)}, got {value!r}")
        _check_int(self, "num_clients", low=1)
        _check_int(self, "clients_per_round", low=1)
        _check_int(self, "rounds", low=1)
        _check_int(self, "local_epochs", low=1)
        _check_int(self, "batch_size", low=1)
        _check_int(self, "classes_per_client", low=1)
        _check_int(self, "seed", low=0)
        _check_int(self, "min_replies", low=1)
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                "clients-per-round",
                f"{self.clients_per_round} exceeds num-clients ({self.num_clients})",
            )
        if self.min_replies > self.clients_per_round:
            raise ConfigError(
                "min-replies",
                f"{self.min_replies} exceeds clients-per-round ({self.clients_per_round})",
            )
        if not (_finite(self.k) and 0.0 < self.k <= 1.0):
            raise ConfigError("k", f"must lie in (0, 1], got {self.k}")
        if self.lr is None or not (_finite(self.lr) and self.lr > 0.0):
            raise ConfigError("lr", f"must be a positive number, got {self.lr}")
        if not (_finite(self.momentum) and 0.0 <= self.momentum < 1.0):
            raise ConfigError("momentum", f"must lie in [0, 1), got {self.momentum}")
        if not (_finite(self.alpha) and self.alpha > 0.0):
            raise ConfigError("alpha", f"must be a positive number, got {self.alpha}")
        if not (_finite(self.test_fraction) and 0.0 < self.test_fraction < 1.0):
            raise ConfigError("test-fraction", f"must lie in (0, 1), got {self.test_fraction}")
        if not (_finite(self.round_timeout) and self.round_timeout > 0.0):
            raise ConfigError("round-timeout", f"must be positive, got {self.round_timeout}")
        if not (_finite(self.num_cpus_per_client) and self.num_cpus_per_client > 0.0):
            raise ConfigError(
                "num-cpus-per-client", f"must be positive, got {self.num_cpus_per_client}"
            )
        if not (_finite(self.num_gpus_per_client) and self.num_gpus_per_client >= 0.0):
            raise ConfigError(
                "num-gpus-per-client", f"must be non-negative, got {self.num_gpus_per_client}"
            )
        if not self.results_dir:
            raise ConfigError("results-dir", "must not be empty")
        _check_address("status-address", self.status_address)
        _check_robustness(self)
        _check_lora(self)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, source: str = "config") -> Scenario:
        """Build a scenario from dashed (or underscored) keys, rejecting unknown ones.

        Parameters
        ----------
        values : Mapping[str, Any]
            Keys as in a scenario file; unknown keys raise ``ConfigError``.
        source : str
            Where the values came from, for error messages.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                close = sorted(_dashed(n) for n in known if n[:3] == name[:3])
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise ConfigError(key, f"unknown key in {source}{hint}")
            kwargs[name] = _coerce(key, value, known[name].default)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        """Load a scenario file (flat TOML table of dashed keys)."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as err:
            raise ConfigError("scenario", f"no such file: {path}") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("scenario", f"{path} is not valid TOML: {err}") from err
        return cls.from_mapping(data, source=str(path))

    def replace(self, **changes: Any) -> Scenario:
        """Return a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def aggregation(self) -> str:
        """The aggregator in use (``auto`` resolved to the strategy's plain rule)."""
        return AGGREGATORS[self.strategy][0] if self.aggregator == "auto" else self.aggregator

    @property
    def learning_rate(self) -> float:
        """The local learning rate (``lr``, or the strategy's default)."""
        return self.lr if self.lr is not None else DEFAULT_LR[self.strategy]

    def to_run_config(self) -> dict[str, RunConfigValue]:
        """Flat, dashed mapping of scalars: Flower run config / ConfigRecord form."""
        return {_dashed(f.name): getattr(self, f.name) for f in dataclasses.fields(self)}

    def model_fingerprint_parts(self) -> dict[str, RunConfigValue]:
        """The fields that define the model a client must rebuild bit for bit."""
        return {
            "strategy": self.strategy,
            "dataset": self.dataset,
            "model": self.model,
            "seed": self.seed,
            "k": self.k,
        }


def _field_type(name: str) -> Any:
    hints = {
        "strategy": Strategy,
        "dataset": Dataset,
        "model": ModelName,
        "partitioner": Partitioner,
    }
    return hints[name]


def _check_robustness(scenario: Scenario) -> None:
    """Validate the aggregator and attack fields (names the field at fault)."""
    for name, alias in [
        ("aggregator", Aggregator), ("attack", Attack), ("attack_knowledge", Knowledge),
        ("attack_direction", AttackDirection), ("attack_flip_rule", FlipRule),
    ]:  # fmt: skip
        allowed = get_args(alias)
        if getattr(scenario, name) not in allowed:
            raise ConfigError(
                _dashed(name), f"must be one of {list(allowed)}, got {getattr(scenario, name)!r}"
            )
    accepted = AGGREGATORS[scenario.strategy]
    if scenario.aggregator not in ("auto", *accepted):
        raise ConfigError(
            "aggregator",
            f"{scenario.aggregator!r} is not a {scenario.strategy} aggregator; "
            f"use one of {['auto', *accepted]}",
        )
    attack = scenario.attack
    if attack in RANKING_ATTACKS and scenario.strategy != "frl":
        raise ConfigError("attack", f"{attack!r} attacks rankings: it needs strategy frl")
    if attack in UPDATE_ATTACKS and scenario.strategy not in ("fedavg", "lora"):
        raise ConfigError(
            "attack", f"{attack!r} attacks float updates: it needs strategy fedavg or lora"
        )
    f = scenario.malicious_fraction
    if not (_finite(f) and 0.0 <= f < 1.0):
        raise ConfigError("malicious-fraction", f"must lie in [0, 1), got {f}")
    if attack == "none" and f > 0.0:
        raise ConfigError("malicious-fraction", f"is {f} but attack is 'none': name an attack")
    _check_int(scenario, "attack_seed", low=0)
    _check_int(scenario, "attack_source_class", low=0)
    _check_int(scenario, "attack_target_class", low=0)
    t = scenario.trim_fraction
    if not (_finite(t) and 0.0 <= t < 0.5):
        raise ConfigError("trim-fraction", f"must lie in [0, 0.5), got {t}")
    if scenario.aggregation in ("krum", "multikrum"):
        byzantine = math.floor(t * scenario.clients_per_round + 1e-9)
        if scenario.clients_per_round < 2 * byzantine + 3:
            raise ConfigError(
                "trim-fraction",
                f"krum needs clients-per-round >= 2 f + 3; f = {byzantine} "
                f"of {scenario.clients_per_round}",
            )
    if not (_finite(scenario.filter_mads) and scenario.filter_mads > 0.0):
        raise ConfigError("filter-mads", f"must be a positive number, got {scenario.filter_mads}")
    if not (_finite(scenario.vote_smoothing) and scenario.vote_smoothing >= 0.0):
        raise ConfigError(
            "vote-smoothing", f"must be a finite number >= 0, got {scenario.vote_smoothing}"
        )
    if not (_finite(scenario.attack_scale) and scenario.attack_scale != 0.0):
        raise ConfigError(
            "attack-scale", f"must be finite and non-zero, got {scenario.attack_scale}"
        )
    if not (_finite(scenario.attack_noise_std) and scenario.attack_noise_std > 0.0):
        raise ConfigError("attack-noise-std", f"must be positive, got {scenario.attack_noise_std}")
    if not (_finite(scenario.attack_z_max) and scenario.attack_z_max >= 0.0):
        raise ConfigError(
            "attack-z-max", f"must be >= 0 (0: automatic), got {scenario.attack_z_max}"
        )
    b = scenario.attack_boundary_fraction
    if not (_finite(b) and 0.0 < b <= 1.0):
        raise ConfigError("attack-boundary-fraction", f"must lie in (0, 1], got {b}")
    classes = NUM_CLASSES.get(scenario.dataset, 0)
    targeted = scenario.attack == "label_flip" and scenario.attack_flip_rule == "targeted"
    for name in ("attack_source_class", "attack_target_class") if targeted and classes else ():
        if getattr(scenario, name) >= classes:
            raise ConfigError(
                _dashed(name),
                f"{scenario.dataset} has classes 0..{classes - 1}, got {getattr(scenario, name)}",
            )
    if scenario.attack_flip_rule == "targeted" and (
        scenario.attack_source_class == scenario.attack_target_class
    ):
        raise ConfigError("attack-target-class", "must differ from attack-source-class")


def _dashed(name: str) -> str:
    return name.replace("_", "-")


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(scenario: Scenario, name: str, *, low: int) -> None:
    value = getattr(scenario, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(_dashed(name), f"must be an integer >= {low}, got {value!r}")


def _check_address(name: str, value: str) -> None:
    """Empty, or ``host:port`` (IPv6 hosts in brackets) with a port in 0..65535."""
    if value == "":
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(name, f"must be empty or host:port (e.g. 0.0.0.0:9095), got {value!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(name, f"an IPv6 host must be in brackets ([::]:9095), got {value!r}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Accept ints where floats are expected; reject every other type mismatch."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(key, f"must be true or false, got {value!r}")
        return value
    if isinstance(default, float) or default is None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"must be a number, got {value!r}")
        return float(value)
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"must be an integer, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(key, f"must be a string, got {value!r}")
    return value


# -- LoRA and DP-LoRA fields --------------------------------------------------------

_TEXT_DATASETS = ("rotten-tomatoes",)
_TEXT_MODELS = ("minilm", "tiny-bert")
_MAX_POSITIONS = {"minilm": 512, "tiny-bert": 128}
_SAMPLE_DP = ("sample", "both")
_CLIENT_DP = ("client", "both")


def _check_choice(scenario: Scenario, name: str, kind: Any) -> None:
    value = getattr(scenario, name)
    if value not in get_args(kind):
        raise ConfigError(_dashed(name), f"must be one of {list(get_args(kind))}, got {value!r}")


def _check_number(scenario: Scenario, name: str, *, low: float, high: float = math.inf) -> None:
    value = getattr(scenario, name)
    if not (_finite(value) and low <= value <= high):
        raise ConfigError(_dashed(name), f"must lie in [{low:g}, {high:g}], got {value!r}")


def _check_lora(s: Scenario) -> None:
    """Cross-field rules of LoRA runs; other strategies only refuse text data and DP.

    DP settings are refused wherever they would be ignored (another strategy, or a
    ``dp`` mode that does not use them), so that no run silently lacks a privacy
    guarantee its scenario asks for.
    """
    _check_choice(s, "dp", DpMode)
    sample, client = s.dp in _SAMPLE_DP, s.dp in _CLIENT_DP
    ignored = [
        *(("dp_target_epsilon", "dp_noise_multiplier") if not sample else ()),
        *(("dp_client_target_epsilon", "dp_client_noise_multiplier") if not client else ()),
    ]
    for name in ignored:
        if getattr(s, name) != 0.0:
            raise ConfigError(
                _dashed(name), f"is set ({getattr(s, name)!r}) but dp is {s.dp!r}, which ignores it"
            )
    if s.strategy != "lora":
        if s.dp != "none":
            raise ConfigError(
                "dp", f"only strategy 'lora' supports DP, got strategy {s.strategy!r}"
            )
        if s.dataset in _TEXT_DATASETS or s.model in _TEXT_MODELS:
            bad = "dataset" if s.dataset in _TEXT_DATASETS else "model"
            raise ConfigError(bad, f"{getattr(s, bad)!r} needs strategy 'lora'")
        return
    if s.dataset not in _TEXT_DATASETS:
        raise ConfigError("dataset", f"strategy 'lora' needs one of {list(_TEXT_DATASETS)}")
    if s.model not in _TEXT_MODELS:
        raise ConfigError("model", f"strategy 'lora' needs one of {list(_TEXT_MODELS)}")
    for name, kind in (
        ("lora_aggregation", LoraAggregation),
        ("lora_pooling", LoraPooling),
        ("dp_accountant", DpAccountant),
        ("dp_client_sampling", ClientSampling),
    ):
        _check_choice(s, name, kind)
    for name in ("lora_rank", "lora_alpha", "physical_batch_size"):
        _check_int(s, name, low=1)
    for name in ("train_records", "test_records"):
        _check_int(s, name, low=0)
    _check_number(s, "lora_head_lr", low=0.0)
    _check_int(s, "max_length", low=2)
    if s.max_length > _MAX_POSITIONS[s.model]:
        raise ConfigError(
            "max-length", f"{s.max_length} exceeds {s.model}'s {_MAX_POSITIONS[s.model]} positions"
        )
    if 0 < s.train_records < s.num_clients:
        raise ConfigError(
            "train-records", f"{s.train_records} leaves some of {s.num_clients} clients empty"
        )
    if not (_finite(s.lora_dropout) and 0.0 <= s.lora_dropout < 1.0):
        raise ConfigError("lora-dropout", f"must lie in [0, 1), got {s.lora_dropout!r}")
    targets = s.lora_targets.split(",")
    if not all(t.strip().isidentifier() for t in targets):
        raise ConfigError(
            "lora-targets", f"must be comma-separated module names, got {s.lora_targets!r}"
        )
    if not (_finite(s.dp_delta) and 0.0 < s.dp_delta < 1.0):
        raise ConfigError("dp-delta", f"must lie in (0, 1), got {s.dp_delta!r}")
    for name in (
        "dp_target_epsilon",
        "dp_noise_multiplier",
        "dp_client_target_epsilon",
        "dp_client_noise_multiplier",
    ):
        _check_number(s, name, low=0.0)
    for name in ("dp_clip_norm", "dp_client_clip_norm"):
        if not (_finite(getattr(s, name)) and getattr(s, name) > 0.0):
            raise ConfigError(_dashed(name), f"must be positive, got {getattr(s, name)!r}")
    if sample and s.dp_target_epsilon == 0.0 and s.dp_noise_multiplier == 0.0:
        raise ConfigError(
            "dp-target-epsilon", f"dp {s.dp!r} needs it or dp-noise-multiplier (both are 0)"
        )
    if client and s.dp_client_target_epsilon == 0.0 and s.dp_client_noise_multiplier == 0.0:
        raise ConfigError(
            "dp-client-target-epsilon",
            f"dp {s.dp!r} needs it or dp-client-noise-multiplier (both are 0)",
        )
    if client and s.aggregation != "mean":
        # ClientLevelDp clips and averages the updates itself (its sensitivity bound is
        # that of the mean); a robust rule behind it would never run.
        raise ConfigError(
            "aggregator", f"{s.aggregation!r} cannot run under client-level DP; use 'mean'"
        )
    if s.aggregation in ("median", "trimmed") and s.lora_aggregation == "svd":
        raise ConfigError(
            "aggregator",
            f"{s.aggregation!r} acts on the factors A and B; it cannot feed lora-aggregation "
            "'svd' (use fedit or ffa, or krum/multikrum)",
        )
    if client and s.lora_aggregation == "svd":
        # Client-level DP averages the clipped updates itself; an SVD of the clients'
        # products has no sensitivity bound, so the two do not compose.
        raise ConfigError("lora-aggregation", "'svd' cannot run under client-level DP")
