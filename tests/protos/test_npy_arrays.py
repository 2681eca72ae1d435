"""``decode_array``: a Flower Array's ``.npy`` bytes, read only as the expected array.

numpy's own header for the expected shape and dtype is recognised without parsing it;
every other payload is parsed. Both paths must give the same array or the same refusal.
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from flwr.app import Array
from flwr.common.constant import SType
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedrank.errors import InvalidUpdate
from fedrank.protos import codecs
from fedrank.protos.codecs import decode_array

DTYPES = [np.dtype("<f4"), np.dtype("<f8"), np.dtype(">f4"), np.dtype("<i8")]


def npy(value: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, value, version=version, allow_pickle=False)
    return out.getvalue()


def outcome(data: bytes, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    """The array read, or the refusal's reason and message."""
    array = Array(dtype=str(dtype), shape=tuple(shape), stype=SType.NUMPY, data=data)
    try:
        return decode_array("t", array, shape, dtype)
    except InvalidUpdate as err:  # the message without the addresses numpy's may quote
        return (err.reason, re.sub(r"0x[0-9a-f]+", "0x", str(err)))


def parsed_outcome(data: bytes, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Any:
    """The same, with numpy's header always parsed (no shortcut)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(codecs, "_canonical_header", lambda shape, dtype: None)
        return outcome(data, shape, dtype)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return bool(a == b)


shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)


@settings(max_examples=200, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    fortran=st.booleans(),
    version=st.sampled_from([None, (1, 0), (2, 0)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_an_honest_array_reads_back_exactly_whichever_header_numpy_wrote(
    shape: tuple[int, ...], dtype: np.dtype[Any], fortran: bool, version: Any, seed: int
) -> None:
    value = np.random.default_rng(seed).normal(size=shape).astype(dtype)
    if fortran:
        value = np.asfortranarray(value)

    got = outcome(npy(value, version), shape, dtype)

    assert isinstance(got, np.ndarray)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, value)
    assert got.flags.c_contiguous
    assert got.flags.writeable


@settings(max_examples=300, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from(DTYPES),
    declared=st.one_of(st.none(), shapes),
    cut=st.integers(-8, 8),
    flips=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 255)), max_size=3),
)
def test_the_shortcut_accepts_and_refuses_exactly_what_parsing_does(
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    declared: tuple[int, ...] | None,
    cut: int,
    flips: list[tuple[int, int]],
) -> None:
    # A payload of another shape, cut short or padded, with bytes of its header or data
    # flipped: read against the expected (shape, dtype) with and without the shortcut.
    data = bytearray(npy(np.zeros(declared or shape, dtype=dtype)))
    for at, mask in flips:
        if at < len(data):
            data[at] ^= mask
    payload = bytes(data[:cut] if cut < 0 else data + b"\0" * cut)

    assert same(outcome(payload, shape, dtype), parsed_outcome(payload, shape, dtype))


def test_the_shortcut_is_taken_for_numpys_own_header() -> None:
    value = np.arange(12, dtype=np.float32).reshape(3, 4)
    header = codecs._canonical_header((3, 4), np.dtype(np.float32))

    assert header is not None
    assert npy(value).startswith(header)
    assert npy(value)[len(header) :] == value.tobytes()
