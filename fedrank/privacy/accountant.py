"""Privacy accounting over Opacus' analyses: epsilon from a history, sigma from a budget.

Pure functions over ``opacus.accountants.analysis`` (RDP: Mironov 2017, arXiv
1702.07476, with the conversion of Balle et al. 2020, arXiv 1905.09982; PRV: Gopi et al.
2021, arXiv 2106.02848). The math is Opacus'; what is ours is the bounding: every input
is checked against :class:`fedrank.privacy.bounds.AccountantBounds` first, RDP curves are
cached per (sigma, q), and a PRV discretisation larger than :data:`PRV_MAX_POINTS` (or
over more than :data:`PRV_MAX_MECHANISMS` distinct mechanisms) is not built: the RDP
bound of the same history is used instead, with a ``RuntimeWarning``
(:func:`prv_fallback_reason` says when and why). Both bounds are valid; the numbers
equal what ``RDPAccountant`` / ``PRVAccountant`` return for the same history.

Every entry of a history is one Poisson-subsampled Gaussian mechanism, composed
``steps`` times: noise multiplier sigma (noise std / L2 sensitivity), sampling rate q,
under the add/remove-one relation (:mod:`fedrank.privacy.relation`). ``q = 1`` is the
plain Gaussian mechanism (no amplification by sampling).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
from opacus.accountants.analysis.prv import (
    Domain,
    PoissonSubsampledGaussianPRV,
    TruncatedPrivacyRandomVariable,
    compose_heterogeneous,
    discretize,
)
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.rdp import RDPAccountant

from fedrank.errors import ConfigError
from fedrank.privacy.bounds import (
    ABSOLUTE_BOUNDS,
    AccountantBounds,
    Composition,
    HistoryEntry,
    check_delta,
    check_finite_positive,
    grouped_history,
)

__all__ = [
    "ACCOUNTANTS",
    "PRV_EPS_ERROR",
    "PRV_MAX_MECHANISMS",
    "PRV_MAX_POINTS",
    "RDP_ORDERS",
    "AccountantName",
    "Composition",
    "HistoryEntry",
    "compute_epsilon",
    "history_from_array",
    "history_to_array",
    "noise_multiplier_for_epsilon",
    "prv_fallback_reason",
    "prv_grid_points",
    "run_lengths",
]

AccountantName = Literal["rdp", "prv"]
ACCOUNTANTS: tuple[AccountantName, ...] = ("rdp", "prv")

# Opacus' default orders plus larger ones: with few compositions at q = 1 (client-level
# DP over a handful of rounds) the best order lies above 63. A larger set of orders can
# only lower the minimum over orders, and each order gives a valid bound.
RDP_ORDERS: tuple[float, ...] = (
    *(1 + x / 10.0 for x in range(1, 100)),
    *(float(a) for a in range(12, 64)),
    64.0,
    80.0,
    96.0,
    128.0,
    192.0,
    256.0,
    512.0,
)
# The orders Opacus' PRV accountant sizes its domain with (RDPAccountant's defaults),
# a subset of RDP_ORDERS: their positions in our cached curves.
_OPACUS_ALPHAS: tuple[float, ...] = tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS)
_OPACUS_INDEX = np.array([RDP_ORDERS.index(a) for a in _OPACUS_ALPHAS])

# PRV discretisation error in epsilon; the result is the upper end of the error band.
PRV_EPS_ERROR = 0.01
# Largest PRV discretisation built: grid points times distinct mechanisms (each holds
# its own grid until composed). About 165 bytes a point were measured: ~350 MB at most.
PRV_MAX_POINTS = 2**21
# Most distinct mechanisms composed by PRV (each needs a numerical integration).
PRV_MAX_MECHANISMS = 8

Grouped = list[tuple[float, float, int]]


def run_lengths(history: Sequence[HistoryEntry]) -> tuple[tuple[float, float, int], ...]:
    """``history`` as an Opacus accountant keeps it: consecutive entries with the same
    (sigma, q) merged into one (``RDPAccountant.step`` / ``PRVAccountant.step``).

    Entries with no steps are dropped. A client's accountant restored from this holds
    what it would hold after taking those steps itself. Entries are not range-checked
    here (this is bookkeeping, not accounting).
    """
    merged: list[tuple[float, float, int]] = []
    for entry in history:
        if isinstance(entry, tuple):
            sigma, q, steps = float(entry[0]), float(entry[1]), int(entry[2])
        else:
            sigma, q, steps = float(entry.noise_multiplier), float(entry.sample_rate), entry.steps
        if steps == 0:
            continue
        if merged and merged[-1][:2] == (sigma, q):
            merged[-1] = (sigma, q, merged[-1][2] + steps)
        else:
            merged.append((sigma, q, steps))
    return tuple(merged)


def history_to_array(history: Sequence[tuple[float, float, int]]) -> npt.NDArray[np.float64]:
    """History as a ``(k, 3)`` float64 array (for a Flower ``ArrayRecord``); exact."""
    return np.asarray(history, dtype=np.float64).reshape(-1, 3)


def history_from_array(array: npt.ArrayLike) -> tuple[tuple[float, float, int], ...]:
    """Inverse of :func:`history_to_array`."""
    return tuple((float(s), float(q), round(t)) for s, q, t in np.asarray(array).reshape(-1, 3))


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ConfigError("accountant", f"must be one of {ACCOUNTANTS}, got {accountant!r}")


@functools.lru_cache(maxsize=4096)
def _rdp_curve(sigma: float, q: float) -> npt.NDArray[np.float64]:
    """RDP of one step of the sampled Gaussian at every order of :data:`RDP_ORDERS`.

    The costly part of any accounting (up to ~0.5 s for q near 1/2): computed once per
    mechanism and process. The returned array is read-only.
    """
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
        (_rdp_curve(s, q) if index is None else _rdp_curve(s, q)[index]) * steps
        for s, q, steps in grouped
    ]
    total: npt.NDArray[np.float64] = sum(curves)  # type: ignore[assignment]
    return total


def _rdp_epsilon(grouped: Grouped, delta: float, orders: Sequence[float] = RDP_ORDERS) -> float:
    index = None if orders is RDP_ORDERS else _OPACUS_INDEX
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"), warnings.catch_warnings():
        # The best order at the edge of the set means a looser bound, not a wrong one.
        warnings.filterwarnings("ignore", message="Optimal order is the")
        eps, _ = get_privacy_spent(orders=list(orders), rdp=_rdp_total(grouped, index), delta=delta)
    return float(eps)


def _prv_domain(grouped: Grouped, delta: float) -> tuple[float, float, float]:
    """Half-width L, mesh size and (estimated) points of Opacus' PRV domain.

    The same numbers as ``compute_safe_domain_size`` and ``PRVAccountant._get_domain``
    (Gopi et al. 2021, Remark 5.6), from cached RDP curves at Opacus' default orders.
    """
    delta_error = delta / 1000
    total = sum(steps for _, _, steps in grouped)
    half_width = _rdp_epsilon(grouped, delta_error / 4, _OPACUS_ALPHAS)
    for sigma, q, _ in grouped:
        single = _rdp_epsilon([(sigma, q, 1)], delta_error / (8 * total), _OPACUS_ALPHAS)
        half_width = max(half_width, single)
    half_width = max(half_width, PRV_EPS_ERROR) + 3
    mesh = PRV_EPS_ERROR / math.sqrt(total * math.log(12 / delta_error) / 2)
    points = math.ceil(2 * half_width / mesh) + 2.0 if math.isfinite(half_width) else math.inf
    return half_width, mesh, points


def _prv_reason(grouped: Grouped, delta: float) -> str | None:
    if len(grouped) > PRV_MAX_MECHANISMS:
        return f"{len(grouped)} distinct mechanisms, PRV composes at most {PRV_MAX_MECHANISMS}"
    _, _, points = _prv_domain(grouped, delta)
    if points * len(grouped) > PRV_MAX_POINTS:
        return (
            f"the PRV grid would hold {points * len(grouped):.3g} points, at most {PRV_MAX_POINTS}"
        )
    # Opacus refuses deltas its floating point cannot resolve on this grid.
    if np.finfo(np.longdouble).eps * points > delta - delta / 1000:
        return f"delta {delta:g} is too small for a PRV grid of {points:.0f} points"
    return None


def prv_fallback_reason(
    *, history: Sequence[HistoryEntry], delta: float, bounds: AccountantBounds = ABSOLUTE_BOUNDS
) -> str | None:
    """Why :func:`compute_epsilon` with ``accountant="prv"`` would use the RDP bound.

    Returns None when it uses PRV (or the history is empty); a sentence otherwise, for
    the run's privacy report. Raises as :func:`compute_epsilon`.
    """
    delta = check_delta(delta, bounds)
    grouped = grouped_history(history, bounds)
    if not grouped or any(sigma == 0 for sigma, _, _ in grouped):
        return None
    return _prv_reason(grouped, delta)


def prv_grid_points(
    *, history: Sequence[HistoryEntry], delta: float, bounds: AccountantBounds = ABSOLUTE_BOUNDS
) -> float:
    """Grid points times distinct mechanisms of the PRV discretisation of ``history``.

    The quantity :data:`PRV_MAX_POINTS` caps (memory grows with it, about 165 bytes a
    point); 0 for an empty history. Raises as :func:`compute_epsilon`.
    """
    delta = check_delta(delta, bounds)
    grouped = grouped_history(history, bounds)
    if not grouped or any(sigma == 0 for sigma, _, _ in grouped):
        return 0.0
    return _prv_domain(grouped, delta)[2] * len(grouped)


def _prv_epsilon(grouped: Grouped, delta: float) -> float:
    # PRVAccountant._get_dprv and get_epsilon, with the domain computed once (above).
    delta_error = delta / 1000
    half_width, mesh, _ = _prv_domain(grouped, delta)
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


def compute_epsilon(
    *,
    history: Sequence[HistoryEntry],
    delta: float,
    accountant: AccountantName,
    bounds: AccountantBounds = ABSOLUTE_BOUNDS,
) -> float:
    """Epsilon spent by the composition of every entry of ``history``, at ``delta``.

    Parameters
    ----------
    history : Sequence[Composition | tuple[float, float, int]]
        Entries with ``noise_multiplier``, ``sample_rate`` and ``steps`` (for example
        the ``Release`` records of a ledger), or ``(sigma, q, steps)`` tuples.
    delta : float
        Target delta, within ``bounds``.
    accountant : {"rdp", "prv"}
        ``"rdp"``: RDP at the orders :data:`RDP_ORDERS`; ``"prv"``: the PRV accountant,
        upper end of its error band, or the RDP bound when the PRV computation would
        exceed its caps (:func:`prv_fallback_reason`; a ``RuntimeWarning`` says so).
    bounds : AccountantBounds
        Ranges the inputs must lie in (default: the absolute ones).

    Returns
    -------
    float
        Epsilon; ``0.0`` for an empty history, ``inf`` when a mechanism adds no noise
        (sigma 0) or when no finite bound results (never a number below the true bound).

    Raises
    ------
    InvalidUpdate
        A history entry is malformed or outside ``bounds`` (``privacy_malformed``,
        ``privacy_out_of_range``; the message names its index and field).
    ConfigError
        ``delta`` outside ``bounds``, or an unknown accountant.
    """
    delta = check_delta(delta, bounds)
    _check_accountant(accountant)
    grouped = grouped_history(history, bounds)
    if not grouped:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in grouped):
        return math.inf
    eps = math.nan
    if accountant == "prv":
        reason = _prv_reason(grouped, delta)
        if reason is None:
            try:
                eps = _prv_epsilon(grouped, delta)
            except (ValueError, ArithmeticError, RuntimeError) as err:
                reason = f"the PRV computation failed ({err})"
        if reason is not None:
            # The RDP bound is valid for the same mechanisms: count with it rather
            # than fail, wait or return less.
            warnings.warn(
                f"PRV accountant not used: {reason}; epsilon is the RDP bound",
                RuntimeWarning,
                stacklevel=2,
            )
    if math.isnan(eps):
        eps = _rdp_epsilon(grouped, delta)
    # When in doubt, count: a NaN bound is no bound.
    return eps if math.isfinite(eps) and eps >= 0 else math.inf


def noise_multiplier_for_epsilon(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName,
    epsilon_tolerance: float = 0.01,
    bounds: AccountantBounds = ABSOLUTE_BOUNDS,
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) meeting a budget over a run.

    A bisection on sigma within ``bounds`` (geometric midpoints), each step one
    :func:`compute_epsilon`: bounded in time and memory, and the sigma returned is one
    our own accounting confirms. (Opacus' ``get_noise_multiplier`` bisects from sigma 0
    and, under PRV, builds a grid for every tiny sigma it tries.)

    Parameters
    ----------
    target_epsilon : float
        Budget for the whole run (every step of every round), finite and > 0.
    delta : float
        Target delta.
    sample_rate : float
        Poisson sampling rate of each step, in (0, 1] (1: no amplification).
    steps : int
        Planned number of compositions in the run (rounds x steps per round), >= 1.
    accountant : {"rdp", "prv"}
        As in :func:`compute_epsilon`.
    epsilon_tolerance : float
        The epsilon of the sigma returned is within this of the target (or sigma is
        at its lower bound).
    bounds : AccountantBounds
        The sigma is searched in ``[min_noise_multiplier, max_noise_multiplier]``.

    Returns
    -------
    float
        sigma with ``compute_epsilon((sigma, sample_rate, steps)) <= target_epsilon``.

    Raises
    ------
    ConfigError
        An argument is out of range (named), or no sigma within ``bounds`` meets the
        budget (``target_epsilon``).
    """
    target = check_finite_positive("target_epsilon", target_epsilon)
    delta = check_delta(delta, bounds)
    _check_accountant(accountant)
    tolerance = check_finite_positive("epsilon_tolerance", epsilon_tolerance)
    if isinstance(sample_rate, bool) or not (
        isinstance(sample_rate, int | float)
        and bounds.min_sample_rate <= sample_rate <= bounds.max_sample_rate
    ):
        raise ConfigError(
            "sample_rate",
            f"must lie in [{bounds.min_sample_rate:g}, {bounds.max_sample_rate:g}], "
            f"got {sample_rate!r}",
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= bounds.max_steps:
        raise ConfigError("steps", f"must be an integer in [1, {bounds.max_steps}], got {steps!r}")

    def spent(sigma: float) -> float:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a PRV fallback is still a bound
            return compute_epsilon(
                history=[(sigma, float(sample_rate), steps)],
                delta=delta,
                accountant=accountant,
                bounds=bounds,
            )

    low, high = bounds.min_noise_multiplier, bounds.max_noise_multiplier
    high_eps = spent(high)
    if high_eps > target:
        raise ConfigError(
            "target_epsilon",
            f"{target} cannot be met at delta={delta}, sample_rate={sample_rate}, "
            f"steps={steps}: even sigma {high:g} spends {high_eps:.4g}",
        )
    if spent(low) <= target:
        return low
    # Invariant: spent(low) > target >= spent(high). Epsilon falls as sigma grows.
    for _ in range(200):
        if target - high_eps <= tolerance or high / low < 1 + 1e-9:
            break
        middle = math.sqrt(low * high)
        middle_eps = spent(middle)
        if middle_eps <= target:
            high, high_eps = middle, middle_eps
        else:
            low = middle
    return high
