"""Clients' privacy reports to and from the wire (the ``PrivacyReport`` message).

A report enters the privacy ledger, so like every update in :mod:`fedrank.protos.serde`
(which re-exports these functions) decoding accepts only the canonical encoding of a
valid report and raises :class:`fedrank.errors.InvalidUpdate` with a stable reason code
for anything else.
"""

from __future__ import annotations

from typing import Any

from fedrank.errors import InvalidUpdate
from fedrank.protos import privacy_pb2
from fedrank.protos.envelope import parse
from fedrank.protos.updates import (
    SCHEMA_VERSION,
    Mechanism,
    PrivacyReportData,
    privacy_report_problem,
)

_MECHANISMS: dict[Mechanism, privacy_pb2.PrivacyMechanism] = {
    "dp_sgd": privacy_pb2.PRIVACY_MECHANISM_DP_SGD,
    "gaussian": privacy_pb2.PRIVACY_MECHANISM_GAUSSIAN,
}
_PRIVACY_MAX_BYTES = 1024  # a report is under 100 bytes; anything near this is not one


def _privacy_to_proto(report: PrivacyReportData) -> privacy_pb2.PrivacyReport:
    return privacy_pb2.PrivacyReport(
        schema_version=SCHEMA_VERSION,
        mechanism=_MECHANISMS[report.mechanism],
        noise_multiplier=report.noise_multiplier,
        sample_rate=report.sample_rate,
        steps=report.steps,
        clipping_norm=report.clipping_norm,
        epsilon_spent=report.epsilon_spent,
        delta=report.delta,
    )


def _privacy_from_proto(report: privacy_pb2.PrivacyReport) -> PrivacyReportData:
    if report.schema_version != SCHEMA_VERSION:
        raise InvalidUpdate(
            "schema_version",
            f"schema version: expected {SCHEMA_VERSION}, got {report.schema_version}",
        )
    names = {number: name for name, number in _MECHANISMS.items()}
    mechanism = names.get(report.mechanism)
    if mechanism is None:
        raise InvalidUpdate(
            "unknown_mechanism",
            f"mechanism: expected one of {sorted(_MECHANISMS)}, got enum value {report.mechanism}",
        )
    values: dict[str, Any] = {
        "noise_multiplier": report.noise_multiplier,
        "sample_rate": report.sample_rate,
        "steps": report.steps,
        "clipping_norm": report.clipping_norm,
        "epsilon_spent": report.epsilon_spent,
        "delta": report.delta,
    }
    problem = privacy_report_problem(mechanism=mechanism, **values)
    if problem is not None:
        raise InvalidUpdate(*problem)
    return PrivacyReportData(mechanism=mechanism, **values)


def encode_privacy_report(report: PrivacyReportData) -> bytes:
    """Encode a client's privacy report (validated when the dataclass was built)."""
    return _privacy_to_proto(report).SerializeToString(deterministic=True)


def decode_privacy_report(
    payload: bytes, *, max_bytes: int = _PRIVACY_MAX_BYTES
) -> PrivacyReportData:
    """Decode and validate a privacy report before it enters the privacy ledger.

    Raises
    ------
    InvalidUpdate
        For anything but a valid report (and never any other exception).
        Reasons: ``too_large``, ``malformed``, ``non_canonical``,
        ``schema_version``, ``unknown_mechanism``, ``non_finite``,
        ``negative``, ``bad_sample_rate``, ``bad_delta``.
    """
    return _privacy_from_proto(parse(payload, privacy_pb2.PrivacyReport, max_bytes=max_bytes))
