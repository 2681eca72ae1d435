"""The run, training, data, model and output sections of a scenario."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from fedrank.config.fields import check_section, setting
from fedrank.errors import ConfigError

Device = Literal["auto", "cpu", "cuda"]
Partitioner = Literal["iid", "dirichlet", "pathological", "shard"]

MAX_SEED = 2**32 - 1


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """How the federation runs: which strategy, how many clients and rounds, where."""

    PREFIX: ClassVar[str] = ""

    strategy: str = setting("frl", "what clients send and the server aggregates: frl, fedavg, lora")
    num_clients: int = setting(50, "clients (partitions) in the federation", low=1)
    clients_per_round: int = setting(10, "clients sampled each round", low=1)
    rounds: int = setting(40, "rounds of training", low=1)
    seed: int = setting(
        0, "seed of partitions, sampling, initial model and local training", low=0, high=MAX_SEED
    )
    min_replies: int = setting(1, "fewer valid replies than this skip the round", low=1)
    min_clients: int = setting(
        0,
        "fewest nodes that must pass discovery for the run to start (the others are left "
        "out with a reason); 0: clients-per-round",
        low=0,
    )
    connect_timeout: float = setting(
        20.0,
        "seconds to wait for num-clients nodes to connect; then the run fails naming both counts",
        low=0.0,
        low_open=True,
    )
    discovery_timeout: float = setting(
        120.0,
        "seconds to wait for the nodes' discovery answers (each loads the task first); "
        "a node that has not answered by then is left out",
        low=0.0,
        low_open=True,
    )
    round_timeout: float = setting(
        600.0, "seconds to wait for a round's replies", low=0.0, low_open=True
    )
    num_cpus_per_client: float = setting(
        1.0, "CPUs a Ray client reserves (and its torch threads)", low=0.0, low_open=True
    )
    num_gpus_per_client: float = setting(0.0, "GPUs a Ray client reserves", low=0.0)
    device: Device = setting("auto", "where training and evaluation run: auto, cpu or cuda")

    def __post_init__(self) -> None:
        check_section(self)
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
        if self.min_clients > self.num_clients:
            raise ConfigError(
                "min-clients", f"{self.min_clients} exceeds num-clients ({self.num_clients})"
            )
        if 0 < self.min_clients < self.clients_per_round:
            raise ConfigError(
                "min-clients",
                f"{self.min_clients} is below clients-per-round ({self.clients_per_round}), "
                "which every round samples: give 0 or at least clients-per-round",
            )

    @property
    def required_clients(self) -> int:
        """Nodes that must pass discovery for the run to start (``min-clients`` resolved)."""
        return self.min_clients or self.clients_per_round


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A client's local training."""

    PREFIX: ClassVar[str] = ""

    local_epochs: int = setting(2, "local epochs per round", low=1)
    lr: float = setting(0.0, "local learning rate; 0: the strategy's default", low=0.0)
    momentum: float = setting(0.9, "SGD momentum (frl, fedavg)", low=0.0, high=1.0, high_open=True)
    batch_size: int = setting(16, "local batch size (the expected batch under DP-SGD)", low=1)

    def __post_init__(self) -> None:
        check_section(self)


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """The data and how it is split across clients."""

    PREFIX: ClassVar[str] = ""

    dataset: str = setting(
        "",
        "packaged name (mnist5k, digits, rotten-tomatoes, ...) or a path to a datasets folder "
        "or data files; empty: the strategy's default",
    )
    image_column: str = setting("image", "column of the images in a user dataset")
    text_column: str = setting("text", "column of the texts in a user dataset")
    label_column: str = setting("label", "column of the integer labels in a user dataset")
    partitioner: Partitioner = setting(
        "dirichlet", "how examples are split: iid, dirichlet, pathological (label skew), shard"
    )
    alpha: float = setting(
        1.0, "Dirichlet concentration (smaller: more skew)", low=0.0, low_open=True
    )
    classes_per_client: int = setting(2, "pathological: classes each client holds", low=1)
    shards_per_client: int = setting(2, "shard: label-sorted shards each client holds", low=1)
    test_fraction: float = setting(
        0.2,
        "share held out for the server's test set (when the data has no test split)",
        low=0.0,
        high=1.0,
        low_open=True,
        high_open=True,
    )
    train_records: int = setting(0, "a seeded subset of the training split; 0: all", low=0)
    test_records: int = setting(0, "the first N of the fixed test order; 0: all", low=0)
    eval_fraction: float = setting(
        0.0,
        "share of each client's examples held out, never trained on, to evaluate the "
        "global model on every round (federated evaluation); 0: off",
        low=0.0,
        high=1.0,
        high_open=True,
    )

    def __post_init__(self) -> None:
        check_section(self)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The model every party builds."""

    PREFIX: ClassVar[str] = ""

    name: str = setting(
        "",
        "mlp, cnn, package.module:factory (images); minilm, a Hugging Face id or folder "
        "(lora); empty: the strategy's default",
        key="model",
    )
    max_length: int = setting(64, "tokens per text (lora)", low=2)

    def __post_init__(self) -> None:
        check_section(self)


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """Where a run writes and serves what it did."""

    PREFIX: ClassVar[str] = ""

    results_dir: str = setting(
        "results/latest",
        "the run's results folder, which must be new or empty; at the default each run gets a "
        "new results/runs/<date>-<time> and results/latest links it",
    )
    status_address: str = setting(
        "", "host:port where the coordinator serves health and status (empty: off)"
    )
    status_linger: float = setting(
        30.0, "seconds the status keeps answering finished/failed after the run", low=0.0
    )
    resume_from: str = setting(
        "",
        "flwr run: the results folder of an earlier run to continue after its last "
        "checkpoint (the same settings; only rounds, round-timeout, resources, device "
        "may change); empty: a new run",
    )

    def __post_init__(self) -> None:
        check_section(self)
        if not self.results_dir:
            raise ConfigError("results-dir", "must not be empty")
        check_address("status-address", self.status_address)


def check_address(key: str, value: str) -> None:
    """Empty, or ``host:port`` (IPv6 hosts in brackets) with a port in 0..65535."""
    if value == "":
        return
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(key, f"must be empty or host:port (e.g. 0.0.0.0:9095), got {value!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(key, f"an IPv6 host must be in brackets ([::]:9095), got {value!r}")
