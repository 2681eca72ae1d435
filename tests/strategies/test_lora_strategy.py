"""LoraAggregation: seeded sampling, reply validation and the selected aggregation."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum, MultiKrum
from flwr.supercore.task_identity import TaskIdentity

from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.lora import LoraAggregation
from fedrank.strategies.lora_aggregation import fedit_average, svd_recompress_updates

PARTITIONS = {0: 11, 1: 12, 2: 13}
RNG = np.random.default_rng(0)
GLOBAL = {
    "m.lora_A": RNG.normal(size=(2, 5)).astype(np.float32),
    "m.lora_B": np.zeros((4, 2), dtype=np.float32),
    "classifier.weight": RNG.normal(size=(2, 4)).astype(np.float32),
}
CODEC = ArraysCodec.for_state(GLOBAL)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages take run and node ids from the running ServerApp; give them some.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def record(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def reply(message: Message, values: dict[str, np.ndarray], num_examples: float) -> Message:
    content = RecordDict(
        {
            "arrays": record(values),
            "metrics": MetricRecord({"num-examples": num_examples, "train-loss": 0.5}),
        }
    )
    return Message(content, reply_to=message)


def client_update(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in GLOBAL.items()}


def run_round(
    strategy: LoraAggregation, updates: Sequence[dict[str, np.ndarray]], counts: Sequence[float]
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    messages = sorted(
        strategy.configure_train(1, record(GLOBAL), ConfigRecord({}), None),  # type: ignore[arg-type]  # no grid needed
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [reply(m, u, c) for m, u, c in zip(messages, updates, counts, strict=True)]
    return strategy.aggregate_train(1, replies)


def make(mode: str = "fedit", **kwargs: int) -> LoraAggregation:
    return LoraAggregation(
        codec=CODEC,
        partitions=PARTITIONS,
        clients_per_round=kwargs.pop("clients_per_round", 3),
        seed=0,
        mode=mode,  # type: ignore[arg-type]
        rank=2,
        **kwargs,
    )


def test_fedit_is_the_example_weighted_average_of_the_valid_replies() -> None:
    updates = [client_update(s) for s in range(3)]

    arrays, metrics = run_round(make(), updates, [10, 20, 30])

    assert arrays is not None
    assert metrics is not None
    expected = fedit_average(updates, [10, 20, 30])
    assert list(arrays.keys()) == list(GLOBAL)
    for name, value in expected.items():
        np.testing.assert_array_equal(arrays[name].numpy(), value)
    assert (metrics["replies"], metrics["rejected"]) == (3, 0)


def test_svd_mode_recompresses_the_products() -> None:
    updates = [client_update(s) for s in range(3)]

    arrays, _ = run_round(make("svd"), updates, [1, 1, 2])

    assert arrays is not None
    expected = svd_recompress_updates(updates, [1, 1, 2], rank=2)
    for name, value in expected.items():
        np.testing.assert_allclose(arrays[name].numpy(), value, rtol=1e-6)


def test_sampling_is_seeded_by_partition() -> None:
    first = [
        m.metadata.dst_node_id
        for m in make(clients_per_round=2).configure_train(
            4,
            record(GLOBAL),
            ConfigRecord({}),
            None,  # type: ignore[arg-type]
        )
    ]
    again = [
        m.metadata.dst_node_id
        for m in make(clients_per_round=2).configure_train(
            4,
            record(GLOBAL),
            ConfigRecord({}),
            None,  # type: ignore[arg-type]
        )
    ]

    assert first == again
    assert len(first) == 2
    assert set(first) <= set(PARTITIONS.values())


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ({k: v for k, v in GLOBAL.items() if k != "m.lora_B"}, "missing_tensor"),
        (GLOBAL | {"other": np.zeros(2, dtype=np.float32)}, "extra_tensor"),
        (GLOBAL | {"m.lora_B": np.zeros((4, 3), dtype=np.float32)}, "wrong_shape"),
        (GLOBAL | {"m.lora_B": np.zeros((4, 2), dtype=np.float64)}, "wrong_dtype"),
        (GLOBAL | {"m.lora_B": np.full((4, 2), np.nan, dtype=np.float32)}, "not_finite"),
    ],
)
def test_a_bad_reply_is_rejected_with_its_reason_and_the_round_goes_on(
    bad: dict[str, np.ndarray], reason: str
) -> None:
    good = [client_update(0), client_update(1)]

    arrays, metrics = run_round(make(), [good[0], bad, good[1]], [10, 10, 10])

    assert arrays is not None
    assert metrics is not None
    assert (metrics["replies"], metrics["rejected"], metrics[f"rejected.{reason}"]) == (2, 1, 1)
    expected = fedit_average(good, [1, 1])
    np.testing.assert_array_equal(arrays["m.lora_A"].numpy(), expected["m.lora_A"])


def test_a_bad_example_count_is_rejected() -> None:
    updates = [client_update(s) for s in range(3)]

    for bad in (0, float("nan"), 1e308, -5):
        _, metrics = run_round(make(), updates, [10, bad, bad])

        assert metrics is not None
        assert (metrics["replies"], metrics["rejected.bad_num_examples"]) == (1, 2)


def test_too_few_valid_replies_skip_the_round() -> None:
    updates = [client_update(0), {}, {}]

    arrays, metrics = run_round(make(min_replies=2), updates, [1, 1, 1])

    assert arrays is None
    assert metrics is not None
    assert metrics["replies"] == 1


def test_ffa_mode_refuses_an_a_factor() -> None:
    with pytest.raises(ValueError, match="FFA-LoRA"):
        run_round(make("ffa"), [client_update(s) for s in range(3)], [1, 1, 1])


# ---------------------------------------------------------------- robust rules (Flower's)

SEVEN = {pid: 20 + pid for pid in range(7)}


def robust_round(
    robust: str,
    updates: Sequence[dict[str, np.ndarray]],
    counts: Sequence[float],
    trim_fraction: float = 0.2,
) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
    """One round of a 7-client LoraAggregation with ``robust``; also the replies it got."""
    strategy = LoraAggregation(
        codec=CODEC,
        partitions=SEVEN,
        clients_per_round=7,
        seed=0,
        mode="fedit",
        rank=2,
        robust=robust,
        trim_fraction=trim_fraction,
    )
    messages = sorted(
        strategy.configure_train(1, record(GLOBAL), ConfigRecord({}), None),  # type: ignore[arg-type]  # no grid needed
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [reply(m, u, c) for m, u, c in zip(messages, updates, counts, strict=True)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # Flower's strategies pop arrays out of what they aggregate: hand them fresh copies.
    fresh = [reply(m, u, c) for m, u, c in zip(messages, updates, counts, strict=True)]
    return arrays, metrics, fresh


def attacked_updates() -> list[dict[str, np.ndarray]]:
    """Five benign adapters and two attackers' (a -20x scaled update, a huge one)."""
    benign = [client_update(s) for s in range(5)]
    scaled = {k: (g - 20.0 * (benign[0][k] - g)).astype(g.dtype) for k, g in GLOBAL.items()}
    huge = {k: (g + 1e3).astype(g.dtype) for k, g in GLOBAL.items()}
    return [benign[0], scaled, benign[1], benign[2], huge, benign[3], benign[4]]


