"""Client-level differential privacy: clip whole updates, sum, add Gaussian noise.

The math of DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models", arXiv 1710.06963, Algorithm 1 with the fixed-denominator estimator):
each client's update is clipped to L2 norm C over all its tensors together, the clipped
updates are summed, N(0, (sigma C)^2) is added to every coordinate of the sum and the
result is divided by a fixed m (the number of clients the round samples, or the expected
number under Poisson sampling). Adding or removing one client changes the sum by at
most C, so the noise on the average has std sigma C / m and the round is a Gaussian
mechanism with noise multiplier sigma.

Accounting (see :mod:`fedrank.privacy.accountant`), under the one neighbouring relation
of :mod:`fedrank.privacy.relation`, add or remove one client's whole data
(:data:`~fedrank.privacy.relation.NEIGHBOURING_RELATION`; Kairouz et al. 2021,
arXiv 2103.00039, Sec. 2), for which the clipped sum has sensitivity C:

- Poisson client sampling, each client independently with probability q = m / N:
  the sampled Gaussian mechanism, amplified by q (RDP of Mironov et al. 2019,
  arXiv 1908.10530).
- Fixed-size sampling of m out of N clients: accountable only when m = N (every client
  in every round, q = 1). With m < N, adding a client changes which others are drawn,
  and q = 1 would under-count; :func:`fedrank.privacy.relation.client_sampling_rate`
  refuses that setting.

All functions are pure: inputs are never modified, results are new float64 arrays.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedrank.privacy.randomness import RandomSource

FloatArray = npt.NDArray[np.float64]
Update = Mapping[str, npt.NDArray[np.floating]]
NoiseSource = RandomSource | np.random.Generator
"""Where noise comes from: a :class:`RandomSource` (secure, or reproducible and marked so),
or a numpy Generator (tests and non-private baselines)."""


def _check_positive(name: str, value: float) -> None:
    if isinstance(value, bool) or not (
        isinstance(value, int | float) and math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def l2_norm(update: Update) -> float:
    """L2 norm of all tensors of ``update`` taken together (float64).

    Parameters
    ----------
    update : Mapping[str, np.ndarray]
        Tensors by name.

    Returns
    -------
    float
        ``sqrt(sum of squares of every coordinate)``; NaN or inf when a coordinate is.
    """
    total = 0.0
    for value in update.values():
        flat = np.asarray(value, dtype=np.float64).ravel()
        total += float(np.dot(flat, flat))
    return math.sqrt(total)


def clip_by_l2_norm(update: Update, *, clip_norm: float) -> tuple[dict[str, FloatArray], float]:
    """Scale ``update`` into the L2 ball of radius ``clip_norm``.

    Parameters
    ----------
    update : Mapping[str, np.ndarray]
        Tensors by name (floating point, finite).
    clip_norm : float
        Radius C, > 0.

    Returns
    -------
    clipped : dict[str, np.ndarray]
        New float64 tensors, ``update * min(1, C / norm)``; equal to ``update`` when it
        already lies in the ball (a zero update stays zero: nothing is divided by 0).
    original_norm : float
        The norm before clipping.

    Raises
    ------
    ValueError
        ``clip_norm`` is not a positive finite number, or the update has a NaN or an
        infinite coordinate (its norm could not be bounded).
    """
    _check_positive("clip_norm", clip_norm)
    norm = l2_norm(update)
    if not math.isfinite(norm):
        raise ValueError("update has a non-finite coordinate; its norm cannot be clipped")
    scale = 1.0 if norm <= clip_norm else clip_norm / norm
    clipped = {name: np.asarray(value, dtype=np.float64) * scale for name, value in update.items()}
    return clipped, norm


def gaussian_noise_like(
    shapes: Mapping[str, tuple[int, ...]], *, std: float, rng: NoiseSource
) -> dict[str, FloatArray]:
    """Independent N(0, std^2) noise for every coordinate of tensors of ``shapes``.

    Parameters
    ----------
    shapes : Mapping[str, tuple[int, ...]]
        Tensor shapes by name; noise is drawn in this mapping's order, so the same
        order and generator state give the same noise.
    std : float
        Standard deviation, >= 0 (0 gives zeros).
    rng : RandomSource | np.random.Generator
        Source of randomness: a :class:`RandomSource` for a private release.

    Returns
    -------
    dict[str, np.ndarray]
        float64 noise tensors by name.
    """
    if isinstance(std, bool) or not (isinstance(std, int | float) and math.isfinite(std)):
        raise ValueError(f"std must be a finite number >= 0, got {std!r}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    if isinstance(rng, RandomSource):
        return rng.normal_like(shapes, std=float(std))
    return {name: rng.normal(0.0, std, size=tuple(shape)) for name, shape in shapes.items()}


def client_level_dp_aggregate(
    updates: Sequence[Update],
    *,
    shapes: Mapping[str, tuple[int, ...]],
    clip_norm: float,
    noise_multiplier: float,
    rng: NoiseSource,
    expected_clients: int,
) -> dict[str, FloatArray]:
    """DP-FedAvg's noised average of client updates (arXiv 1710.06963, Algorithm 1).

    ``(sum_i clip(u_i, C) + N(0, (sigma C)^2 I)) / m``: every client weighs the same
    (a client-reported example count would let one client raise its own sensitivity),
    and m is fixed in advance, so the noise std on the average is ``sigma C / m``
    whatever the number of replies.

    Parameters
    ----------
    updates : Sequence[Mapping[str, np.ndarray]]
        One update (new minus current global tensors) per client; may be empty (then
        the result is the noise alone, which is what keeps an empty round private).
    shapes : Mapping[str, tuple[int, ...]]
        The model's tensor shapes by name; every update must have exactly these.
    clip_norm : float
        C, > 0.
    noise_multiplier : float
        sigma, >= 0 (0: no privacy, for tests and baselines).
    rng : RandomSource | np.random.Generator
        Source of the noise (a secure :class:`RandomSource` for a private release).
    expected_clients : int
        m, the divisor: clients sampled per round (or expected under Poisson sampling).

    Returns
    -------
    dict[str, np.ndarray]
        The noised average update, float64, in the order of ``shapes``.

    Raises
    ------
    ValueError
        An argument is out of range, or an update's names or shapes differ from
        ``shapes`` (the update is named by its index).
    """
    _check_positive("clip_norm", clip_norm)
    if isinstance(noise_multiplier, bool) or not (
        isinstance(noise_multiplier, int | float)
        and math.isfinite(noise_multiplier)
        and noise_multiplier >= 0
    ):
        raise ValueError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
    if isinstance(expected_clients, bool) or not (
        isinstance(expected_clients, int) and expected_clients >= 1
    ):
        raise ValueError(f"expected_clients must be an integer >= 1, got {expected_clients!r}")
    total = {name: np.zeros(tuple(shape), dtype=np.float64) for name, shape in shapes.items()}
    for i, update in enumerate(updates):
        if set(update) != set(shapes):
            raise ValueError(
                f"updates[{i}] has tensors {sorted(update)}, expected {sorted(shapes)}"
            )
        for name, shape in shapes.items():
            if tuple(np.shape(update[name])) != tuple(shape):
                raise ValueError(
                    f"updates[{i}][{name!r}] has shape {np.shape(update[name])}, "
                    f"expected {tuple(shape)}"
                )
        clipped, _ = clip_by_l2_norm(update, clip_norm=clip_norm)
        for name in total:
            total[name] += clipped[name]
    noise = gaussian_noise_like(shapes, std=noise_multiplier * clip_norm, rng=rng)
    return {name: (total[name] + noise[name]) / expected_clients for name in shapes}
