"""The foreign site's own privacy-report code: ``fedrank.v1.PrivacyReport`` by hand.

Part of the foreign ClientApp (:mod:`tests.faults.foreign_client`), and like it free
of fedrank's code: a site with its own protobuf tooling encodes the documented schema
itself. The corruptions here rewrite an honest report field by field.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import NamedTuple

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


class Field(NamedTuple):
    number: int
    wire: int
    start: int
    end: int


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(payload: bytes, start: int = 0, end: int | None = None) -> Iterator[Field]:
    """Each field of the message in ``payload[start:end]``: its number, wire type and
    where its value lies (a varint's bytes, a double's 8, a length-delimited body)."""
    at, end = start, len(payload) if end is None else end
    while at < end:
        tag, at = read_varint(payload, at)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            after = read_varint(payload, at)[1]
        elif wire == 1:
            after = at + 8
        elif wire == 2:
            length, at = read_varint(payload, at)
            after = at + length
        else:
            raise ValueError(f"wire type {wire} is not in these schemas")
        yield Field(number, wire, at, after)
        at = after


def read_report(payload: bytes) -> dict[int, int | float]:
    """Field number -> value of a PrivacyReport."""
    values: dict[int, int | float] = {}
    for field in fields(payload):
        if field.wire == 0:
            values[field.number] = read_varint(payload, field.start)[0]
        elif field.wire == 1:
            values[field.number] = struct.unpack("<d", payload[field.start : field.end])[0]
        else:
            raise ValueError(f"wire type {field.wire} is not in this schema")
    return values


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
