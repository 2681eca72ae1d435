"""Flower's FedAvgM, FedAdam, FedYogi, FedProx and Bulyan behind fedrank's gate and sampling."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvg, FedAvgM, FedProx, FedYogi

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.protos import keys
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.strategies.baselines import (
    SeededBulyan,
    SeededFedAdam,
    SeededFedAvgM,
    SeededFedProx,
    SeededFedYogi,
    array_from_json,
    array_to_json,
    baseline_strategy,
)
from fedrank.strategies.fedavg import SeededFedAvg
from fedrank.strategies.lora import lora_strategy
from fedrank.strategies.robust_fedavg import fedavg_strategy

pytestmark = pytest.mark.usefixtures("flower_identity")

PARTITIONS = {p: 100 + p for p in range(8)}
RNG = np.random.default_rng(0)
GLOBAL = {
    "fc.weight": RNG.normal(scale=0.1, size=(4, 3)).astype(np.float32),
    "fc.bias": np.zeros(4, dtype=np.float32),
}
CODEC = ArraysCodec.for_state(GLOBAL)
COUNTS = [10, 30, 20, 40, 10, 50, 25, 15]

# (ours, Flower's, the settings both get)
CASES: dict[str, tuple[Callable[..., SeededFedAvg], Callable[..., FedAvg], dict[str, Any]]] = {
    "fedavgm": (SeededFedAvgM, FedAvgM, {"server_learning_rate": 0.7, "server_momentum": 0.9}),
    "fedadam": (
        SeededFedAdam,
        FedAdam,
        {"eta": 0.01, "eta_l": 0.1, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    ),
    "fedyogi": (
        SeededFedYogi,
        FedYogi,
        {"eta": 0.01, "eta_l": 0.1, "beta_1": 0.8, "beta_2": 0.95, "tau": 1e-2},
    ),
    "fedprox": (SeededFedProx, FedProx, {"proximal_mu": 0.1}),
    "bulyan": (SeededBulyan, Bulyan, {"num_malicious_nodes": 1}),
}


class NodesGrid:
    """What Flower's own ``configure_train`` asks of a grid: the connected nodes."""

    def __init__(self, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)


def client_arrays(seed: int, base: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(scale=0.05, size=v.shape)).astype(v.dtype) for k, v in base.items()}


def reply_to(message: Message, arrays: dict[str, Any], count: int, **extra: float) -> Message:
    content = RecordDict(
        {
            keys.ARRAYS: to_array_record(arrays),
            keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: count, **extra}),
        }
    )
    return Message(content=content, reply_to=message)


Valid = list[tuple[dict[str, np.ndarray], int]]


def ours_round(
    strategy: SeededFedAvg, server_round: int, state: dict[str, np.ndarray], bad: int = -1
) -> tuple[dict[str, np.ndarray] | None, MetricRecord | None, Valid]:
    """One round of our strategy: the sampled clients answer (the ``bad``-th sampled one
    with a wrong shape), in reverse order; returns the new state, the metrics and the
    valid replies' arrays and example counts in partition order."""
    messages = sorted(
        strategy.configure_train(server_round, to_array_record(state), ConfigRecord(), None),  # type: ignore[arg-type]  # no grid needed
        key=lambda m: m.metadata.dst_node_id,
    )
    replies, valid = [], []
    for i, message in enumerate(messages):
        arrays = client_arrays(1000 * server_round + i, state)
        count = COUNTS[message.metadata.dst_node_id - 100]
        if i == bad:
            arrays = {**arrays, "fc.bias": np.zeros(5, dtype=np.float32)}
        else:
            valid.append((arrays, count))
        replies.append(reply_to(message, arrays, count, **{keys.TRAIN_LOSS: 0.5}))
    arrays, metrics = strategy.aggregate_train(server_round, list(reversed(replies)))
    return (None if arrays is None else from_array_record(arrays)), metrics, valid


def flowers_round(
    flower: FedAvg, server_round: int, state: dict[str, np.ndarray], valid: Valid
) -> dict[str, np.ndarray] | None:
    """Flower's own strategy on the same valid replies (only arrays and weights)."""
    grid = NodesGrid(list(PARTITIONS.values()))
    messages = list(
        flower.configure_train(server_round, to_array_record(state), ConfigRecord(), grid)
    )  # type: ignore[arg-type]  # a grid as far as Flower asks
    replies = [reply_to(messages[0], arrays, count) for arrays, count in valid]
    arrays, _ = flower.aggregate_train(server_round, replies)
    return None if arrays is None else from_array_record(arrays)


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_baseline_equals_flowers_own_strategy_over_rounds(name: str) -> None:
    ours_class, flower_class, settings = CASES[name]
    # 8 sampled, one rejected: 7 valid, what Bulyan needs at f = 1.
    ours = ours_class(codec=CODEC, partitions=PARTITIONS, clients_per_round=8, seed=4, **settings)
    flower = flower_class(**settings)
    assert isinstance(ours, flower_class)
    state_ours, state_flower = dict(GLOBAL), dict(GLOBAL)

    for server_round in (1, 2, 3):
        new_ours, metrics, valid = ours_round(ours, server_round, state_ours, bad=2)
        new_flower = flowers_round(flower, server_round, state_flower, valid)

        assert metrics is not None
        assert (metrics["replies"], metrics["rejected"]) == (7, 1)
        assert new_ours is not None
        assert new_flower is not None
        for key, value in new_ours.items():
            assert value.dtype == GLOBAL[key].dtype  # the layout's dtype, always
            np.testing.assert_array_equal(value, new_flower[key].astype(value.dtype))
        # The run's next global state is in the layout's dtypes (Flower's FedAdam widens).
        state_ours = new_ours
        state_flower = {k: v.astype(GLOBAL[k].dtype) for k, v in new_flower.items()}


