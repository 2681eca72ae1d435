"""Privacy reports: round trips and validation before the ledger sees them."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.errors import InvalidUpdate
from fedrank.protos import privacy_pb2
from fedrank.protos.serde import decode_privacy_report, encode_privacy_report
from fedrank.protos.updates import PrivacyReportData

VALID = PrivacyReportData(
    mechanism="dp_sgd",
    noise_multiplier=1.1,
    sample_rate=0.01,
    steps=300,
    clipping_norm=1.0,
    epsilon_spent=2.7,
    delta=1e-5,
)
non_negative = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=100, deadline=None)
@given(
    mechanism=st.sampled_from(["dp_sgd", "gaussian"]),
    noise_multiplier=non_negative,
    sample_rate=st.floats(min_value=0, max_value=1),
    steps=st.integers(0, 2**64 - 1),
    clipping_norm=non_negative,
    epsilon_spent=non_negative,
    delta=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_round_trip(**fields: object) -> None:
    report = PrivacyReportData(**fields)  # type: ignore[arg-type]

    assert decode_privacy_report(encode_privacy_report(report)) == report


def with_fields(**changes: object) -> bytes:
    message = privacy_pb2.PrivacyReport()
    message.ParseFromString(encode_privacy_report(VALID))
    for name, value in changes.items():
        setattr(message, name, value)
    return message.SerializeToString(deterministic=True)


@pytest.mark.parametrize(
    ("payload", "reason", "words"),
    [
        (with_fields(schema_version=2), "schema_version", ["expected 1, got 2"]),
        (with_fields(mechanism=0), "unknown_mechanism", ["enum value 0"]),
        (with_fields(mechanism=9), "unknown_mechanism", ["enum value 9"]),
        (with_fields(epsilon_spent=math.inf), "non_finite", ["epsilon_spent", "inf"]),
        (with_fields(noise_multiplier=math.nan), "non_finite", ["noise_multiplier"]),
        (with_fields(clipping_norm=-1.0), "negative", ["clipping_norm", "-1.0"]),
        (with_fields(epsilon_spent=-0.5), "negative", ["epsilon_spent"]),
        (with_fields(sample_rate=1.5), "bad_sample_rate", ["1.5"]),
        (with_fields(delta=1.0), "bad_delta", ["[0, 1)", "1.0"]),
        (with_fields(delta=-1e-9), "negative", ["delta"]),
        (b"\xff", "malformed", ["PrivacyReport"]),
        (encode_privacy_report(VALID) + b"\x50\x01", "non_canonical", []),
        (b"\x00" * 2000, "too_large", ["2000 bytes"]),
    ],
)
def test_each_rejection_names_its_reason(payload: bytes, reason: str, words: list[str]) -> None:
    with pytest.raises(InvalidUpdate) as caught:
        decode_privacy_report(payload)

    assert caught.value.reason == reason
    for word in words:
        assert word in str(caught.value)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mechanism": "laplace"}, "mechanism"),
        ({"delta": 1.0}, "delta"),
        ({"steps": -1}, "steps"),
        ({"epsilon_spent": math.nan}, "epsilon_spent"),
        ({"sample_rate": 2.0}, "sample_rate"),
    ],
)
def test_the_dataclass_refuses_what_the_decoder_would(
    changes: dict[str, object], match: str
) -> None:
    fields = {**VALID.__dict__, **changes}
    with pytest.raises(ValueError, match=match):
        PrivacyReportData(**fields)
