"""The envelope of every client update: parsing hostile bytes and checking the header.

Shared by the codecs of :mod:`fedrank.protos.serde`; like them, it raises
nothing but :class:`fedrank.errors.InvalidUpdate` on bad input.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Literal, TypeVar

from google.protobuf.message import Message

from fedrank.errors import InvalidUpdate
from fedrank.protos import update_pb2
from fedrank.protos.updates import AdapterExpectation, RankingExpectation, UpdateHeader

__all__ = [
    "check_body",
    "distinct_names",
    "header_from_proto",
    "header_to_proto",
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
        canonical = parsed.SerializeToString(deterministic=True)
    # The parser is third-party code fed hostile bytes: whatever it raises, the
    # payload is malformed, and the server must get an InvalidUpdate, not a crash.
    except Exception as error:
        name = message.DESCRIPTOR.full_name
        raise InvalidUpdate("malformed", f"not a valid {name} message: {error}") from error
    # Unknown fields, repeated scalar fields, non-minimal varints and the like
    # all parse; refusing every non-canonical encoding keeps what is accepted
    # exactly defined (and leaves no room to smuggle bytes past validation).
    if canonical != data:
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
