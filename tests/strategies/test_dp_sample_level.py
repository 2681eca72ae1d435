"""SampleLevelDpAudit: clients' DP-SGD reports are checked and recorded before use."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore.task_identity import TaskIdentity

from fedrank.privacy.accountant import compute_epsilon, history_from_array
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.protos import PrivacyReportData, encode_privacy_report, keys
from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.dp_sample_level import SampleLevelDpAudit
from fedrank.strategies.sampling import train_messages

DELTA = 1e-5
PARTITIONS = {0: 11, 1: 12}
CODEC = ArraysCodec.for_state({"w": np.zeros(2, dtype=np.float32)}, privacy_report=True)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


class Recorder(Strategy):
    """An inner strategy that keeps the replies it was given."""

    def __init__(self) -> None:
        self.seen: list[Message] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return train_messages(
            RecordDict({"arrays": arrays}),
            config,
            partitions=PARTITIONS,
            count=2,
            seed=0,
            server_round=server_round,
        )

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.seen = list(replies)
        return ArrayRecord(), MetricRecord({"replies": len(self.seen), "rejected": 0})

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return []

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return None

    def summary(self) -> None:
        pass


def report(steps: int, **changes: object) -> bytes:
    values: dict[str, object] = {
        "mechanism": "dp_sgd",
        "noise_multiplier": 1.0,
        "sample_rate": 0.25,
        "steps": steps,
        "clipping_norm": 1.0,
        "epsilon_spent": compute_epsilon(
            history=[(1.0, 0.25, steps)], delta=DELTA, accountant="rdp"
        ),
        "delta": DELTA,
    }
    return encode_privacy_report(PrivacyReportData(**(values | changes)))  # type: ignore[arg-type]


def replies_to(
    audit: SampleLevelDpAudit, server_round: int, payloads: list[bytes | None]
) -> list[Message]:
    arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})
    messages = sorted(
        audit.configure_train(server_round, arrays, ConfigRecord({}), None),  # type: ignore[arg-type]
        key=lambda m: m.metadata.dst_node_id,
    )
    out = []
    for message, payload in zip(messages, payloads, strict=True):
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 4})})
        if payload is not None:
            content["privacy"] = ConfigRecord({"report": payload})
        out.append(Message(content, reply_to=message))
    return out


def make(tmp_path: Path, budget: float | None = None) -> tuple[SampleLevelDpAudit, Recorder]:
    inner = Recorder()
    ledger = PrivacyLedger(
        tmp_path / "ledger.jsonl", budget_epsilon=budget, delta=DELTA, accountant="rdp"
    )
    audit = SampleLevelDpAudit(
        inner,
        codec=CODEC,
        ledger=ledger,
        partitions=PARTITIONS,
        clip_norm=1.0,
        noise_multiplier=None,
    )
    return audit, inner


def test_every_report_is_recorded_and_epsilon_is_cumulative(tmp_path: Path) -> None:
    audit, _ = make(tmp_path)
    metrics = []
    for server_round in (1, 2, 3):
        replies = replies_to(audit, server_round, [report(4 * server_round)] * 2)
        metrics.append(audit.aggregate_train(server_round, replies)[1])

    releases = audit.ledger.releases
    assert [(r.round, r.party, r.steps) for r in releases[:2]] == [
        (1, "partition-0", 4),
        (1, "partition-1", 4),
    ]
    # Each round's report adds its own steps: 4 + 8 + 12 for each party.
    assert audit.ledger.spent(unit="record", party="partition-1") == compute_epsilon(
        history=[(1.0, 0.25, 24)], delta=DELTA, accountant="rdp"
    )
    assert all(m is not None for m in metrics)
    assert [m["dp-record-epsilon"] for m in metrics if m] == sorted(
        m["dp-record-epsilon"] for m in metrics if m
    )
    assert metrics[0] is not None
    assert metrics[0]["dp-record-mismatch"] == 0
    # The reports above claim only one round's steps each: from round 2 on they disagree.
    assert metrics[2] is not None
    assert metrics[2]["dp-record-mismatch"] == 2


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (None, "missing_privacy_report"),
        (b"\xff\x00", "malformed"),
        (report(4, delta=1e-6), "privacy_delta"),
        (report(4, clipping_norm=2.0), "privacy_clip"),
        (report(4, mechanism="gaussian"), "privacy_mechanism"),
        (report(0), "privacy_empty"),
    ],
)
def test_a_reply_without_a_valid_report_never_reaches_the_inner_strategy(
    tmp_path: Path, payload: bytes | None, reason: str
) -> None:
    audit, inner = make(tmp_path)
    replies = replies_to(audit, 1, [report(4), payload])

    _, metrics = audit.aggregate_train(1, replies)

    assert [m.metadata.src_node_id for m in inner.seen] == [PARTITIONS[0]]
    assert metrics is not None
    assert (metrics["rejected"], metrics[f"rejected.{reason}"]) == (1, 1)
    assert [r.party for r in audit.ledger.releases] == ["partition-0"]


def test_a_report_over_budget_is_rejected_and_not_recorded(tmp_path: Path) -> None:
    one = compute_epsilon(history=[(1.0, 0.25, 4)], delta=DELTA, accountant="rdp")
    audit, inner = make(tmp_path, budget=one * 1.01)
    audit.aggregate_train(1, replies_to(audit, 1, [report(4)] * 2))

    _, metrics = audit.aggregate_train(2, replies_to(audit, 2, [report(8)] * 2))

    assert inner.seen == []
    assert metrics is not None
    assert metrics["rejected.over_budget"] == 2
    assert [r.round for r in audit.ledger.releases] == [1, 1]


def test_the_ledger_is_read_back_on_restart(tmp_path: Path) -> None:
    audit, _ = make(tmp_path)
    audit.aggregate_train(1, replies_to(audit, 1, [report(4)] * 2))

    again, _ = make(tmp_path)

    assert again.epsilons == audit.epsilons
    assert len(again.ledger.releases) == 2


def test_each_train_message_carries_its_partys_recorded_history(tmp_path: Path) -> None:
    # Arrange: round 1 recorded 4 steps for each party.
    audit, _ = make(tmp_path)
    audit.aggregate_train(1, replies_to(audit, 1, [report(4)] * 2))
    arrays = ArrayRecord({"w": Array(np.zeros(2, dtype=np.float32))})

    # Act
    first = list(audit.configure_train(1, arrays, ConfigRecord({}), None))  # type: ignore[arg-type]
    second = list(audit.configure_train(2, arrays, ConfigRecord({}), None))  # type: ignore[arg-type]

    # Assert: round 1 had no earlier release; round 2 gets round 1's, per party.
    assert all(keys.PRIVACY_HISTORY not in m.content.array_records for m in first)
    assert sorted(m.metadata.dst_node_id for m in second) == sorted(PARTITIONS.values())
    for message in second:
        record = message.content.array_records[keys.PRIVACY_HISTORY]
        assert history_from_array(record[keys.HISTORY].numpy()) == ((1.0, 0.25, 4),)
        assert message.content.array_records["arrays"]["w"].numpy().tolist() == [0.0, 0.0]


def test_state_dict_restores_the_published_epsilons(tmp_path: Path) -> None:
    # Arrange: a client reports more than the ledger counts (a reply the server lost).
    audit, _ = make(tmp_path / "a")
    claimed = compute_epsilon(history=[(1.0, 0.25, 12)], delta=DELTA, accountant="rdp")
    audit.aggregate_train(1, replies_to(audit, 1, [report(4, epsilon_spent=claimed)] * 2))
    state = json.loads(json.dumps(audit.state_dict()))  # what a checkpoint holds
    restarted, _ = make(tmp_path / "b")

    # Act
    restarted.load_state_dict(state)

    # Assert
    assert restarted.epsilons == audit.epsilons
    assert max(restarted.epsilons.values()) == claimed
