"""The numerical core of the accountant: cached RDP curves and a capped PRV composition.

What :mod:`fedrank.privacy.accountant` computes epsilon with, on histories already
checked and merged (:func:`fedrank.privacy.bounds.grouped_history`). The math is
Opacus' (``opacus.accountants.analysis``); this module caches the RDP curve of each
(sigma, q) for the process, and builds the PRV discretisation of Gopi et al. 2021
(arXiv 2106.02848) exactly as ``PRVAccountant`` does, with its domain computed once from
the cached curves and its size known before anything is allocated (:func:`prv_reason`).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

# Opacus is imported where it computes, not here: importing it pulls in scipy.stats and
# torch.distributed (about 3 s of start-up), which every fedrank process would pay,
# FRL's included, for an accountant it may never call.

# The orders Opacus' PRV accountant sizes its domain with (``RDPAccountant.DEFAULT_ALPHAS``,
# equal by test), the first orders of RDP_ORDERS: their positions in our cached curves.
OPACUS_ALPHAS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(12, 64)),
)
# Opacus' default orders plus larger ones: with few compositions at q = 1 (client-level
# DP over a handful of rounds) the best order lies above 63. A larger set of orders can
# only lower the minimum over orders, and each order gives a valid bound.
RDP_ORDERS: tuple[float, ...] = (*OPACUS_ALPHAS, 64.0, 80.0, 96.0, 128.0, 192.0, 256.0, 512.0)
_OPACUS_INDEX = np.arange(len(OPACUS_ALPHAS))

# PRV discretisation error in epsilon; the result is the upper end of the error band.
PRV_EPS_ERROR = 0.01
# Largest PRV discretisation built: grid points times distinct mechanisms (each holds
# its own grid until composed). At the cap one call's peak memory grew by 144 MB
# (python -m benchmarks.accountant_bounds).
PRV_MAX_POINTS = 2**21
# Most distinct mechanisms composed by PRV (each needs a numerical integration).
PRV_MAX_MECHANISMS = 8

Grouped = list[tuple[float, float, int]]


@functools.lru_cache(maxsize=4096)
def rdp_curve(sigma: float, q: float) -> npt.NDArray[np.float64]:
    """RDP of one step of the sampled Gaussian at every order of :data:`RDP_ORDERS`.

    The costly part of any accounting (up to ~0.5 s for q near 1/2): computed once per
    mechanism and process. The returned array is read-only.
    """
    from opacus.accountants.analysis.rdp import compute_rdp

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        curve = np.asarray(
            compute_rdp(q=q, noise_multiplier=sigma, steps=1, orders=list(RDP_ORDERS)),
            dtype=np.float64,
        )
    curve.setflags(write=False)
    return curve


def _rdp_total(
    grouped: Grouped, index: npt.NDArray[np.intp] | None = None
) -> npt.NDArray[np.float64]:
    # Summed as RDPAccountant sums (sum() over entries, each curve times its steps), so
    # the floats are the same.
    curves = [
        (rdp_curve(s, q) if index is None else rdp_curve(s, q)[index]) * steps
        for s, q, steps in grouped
    ]
    total: npt.NDArray[np.float64] = sum(curves)  # type: ignore[assignment]
    return total


def rdp_total(grouped: Grouped) -> npt.NDArray[np.float64]:
    """The RDP curve (at :data:`RDP_ORDERS`) of the composition of ``grouped``."""
    if not grouped:
        return np.zeros(len(RDP_ORDERS), dtype=np.float64)
    return _rdp_total(grouped)


def rdp_epsilon(grouped: Grouped, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    """RDP epsilon of ``grouped`` at ``delta`` over ``orders`` (:data:`RDP_ORDERS` or
    :data:`OPACUS_ALPHAS`): what ``RDPAccountant.get_epsilon`` returns, bit for bit."""
    index = None if orders is RDP_ORDERS else _OPACUS_INDEX
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return epsilon_of_rdp(_rdp_total(grouped, index), delta, orders)


def epsilon_of_rdp(
    curve: npt.NDArray[np.float64], delta: float, orders: Sequence[float] = RDP_ORDERS
) -> float:
    """Opacus' conversion (``get_privacy_spent``, Balle et al. 2020) of an RDP curve at
    ``orders`` to epsilon at ``delta``."""
    from opacus.accountants.analysis.rdp import get_privacy_spent

    with warnings.catch_warnings():
        # The best order at the edge of the set means a looser bound, not a wrong one.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=curve, delta=delta)
    return float(eps)


def prv_domain(grouped: Grouped, delta: float) -> tuple[float, float, float]:
    """Half-width L, mesh size and (estimated) points of Opacus' PRV domain.

    The same numbers as ``compute_safe_domain_size`` and ``PRVAccountant._get_domain``
    (Gopi et al. 2021, Remark 5.6), from cached RDP curves at Opacus' default orders.
    """
    delta_error = delta / 1000
    total = sum(steps for _, _, steps in grouped)
    half_width = rdp_epsilon(grouped, delta_error / 4, OPACUS_ALPHAS)
    for sigma, q, _ in grouped:
        single = rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total), OPACUS_ALPHAS)
        half_width = max(half_width, single)
    half_width = max(half_width, PRV_EPS_ERROR) + 3
    mesh = PRV_EPS_ERROR / math.sqrt(total * math.log(12 / delta_error) / 2)
    points = math.ceil(2 * half_width / mesh) + 2.0 if math.isfinite(half_width) else math.inf
    return half_width, mesh, points


def prv_reason(grouped: Grouped, delta: float) -> str | None:
    """Why PRV would not be used for ``grouped`` (a sentence), or None when it is.

    Over :data:`PRV_MAX_MECHANISMS` mechanisms, over :data:`PRV_MAX_POINTS` grid points
    (times mechanisms), or a delta the grid's floating point cannot resolve.
    """
    if len(grouped) > PRV_MAX_MECHANISMS:
        return f"{len(grouped)} distinct mechanisms, PRV composes at most {PRV_MAX_MECHANISMS}"
    _, _, points = prv_domain(grouped, delta)
    if points * len(grouped) > PRV_MAX_POINTS:
        return (
            f"the PRV grid would hold {points * len(grouped):.3g} points, at most {PRV_MAX_POINTS}"
        )
    # Opacus refuses deltas its floating point cannot resolve on this grid.
    if np.finfo(np.longdouble).eps * points > delta - delta / 1000:
        return f"delta {delta:g} is too small for a PRV grid of {points:.0f} points"
    return None


def prv_epsilon(grouped: Grouped, delta: float) -> float:
    """``PRVAccountant.get_epsilon`` of ``grouped`` (upper end of the error band).

    Call only when :func:`prv_reason` is None: the grid is built unconditionally.
    """
    from opacus.accountants.analysis.prv import (
        Domain,
        PoissonSubsampledGaussianPRV,
        TruncatedPrivacyRandomVariable,
        compose_heterogeneous,
        discretize,
    )

    # PRVAccountant._get_dprv and get_epsilon, with the domain computed once (above).
    delta_error = delta / 1000
    half_width, mesh, _ = prv_domain(grouped, delta)
    domain = Domain.create_aligned(-half_width, half_width, mesh)
    # log(1 - q) is -inf at q = 1; Opacus masks those points with np.where, but numpy
    # still warns while evaluating both branches.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dprvs = [
            discretize(
                TruncatedPrivacyRandomVariable(
                    PoissonSubsampledGaussianPRV(q, sigma), domain.t_min, domain.t_max
                ),
                domain,
            )
            for sigma, q, _ in grouped
        ]
        composed = compose_heterogeneous(
            dprvs=dprvs, num_self_compositions=[steps for _, _, steps in grouped]
        )
        _, _, eps_upper = composed.compute_epsilon(delta, delta_error, PRV_EPS_ERROR)
    return float(eps_upper)


def least_within(
    spent: Callable[[float], float],
    target: float,
    low: float,
    high: float,
    high_spent: float,
    *,
    tolerance: float,
) -> float:
    """The smallest parameter in ``[low, high]`` (to ``tolerance`` in epsilon) whose
    ``spent`` stays within ``target``: a geometric bisection.

    ``spent`` falls as the parameter grows (more noise, a wider extension); the caller
    has checked ``spent(low) > target >= high_spent = spent(high)``.
    """
    for _ in range(200):
        if target - high_spent <= tolerance or high / low < 1 + 1e-9:
            break
        middle = math.sqrt(low * high)
        middle_spent = spent(middle)
        if middle_spent <= target:
            high, high_spent = middle, middle_spent
        else:
            low = middle
    return high
