"""The reply gate's compiled permutation check (protos/_permutation.c) against numpy's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.protos import packing
from fedrank.protos.packing import bits_for, permutation_problem


def test_the_compiled_check_was_built() -> None:
    # setup.py builds it where a C compiler is at hand (every machine this suite runs
    # on); a silent fallback to numpy would double the gate's cost for every FRL reply.
    assert packing.COMPILED_CHECK, (
        "fedrank.protos._permutation was not built (a C compiler and Python's headers are "
        "needed: reinstall with `pip install -e .` once gcc is installed)"
    )
    assert packing._is_permutation is not packing._numpy_is_permutation


def _compiled(ranks: np.ndarray) -> bool:
    from fedrank.protos._permutation import is_permutation

    return is_permutation(ranks)


@settings(max_examples=300, deadline=None)
@given(
    n=st.one_of(st.integers(1, 300), st.sampled_from([63, 64, 65, 127, 128, 129, 65_537])),
    seed=st.integers(0, 2**32 - 1),
    change=st.sampled_from(["none", "repeat", "out_of_range", "negative", "n", "swap"]),
)
def test_both_checks_agree_with_permutation_problem(n: int, seed: int, change: str) -> None:
    rng = np.random.default_rng(seed)
    ranks = rng.permutation(n).astype(np.int64)
    at = int(rng.integers(n))
    if change == "repeat":
        ranks[at] = ranks[int(rng.integers(n))]
    elif change == "out_of_range":
        ranks[at] = int(rng.integers(n, 1 << bits_for(n) + 1))
    elif change == "negative":
        ranks[at] = -int(rng.integers(1, n + 1))
    elif change == "n":
        ranks[at] = n
    elif change == "swap":
        other = int(rng.integers(n))
        ranks[[at, other]] = ranks[[other, at]]
    expected = permutation_problem(ranks, n=n) is None

    assert _compiled(ranks) is expected
    if int(ranks.min()) >= 0 and int(ranks.max()) < 1 << bits_for(n):  # numpy's domain
        assert packing._numpy_is_permutation(ranks) is expected


def test_a_view_into_a_longer_vector_is_read_to_its_own_end() -> None:
    # unpack_ranks returns ranks[:n] of a vector padded to a whole group of 8.
    padded = np.array([2, 0, 1, 0, 0, 0, 0, 0], dtype=np.int64)
    assert _compiled(padded[:3]) is True
    assert _compiled(padded[:4]) is False


@pytest.mark.parametrize(
    "ranks",
    [
        np.arange(4, dtype=np.int32),
        np.arange(4, dtype=np.uint64),
        np.arange(4, dtype=np.float64),
        np.arange(4, dtype=np.int64).reshape(2, 2),
        b"\x00" * 8,
    ],
    ids=["int32", "uint64", "float64", "2-d", "bytes"],
)
def test_anything_but_a_flat_int64_vector_is_a_type_error(ranks: object) -> None:
    with pytest.raises(TypeError, match="expected a contiguous 1-D int64 buffer"):
        _compiled(ranks)  # type: ignore[arg-type]


def test_a_strided_vector_is_refused() -> None:
    with pytest.raises((BufferError, ValueError)):
        _compiled(np.arange(8, dtype=np.int64)[::2])