def test_fedadam_keeps_the_layout_dtype_that_flowers_bias_correction_widens() -> None:
    ours_class, flower_class, settings = CASES["fedadam"]
    flower = flower_class(**settings)
    ours = ours_class(codec=CODEC, partitions=PARTITIONS, clients_per_round=7, seed=4, **settings)
    new_ours, _, valid = ours_round(ours, 1, GLOBAL)
    new_flower = flowers_round(flower, 1, GLOBAL, valid)

    assert new_flower is not None
    assert new_ours is not None
    assert new_flower["fc.weight"].dtype == np.float64  # what the next clients would refuse
    assert new_ours["fc.weight"].dtype == np.float32


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi"])
def test_a_restored_server_optimizer_continues_bit_for_bit(name: str) -> None:
    ours_class, _, settings = CASES[name]

    def make() -> SeededFedAvg:
        return ours_class(codec=CODEC, partitions=PARTITIONS, clients_per_round=5, **settings)

    whole, interrupted = make(), make()
    state_whole = state_cut = dict(GLOBAL)
    for server_round in (1, 2):
        state_whole = ours_round(whole, server_round, state_whole)[0] or state_whole
        state_cut = ours_round(interrupted, server_round, state_cut)[0] or state_cut
    saved = json.loads(json.dumps(interrupted.state_dict()))  # what a checkpoint holds
    resumed = make()
    resumed.load_state_dict(saved)  # type: ignore[attr-defined]  # each baseline with state has it

    for server_round in (3, 4):
        state_whole = ours_round(whole, server_round, state_whole)[0] or state_whole
        state_cut = ours_round(resumed, server_round, state_cut)[0] or state_cut
    for key in GLOBAL:
        np.testing.assert_array_equal(state_whole[key], state_cut[key])
    assert json.dumps(whole.state_dict()) == json.dumps(resumed.state_dict())  # type: ignore[attr-defined]


def test_arrays_come_back_from_json_exactly() -> None:
    value = np.asarray([[1e-38, -0.0], [np.pi, 3.0]], dtype=np.float32)
    back = array_from_json(json.loads(json.dumps(array_to_json(value))))
    assert back.dtype == value.dtype
    assert back.shape == value.shape
    assert back.tobytes() == value.tobytes()
    back[0, 0] = 1.0  # writable, not a view of the text
    assert value[0, 0] == np.float32(1e-38)


def test_fedprox_sends_mu_without_touching_the_callers_config() -> None:
    ours_class, _, settings = CASES["fedprox"]
    ours = ours_class(codec=CODEC, partitions=PARTITIONS, clients_per_round=3, **settings)
    config = ConfigRecord({"settings-digest": "abc"})

    messages = list(ours.configure_train(1, to_array_record(GLOBAL), config, None))  # type: ignore[arg-type]  # no grid needed

    assert len(messages) == 3
    assert all(m.content[keys.CONFIG][keys.PROXIMAL_MU] == 0.1 for m in messages)
    assert dict(config) == {"settings-digest": "abc"}


