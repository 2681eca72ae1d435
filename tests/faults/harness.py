"""fedrank's side of the fault tests: every strategy as a run composes it, and honest replies.

:data:`CASES` names every strategy and aggregator (FRL with each vote, FedAvg with each
of Flower's aggregators, LoRA with its mean and each robust rule, DP-LoRA at sample and
client level) on small scenarios; :func:`compose` builds one exactly as
:func:`fedrank.server.run.run_federation` does, and :func:`honest_round` gives a round's
train messages and one honest reply per sampled node, encoded by the task's codec.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp.strategy import Strategy

from fedrank.config import Scenario
from fedrank.protos import keys
from fedrank.protos.codecs import Codec, RankingCodec, Reply
from fedrank.protos.records import to_array_record
from fedrank.protos.updates import PrivacyReportData
from fedrank.server.compose import compose_strategy
from fedrank.tasks import load_task
from tests.faults.foreign_client import TRAIN_FAULTS

RUN_ID = 1  # the conftest's Flower task identity

TRAIN_REASON = {
    "no_metrics": "missing_record",
    "no_payload": "missing_record",
    "metrics_as_config": "wrong_record_type",
    "huge_examples": "bad_num_examples",
    "zero_examples": "bad_num_examples",
    "nan_metric": "bad_metric",
    "unknown_metric": "unknown_metric",
    "junk_record": "unknown_record",
    "nan_weights": "not_finite",
    "inf_weights": "not_finite",
    "wrong_shape": "wrong_shape",
    "wrong_dtype": "wrong_dtype",
    "garbage_bytes": "malformed_array",
    "huge_declared_shape": "wrong_shape",
    "lying_npy_header": "malformed_array",
    "ranking_garbage": "malformed",
    "ranking_truncated": "malformed",
    "ranking_extra_key": "malformed",
    "ranking_repeated_rank": "not_permutation",
    "sigma_tiny": "privacy_out_of_range",
    "sigma_huge": "privacy_out_of_range",
    "steps_huge": "privacy_out_of_range",
    "no_report": "missing_privacy_report",
}
"""The rejection reason of each train fault of :mod:`tests.faults.foreign_client`."""
RUNTIME_REASON = {
    "raise": "client_error",
    "crash": "worker_died",
    "hang": "timeout",
    "late": "timeout",
    "long_ttl": "timeout",
}
"""The round loop's reason for a site that raised, crashed, hung or answered late."""
QUERY_REASON = {
    "no_config": "missing_record",
    "metrics_instead": "unknown_record",
    "not_integer": "bad_partition_id",
    "float_id": "bad_partition_id",
    "duplicate": "duplicate_partition",
    "id_999": "out_of_range",
    "id_minus_3": "out_of_range",
    "raise": "client_error",
}
"""Discovery's reason for each answer fault (``raise``: the query handler raised)."""

IMAGE: dict[str, Any] = {"dataset": "digits", "model": "mlp"}
TEXT: dict[str, Any] = {
    "strategy": "lora",
    "dataset": "rotten-tomatoes",
    "model": "tiny-bert",
    "max_length": 16,
    "train_records": 64,
    "test_records": 16,
    "lora_rank": 2,
}
# Fault tests compare a run with and without the faulty replies, so the noise (the
# clients' DP-SGD noise and batches, the server's noise and sampling) must replay, and
# they read the reply counts a client-level DP run withholds by default.
SAMPLE_DP: dict[str, Any] = {
    "dp": "sample",
    "dp_target_epsilon": 50.0,
    "dp_reproducible_noise": True,
}
CLIENT_DP: dict[str, Any] = {
    "dp": "client",
    "dp_client_noise_multiplier": 1.0,
    "dp_reproducible_noise": True,
    "dp_publish_diagnostics": True,
}
HONEST_SIGMA = 3.0  # an honest client's DP-SGD sigma in the reports built here


def _cases() -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for vote in ("borda", "filtered", "trimmed", "median"):
        cases[f"frl-{vote}"] = {**IMAGE, "strategy": "frl", "aggregator": vote}
    cases["frl-coarse"] = {**IMAGE, "strategy": "frl", "rank_bits": 4}
    flower = ("fedavgm", "fedadam", "fedyogi", "fedprox", "bulyan")  # Flower's baselines
    for rule in ("mean", "trimmed", "median", "krum", "multikrum", *flower):
        cases[f"fedavg-{rule}"] = {**IMAGE, "strategy": "fedavg", "aggregator": rule}
    for rule in ("mean", "trimmed", "median", "krum", "multikrum", *flower):
        cases[f"lora-{rule}"] = {**TEXT, "aggregator": rule}
    cases["dp-lora-sample"] = {**TEXT, **SAMPLE_DP}
    cases["dp-lora-client"] = {**TEXT, **CLIENT_DP}
    cases["dp-lora-both"] = {**TEXT, **SAMPLE_DP, **CLIENT_DP, "dp": "both"}
    return cases


CASES: dict[str, dict[str, Any]] = _cases()
"""Case name -> scenario fields (beside :func:`scenario`'s defaults)."""


def scenario(case: str, results: Path, **changes: Any) -> Scenario:
    """The small scenario of ``case``: 5 clients, 4 sampled a round."""
    fields = {
        "num_clients": 5,
        "clients_per_round": 4,
        "min_replies": 2,
        "rounds": 2,
        "local_epochs": 1,
        "seed": 3,
        "partitioner": "iid",
        "results_dir": str(results),
        **CASES[case],
        **changes,
    }
    return Scenario.of(**fields)


