"""The envelope of every client update: parsing hostile bytes and checking the header.

Shared by the codecs of :mod:`fedrank.protos.serde`; like them, it raises
nothing but :class:`fedrank.errors.InvalidUpdate` on bad input.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Iterable
from typing import Literal, TypeVar, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.updates import AdapterExpectation, RankingExpectation, UpdateHeader

__all__ = [
    "check_body",
    "distinct_names",
    "header_from_proto",
    "header_to_proto",
    "is_canonical",
    "match_names",
    "parse",
]

_M = TypeVar("_M", bound=Message)


def parse(payload: object, message: type[_M], *, max_bytes: int) -> _M:
    """Parse ``payload`` as ``message``, accepting only its canonical encoding."""
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise InvalidUpdate("malformed", f"payload is a {type(payload).__name__}, not bytes")
    data = bytes(payload)
    if len(data) > max_bytes:
        raise InvalidUpdate("too_large", f"payload is {len(data)} bytes, the limit is {max_bytes}")
    parsed = message()
    try:
        parsed.ParseFromString(data)
        # The parser keeps unknown fields and would write them back unchanged.
        # (types-protobuf 6.32 leaves this public Message method out of its stub.)
        parsed.DiscardUnknownFields()  # type: ignore[attr-defined]
        canonical = is_canonical(parsed, data)
    # The parser is third-party code fed hostile bytes: whatever it raises, the
    # payload is malformed, and the server must get an InvalidUpdate, not a crash.
    except Exception as error:
        name = message.DESCRIPTOR.full_name
        raise InvalidUpdate("malformed", f"not a valid {name} message: {error}") from error
    # Unknown fields, repeated scalar fields, non-minimal varints and the like
    # all parse; refusing every non-canonical encoding keeps what is accepted
    # exactly defined (and leaves no room to smuggle bytes past validation).
    if not canonical:
        raise InvalidUpdate(
            "non_canonical",
            f"payload is not the canonical encoding of a {message.DESCRIPTOR.full_name} "
            "(unknown, repeated or out-of-order fields)",
        )
    return parsed


def distinct_names(names: Iterable[str], *, kind: str) -> set[str]:
    """The set of ``names``; ``duplicate_<kind>`` when one is sent twice."""
    counts = Counter(names)
    repeated = sorted(name for name, count in counts.items() if count > 1)
    if repeated:
        raise InvalidUpdate(f"duplicate_{kind}", f"{kind}s sent more than once: {repeated}")
    return set(counts)


def match_names(got: set[str], expected: Iterable[str], *, kind: str) -> None:
    """``missing_<kind>`` / ``extra_<kind>`` unless ``got`` is exactly ``expected``."""
    expected_names = set(expected)
    missing = sorted(expected_names - got)
    if missing:
        raise InvalidUpdate(f"missing_{kind}", f"{kind}s missing from the update: {missing}")
    extra = sorted(got - expected_names)
    if extra:
        raise InvalidUpdate(f"extra_{kind}", f"{kind}s not in the model: {extra}")


def header_to_proto(header: UpdateHeader) -> update_pb2.UpdateHeader:
    """The envelope header of an outgoing update."""
    return update_pb2.UpdateHeader(
        schema_version=header.schema_version,
        run_id=header.run_id,
        round=header.round,
        model_fingerprint=header.model_fingerprint,
    )


def is_canonical(parsed: Message, data: bytes) -> bool:
    """Whether ``data`` is ``parsed``'s deterministic encoding, without re-encoding it.

    The same answer as ``parsed.SerializeToString(deterministic=True) == data``, which
    it falls back to for a message with field types it does not know; otherwise a walk
    over the field tags and scalar values (:func:`_canonical_fields`) instead of a copy
    and a comparison of every byte: a ranking reply is megabytes of packed ranks.
    """
    descriptor = cast("Descriptor", parsed.DESCRIPTOR)  # upb's own type in the stubs
    if not _walkable(descriptor):
        return bool(parsed.SerializeToString(deterministic=True) == data)
    return _canonical_fields(memoryview(data), descriptor)


_VARINT_TYPES = {
    FieldDescriptor.TYPE_UINT32: 2**32,
    FieldDescriptor.TYPE_UINT64: 2**64,
    FieldDescriptor.TYPE_ENUM: None,  # int32: sign-extended to 64 bits when negative
    FieldDescriptor.TYPE_INT32: None,
}
_OTHER_TYPES = {
    FieldDescriptor.TYPE_DOUBLE,
    FieldDescriptor.TYPE_STRING,
    FieldDescriptor.TYPE_BYTES,
    FieldDescriptor.TYPE_MESSAGE,
}


@functools.cache  # a schema's answer never changes; asked once per reply otherwise
def _walkable(descriptor: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    """Only the field types :func:`_canonical_fields` knows, no repeated ones but
    messages and packed varints."""
    if descriptor.full_name in seen:
        return True
    for field in descriptor.fields:
        if field.type not in _VARINT_TYPES and field.type not in _OTHER_TYPES:
            return False
        scalars = field.is_repeated and field.type != FieldDescriptor.TYPE_MESSAGE
        if scalars and not (field.is_packed and field.type in _VARINT_TYPES):
            return False
        if field.message_type is not None and not _walkable(
            field.message_type, seen | {descriptor.full_name}
        ):
            return False
    return True


def _varint(data: memoryview, at: int) -> tuple[int, int, bool]:
    """(value, next offset, minimally encoded) of the varint at ``at``."""
    value = shift = 0
    start = at
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if not byte & 0x80:
            return value, at, at - start == 1 or byte != 0


def _varint_ok(field: FieldDescriptor, value: int) -> bool:
    """``value`` is what the deterministic encoder writes for a value of ``field``."""
    limit = _VARINT_TYPES[field.type]
    if limit is None:  # int32 and enums: positive, or a negative one sign-extended
        return value < 2**31 or 2**64 - 2**31 <= value < 2**64
    return value < limit


def _canonical_fields(data: memoryview, descriptor: Descriptor) -> bool:
    """The deterministic encoding's rules, field by field (``data`` has parsed already).

    Known fields only, in increasing field-number order, a repeated message's elements in
    one run, at most one member of a oneof; minimal varints in the range of their type;
    fields without presence only when not zero or empty (proto3); packed varints as one
    non-empty field; messages recursively.
    """
    at, last = 0, 0
    oneofs: set[str] = set()
    while at < len(data):
        tag, at, minimal = _varint(data, at)
        number, wire = tag >> 3, tag & 7
        field = descriptor.fields_by_number.get(number)
        if field is None or not minimal:
            return False
        repeated_message = field.is_repeated and field.type == FieldDescriptor.TYPE_MESSAGE
        if number < last or (number == last and not repeated_message):
            return False
        last = number
        group = field.containing_oneof
        if group is not None:  # a second member: the parser kept only the last
            if group.name in oneofs:
                return False
            oneofs.add(group.name)
        implicit = not field.has_presence and not field.is_repeated
        if field.type in _VARINT_TYPES and not field.is_repeated:
            if wire != 0:
                return False
            value, at, minimal = _varint(data, at)
            if not minimal or not _varint_ok(field, value) or (implicit and value == 0):
                return False
        elif field.type == FieldDescriptor.TYPE_DOUBLE:
            if wire != 1 or (implicit and not any(data[at : at + 8])):
                return False
            at += 8
        else:  # length-delimited: strings, bytes, messages, packed varints
            if wire != 2:
                return False
            size, at, minimal = _varint(data, at)
            end = at + size
            packed = field.is_repeated and not repeated_message
            if not minimal or (size == 0 and (implicit or packed)):
                return False
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                if not _canonical_fields(data[at:end], field.message_type):
                    return False
            elif field.is_repeated:  # packed varints
                while at < end:
                    value, at, minimal = _varint(data, at)
                    if not minimal or not _varint_ok(field, value):
                        return False
            at = end
    return True


def header_from_proto(
    update: update_pb2.Update, *, expect: RankingExpectation | AdapterExpectation
) -> UpdateHeader:
    """Check the envelope against what this round expects, then return it."""
    if not update.HasField("header"):
        raise InvalidUpdate("malformed", "the update has no header")
    header = update.header
    checks: list[tuple[str, str, object, object]] = [
        ("schema_version", "schema version", expect.schema_version, header.schema_version),
        ("run_id", "run id", expect.run_id, header.run_id),
        ("round", "round", expect.round, header.round),
        ("fingerprint", "model fingerprint", expect.model_fingerprint, header.model_fingerprint),
    ]
    for reason, what, wanted, got in checks:
        if wanted != got:
            raise InvalidUpdate(reason, f"{what}: expected {wanted!r}, got {got!r}")
    return UpdateHeader(
        schema_version=header.schema_version,
        run_id=header.run_id,
        round=header.round,
        model_fingerprint=header.model_fingerprint,
    )


def check_body(
    update: update_pb2.Update, kind: Literal["ranking", "adapter", "coarse_ranking"]
) -> None:
    """``wrong_kind`` unless the envelope carries a body of ``kind``."""
    got = update.WhichOneof("body")
    if got != kind:
        raise InvalidUpdate("wrong_kind", f"expected a {kind} update, got {got or 'no body'}")
