"""RQM, the Randomized Quantization Mechanism: privacy from quantization alone.

Youn, Hu, Ziani and Abernethy 2023, "Randomized Quantization is All You Need for
Differential Privacy in Federated Learning", arXiv 2306.11913 (FL-ICML 2023). Each
coordinate x of a client's clipped update, |x| <= c, is sent as the index of one of m
levels, with two levels of randomness:

1. the levels are spread evenly over the extended range [-(c + Delta), c + Delta],
   ``B(j) = -(c + Delta) + j * 2 (c + Delta) / (m - 1)`` for j = 0..m-1 (Delta > 0 is
   what makes the output distributions of any two inputs overlap);
2. the two end levels are always kept, and each interior level independently with
   probability q (a fresh draw for every coordinate);
3. x is rounded at random to one of the two kept levels around it, up with probability
   ``(x - B(a)) / (B(b) - B(a))``: the decoded value ``B(index)`` is unbiased.

No noise is added: the client sends ceil(log2 m) bits a coordinate
(:meth:`RqmParams.bits_per_coordinate`). Its Renyi-DP accounting is in
:mod:`fedrank.privacy.rqm_accounting`.

The randomness must come from a :class:`fedrank.privacy.randomness.RandomSource` that
the server cannot replay (a secure one, held by the client): the guarantee rests on
the level subsets and the rounding being unknown to the receiver.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.privacy.mechanisms import clip_by_l2_norm
from fedrank.privacy.randomness import RandomSource

ClipNorm = Literal["l2", "linf"]
FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.int64]

# An index array of the wire: the smallest unsigned type holding m - 1.
MAX_LEVELS = 1 << 16


@dataclass(frozen=True)
class RqmParams:
    """The parameters of RQM for one coordinate.

    Parameters
    ----------
    clip : float
        c: every coordinate quantized lies in [-c, c] (after clipping), > 0.
    extension : float
        Delta: how far the outer levels lie beyond c, > 0 (larger: more private, more
        quantization noise).
    levels : int
        m: number of quantization levels, 2 <= m <= 65,536.
    keep_probability : float
        q: probability that an interior level is kept, in [0, 1). (With every level
        kept the rounding is deterministic given x's cell: no privacy.) Unused when
        m = 2.
    """

    clip: float
    extension: float
    levels: int
    keep_probability: float

    def __post_init__(self) -> None:
        for name in ("clip", "extension"):
            value = getattr(self, name)
            if isinstance(value, bool) or not (
                isinstance(value, int | float) and math.isfinite(value) and value > 0
            ):
                raise ConfigError(name, f"must be a finite number > 0, got {value!r}")
        if (
            isinstance(self.levels, bool)
            or not isinstance(self.levels, int)
            or not 2 <= self.levels <= MAX_LEVELS
        ):
            raise ConfigError(
                "levels", f"must be an integer in [2, {MAX_LEVELS}], got {self.levels!r}"
            )
        q = self.keep_probability
        if isinstance(q, bool) or not (isinstance(q, int | float) and 0.0 <= q < 1.0):
            raise ConfigError("keep_probability", f"must lie in [0, 1), got {q!r}")
        object.__setattr__(self, "clip", float(self.clip))
        object.__setattr__(self, "extension", float(self.extension))
        object.__setattr__(self, "keep_probability", float(q))

    @property
    def half_range(self) -> float:
        """c + Delta: the outer levels are at plus and minus this."""
        return self.clip + self.extension

    @property
    def spacing(self) -> float:
        """Distance between neighbouring levels, 2 (c + Delta) / (m - 1)."""
        return 2.0 * self.half_range / (self.levels - 1)

    def level_values(self) -> FloatArray:
        """B(0), ..., B(m - 1), increasing."""
        return -self.half_range + self.spacing * np.arange(self.levels, dtype=np.float64)

    @property
    def bits_per_coordinate(self) -> int:
        """ceil(log2 m): what one coordinate costs on the wire."""
        return rqm_bits_per_coordinate(self.levels)


def rqm_bits_per_coordinate(levels: int) -> int:
    """Bits a coordinate takes with ``levels`` quantization levels: ceil(log2 m)."""
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ConfigError("levels", f"must be an integer >= 2, got {levels!r}")
    return (levels - 1).bit_length()


def cell_of(values: FloatArray, params: RqmParams) -> IndexArray:
    """The grid cell j of each value: B(j) <= x <= B(j + 1), j in [0, m - 2]."""
    cells = np.floor((values + params.half_range) / params.spacing).astype(np.int64)
    return np.clip(cells, 0, params.levels - 2)


def rqm_quantize(values: npt.ArrayLike, params: RqmParams, source: RandomSource) -> IndexArray:
    """Level indices of ``values`` under RQM (Youn et al. 2023, Sec. 3 mechanism).

    Parameters
    ----------
    values : array_like
        Finite coordinates, each already in [-c, c] (clip first: :func:`clip_update`).
    params : RqmParams
        c, Delta, m, q.
    source : RandomSource
        The client's source of the level subsets and the rounding.

    Returns
    -------
    np.ndarray
        int64 indices in [0, m - 1], the shape of ``values``.

    Raises
    ------
    InvalidUpdate
        A value is not finite or lies outside [-c, c] (``rqm_out_of_range``).
    """
    x = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(x)) or np.any(np.abs(x) > params.clip):
        raise InvalidUpdate(
            "rqm_out_of_range", f"RQM quantizes values in [-{params.clip:g}, {params.clip:g}]"
        )
    flat = x.ravel()
    m = params.levels
    keep = np.ones((flat.size, m), dtype=bool)
    if m > 2:
        keep[:, 1:-1] = source.uniform((flat.size, m - 2)) < params.keep_probability
    cells = cell_of(flat, params)
    rows = np.arange(flat.size)
    positions = np.arange(m, dtype=np.int64)
    # Nearest kept level at or below each cell's lower edge, and at or above its upper.
    below = np.maximum.accumulate(np.where(keep, positions, -1), axis=1)[rows, cells]
    above = np.minimum.accumulate(np.where(keep, positions, m)[:, ::-1], axis=1)[:, ::-1][
        rows, cells + 1
    ]
    levels = params.level_values()
    up = (flat - levels[below]) / (levels[above] - levels[below])
    chosen = np.where(source.uniform(flat.size) < up, above, below)
    return chosen.reshape(x.shape)


def rqm_decode(indices: npt.ArrayLike, params: RqmParams) -> FloatArray:
    """The level values of ``indices`` (unbiased estimates of the quantized values).

    Raises
    ------
    InvalidUpdate
        An index is not an integer in [0, m - 1] (``rqm_bad_index``).
    """
    idx = np.asarray(indices)
    if not np.issubdtype(idx.dtype, np.integer) or np.any(idx < 0) or np.any(idx >= params.levels):
        raise InvalidUpdate(
            "rqm_bad_index", f"RQM indices must be integers in [0, {params.levels - 1}]"
        )
    return params.level_values()[idx.astype(np.int64)]


def clip_update(
    update: Mapping[str, npt.NDArray[np.floating]], *, params: RqmParams, norm: ClipNorm
) -> dict[str, FloatArray]:
    """Clip a client's update so every coordinate lies in [-c, c].

    ``"l2"``: scale the whole update into the L2 ball of radius c (DP-FedAvg's clipping;
    each coordinate is then within [-c, c] too). ``"linf"``: clamp each coordinate.
    """
    if norm == "l2":
        clipped, _ = clip_by_l2_norm(update, clip_norm=params.clip)
        return clipped
    if norm == "linf":
        out = {}
        for name, value in update.items():
            array = np.asarray(value, dtype=np.float64)
            if not np.all(np.isfinite(array)):
                raise ConfigError("update", f"{name!r} has a non-finite coordinate")
            out[name] = np.clip(array, -params.clip, params.clip)
        return out
    raise ConfigError("norm", f"must be 'l2' or 'linf', got {norm!r}")


def index_dtype(levels: int) -> np.dtype[np.unsignedinteger]:
    """The smallest unsigned integer dtype holding indices of ``levels`` levels."""
    return np.dtype(np.uint8) if levels <= 256 else np.dtype(np.uint16)


def rqm_encode_update(
    update: Mapping[str, npt.NDArray[np.floating]],
    *,
    params: RqmParams,
    norm: ClipNorm,
    source: RandomSource,
) -> dict[str, npt.NDArray[np.unsignedinteger]]:
    """Clip and quantize a client's update: level indices per tensor (uint8 or uint16).

    Tensors are quantized in the mapping's order, so a reproducible source gives the
    same indices for the same update.
    """
    dtype = index_dtype(params.levels)
    clipped = clip_update(update, params=params, norm=norm)
    return {
        name: rqm_quantize(value, params, source).astype(dtype) for name, value in clipped.items()
    }


def rqm_decode_update(
    indices: Mapping[str, npt.ArrayLike], params: RqmParams
) -> dict[str, FloatArray]:
    """Each tensor's level values (what the server averages)."""
    return {name: rqm_decode(value, params) for name, value in indices.items()}
