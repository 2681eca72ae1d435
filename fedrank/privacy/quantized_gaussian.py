"""A local Gaussian mechanism quantized to b bits: RQM's baseline at equal bits.

Each client clips its update to L2 norm C, adds N(0, (sigma C)^2) to every coordinate
itself (a local randomizer: the server sees only the noised vector), and sends each
coordinate as one of 2^b levels spread evenly over [-B, B] with B = C (1 + 4 sigma),
by unbiased randomized rounding (values beyond B are first clamped to it). Clamping
and rounding are post-processing: the guarantee is the Gaussian mechanism's.

Accounting, under the relation RQM's accounting uses (one client's update replaced by
any other in the clipping ball, :mod:`fedrank.privacy.rqm_accounting`): the L2
sensitivity of the clipped update is 2C, so one round is a Gaussian mechanism with
noise multiplier sigma / 2, composed over the rounds the client sends (no sampling
amplification: the server sees who sends), with fedrank's accountant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import compute_epsilon, noise_multiplier_for_epsilon
from fedrank.privacy.mechanisms import clip_by_l2_norm
from fedrank.privacy.randomness import RandomSource

FloatArray = npt.NDArray[np.float64]
_RANGE_SIGMAS = 4.0


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 16:
        raise ConfigError("bits", f"must be an integer in [1, 16], got {bits!r}")
    return bits


def stochastic_round(
    values: npt.ArrayLike, *, bound: float, bits: int, source: RandomSource
) -> FloatArray:
    """``values`` clamped to [-bound, bound], rounded at random to 2^bits even levels.

    Unbiased inside the range: a value between two levels goes up with probability
    proportional to its distance from the lower one.
    """
    levels = 1 << _check_bits(bits)
    if not (math.isfinite(bound) and bound > 0):
        raise ConfigError("bound", f"must be a finite number > 0, got {bound!r}")
    x = np.clip(np.asarray(values, dtype=np.float64), -bound, bound)
    step = 2 * bound / (levels - 1)
    position = (x + bound) / step
    lower = np.floor(position)
    up = source.uniform(x.shape) < (position - lower)
    index = np.clip(lower + up, 0, levels - 1)
    return np.asarray(-bound + index * step, dtype=np.float64)


def local_gaussian_encode(
    update: Mapping[str, npt.NDArray[np.floating]],
    *,
    clip_norm: float,
    noise_multiplier: float,
    bits: int,
    source: RandomSource,
) -> dict[str, FloatArray]:
    """What the server receives from one client: clipped, noised, quantized (decoded)."""
    clipped, _ = clip_by_l2_norm(update, clip_norm=clip_norm)
    bound = clip_norm * (1 + _RANGE_SIGMAS * noise_multiplier)
    out = {}
    for name, value in clipped.items():
        noised = value + source.normal(value.shape, std=noise_multiplier * clip_norm)
        out[name] = stochastic_round(noised, bound=bound, bits=bits, source=source)
    return out


def local_gaussian_epsilon(*, noise_multiplier: float, rounds: int, delta: float) -> float:
    """Epsilon of a client that sent ``rounds`` updates (replace-one: sigma / 2)."""
    return compute_epsilon(
        history=[(noise_multiplier / 2, 1.0, rounds)], delta=delta, accountant="rdp"
    )


def local_gaussian_noise_for_epsilon(*, target_epsilon: float, rounds: int, delta: float) -> float:
    """The least sigma (relative to C) whose ``rounds`` releases keep ``target_epsilon``."""
    half = noise_multiplier_for_epsilon(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=1.0,
        steps=rounds,
        accountant="rdp",
    )
    return 2 * half
