"""The release of one round of client-level DP: settings and the noised new arrays.

:class:`AdaptiveClipping` holds the settings of adaptive clipping, :func:`updates_against`
turns valid replies into float64 updates, and :func:`noised_release` computes the new
global arrays (reference + noised average update) with their digest. The wrapper that
samples, gates, checks the budget and records the release is
:class:`fedrank.strategies.dp_client_level.ClientLevelDp`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord

from fedrank.errors import ConfigError
from fedrank.privacy.adaptive_clipping import adaptive_clipping_round
from fedrank.privacy.mechanisms import client_level_dp_aggregate
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.release import state_digest

FloatState = dict[str, npt.NDArray[np.float64]]


@dataclasses.dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping (Andrew et al. 2021, arXiv 1905.03871) of client-level DP.

    Parameters
    ----------
    target_quantile : float
        gamma: the fraction of updates the clip norm should leave unclipped, in [0, 1].
    learning_rate : float
        eta: the geometric step of the clip norm, > 0.
    count_stddev : float
        sigma_b: noise std of the unclipped count, > noise multiplier / 2.
    """

    target_quantile: float
    learning_rate: float
    count_stddev: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.target_quantile <= 1.0:
            raise ConfigError("target_quantile", f"must lie in [0, 1], got {self.target_quantile}")
        for name in ("learning_rate", "count_stddev"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(name, f"must be a finite number > 0, got {value!r}")


@dataclasses.dataclass(frozen=True)
class NoisedRelease:
    """One round's release under client-level DP.

    Attributes
    ----------
    arrays : ArrayRecord
        The new global arrays, in the reference's dtypes.
    digest : str
        Digest of the arrays (and, under adaptive clipping, of the released fraction).
    unclipped_fraction : float
        The noised fraction of unclipped updates (NaN without adaptive clipping).
    next_clip_norm : float
        The clip norm of the next round (unchanged without adaptive clipping).
    """

    arrays: ArrayRecord
    digest: str
    unclipped_fraction: float
    next_clip_norm: float


def updates_against(
    states: Sequence[Mapping[str, npt.NDArray[np.floating]]],
    reference: Mapping[str, npt.NDArray[np.floating]],
) -> list[FloatState]:
    """Each state minus the reference, over the reference's tensors, in float64."""
    return [
        {
            name: state[name].astype(np.float64) - base.astype(np.float64)
            for name, base in reference.items()
        }
        for state in states
    ]


def noised_release(
    updates: list[FloatState],
    reference: Mapping[str, npt.NDArray[np.floating]],
    *,
    rng: RandomSource,
    clip_norm: float,
    noise_multiplier: float,
    expected_clients: int,
    adaptive: AdaptiveClipping | None,
) -> NoisedRelease:
    """New global arrays (reference + noised average update), their digest, and
    (adaptive clipping) the noised unclipped fraction and the next clip norm.

    Parameters
    ----------
    updates : list of FloatState
        The valid clients' updates, in a fixed (partition) order.
    reference : Mapping[str, ndarray]
        The global arrays the updates were taken against.
    rng : RandomSource
        The round's noise source (``client-noise`` child of the coordinator's root).
    clip_norm, noise_multiplier, expected_clients : float, float, int
        C, sigma and m of :class:`~fedrank.strategies.dp_client_level.ClientLevelDp`.
    adaptive : AdaptiveClipping or None
        Adaptive clipping, or None for a fixed clip norm.
    """
    shapes = {name: value.shape for name, value in reference.items()}
    fraction, next_clip = math.nan, clip_norm
    if adaptive is None:
        average = client_level_dp_aggregate(
            updates,
            shapes=shapes,
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            rng=rng,
            expected_clients=expected_clients,
        )
    else:
        result = adaptive_clipping_round(
            updates,
            shapes=shapes,
            clip_norm=clip_norm,
            noise_multiplier=noise_multiplier,
            count_stddev=adaptive.count_stddev,
            expected_clients=expected_clients,
            target_quantile=adaptive.target_quantile,
            learning_rate=adaptive.learning_rate,
            rng=rng,
        )
        average = result.average
        fraction, next_clip = result.unclipped_fraction, result.next_clip_norm
    values = {
        name: np.asarray(base.astype(np.float64) + average[name], dtype=base.dtype)
        for name, base in reference.items()
    }
    extra = () if adaptive is None else (fraction,)
    return NoisedRelease(
        arrays=ArrayRecord({name: Array(value) for name, value in values.items()}),
        digest=state_digest(values, *extra),
        unclipped_fraction=fraction,
        next_clip_norm=next_clip,
    )
