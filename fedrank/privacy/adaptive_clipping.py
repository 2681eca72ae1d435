"""Adaptive clipping for client-level DP: the clip norm follows a quantile of update norms.

Andrew, Thakkar, McMahan and Ramaswamy 2021, "Differentially Private Learning with
Adaptive Clipping", arXiv 1905.03871 (DP-FedAvg with a privately estimated quantile of
the update norms as clip norm). Each round, besides its
clipped update, every sampled client i contributes b_i = 1 if its update norm is at
most the current clip norm C (it was not clipped), else 0. The server releases

- the DP-FedAvg average of the clipped updates with noise multiplier z_delta
  (:func:`fedrank.privacy.mechanisms.client_level_dp_aggregate`), and
- the noised fraction of unclipped updates, ``(sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m
  + 1/2`` (centred, so one client changes the sum by at most 1/2; m the expected
  number of clients), and moves the clip norm geometrically toward the target
  quantile gamma: ``C <- C exp(-eta (b - gamma))``.

Accounting (their privacy analysis of the combined release): one round releases a
Gaussian mechanism on the pair (clipped sum, centred count) with sensitivities C and 1/2
and noise z_delta C and sigma_b; its RDP is that of one Gaussian mechanism with noise multiplier

    z = (z_delta^-2 + (2 sigma_b)^-2)^(-1/2)            (effective_noise_multiplier)

so a run is accounted exactly as fixed-clip DP-FedAvg with sigma = z (sampled Gaussian,
rate q), and a target z is met by adding z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2) to the
updates (:func:`update_noise_multiplier`; needs z < 2 sigma_b). The clip norm of the
next round is computed from released values only (post-processing).

Flower 1.41's ``DifferentialPrivacyServerSideAdaptiveClipping`` uses the same noise
split (``compute_adaptive_noise_params``) and default sigma_b = m / 20, but differs:
it counts *clipped* updates while moving C with the sign the paper uses for unclipped
ones (so the clip norm moves away from the target quantile), it does not centre the
count (sensitivity 1, where its split assumes 1/2), it divides by the number of
replies instead of m, and it draws unseeded numpy noise. Here the paper is followed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError
from fedrank.privacy.mechanisms import (
    FloatArray,
    NoiseSource,
    Update,
    client_level_dp_aggregate,
    l2_norm,
)
from fedrank.privacy.randomness import RandomSource


def _positive(field: str, value: float, *, allow_zero: bool = False) -> float:
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and ok
    ):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(field, f"must be a finite number {bound}, got {value!r}")
    return float(value)


def default_count_stddev(expected_clients: int) -> float:
    """sigma_b = m / 20, the value Andrew et al. recommend and Flower uses by default."""
    if (
        isinstance(expected_clients, bool)
        or not isinstance(expected_clients, int)
        or expected_clients < 1
    ):
        raise ConfigError("expected_clients", f"must be an integer >= 1, got {expected_clients!r}")
    return expected_clients / 20


def effective_noise_multiplier(*, update_noise_multiplier: float, count_stddev: float) -> float:
    """z = (z_delta^-2 + (2 sigma_b)^-2)^(-1/2): what one adaptive round is accounted at.

    ``count_stddev = 0`` means the count is released without noise: no guarantee (0).
    """
    z_delta = _positive("update_noise_multiplier", update_noise_multiplier)
    sigma_b = _positive("count_stddev", count_stddev, allow_zero=True)
    if sigma_b == 0:
        return 0.0
    return float((z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5)


def update_noise_multiplier(*, noise_multiplier: float, count_stddev: float) -> float:
    """z_delta = (z^-2 - (2 sigma_b)^-2)^(-1/2): the updates' share of a target z.

    Raises
    ------
    ConfigError
        ``noise_multiplier`` >= 2 ``count_stddev``: the count's noise alone would not
        leave room for the target (raise ``count_stddev``, or lower the target).
    """
    z = _positive("noise_multiplier", noise_multiplier)
    sigma_b = _positive("count_stddev", count_stddev)
    if z >= 2 * sigma_b:
        raise ConfigError(
            "count_stddev",
            f"{sigma_b:g} is too small for noise multiplier {z:g}: adaptive clipping needs "
            f"noise_multiplier < 2 x count_stddev (raise count_stddev above {z / 2:g})",
        )
    return float((z**-2 - (2 * sigma_b) ** -2) ** -0.5)


def unclipped(norms: Sequence[float], clip_norm: float) -> npt.NDArray[np.bool_]:
    """b_i: True where an update's norm is at most ``clip_norm`` (it is not clipped)."""
    _positive("clip_norm", clip_norm)
    values = np.asarray(norms, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ConfigError("norms", "update norms must be finite")
    return values <= clip_norm


def noisy_unclipped_fraction(
    indicators: Sequence[bool] | npt.NDArray[np.bool_],
    *,
    expected_clients: int,
    count_stddev: float,
    rng: NoiseSource,
) -> float:
    """(sum_i (b_i - 1/2) + N(0, sigma_b^2)) / m + 1/2: the released fraction unclipped."""
    default_count_stddev(expected_clients)  # validates m
    sigma_b = _positive("count_stddev", count_stddev, allow_zero=True)
    bits = np.asarray(indicators, dtype=bool)
    noise = (
        float(rng.normal((), std=sigma_b))
        if isinstance(rng, RandomSource)
        else float(rng.normal(0.0, sigma_b))
    )
    centred = float(np.sum(bits.astype(np.float64) - 0.5))
    return (centred + noise) / expected_clients + 0.5


def next_clip_norm(
    *, clip_norm: float, unclipped_fraction: float, target_quantile: float, learning_rate: float
) -> float:
    """Geometric update C exp(-eta (b - gamma)) (Andrew et al. 2021).

    More unclipped updates than the target quantile shrink C; fewer grow it.
    """
    clip = _positive("clip_norm", clip_norm)
    eta = _positive("learning_rate", learning_rate)
    if isinstance(target_quantile, bool) or not (
        isinstance(target_quantile, int | float) and 0.0 <= target_quantile <= 1.0
    ):
        raise ConfigError("target_quantile", f"must lie in [0, 1], got {target_quantile!r}")
    if not (isinstance(unclipped_fraction, int | float) and math.isfinite(unclipped_fraction)):
        raise ConfigError("unclipped_fraction", f"must be finite, got {unclipped_fraction!r}")
    return clip * math.exp(-eta * (unclipped_fraction - target_quantile))


@dataclass(frozen=True)
class AdaptiveRound:
    """What one adaptive-clipping round releases.

    Attributes
    ----------
    average : dict[str, np.ndarray]
        The noised DP-FedAvg average update (clipped at the round's clip norm).
    unclipped_fraction : float
        The noised fraction of updates at or under the clip norm.
    next_clip_norm : float
        The clip norm of the next round.
    """

    average: dict[str, FloatArray]
    unclipped_fraction: float
    next_clip_norm: float


def adaptive_clipping_round(
    updates: Sequence[Update],
    *,
    shapes: Mapping[str, tuple[int, ...]],
    clip_norm: float,
    noise_multiplier: float,
    count_stddev: float,
    expected_clients: int,
    target_quantile: float,
    learning_rate: float,
    rng: NoiseSource,
) -> AdaptiveRound:
    """One round of DP-FedAvg with adaptive clipping, accounted at ``noise_multiplier``.

    Parameters
    ----------
    updates : Sequence[Mapping[str, np.ndarray]]
        The clients' updates (unclipped), in a fixed order.
    shapes : Mapping[str, tuple[int, ...]]
        The model's tensor shapes.
    clip_norm : float
        C of this round.
    noise_multiplier : float
        z, the effective noise multiplier the round is accounted at (ledger release
        ``noise_multiplier``); the updates get z_delta (:func:`update_noise_multiplier`).
    count_stddev : float
        sigma_b (:func:`default_count_stddev`).
    expected_clients : int
        m, the fixed divisor of both sums.
    target_quantile : float
        gamma.
    learning_rate : float
        eta.
    rng : RandomSource | np.random.Generator
        Source of both noises (a secure RandomSource for a private release).
    """
    z_delta = update_noise_multiplier(noise_multiplier=noise_multiplier, count_stddev=count_stddev)
    average = client_level_dp_aggregate(
        updates,
        shapes=shapes,
        clip_norm=clip_norm,
        noise_multiplier=z_delta,
        rng=rng,
        expected_clients=expected_clients,
    )
    bits = unclipped([l2_norm(u) for u in updates], clip_norm)
    fraction = noisy_unclipped_fraction(
        bits, expected_clients=expected_clients, count_stddev=count_stddev, rng=rng
    )
    return AdaptiveRound(
        average=average,
        unclipped_fraction=fraction,
        next_clip_norm=next_clip_norm(
            clip_norm=clip_norm,
            unclipped_fraction=fraction,
            target_quantile=target_quantile,
            learning_rate=learning_rate,
        ),
    )
