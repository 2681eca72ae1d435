"""The foreign site's own privacy-report code: ``fedrank.v1.PrivacyReport`` by hand.

Part of the foreign ClientApp (:mod:`tests.faults.foreign_client`), and like it free
of fedrank's code: a site with its own protobuf tooling encodes the documented schema
itself. The corruptions here rewrite an honest report field by field.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from flwr.app import ConfigRecord, RecordDict

PRIVACY = "privacy"
REPORT = "report"


# --- the privacy report, encoded by the site itself (fedrank.v1.PrivacyReport) -----------
# field 1 uint32 schema_version, 2 enum mechanism, 3 double noise_multiplier,
# 4 double sample_rate, 5 uint64 steps, 6 double clipping_norm, 7 double epsilon_spent,
# 8 double delta; proto3 leaves zero values out, fields in number order.


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


def read_report(payload: bytes) -> dict[int, int | float]:
    """Field number -> value of a PrivacyReport."""
    fields: dict[int, int | float] = {}
    at = 0
    while at < len(payload):
        tag, at = read_varint(payload, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            fields[number], at = read_varint(payload, at)
        elif wire == 1:
            fields[number] = struct.unpack("<d", payload[at : at + 8])[0]
            at += 8
        else:
            raise ValueError(f"wire type {wire} is not in this schema")
    return fields


def write_report(fields: Mapping[int, int | float]) -> bytes:
    """A PrivacyReport's bytes (doubles: fields 3, 4, 6, 7, 8)."""
    out = bytearray()
    for number in sorted(fields):
        value = fields[number]
        if value == 0:
            continue
        if number in (3, 4, 6, 7, 8):
            out += _varint(number << 3 | 1) + struct.pack("<d", float(value))
        else:
            out += _varint(number << 3) + _varint(int(value))
    return bytes(out)


def _with_report(content: RecordDict, **changes: float) -> RecordDict:
    payload = content.config_records[PRIVACY][REPORT]
    if not isinstance(payload, bytes):
        raise LookupError("this reply carries no privacy report")
    fields = read_report(payload)
    numbers = {"noise_multiplier": 3, "sample_rate": 4, "steps": 5, "epsilon_spent": 7}
    for name, value in changes.items():
        fields[numbers[name]] = value
    return RecordDict({**content, PRIVACY: ConfigRecord({REPORT: write_report(fields)})})


def sigma_tiny(content: RecordDict) -> RecordDict:
    """A report claiming sigma 1e-300 (divided by zero inside the accountant once)."""
    return _with_report(content, noise_multiplier=1e-300)


def sigma_huge(content: RecordDict) -> RecordDict:
    """A report claiming sigma 1e300 (overflowed the accountant once)."""
    return _with_report(content, noise_multiplier=1e300)


def steps_huge(content: RecordDict) -> RecordDict:
    """A report claiming 10^9 DP-SGD steps (the PRV grid once grew to gigabytes)."""
    return _with_report(content, steps=10**9)


def no_report(content: RecordDict) -> RecordDict:
    """The privacy record left out."""
    if PRIVACY not in content:
        raise LookupError("this reply carries no privacy report")
    return RecordDict({name: record for name, record in content.items() if name != PRIVACY})
