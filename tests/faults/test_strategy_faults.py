"""Every strategy and aggregator against every way a foreign site's train reply goes wrong.

The strategy is composed as a run composes it (:mod:`tests.faults.harness`); the faulty
reply is an honest one corrupted by the foreign ClientApp's own code
(:mod:`tests.faults.foreign_client`). Each must be rejected under its reason, counted
once, and leave the round's result bit for bit what it is without that reply.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.app import Message

from tests.faults.foreign_client import TRAIN_FAULTS
from tests.faults.harness import (
    CASES,
    TRAIN_REASON,
    arrays_equal,
    honest_round,
    rejections,
    scenario,
)


def test_every_fault_has_its_reason() -> None:
    assert set(TRAIN_REASON) == set(TRAIN_FAULTS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_reply_is_rejected_once_and_changes_nothing(
    case: str, tmp_path: Path, flower_identity: None
) -> None:
    s = scenario(case, Path("unused"))
    reference = honest_round(s, tmp_path / "reference")
    faulty = min(reference.replies)
    others = [reply for pid, reply in sorted(reference.replies.items()) if pid != faulty]
    expected_arrays, expected_metrics = reference.strategy.aggregate_train(1, others)
    assert expected_arrays is not None
    assert rejections(expected_metrics) == {"*": 0}

    tried = []
    for fault, corrupt in TRAIN_FAULTS.items():
        run = honest_round(s, tmp_path / fault)  # a fresh strategy: fresh ledgers
        honest = run.replies[faulty]
        try:
            content = corrupt(honest.content)
        except LookupError:  # not a record this kind of reply carries
            continue
        bad = Message(
            content,
            reply_to=next(
                m for m in run.messages if m.metadata.dst_node_id == honest.metadata.src_node_id
            ),
        )
        replies = [bad, *(r for pid, r in sorted(run.replies.items()) if pid != faulty)]

        arrays, metrics = run.strategy.aggregate_train(1, replies)

        assert rejections(metrics) == {TRAIN_REASON[fault]: 1, "*": 1}, fault
        assert metrics is not None
        assert metrics["replies"] == len(others), fault
        assert arrays_equal(arrays, expected_arrays), fault
        tried.append(fault)
    assert len(tried) >= 11  # the common faults plus those of its kind of reply
