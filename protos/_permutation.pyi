"""Type stub of the compiled permutation check (protos/_permutation.c)."""

import numpy as np
import numpy.typing as npt

def is_permutation(ranks: npt.NDArray[np.int64], /) -> bool:
    """Whether a contiguous 1-D int64 vector of n entries holds each of 0..n-1 once."""
