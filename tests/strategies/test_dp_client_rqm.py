"""ClientLevelRqm: each client's RQM release recorded, off-grid replies refused, no noise."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedrank.errors import InvalidUpdate
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.rqm import RqmParams, rqm_decode_update, rqm_encode_update
from fedrank.privacy.rqm_accounting import rqm_epsilon
from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.dp_client_rqm import ClientLevelRqm, snap_to_levels

DELTA = 1e-5
GLOBAL = {"w": np.full((3, 2), 0.25, dtype=np.float32), "b": np.zeros(2, dtype=np.float32)}
PARAMS = RqmParams(clip=1.0, extension=4.0, levels=8, keep_probability=0.5)
PARTITIONS = {0: 11, 1: 12, 2: 13}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


class FakeGrid:
    def get_node_ids(self) -> list[int]:
        return sorted(PARTITIONS.values())


def strategy(path: Path) -> ClientLevelRqm:
    return ClientLevelRqm(
        FedAvg(fraction_train=1.0, min_train_nodes=1, min_available_nodes=1),
        codec=ArraysCodec.for_state(GLOBAL, private=True),
        ledger=PrivacyLedger(path, budget_epsilon=None, delta=DELTA, accountant="rdp"),
        clip_norm=PARAMS.clip,
        noise_multiplier=1.0,
        expected_clients=3,
        source=RandomSource.reproducible(0),
        sampling="poisson",
        total_clients=3,
        partitions=PARTITIONS,
        params=PARAMS,
    )


def rqm_state(seed: int) -> dict[str, np.ndarray]:
    """What an honest client sends: the global state plus its RQM-quantized update."""
    update = {k: np.full(v.shape, 0.1 * (seed + 1)) for k, v in GLOBAL.items()}
    sent = rqm_decode_update(
        rqm_encode_update(update, params=PARAMS, norm="l2", source=RandomSource.reproducible(seed)),
        PARAMS,
    )
    return {k: (GLOBAL[k].astype(np.float64) + sent[k]).astype(np.float32) for k in GLOBAL}


def run_round(
    s: ClientLevelRqm, server_round: int, states: Sequence[dict[str, np.ndarray]]
) -> tuple[ArrayRecord | None, MetricRecord | None]:
    arrays = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    messages = sorted(
        s.configure_train(server_round, arrays, ConfigRecord(), FakeGrid()),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    replies = [
        Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({k: Array(v) for k, v in state.items()}),
                    "metrics": MetricRecord({}),
                }
            ),
            reply_to=message,
        )
        for message, state in zip(messages, states, strict=False)
    ]
    return s.aggregate_train(server_round, replies)


def test_an_honest_reply_is_on_the_grid_and_snaps_exactly() -> None:
    state = rqm_state(0)
    update = {k: state[k].astype(np.float64) - GLOBAL[k].astype(np.float64) for k in GLOBAL}

    snapped = snap_to_levels(update, PARAMS)

    for name, value in snapped.items():
        assert set(np.unique(value)) <= set(PARAMS.level_values())
        np.testing.assert_allclose(value, update[name], atol=1e-5)


def test_every_client_release_is_recorded_and_accounted_exactly(tmp_path: Path) -> None:
    s = strategy(tmp_path / "l.jsonl")
    coordinates = sum(v.size for v in GLOBAL.values())

    arrays, first = run_round(s, 1, [rqm_state(i) for i in range(3)])
    _, second = run_round(s, 2, [rqm_state(i + 3) for i in range(3)])

    releases = s.ledger.releases
    assert arrays is not None
    assert first is not None
    assert second is not None
    assert [r.party for r in releases[:3]] == ["partition-0", "partition-1", "partition-2"]
    assert {(r.mechanism, r.rqm_coordinates, r.rqm_levels) for r in releases} == {
        ("client-rqm", coordinates, 8)
    }
    assert second["dp-epsilon"] == pytest.approx(
        rqm_epsilon(params=PARAMS, dimension=coordinates, rounds=2, delta=DELTA), rel=1e-12
    )
    assert second["dp-epsilon"] > first["dp-epsilon"]
    assert set(second) == {"dp-epsilon", "dp-delta", "dp-rqm-bits"}


def test_a_reply_off_the_level_grid_is_refused_and_not_recorded(tmp_path: Path) -> None:
    s = strategy(tmp_path / "l.jsonl")
    raw = {k: GLOBAL[k] + np.float32(0.123) for k in GLOBAL}  # no quantizer

    arrays, _ = run_round(s, 1, [rqm_state(0), raw])

    assert arrays is not None
    assert [r.party for r in s.ledger.releases] == ["partition-0"]
    with pytest.raises(InvalidUpdate, match="level grid"):
        snap_to_levels({k: raw[k].astype(np.float64) - GLOBAL[k] for k in GLOBAL}, PARAMS)