def test_bulyan_skips_a_round_with_fewer_than_4f_plus_3_valid_replies() -> None:
    ours = SeededBulyan(
        codec=CODEC, partitions=PARTITIONS, clients_per_round=7, num_malicious_nodes=1
    )
    messages = sorted(
        ours.configure_train(1, to_array_record(GLOBAL), ConfigRecord(), None),  # type: ignore[arg-type]  # no grid needed
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [reply_to(m, client_arrays(i, GLOBAL), 10) for i, m in enumerate(messages[:6])]

    arrays, metrics = ours.aggregate_train(1, replies)

    assert arrays is None  # 6 < 4 * 1 + 3: the loop keeps the global state
    assert metrics is not None
    assert metrics["replies"] == 6


# ------------------------------------------------------------------ from a scenario


def image(**changes: Any) -> Scenario:
    return Scenario.of(strategy="fedavg", clients_per_round=10, **changes)


def lora(**changes: Any) -> Scenario:
    return Scenario.of(strategy="lora", model="tiny-bert", clients_per_round=10, **changes)


def test_a_scenario_builds_flowers_strategy_with_its_settings() -> None:
    built = fedavg_strategy(
        image(aggregator="fedyogi", server_beta1=0.5, server_tau=0.01, lr=0.05),
        codec=CODEC,
        partitions=PARTITIONS,
    )
    assert isinstance(built, SeededFedYogi)
    assert (built.eta, built.eta_l, built.beta_1, built.beta_2, built.tau) == (
        0.01, 0.05, 0.5, 0.99, 0.01,
    )  # fmt: skip
    momentum = fedavg_strategy(
        image(aggregator="fedavgm", server_lr=0.5), codec=CODEC, partitions=PARTITIONS
    )
    assert isinstance(momentum, SeededFedAvgM)
    assert (momentum.server_learning_rate, momentum.server_momentum, momentum.server_opt) == (
        0.5,
        0.5,
        True,
    )
    bulyan = fedavg_strategy(
        image(aggregator="bulyan", trim_fraction=0.1), codec=CODEC, partitions=PARTITIONS
    )
    assert isinstance(bulyan, SeededBulyan)
    assert bulyan.num_malicious_nodes == 1
    prox = fedavg_strategy(image(aggregator="fedprox"), codec=CODEC, partitions=PARTITIONS)
    assert isinstance(prox, SeededFedProx)
    assert prox.proximal_mu == 0.01


def test_lora_adapters_get_the_same_flower_strategies() -> None:
    # FedIT: A and B travel, each its own pseudo-gradient; FFA: B only (the codec's layout).
    adapter = {"q.lora_A": np.zeros((2, 5), np.float32), "q.lora_B": np.zeros((4, 2), np.float32)}
    fedit = lora_strategy(
        lora(aggregator="fedadam"), codec=ArraysCodec.for_state(adapter), partitions=PARTITIONS
    )
    assert isinstance(fedit, SeededFedAdam)
    ffa = lora_strategy(
        lora(aggregator="fedavgm", lora_aggregation="ffa"),
        codec=ArraysCodec.for_state({"q.lora_B": adapter["q.lora_B"]}),
        partitions=PARTITIONS,
    )
    assert isinstance(ffa, SeededFedAvgM)
    assert list(ffa.codec.layout) == ["q.lora_B"]


@pytest.mark.parametrize(
    ("build", "key", "match"),
    [
        (lambda: image(aggregator="fedavgm", server_momentum=1.0), "server-momentum", r"\[0, 1\)"),
        (lambda: image(aggregator="fedadam", server_beta1=1.0), "server-beta1", r"\[0, 1\)"),
        (lambda: image(aggregator="fedadam", server_beta2=-0.1), "server-beta2", r"\[0, 1\)"),
        (lambda: image(aggregator="fedyogi", server_tau=0.0), "server-tau", r"\(0, inf\]"),
        (lambda: image(aggregator="fedadam", server_lr=-1.0), "server-lr", r"\[0, inf\]"),
        (lambda: image(aggregator="fedprox", proximal_mu=-0.5), "proximal-mu", r"\[0, inf\]"),
        (lambda: image(aggregator="bulyan"), "trim-fraction", "4 f \\+ 3.*trim-fraction 0.1"),
        (lambda: Scenario.of(aggregator="fedadam"), "aggregator", "not a frl aggregator"),
        (lambda: lora(aggregator="fedadam", lora_aggregation="svd"), "aggregator", "svd"),
        (
            lambda: lora(aggregator="bulyan", trim_fraction=0.1, lora_aggregation="svd"),
            "aggregator",
            "svd",
        ),
        (
            lambda: lora(aggregator="fedyogi", dp="client", dp_client_noise_multiplier=1.0),
            "aggregator",
            "client-level DP",
        ),
        (
            lambda: lora(aggregator="fedprox", dp="sample", dp_noise_multiplier=1.0),
            "aggregator",
            "proximal term",
        ),
    ],
)
def test_bad_settings_are_refused_naming_the_key(
    build: Callable[[], Scenario], key: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match) as caught:
        build()
    assert caught.value.field == key


def test_builder_refuses_a_rule_it_does_not_own() -> None:
    with pytest.raises(ValueError, match="not a Flower baseline"):
        baseline_strategy(image(aggregator="median"), codec=CODEC, partitions=PARTITIONS)


def test_server_optimizers_step_on_array_record_copies() -> None:
    # The global arrays handed to configure_train are never modified.
    ours_class, _, settings = CASES["fedavgm"]
    ours = ours_class(codec=CODEC, partitions=PARTITIONS, clients_per_round=4, **settings)
    record = ArrayRecord({k: Array(v.copy()) for k, v in GLOBAL.items()})
    before = {k: a.numpy().copy() for k, a in record.items()}
    messages = sorted(
        ours.configure_train(1, record, ConfigRecord(), None), key=lambda m: m.metadata.dst_node_id
    )  # type: ignore[arg-type]  # no grid needed
    ours.aggregate_train(
        1, [reply_to(m, client_arrays(i, GLOBAL), 10) for i, m in enumerate(messages)]
    )
    for key, value in before.items():
        np.testing.assert_array_equal(record[key].numpy(), value)
