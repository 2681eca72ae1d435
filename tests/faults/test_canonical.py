"""The canonical-encoding check without re-encoding agrees with re-encoding, on any bytes.

:func:`fedrank.protos.envelope.is_canonical` walks the fields instead of serialising a
megabyte-sized message again; here it is held to the answer of
``SerializeToString(deterministic=True) == data`` on hand-built encodings of every
message the wire carries: fields in any order, repeated, split, unknown, zero, with
non-minimal varints and out-of-range values, and on mutations of valid payloads.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.protos import privacy_pb2, update_pb2
from fedrank.protos.envelope import is_canonical

MESSAGES = [update_pb2.Update, privacy_pb2.PrivacyReport, update_pb2.AdapterUpdate]


def varint(value: int, *, pad: int = 0) -> bytes:
    """``value`` as a varint, with ``pad`` redundant trailing bytes (not minimal)."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            break
    for _ in range(pad):
        out[-1] |= 0x80
        out.append(0)
    return bytes(out)


@st.composite
def encoding(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> bytes:
    """Bytes of ``descriptor``: mostly its fields, in order or not, sometimes odd."""
    fields = list(descriptor.fields)
    chosen = draw(st.lists(st.sampled_from(fields), max_size=5)) if fields else []
    if draw(st.booleans()):
        chosen.sort(key=lambda f: f.number)
    out = b""
    for field in chosen:
        out += draw(field_bytes(field, depth))
    if draw(st.integers(0, 9)) == 0:  # an unknown field
        out += varint(draw(st.integers(9, 40)) << 3) + varint(draw(st.integers(0, 5)))
    return out


@st.composite
def field_bytes(draw: st.DrawFn, field: FieldDescriptor, depth: int) -> bytes:
    pad = draw(st.sampled_from([0, 0, 0, 1]))
    values = st.one_of(
        st.integers(0, 3), st.integers(0, 2**64 - 1), st.sampled_from([2**31, 2**32, 2**64 - 1])
    )
    if field.type == FieldDescriptor.TYPE_DOUBLE:
        value = draw(st.sampled_from([0.0, -0.0, 1.5, float("nan")]))
        return varint(field.number << 3 | 1) + struct.pack("<d", value)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        body = b"" if depth > 2 else draw(encoding(field.message_type, depth + 1))
        return varint(field.number << 3 | 2) + varint(len(body), pad=pad) + body
    if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        body = draw(st.sampled_from([b"", b"a", b"fc1", b"\xff"]))
        return varint(field.number << 3 | 2) + varint(len(body)) + body
    if field.is_repeated:  # packed varints, or (not canonical) one unpacked
        items = draw(st.lists(values, max_size=3))
        if draw(st.booleans()) and items:
            return varint(field.number << 3) + varint(items[0])
        body = b"".join(varint(v) for v in items)
        return varint(field.number << 3 | 2) + varint(len(body)) + body
    return varint(field.number << 3) + varint(draw(values), pad=pad)


def agrees(message: type[Message], data: bytes) -> bool | None:
    parsed = message()
    try:
        parsed.ParseFromString(data)
    except DecodeError:
        return None  # not parsed: never reaches the check
    parsed.DiscardUnknownFields()  # type: ignore[attr-defined]
    return is_canonical(parsed, data) == (parsed.SerializeToString(deterministic=True) == data)


def check_walk(message: type[Message], data: Any) -> None:
    payload = data.draw(encoding(message.DESCRIPTOR))
    assert agrees(message, payload) in (True, None)


def check_mutations(message: type[Message], data: Any, at: int, insert: bytes) -> None:
    parsed = message()
    try:
        parsed.ParseFromString(data.draw(encoding(message.DESCRIPTOR)))
    except DecodeError:
        return
    canonical = parsed.SerializeToString(deterministic=True)
    assert agrees(message, canonical) is True
    cut = at % (len(canonical) + 1)
    for mutated in (
        canonical[:cut] + insert + canonical[cut:],
        canonical[:cut] + canonical[cut + 1 :],
    ):
        assert agrees(message, mutated) in (True, None)


MUTATION = (st.sampled_from(MESSAGES), st.data(), st.integers(0, 2**32), st.binary(max_size=4))


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_the_walk_agrees_with_re_encoding(message: type[Message], data: Any) -> None:
    check_walk(message, data)


@settings(max_examples=200, deadline=None)
@given(*MUTATION)
def test_the_walk_agrees_on_mutated_canonical_payloads(
    message: type[Message], data: Any, at: int, insert: bytes
) -> None:
    check_mutations(message, data, at, insert)


@pytest.mark.slow
@settings(max_examples=50_000, deadline=None)
@given(st.sampled_from(MESSAGES), st.data())
def test_the_walk_agrees_with_re_encoding_at_length(message: type[Message], data: Any) -> None:
    check_walk(message, data)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(*MUTATION)
def test_the_walk_agrees_on_mutations_at_length(
    message: type[Message], data: Any, at: int, insert: bytes
) -> None:
    check_mutations(message, data, at, insert)
