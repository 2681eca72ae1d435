"""Type stub of the compiled selection and ranking (fedrank/models/_topk.c)."""

import numpy as np
import numpy.typing as npt

def masked_update(
    scores: npt.NDArray[np.float32],
    weight: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    status: npt.NDArray[np.uint8],
    keep: int,
    threshold: float,
    density: float,
    /,
) -> tuple[float, float, int] | None:
    """Make ``out`` and ``status`` the mask of the ``keep`` highest-ranked scores."""

def rank_vector(scores: npt.NDArray[np.float32], ranks: npt.NDArray[np.int64], /) -> None:
    """Write the rank of each score (0 the lowest, ties by index) into ``ranks``."""