@pytest.mark.parametrize(
    ("robust", "flower"),
    [
        ("median", lambda: FedMedian()),
        ("trimmed", lambda: FedTrimmedAvg(beta=0.2)),
        ("multikrum", lambda: MultiKrum(num_malicious_nodes=1, num_nodes_to_select=6)),
        ("krum", lambda: Krum(num_malicious_nodes=1)),
    ],
)
def test_a_robust_lora_round_equals_flowers_own_strategy_on_the_same_replies(
    robust: str, flower: Callable[[FedAvg], FedAvg]
) -> None:
    counts = [10, 20, 30, 40, 50, 60, 70]
    arrays, _, fresh = robust_round(robust, attacked_updates(), counts)

    expected, _ = flower().aggregate_train(1, fresh)  # type: ignore[call-arg]

    assert arrays is not None
    assert expected is not None
    assert list(arrays.keys()) == list(GLOBAL)
    for name in GLOBAL:
        np.testing.assert_allclose(arrays[name].numpy(), expected[name].numpy(), rtol=1e-5)


@pytest.mark.parametrize("robust", ["median", "trimmed", "krum", "multikrum"])
def test_robust_rules_stay_near_the_benign_mean_where_the_plain_average_does_not(
    robust: str,
) -> None:
    updates = attacked_updates()
    benign = [updates[i] for i in (0, 2, 3, 5, 6)]
    target = fedit_average(benign, [1.0] * 5)
    counts = [1.0] * 7

    # Two attackers of seven: f = floor(0.3 * 7) = 2, and the trimmed mean cuts 2 at each end.
    arrays, metrics, _ = robust_round(robust, updates, counts, trim_fraction=0.3)
    plain, _, _ = robust_round("mean", updates, counts)

    assert arrays is not None
    assert plain is not None
    assert metrics is not None
    for name in GLOBAL:
        spread = max(float(np.abs(u[name] - target[name]).max()) for u in benign)
        assert float(np.abs(arrays[name].numpy() - target[name]).max()) <= spread
        assert float(np.abs(plain[name].numpy() - target[name]).max()) > 10 * spread
    if robust in ("krum", "multikrum"):  # Multi-Krum keeps m - f = 5 of 7
        assert metrics["filtered"] == (6 if robust == "krum" else 2)


def test_coordinate_rules_cannot_feed_svd_and_unknown_rules_are_refused() -> None:
    with pytest.raises(ValueError, match="svd"):
        LoraAggregation(
            codec=CODEC,
            partitions=SEVEN,
            clients_per_round=7,
            seed=0,
            mode="svd",
            rank=2,
            robust="median",
        )
    with pytest.raises(ValueError, match="robust"):
        LoraAggregation(
            codec=CODEC,
            partitions=SEVEN,
            clients_per_round=7,
            seed=0,
            mode="fedit",
            rank=2,
            robust="mode",
        )
