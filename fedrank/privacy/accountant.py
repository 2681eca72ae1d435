"""Privacy accounting over Opacus' analyses: epsilon from a history, sigma from a budget.

Pure functions over ``opacus.accountants.analysis`` (RDP: Mironov 2017, arXiv
1702.07476, with the conversion of Balle et al. 2020, arXiv 1905.09982; PRV: Gopi et al.
2021, arXiv 2106.02848), through :mod:`fedrank.privacy.analysis`. The math is Opacus';
what is ours is the bounding: every input is checked against
:class:`fedrank.privacy.bounds.AccountantBounds` first, RDP curves are cached per
(sigma, q), and a PRV discretisation larger than :data:`PRV_MAX_POINTS` (or
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

import math
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError
from fedrank.privacy.analysis import (
    PRV_EPS_ERROR,
    PRV_MAX_MECHANISMS,
    PRV_MAX_POINTS,
    RDP_ORDERS,
    least_within,
    prv_domain,
    prv_epsilon,
    prv_reason,
    rdp_epsilon,
)
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
    return prv_reason(grouped, delta)


def prv_grid_points(
    *, history: Sequence[HistoryEntry], delta: float, bounds: AccountantBounds = ABSOLUTE_BOUNDS
) -> float:
    """Grid points times distinct mechanisms of the PRV discretisation of ``history``.

    The quantity :data:`PRV_MAX_POINTS` caps (peak memory grows with it: +144 MB at
    the cap, measured); 0 for an empty history. Raises as :func:`compute_epsilon`.
    """
    delta = check_delta(delta, bounds)
    grouped = grouped_history(history, bounds)
    if not grouped or any(sigma == 0 for sigma, _, _ in grouped):
        return 0.0
    return prv_domain(grouped, delta)[2] * len(grouped)


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
        reason = prv_reason(grouped, delta)
        if reason is None:
            try:
                eps = prv_epsilon(grouped, delta)
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
        eps = rdp_epsilon(grouped, delta)
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
    return least_within(spent, target, low, high, high_eps, tolerance=tolerance)
