"""The simulated adversary is wired: the strategy sees the crafted replies, validated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from fedrank.config import Scenario
from fedrank.protos import keys
from fedrank.protos.codecs import RankingCodec
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import to_array_record
from fedrank.simulations.attacks.adversary import Adversary, attack_components
from fedrank.simulations.attacks.attacks import (
    estimate_benign_ranking,
    flip_labels,
    reverse_ranking_attack,
)
from fedrank.simulations.attacks.collusion import malicious_partitions
from fedrank.simulations.attacks.poisoning import poisoned
from fedrank.simulations.local_grid import InProcessGrid, server_identity
from fedrank.strategies.frl import FrlVote
from fedrank.strategies.sampling import discover_partitions, sample_partitions
from fedrank.strategies.votes import rank_vote
from fedrank.tasks import load_task
from fedrank.tasks.image import ImageTask, torch_threads


def image_task(scenario: Scenario) -> ImageTask:
    task = load_task(scenario)
    assert isinstance(task, ImageTask)
    return task


def local_update(scenario: Scenario, state: dict[str, np.ndarray], pid: int, data: object = None):  # type: ignore[no-untyped-def]
    task = image_task(scenario)
    examples = task.partition_data(pid) if data is None else data
    with torch_threads(1):  # float sums depend on the thread count: a client's
        reply = task.train(
            state,
            examples,
            server_round=1,
            partition_id=pid,
            message=RecordDict(),
            node_state=RecordDict(),
        )
    return reply.state


def _scenario(tmp_path: Path, **changes: object) -> Scenario:
    base = Scenario.of(
        dataset="digits", num_clients=6, clients_per_round=4, rounds=1, lr=1.0, seed=3,
        attack="reverse_ranking", malicious_fraction=0.34, attack_seed=1,
        results_dir=str(tmp_path),
    )  # fmt: skip
    return base.replace(**changes)


def _round_one(
    scenario: Scenario,
) -> tuple[list[int], list[dict[str, np.ndarray]], MetricRecord, dict[str, np.ndarray]]:
    """Round 1 of ``scenario`` in process: the sampled partitions, the replies its vote
    saw (in order), the round's metrics and the global state sent."""
    client_app, wrap = attack_components(scenario)
    assert wrap is not None
    grid = InProcessGrid(client_app, num_nodes=scenario.run.num_clients, seed=0)
    seen: list[dict[str, np.ndarray]] = []
    borda = rank_vote("borda")

    def recording_vote(updates, reference, anchor):  # type: ignore[no-untyped-def]
        seen.extend(dict(u) for u in updates)
        return borda(updates, reference, anchor)

    task = image_task(scenario)
    with server_identity(grid.run):
        settings = ConfigRecord(dict(scenario.client_settings()))
        partitions = discover_partitions(grid, expected=6, timeout=30, settings=settings)
        codec = task.codec(grid.run.run_id)
        assert isinstance(codec, RankingCodec)
        inner = FrlVote(
            partitions=partitions, clients_per_round=4, codec=codec,
            seed=scenario.run.seed, vote=recording_vote,
        )  # fmt: skip
        strategy = wrap(inner, partitions, codec)
        state = task.initial_state()
        config = ConfigRecord({keys.SETTINGS_DIGEST: scenario.settings_digest()})
        replies = grid.send_and_receive(
            strategy.configure_train(1, to_array_record(state), config, grid)
        )
        _, metrics = strategy.aggregate_train(1, replies)
    assert metrics is not None
    chosen = sample_partitions(list(range(6)), count=4, seed=scenario.run.seed, server_round=1)
    return chosen, seen, metrics, state


def test_a_malicious_partitions_reply_is_the_crafted_one(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path)
    malicious = malicious_partitions(scenario)
    chosen, seen, metrics, state = _round_one(scenario)
    attackers = [p for p in chosen if p in malicious]
    assert attackers, "the seeds must sample an attacker in round 1"
    honest = {p: local_update(scenario, state, p) for p in chosen}
    assert metrics["malicious"] == len(attackers)
    for partition, reply in zip(chosen, seen, strict=True):
        for name, ranks in reply.items():
            if partition in malicious:
                estimate = estimate_benign_ranking(np.stack([honest[p][name] for p in attackers]))
                np.testing.assert_array_equal(ranks, reverse_ranking_attack(estimate))
            else:
                np.testing.assert_array_equal(ranks, honest[partition][name])


def test_withheld_replies_never_reach_the_vote(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, attack="withhold")
    malicious = malicious_partitions(scenario)
    chosen, seen, metrics, state = _round_one(scenario)
    benign = [p for p in chosen if p not in malicious]
    assert 0 < len(benign) < len(chosen), "the seeds must sample an attacker in round 1"
    assert metrics["malicious"] == len(chosen) - len(benign)
    assert len(seen) == len(benign)
    for partition, reply in zip(benign, seen, strict=True):
        honest = local_update(scenario, state, partition)
        for name, ranks in reply.items():
            np.testing.assert_array_equal(ranks, honest[name])


WIRE = RankingWire.for_model(run_id=1, layer_sizes={"fc": 5}, seed=0)
CODEC = RankingCodec(WIRE)


def _reply(node: int, arrays: dict[str, np.ndarray]) -> Message:
    ins = Message(
        content=RecordDict({"config": ConfigRecord()}),
        dst_node_id=node,
        message_type=MessageType.TRAIN,
    )
    content = WIRE.encode(1, arrays)
    content["metrics"] = MetricRecord({"num-examples": 1})
    return Message(content=content, reply_to=ins)


@pytest.mark.usefixtures("flower_identity")
def test_crafted_replies_still_pass_wire_validation() -> None:
    inner = FrlVote(partitions={0: 10, 1: 11, 2: 12}, clients_per_round=3, codec=CODEC)
    broken = {"fc": np.zeros(5, dtype=np.int64)}  # not a permutation
    adversary = Adversary(
        inner, partitions={0: 10, 1: 11, 2: 12}, malicious=frozenset({2}),
        craft=lambda rnd, colluders, benign, reference: [dict(broken) for _ in colluders],
        codec=CODEC,
    )  # fmt: skip
    replies = [_reply(10 + p, {"fc": np.random.default_rng(p).permutation(5)}) for p in range(3)]

    arrays, metrics = adversary.aggregate_train(1, replies)

    assert arrays is not None
    assert metrics is not None
    assert metrics["rejected.not_permutation"] == 1
    assert metrics["replies"] == 2
    # The caller's replies are untouched.
    assert WIRE.decode(1, replies[2].content)["fc"].tolist() != [0] * 5


def test_label_flippers_train_on_flipped_labels_and_benign_clients_do_not(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, attack="label_flip")
    task = image_task(scenario)
    malicious = sorted(malicious_partitions(scenario))
    benign = next(p for p in range(6) if p not in malicious)
    state = task.initial_state()

    own = task.partition_data(malicious[0])
    data = poisoned(scenario, task, malicious[0], own)
    np.testing.assert_array_equal(data.labels, flip_labels(own.labels, num_classes=10))
    np.testing.assert_array_equal(data.images, own.images)
    flipped = local_update(scenario, state, malicious[0], data)
    honest = local_update(scenario, state, malicious[0])
    assert any(not np.array_equal(flipped[n], honest[n]) for n in honest)
    benign_data = task.partition_data(benign)
    assert poisoned(scenario, task, benign, benign_data) is benign_data
