"""Mutation fuzzing: whatever bytes arrive, decoding raises InvalidUpdate or
returns a valid update, never anything else.

The default run mutates each kind of payload FEDRANK_FUZZ_CASES times
(10,000 unless set); ``-m slow`` runs twenty times as many.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

import numpy as np
import pytest

from fedrank.errors import InvalidUpdate
from fedrank.protos.buckets import bucket_problem, rank_buckets
from fedrank.protos.coarse import (
    coarse_size_limit,
    decode_coarse_ranking_update,
    encode_coarse_ranking_update,
)
from fedrank.protos.packing import permutation_problem
from fedrank.protos.serde import (
    decode_adapter_update,
    decode_privacy_report,
    decode_ranking_update,
    encode_adapter_update,
    encode_privacy_report,
    encode_ranking_update,
    ranking_size_limit,
)
from fedrank.protos.updates import (
    AdapterExpectation,
    PrivacyReportData,
    RankingExpectation,
    UpdateHeader,
)

CASES = int(os.environ.get("FEDRANK_FUZZ_CASES", "10000"))
HEADER = UpdateHeader(run_id="fuzz", round=3, model_fingerprint="0123abcd")
SIZES = {"w1": 37, "w2": 8, "w3": 1, "w4": 64}
RANKING = RankingExpectation(
    run_id="fuzz",
    round=3,
    model_fingerprint="0123abcd",
    layer_sizes=SIZES,
    max_bytes=ranking_size_limit(SIZES),
)
COARSE = RankingExpectation(
    run_id="fuzz",
    round=3,
    model_fingerprint="0123abcd",
    layer_sizes=SIZES,
    max_bytes=coarse_size_limit(SIZES, 3),
    bucket_bits=3,
)
SHAPES = {"lora_A": (2, 3), "lora_B": (3, 2)}
ADAPTER = AdapterExpectation(
    run_id="fuzz",
    round=3,
    model_fingerprint="0123abcd",
    tensors=SHAPES,
    dtype="float32",
    max_bytes=1024,
    lora_rank=2,
    lora_alpha=8.0,
    factors="AB",
)
REPORT = PrivacyReportData(
    mechanism="dp_sgd",
    noise_multiplier=1.0,
    sample_rate=0.05,
    steps=120,
    clipping_norm=1.0,
    epsilon_spent=1.5,
    delta=1e-5,
)


# ------------------------------------------------------------ wire format


def read_varint(data: bytes, position: int) -> tuple[int, int] | None:
    value, shift = 0, 0
    while position < len(data) and shift < 70:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            return value, position
        shift += 7
    return None


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def split_fields(data: bytes) -> list[tuple[bytes, bytes | None, bytes]] | None:
    """Fields as (tag, inner bytes of a length-delimited field or None, whole chunk)."""
    fields, position = [], 0
    while position < len(data):
        start = position
        tag = read_varint(data, position)
        if tag is None:
            return None
        key, position = tag
        wire_type = key & 7
        inner = None
        if wire_type == 0:
            value = read_varint(data, position)
            if value is None:
                return None
            position = value[1]
        elif wire_type == 1:
            position += 8
        elif wire_type == 5:
            position += 4
        elif wire_type == 2:
            length = read_varint(data, position)
            if length is None:
                return None
            size, position = length
            inner = data[position : position + size]
            position += size
        else:
            return None
        if position > len(data):
            return None
        fields.append((varint(key), inner, data[start:position]))
    return fields


# ------------------------------------------------------------ mutations


def byte_mutation(data: bytes, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    buffer = bytearray(data)
    position = rng.randrange(len(buffer) + 1)
    if kind == 0 and buffer:  # flip one to three bits
        for _ in range(rng.randrange(1, 4)):
            index = rng.randrange(len(buffer))
            buffer[index] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del buffer[position:]
    elif kind == 2:  # extend
        buffer += rng.randbytes(rng.randrange(1, 17))
    elif kind == 3:  # insert
        buffer[position:position] = rng.randbytes(rng.randrange(1, 5))
    elif kind == 4:  # delete
        del buffer[position : position + rng.randrange(1, 5)]
    elif buffer:  # overwrite with a boundary value
        index = rng.randrange(len(buffer))
        buffer[index] = rng.choice([0x00, 0x01, 0x7F, 0x80, 0xFF])
    return bytes(buffer)


def field_mutation(data: bytes, rng: random.Random) -> bytes:
    """Swap, duplicate, drop or transplant protobuf fields, at any nesting depth."""
    fields = split_fields(data)
    if not fields:
        return byte_mutation(data, rng)
    nested = [i for i, (_, inner, _) in enumerate(fields) if inner and split_fields(inner)]
    if nested and rng.random() < 0.5:
        index = rng.choice(nested)
        tag, inner, _ = fields[index]
        assert inner is not None
        changed = field_mutation(inner, rng)
        chunks = [chunk for _, _, chunk in fields]
        chunks[index] = tag + varint(len(changed)) + changed
        return b"".join(chunks)
    chunks = [chunk for _, _, chunk in fields]
    first, second = rng.randrange(len(chunks)), rng.randrange(len(chunks))
    operation = rng.randrange(4)
    if operation == 0:
        chunks[first], chunks[second] = chunks[second], chunks[first]
    elif operation == 1:
        chunks.insert(second, chunks[first])
    elif operation == 2:
        del chunks[first]
    else:  # the value of one field under another field's tag
        tag, inner, _ = fields[second]
        if inner is not None:
            chunks[first] = tag + varint(len(chunks[first])) + chunks[first]
    return b"".join(chunks)


def mutate(data: bytes, rng: random.Random) -> bytes:
    for _ in range(rng.randrange(1, 4)):
        data = field_mutation(data, rng) if rng.random() < 0.4 else byte_mutation(data, rng)
    return data


# ------------------------------------------------------------ the property


def check_ranking(payload: bytes) -> None:
    decoded = decode_ranking_update(payload, expect=RANKING)
    assert list(decoded) == list(SIZES)
    for name, n in SIZES.items():
        assert permutation_problem(decoded[name], n=n) is None


def check_coarse(payload: bytes) -> None:
    decoded = decode_coarse_ranking_update(payload, expect=COARSE)
    assert list(decoded) == list(SIZES)
    for name, n in SIZES.items():
        assert bucket_problem(decoded[name], n=n, bits=3) is None


def check_adapter(payload: bytes) -> None:
    decoded = decode_adapter_update(payload, expect=ADAPTER)
    assert (decoded.lora_rank, decoded.lora_alpha, decoded.factors) == (2, 8.0, "AB")
    for name, shape in SHAPES.items():
        values = decoded.tensors[name]
        assert values.shape == shape
        assert values.dtype == np.float32
        assert np.isfinite(values).all()


def check_report(payload: bytes) -> None:
    decode_privacy_report(payload)  # the dataclass validates what it holds


def ranking_payload() -> bytes:
    rng = np.random.default_rng(11)
    return encode_ranking_update(HEADER, {name: rng.permutation(n) for name, n in SIZES.items()})


def coarse_payload() -> bytes:
    rng = np.random.default_rng(13)
    buckets = {name: rank_buckets(rng.permutation(n), 3) for name, n in SIZES.items()}
    return encode_coarse_ranking_update(HEADER, buckets, bits=3)


def adapter_payload() -> bytes:
    rng = np.random.default_rng(12)
    tensors = {
        name: rng.standard_normal(shape).astype(np.float32) for name, shape in SHAPES.items()
    }
    return encode_adapter_update(HEADER, tensors, rank=2, alpha=8.0, factors="AB")


KINDS: dict[str, tuple[Callable[[], bytes], Callable[[bytes], None]]] = {
    "ranking": (ranking_payload, check_ranking),
    "coarse": (coarse_payload, check_coarse),
    "adapter": (adapter_payload, check_adapter),
    "privacy": (lambda: encode_privacy_report(REPORT), check_report),
}


def fuzz(kind: str, cases: int, seed: int) -> dict[str, int]:
    make, check = KINDS[kind]
    valid = make()
    check(valid)  # the unmutated payload decodes
    rng = random.Random(seed)  # scalar draws: the stdlib generator is far cheaper
    outcomes: dict[str, int] = {}
    for case in range(cases):
        payload = mutate(valid, rng)
        try:
            check(payload)
            outcome = "accepted"
        except InvalidUpdate as error:
            outcome = error.reason
        except Exception as error:  # anything else is the bug this test looks for
            raise AssertionError(
                f"{kind} case {case}: {type(error).__name__}: {error}; payload {payload.hex()}"
            ) from error
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return outcomes


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mutated_payloads_raise_only_invalid_update(kind: str) -> None:
    outcomes = fuzz(kind, CASES, seed=2024)

    assert sum(outcomes.values()) == CASES
    # The mutations reach past the parser: most rejections are not just "malformed".
    assert len(outcomes) >= 4, outcomes


@pytest.mark.slow
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_mutated_payloads_raise_only_invalid_update_long(kind: str) -> None:
    outcomes = fuzz(kind, 20 * CASES, seed=4048)

    assert sum(outcomes.values()) == 20 * CASES