def partitions_of(scenario: Scenario) -> dict[int, int]:
    """Partition id -> node id, as discovery would find them (ids far from the pids)."""
    return {pid: 1000 + 17 * pid for pid in range(scenario.run.num_clients)}


def compose(scenario: Scenario, directory: Path) -> tuple[Strategy, Codec]:
    """The run's strategy and codec, exactly as ``run_federation`` composes them."""
    directory.mkdir(parents=True, exist_ok=True)
    codec = load_task(scenario).codec(RUN_ID)
    strategy = compose_strategy(
        scenario, codec, partitions_of(scenario), directory=directory, resumed=False
    )
    return strategy, codec


@functools.cache
def _initial_state(scenario: Scenario) -> dict[str, np.ndarray]:
    return dict(load_task(scenario).initial_state())


def global_state(scenario: Scenario) -> dict[str, np.ndarray]:
    """The run's initial global state (a copy)."""
    return {name: value.copy() for name, value in _initial_state(scenario).items()}


def honest_state(
    scenario: Scenario, codec: Codec, partition: int, server_round: int
) -> dict[str, np.ndarray]:
    """A plausible trained state of ``partition``: seeded permutations, or perturbed arrays."""
    rng = np.random.default_rng([scenario.run.seed, server_round, partition])
    state = global_state(scenario)
    if isinstance(codec, RankingCodec):
        return {
            name: rng.permutation(size).astype(state[name].dtype)
            for name, size in codec.wire.layer_sizes.items()
        }
    return {
        name: (value + rng.normal(0, 0.01, value.shape)).astype(value.dtype)
        for name, value in state.items()
    }


def honest_reply(
    scenario: Scenario, codec: Codec, message: Message, partition: int, server_round: int
) -> Message:
    """What an honest site of ``partition`` answers to ``message``."""
    return Message(_honest_content(scenario, partition, server_round), reply_to=message)


@functools.lru_cache(maxsize=4096)
def _honest_content(scenario: Scenario, partition: int, server_round: int) -> RecordDict:
    # Records are never modified by the strategies (nor by the corruptions and the
    # fuzzer, which build new ones): one encoding serves every use.
    codec = load_task(scenario).codec(RUN_ID)
    privacy = None
    if scenario.dp.sample:
        privacy = PrivacyReportData(
            mechanism="dp_sgd",
            noise_multiplier=HONEST_SIGMA,
            sample_rate=0.5,
            steps=scenario.train.local_epochs * 2,
            clipping_norm=scenario.dp.clip_norm,
            epsilon_spent=0.5,
            delta=scenario.dp.delta,
        )
    reply = Reply(
        state=honest_state(scenario, codec, partition, server_round),
        num_examples=20 + 3 * partition,
        metrics={keys.TRAIN_LOSS: 0.5 + partition / 10},
        privacy=privacy,
    )
    return codec.encode_reply(server_round, reply)


@dataclasses.dataclass
class Round:
    """One round of a composed strategy: what it sent and each sampled node's honest reply."""

    scenario: Scenario
    strategy: Strategy
    codec: Codec
    messages: list[Message]
    replies: dict[int, Message]  # partition id -> honest reply
    server_round: int = 1


def honest_round(scenario: Scenario, directory: Path, server_round: int = 1) -> Round:
    """Compose the strategy, configure a round, and answer it honestly from every node."""
    strategy, codec = compose(scenario, directory)
    return configure(Round(scenario, strategy, codec, [], {}), server_round)


def configure(run: Round, server_round: int) -> Round:
    """``run``'s strategy configures ``server_round``; every sampled node answers honestly."""
    scenario, codec = run.scenario, run.codec
    arrays = to_array_record(global_state(scenario))
    config = ConfigRecord({keys.SETTINGS_DIGEST: scenario.settings_digest()})
    grid = _Nodes(list(partitions_of(scenario).values()))
    messages = list(run.strategy.configure_train(server_round, arrays, config, grid=grid))  # type: ignore[arg-type]
    pid_of = {node: pid for pid, node in partitions_of(scenario).items()}
    replies = {
        pid_of[m.metadata.dst_node_id]: honest_reply(
            scenario, codec, m, pid_of[m.metadata.dst_node_id], server_round
        )
        for m in messages
    }
    return Round(scenario, run.strategy, codec, messages, replies, server_round)


@dataclasses.dataclass(frozen=True)
class _Nodes:
    """What a strategy asks of the grid while it configures a round: the node ids
    (client-level DP's Poisson sample draws one coin per node)."""

    node_ids: list[int]

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


def applicable_faults(scenario: Scenario) -> list[str]:
    """The train faults that apply to this run's kind of reply (in TRAIN_FAULTS order)."""
    content = _honest_content(scenario, 0, 1)
    out = []
    for name, corrupt in TRAIN_FAULTS.items():
        try:
            corrupt(content)
        except LookupError:
            continue
        out.append(name)
    return out


def arrays_equal(a: ArrayRecord | None, b: ArrayRecord | None) -> bool:
    """Both None, or the same names with bit-identical arrays."""
    if a is None or b is None:
        return a is b
    if list(a) != list(b):
        return False
    return all(np.array_equal(a[name].numpy(), b[name].numpy(), equal_nan=True) for name in a)


def rejections(metrics: Mapping[str, Any] | None) -> dict[str, int]:
    """``rejected.<reason>`` counts of a round's metrics (and the total under ``*``)."""
    metrics = dict(metrics or {})
    out = {
        k.removeprefix("rejected."): int(v) for k, v in metrics.items() if k.startswith("rejected.")
    }
    out["*"] = int(metrics.get("rejected", 0))
    return out
