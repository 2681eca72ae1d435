"""RunStatus <-> fedrank.v1.StatusReply."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedrank.protos import status_pb2
from fedrank.protos.status_codec import (
    RUN_STATES,
    RunStatus,
    status_from_proto,
    status_to_proto,
)

statuses = st.builds(
    RunStatus,
    state=st.sampled_from(RUN_STATES),
    round=st.integers(0, 10**6),
    total_rounds=st.integers(0, 10**6),
    last_accuracy=st.floats(0.0, 1.0) | st.just(math.nan),
    epsilon_spent=st.floats(0.0, 1e3) | st.just(math.nan),
    rejected_replies=st.integers(0, 10**6),
)


def _same(a: RunStatus, b: RunStatus) -> bool:
    def key(s: RunStatus) -> tuple[object, ...]:
        fields = (s.state, s.round, s.total_rounds, s.last_accuracy, s.epsilon_spent)
        return (*("nan" if isinstance(v, float) and math.isnan(v) else v for v in fields),)

    return key(a) == key(b) and a.rejected_replies == b.rejected_replies


@given(statuses)
def test_round_trip_through_the_wire(status):
    wire = status_pb2.StatusReply.FromString(status_to_proto(status).SerializeToString())

    assert _same(status_from_proto(wire), status)


def test_a_state_this_version_does_not_know_decodes_as_unknown():
    reply = status_pb2.StatusReply(state="paused", round=3)

    assert status_from_proto(reply).state == "unknown"
    assert status_from_proto(reply).round == 3


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"state": "paused"}, "state"),
        ({"round": -1}, "round"),
        ({"rejected_replies": 1.5}, "rejected"),
    ],
)
def test_invalid_status_names_the_field(changes, needle):
    with pytest.raises(ValueError, match=needle):
        RunStatus(**{"state": "running", **changes})
