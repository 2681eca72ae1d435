"""ClientLevelDp around a real flwr FedAvg, on hand-built messages."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedrank.errors import ConfigError, PrivacyBudgetExhausted
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.privacy.mechanisms import l2_norm
from fedrank.privacy.randomness import RandomSource
from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.dp_client_level import AdaptiveClipping, ClientLevelDp

DELTA = 1e-5


class FakeGrid:
    """The part of flwr's Grid that strategies' configure_* methods use."""

    def __init__(self, node_ids: Sequence[int]) -> None:
        self.node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    # Messages take run and node ids from the running ServerApp; give them some.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def arrays_of(values: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in values.items()})


def reply_to(message: Message, values: dict[str, np.ndarray], num_examples: int) -> Message:
    """A train reply as a ClientApp sends it: "arrays" and "metrics" with num-examples."""
    content = RecordDict(
        {"arrays": arrays_of(values), "metrics": MetricRecord({"num-examples": num_examples})}
    )
    return Message(content, reply_to=message)


def make_ledger(path: Path, budget: float | None = None) -> PrivacyLedger:
    return PrivacyLedger(path, budget_epsilon=budget, delta=DELTA, accountant="rdp")


def make_strategy(
    ledger: PrivacyLedger,
    *,
    m: int = 3,
    sigma: float = 1.0,
    clip: float = 1.0,
    seed: int = 0,
    **kwargs: object,
) -> ClientLevelDp:
    """A wrapper whose noise is replayable from ``seed`` (tests only), diagnostics on."""
    inner = FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1)
    options: dict[str, object] = {"publish_diagnostics": True, **kwargs}
    return ClientLevelDp(
        inner,
        codec=ArraysCodec.for_state(GLOBAL),
        ledger=ledger,
        clip_norm=clip,
        noise_multiplier=sigma,
        expected_clients=m,
        source=RandomSource.reproducible(seed),
        **options,  # type: ignore[arg-type]
    )


GLOBAL = {"w": np.full((2, 2), 0.5, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}


def run_round(
    strategy: ClientLevelDp,
    server_round: int,
    global_values: dict[str, np.ndarray],
    deltas: Sequence[dict[str, np.ndarray]],
) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
    grid = FakeGrid(range(1, len(deltas) + 1))
    messages = sorted(
        strategy.configure_train(server_round, arrays_of(global_values), ConfigRecord(), grid),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [
        reply_to(
            msg, {k: global_values[k] + d[k] for k in global_values}, num_examples=10 * (i + 1)
        )
        for i, (msg, d) in enumerate(zip(messages, deltas, strict=True))
    ]
    arrays, metrics = strategy.aggregate_train(server_round, replies)
    return arrays, metrics, replies


# sigma = 1e-9 gives an enormous epsilon, whose best RDP order is the smallest.
@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
def test_updates_are_clipped_and_averaged_uniformly(tmp_path: Path) -> None:
    # Arrange: one update far outside the ball (norm 10), one inside (norm 0.5); sigma
    # so small that the noise is far below the tolerance.
    big = {"w": np.full((2, 2), 5.0, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
    small = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.array([0.3, 0.4], dtype=np.float32)}
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"), m=2, sigma=1e-9, clip=1.0)

    # Act
    arrays, metrics, _ = run_round(strategy, 1, GLOBAL, [big, small])

    # Assert: (big / 10 + small) / 2 added to the global model, num-examples ignored.
    assert arrays is not None
    assert metrics is not None
    np.testing.assert_allclose(arrays["w"].numpy(), 0.5 + 0.5 / 2, atol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), [0.15, 0.2], atol=1e-6)
    assert arrays["w"].numpy().dtype == np.float32
    assert metrics["dp-clip-fraction"] == 0.5
    assert metrics["replies"] == 2


def test_noise_on_the_average_has_std_sigma_c_over_m(tmp_path: Path) -> None:
    n = 100_000
    global_values = {"w": np.zeros(n, dtype=np.float64)}
    sigma, clip, m = 2.0, 0.5, 4
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"), m=m, sigma=sigma, clip=clip)
    zero = {"w": np.zeros(n)}

    arrays, metrics, _ = run_round(strategy, 1, global_values, [zero] * m)

    assert arrays is not None
    assert metrics is not None
    noise = arrays["w"].numpy()
    expected = sigma * clip / m
    assert metrics["dp-noise-std"] == pytest.approx(expected)
    assert abs(noise.std() / expected - 1) < 0.02
    assert abs(noise.mean()) < 5 * expected / math.sqrt(n)


def test_every_round_is_recorded_and_epsilon_accumulates(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    ledger = make_ledger(path)
    strategy = make_strategy(ledger, m=2, sigma=1.5, clip=1.0)
    delta = {k: np.ones_like(v) for k, v in GLOBAL.items()}

    epsilons = []
    values = GLOBAL
    for r in (1, 2, 3):
        arrays, metrics, _ = run_round(strategy, r, values, [delta, delta])
        assert arrays is not None
        assert metrics is not None
        values = {k: arrays[k].numpy() for k in GLOBAL}
        epsilons.append(metrics["dp-epsilon"])

    releases = make_ledger(path).releases
    assert [r.round for r in releases] == [1, 2, 3]
    assert all(
        (r.mechanism, r.unit, r.party, r.noise_multiplier, r.sample_rate, r.steps, r.clip_norm)
        == ("client-gaussian", "client", "server", 1.5, 1.0, 1, 1.0)
        for r in releases
    )
    assert epsilons[0] < epsilons[1] < epsilons[2]
    assert epsilons[2] == compute_epsilon(history=[(1.5, 1.0, 3)], delta=DELTA, accountant="rdp")


def test_budget_stops_the_round_before_any_release(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    one = compute_epsilon(history=[(1.0, 1.0, 1)], delta=DELTA, accountant="rdp")
    two = compute_epsilon(history=[(1.0, 1.0, 2)], delta=DELTA, accountant="rdp")
    strategy = make_strategy(make_ledger(path, budget=(one + two) / 2), m=2)
    delta = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    run_round(strategy, 1, GLOBAL, [delta, delta])
    before = path.read_bytes()

    with pytest.raises(PrivacyBudgetExhausted, match="round 2"):
        run_round(strategy, 2, GLOBAL, [delta, delta])

    assert path.read_bytes() == before


def test_replies_and_config_are_not_mutated(tmp_path: Path) -> None:
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"), m=2)
    config = ConfigRecord({"lr": 0.1})
    messages = list(strategy.configure_train(1, arrays_of(GLOBAL), config, FakeGrid([1, 2])))  # type: ignore[arg-type]
    big = {k: v + 10.0 for k, v in GLOBAL.items()}
    replies = [reply_to(msg, big, 5) for msg in messages]
    snapshot = [{k: r.content["arrays"][k].numpy().copy() for k in GLOBAL} for r in replies]

    strategy.aggregate_train(1, replies)

    assert dict(config) == {"lr": 0.1}
    for reply, saved in zip(replies, snapshot, strict=True):
        for k in GLOBAL:
            np.testing.assert_array_equal(reply.content["arrays"][k].numpy(), saved[k])


def test_same_seed_same_model_other_seed_other_noise(tmp_path: Path) -> None:
    delta = {k: np.ones_like(v) for k, v in GLOBAL.items()}

    def release(seed: int, name: str) -> np.ndarray:
        strategy = make_strategy(make_ledger(tmp_path / name), m=2, seed=seed)
        arrays, _, _ = run_round(strategy, 4, GLOBAL, [delta, delta])
        assert arrays is not None
        return arrays["w"].numpy()

    np.testing.assert_array_equal(release(7, "a"), release(7, "b"))
    assert not np.array_equal(release(7, "c"), release(8, "d"))


def test_a_malformed_reply_is_rejected_and_the_round_goes_on(tmp_path: Path) -> None:
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"), m=2)
    messages = list(
        strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))
    )  # type: ignore[arg-type]
    good = reply_to(messages[0], GLOBAL, 5)
    bad = reply_to(messages[1], {"w": np.zeros(3, dtype=np.float32), "b": GLOBAL["b"]}, 5)

    arrays, metrics = strategy.aggregate_train(1, [good, bad])

    assert arrays is not None
    assert metrics is not None
    assert metrics["replies"] == 1
    assert metrics["rejected"] == 1


def test_poisson_sampling_is_seeded_and_amplified(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.jsonl")
    strategy = make_strategy(ledger, m=5, sampling="poisson", total_clients=20, seed=3)
    again = make_strategy(
        make_ledger(tmp_path / "l2.jsonl"), m=5, sampling="poisson", total_clients=20, seed=3
    )
    grid = FakeGrid(range(100, 120))

    chosen = [
        m.metadata.dst_node_id
        for m in strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid)
    ]  # type: ignore[arg-type]
    same = [
        m.metadata.dst_node_id
        for m in again.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid)
    ]  # type: ignore[arg-type]
    # Even a round where no reply comes back releases noise: skipping it would tell
    # whether anyone was sampled.
    arrays, metrics = strategy.aggregate_train(1, [])

    assert chosen == same
    assert set(chosen) <= set(range(100, 120))
    assert arrays is not None
    assert metrics is not None
    assert not np.array_equal(arrays["w"].numpy(), GLOBAL["w"])
    (release,) = ledger.releases
    assert release.sample_rate == 0.25
    assert metrics["dp-epsilon"] < compute_epsilon(
        history=[(1.0, 1.0, 1)], delta=DELTA, accountant="rdp"
    )


def test_poisson_sampling_never_picks_a_node_that_discovery_left_out(tmp_path: Path) -> None:
    partitions = {p: 100 + p for p in range(20)}  # node 999 answered discovery badly
    strategy = make_strategy(
        make_ledger(tmp_path / "l.jsonl"),
        m=5,
        sampling="poisson",
        total_clients=20,
        partitions=partitions,
    )
    grid = FakeGrid([999, *partitions.values()])

    chosen = [
        m.metadata.dst_node_id
        for r in range(1, 41)
        for m in strategy.configure_train(r, arrays_of(GLOBAL), ConfigRecord(), grid)  # type: ignore[arg-type]
    ]

    # 40 rounds x 21 nodes at q = 0.25: node 999 would be picked about 10 times.
    assert len(chosen) > 100
    assert set(chosen) <= set(partitions.values())


def test_poisson_sampling_rate_over_many_rounds(tmp_path: Path) -> None:
    strategy = make_strategy(
        make_ledger(tmp_path / "l.jsonl"), m=5, sampling="poisson", total_clients=20
    )
    grid = FakeGrid(range(20))

    counts = [
        len(list(strategy.configure_train(r, arrays_of(GLOBAL), ConfigRecord(), grid)))  # type: ignore[arg-type]
        for r in range(1, 201)
    ]

    # 200 rounds x 20 nodes at q = 0.25: mean 5, std of the mean 0.14.
    assert np.mean(counts) == pytest.approx(5, abs=0.6)
    assert len(set(counts)) > 1


def test_evaluation_is_delegated(tmp_path: Path) -> None:
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"))
    config = ConfigRecord()
    messages = list(strategy.configure_evaluate(2, arrays_of(GLOBAL), config, FakeGrid([1, 2])))  # type: ignore[arg-type]
    replies = [
        Message(
            RecordDict({"metrics": MetricRecord({"num-examples": n, "loss": loss})}), reply_to=msg
        )
        for msg, n, loss in zip(messages, (1, 3), (1.0, 2.0), strict=True)
    ]

    metrics = strategy.aggregate_evaluate(2, replies)

    assert {m.metadata.dst_node_id for m in messages} == {1, 2}
    assert len(config) == 0
    assert metrics is not None
    assert metrics["loss"] == pytest.approx(1.75)


def test_an_unconfigured_round_releases_nothing(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "l.jsonl")
    strategy = make_strategy(ledger)

    assert strategy.aggregate_train(9, []) == (None, None)
    assert ledger.releases == ()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip": 0.0}, "clip_norm"),
        ({"sigma": 0.0}, "noise_multiplier"),
        ({"m": 0}, "expected_clients"),
        ({"source": 7}, "source"),
        ({"sampling": "shuffle"}, "sampling"),
        ({"sampling": "poisson"}, "total_clients"),
        ({"sampling": "poisson", "total_clients": 2}, "total_clients"),
    ],
)
def test_configuration_errors_name_the_field(
    tmp_path: Path, kwargs: dict[str, object], field: str
) -> None:
    if "source" in kwargs:
        with pytest.raises(ConfigError) as info:
            ClientLevelDp(
                FedAvg(),
                codec=ArraysCodec.for_state(GLOBAL),
                ledger=make_ledger(tmp_path / "l.jsonl"),
                clip_norm=1.0,
                noise_multiplier=1.0,
                expected_clients=2,
                source=kwargs["source"],  # type: ignore[arg-type]
            )
        assert info.value.field == field
        return
    with pytest.raises(ConfigError) as info:
        make_strategy(make_ledger(tmp_path / "l.jsonl"), **kwargs)  # type: ignore[arg-type]

    assert info.value.field == field


def test_clip_fraction_counts_updates_over_the_bound(tmp_path: Path) -> None:
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"), m=3, clip=1.0)
    deltas = [{k: np.full_like(v, s) for k, v in GLOBAL.items()} for s in (0.1, 1.0, 3.0)]

    _, metrics, _ = run_round(strategy, 1, GLOBAL, deltas)

    over = sum(l2_norm(d) > 1.0 for d in deltas)
    assert metrics is not None
    assert metrics["dp-clip-fraction"] == pytest.approx(over / 3)


def test_a_resumed_round_with_the_same_replies_is_counted_once(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    delta = {k: np.full_like(v, 0.2) for k, v in GLOBAL.items()}
    first, m1, _ = run_round(make_strategy(make_ledger(path), m=2), 1, GLOBAL, [delta, delta])

    # A new process, the same ledger file and seed, the same round replayed.
    again, m2, _ = run_round(make_strategy(make_ledger(path), m=2), 1, GLOBAL, [delta, delta])

    assert first is not None
    assert again is not None
    np.testing.assert_array_equal(first["w"].numpy(), again["w"].numpy())
    assert len(path.read_text().splitlines()) == 1
    assert m1 is not None
    assert m2 is not None
    assert m1["dp-epsilon"] == m2["dp-epsilon"]


def test_a_resumed_round_with_other_replies_gets_fresh_noise_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    clip, m = 1.0, 2
    zero = {k: np.zeros_like(v) for k, v in GLOBAL.items()}
    step = {k: np.full_like(v, 0.1) for k, v in GLOBAL.items()}  # norm 0.28 < C
    first, m1, _ = run_round(
        make_strategy(make_ledger(path), m=m, clip=clip), 1, GLOBAL, [zero, zero]
    )

    with pytest.warns(RuntimeWarning, match="counting both"):
        again, m2, _ = run_round(
            make_strategy(make_ledger(path), m=m, clip=clip), 1, GLOBAL, [step, step]
        )

    assert first is not None
    assert again is not None
    noise_first = first["w"].numpy() - GLOBAL["w"]
    noise_again = again["w"].numpy() - (GLOBAL["w"] + 0.1)  # the mean of two equal steps
    # Equal noise would cancel in the difference of the two releases.
    assert not np.allclose(noise_first, noise_again, atol=1e-3)
    assert len(make_ledger(path).releases) == 2
    assert m1 is not None
    assert m2 is not None
    assert m2["dp-epsilon"] > m1["dp-epsilon"]


def partition_round(
    tmp_path: Path, node_ids: Sequence[int], deltas: Sequence[dict[str, np.ndarray]]
) -> tuple[np.ndarray, list[int]]:
    """One round where partition i lives on node_ids[i]: the new w, and the partitions
    Poisson sampling chose."""
    partitions = {pid: node for pid, node in enumerate(node_ids)}
    strategy = make_strategy(
        make_ledger(tmp_path / f"{node_ids[0]}.jsonl"),
        m=2,
        sampling="poisson",
        total_clients=len(node_ids),
        seed=4,
        partitions=partitions,
    )
    grid = FakeGrid(node_ids)
    messages = list(strategy.configure_train(1, arrays_of(GLOBAL), ConfigRecord(), grid))  # type: ignore[arg-type]
    sent_to = {m.metadata.dst_node_id for m in messages}
    chosen = sorted(pid for pid, node in partitions.items() if node in sent_to)
    replies = [
        reply_to(
            next(m for m in messages if m.metadata.dst_node_id == partitions[pid]),
            {k: GLOBAL[k] + deltas[pid][k] for k in GLOBAL},
            num_examples=10,
        )
        for pid in chosen
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    return arrays["w"].numpy(), chosen


def test_with_partitions_the_result_does_not_depend_on_the_node_ids(tmp_path: Path) -> None:
    # Arrange: the same partitions' updates, on nodes numbered in opposite orders (a
    # resumed simulation draws new node ids); float sums of 3+ terms depend on order.
    rng = np.random.default_rng(0)
    deltas = [
        {"w": rng.normal(size=(2, 2)).astype(np.float32) * 1e3, "b": np.zeros(2, np.float32)}
        for _ in range(8)
    ]

    # Act
    first, chosen_first = partition_round(tmp_path, [11, 12, 13, 14, 15, 16, 17, 18], deltas)
    second, chosen_second = partition_round(tmp_path, [98, 97, 96, 95, 94, 93, 92, 91], deltas)

    # Assert
    assert len(chosen_first) >= 3
    assert chosen_first == chosen_second
    np.testing.assert_array_equal(first, second)


def test_by_default_nothing_computed_without_noise_is_published(tmp_path: Path) -> None:
    strategy = make_strategy(make_ledger(tmp_path / "l.jsonl"), m=2, publish_diagnostics=False)
    delta = {k: np.full_like(v, 3.0) for k, v in GLOBAL.items()}

    _, metrics, _ = run_round(strategy, 1, GLOBAL, [delta, delta])

    assert metrics is not None
    assert set(metrics) == {"dp-epsilon", "dp-delta", "dp-noise-std"}


def test_secure_noise_differs_between_two_runs_of_the_same_seed(tmp_path: Path) -> None:
    delta = {k: np.ones_like(v) for k, v in GLOBAL.items()}

    def release(name: str) -> np.ndarray:
        strategy = make_strategy(make_ledger(tmp_path / name), m=2)
        strategy.source = RandomSource.secure()
        arrays, _, _ = run_round(strategy, 4, GLOBAL, [delta, delta])
        assert arrays is not None
        return arrays["w"].numpy()

    assert not np.array_equal(release("a"), release("b"))


def test_adaptive_clipping_moves_the_clip_norm_and_accounts_the_target_sigma(
    tmp_path: Path,
) -> None:
    # Arrange: every update (norm 4) is over the clip norm 1: the quantile says grow.
    ledger = make_ledger(tmp_path / "l.jsonl")
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, count_stddev=2.0)
    strategy = make_strategy(ledger, m=4, sigma=1.0, adaptive=adaptive)
    big = {k: np.full_like(v, 4.0 / math.sqrt(6)) for k, v in GLOBAL.items()}

    # Act
    _, first, _ = run_round(strategy, 1, GLOBAL, [big] * 4)
    saved = strategy.state_dict()
    _, second, _ = run_round(strategy, 2, GLOBAL, [big] * 4)

    # Assert: the clip norm released with round 1 is the next round's; both rounds are
    # accounted at the target sigma 1 (the updates got the larger z_delta).
    assert first is not None
    assert second is not None
    assert first["dp-clip-norm"] == 1.0
    assert second["dp-clip-norm"] == saved["clip_norm"] != 1.0
    assert [(r.noise_multiplier, r.clip_norm) for r in ledger.releases] == [
        (1.0, 1.0),
        (1.0, saved["clip_norm"]),
    ]
    assert strategy.noise_std > 1.0 * 1.0 / 4  # z_delta > z
