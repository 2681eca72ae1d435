"""Privacy accounting over Opacus' accountants: epsilon from a history, sigma from a budget.

Thin, pure functions over ``opacus.accountants`` (RDP: Mironov 2017, arXiv 1702.07476,
with the conversion of Balle et al. 2020, arXiv 1905.09982; PRV: Gopi et al. 2021,
arXiv 2106.02848). Nothing is reimplemented: the history is handed to Opacus as it
would be after the same steps of its own optimizer.

Every entry of a history is one Poisson-subsampled Gaussian mechanism, composed
``steps`` times: noise multiplier sigma (noise std / L2 sensitivity), sampling rate q.
``q = 1`` is the plain Gaussian mechanism (no amplification by sampling).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

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

# PRV discretisation error in epsilon; Opacus returns the upper end of the error band.
PRV_EPS_ERROR = 0.01


@runtime_checkable
class Composition(Protocol):
    """One mechanism composed ``steps`` times (a ``Release`` satisfies this)."""

    @property
    def noise_multiplier(self) -> float: ...

    @property
    def sample_rate(self) -> float: ...

    @property
    def steps(self) -> int: ...


HistoryEntry = Composition | tuple[float, float, int]


def run_lengths(history: Sequence[HistoryEntry]) -> tuple[tuple[float, float, int], ...]:
    """``history`` as an Opacus accountant keeps it: consecutive entries with the same
    (sigma, q) merged into one (``RDPAccountant.step`` / ``PRVAccountant.step``).

    Entries with no steps are dropped. A client's accountant restored from this holds
    what it would hold after taking those steps itself.
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


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, int | float) and 0.0 < delta < 1.0):
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise ValueError(f"accountant must be one of {ACCOUNTANTS}, got {accountant!r}")


def _check_entry(name: str, sigma: float, q: float, steps: int) -> None:
    if isinstance(sigma, bool) or not (isinstance(sigma, int | float) and math.isfinite(sigma)):
        raise ValueError(f"{name}.noise_multiplier must be a finite number, got {sigma!r}")
    if sigma < 0:
        raise ValueError(f"{name}.noise_multiplier must be >= 0, got {sigma!r}")
    if isinstance(q, bool) or not (isinstance(q, int | float) and 0.0 <= q <= 1.0):
        raise ValueError(f"{name}.sample_rate must lie in [0, 1], got {q!r}")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
        raise ValueError(f"{name}.steps must be an integer >= 0, got {steps!r}")


def _grouped(history: Sequence[HistoryEntry]) -> list[tuple[float, float, int]]:
    """Validate and merge entries with the same (sigma, q).

    Composition is commutative, so summing the steps of equal mechanisms is exact; it
    keeps the PRV accountant's heterogeneous composition short however long the run.
    Entries that touch no data (q = 0 or no steps) cost nothing and are dropped.
    """
    steps_by_mechanism: dict[tuple[float, float], int] = {}
    for i, entry in enumerate(history):
        if isinstance(entry, tuple):
            if len(entry) != 3:
                raise ValueError(
                    f"history[{i}] must be (noise_multiplier, sample_rate, steps), got {entry!r}"
                )
            sigma, q, steps = entry
        else:
            sigma, q, steps = entry.noise_multiplier, entry.sample_rate, entry.steps
        _check_entry(f"history[{i}]", sigma, q, steps)
        if q == 0 or steps == 0:
            continue
        key = (float(sigma), float(q))
        steps_by_mechanism[key] = steps_by_mechanism.get(key, 0) + int(steps)
    return [(sigma, q, steps) for (sigma, q), steps in steps_by_mechanism.items()]


def _rdp_epsilon(grouped: list[tuple[float, float, int]], delta: float) -> float:
    accountant = RDPAccountant()
    accountant.history = list(grouped)
    return float(accountant.get_epsilon(delta=delta, alphas=list(RDP_ORDERS)))


def _prv_epsilon(grouped: list[tuple[float, float, int]], delta: float) -> float:
    accountant = PRVAccountant()
    accountant.history = list(grouped)
    # log(1 - q) is -inf at q = 1; Opacus masks those points with np.where, but numpy
    # still warns while evaluating both branches. The domain bound Opacus derives from
    # RDP may peak at its largest order: a wider domain, not a smaller epsilon.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        return float(accountant.get_epsilon(delta=delta, eps_error=PRV_EPS_ERROR))


def compute_epsilon(
    *, history: Sequence[HistoryEntry], delta: float, accountant: AccountantName
) -> float:
    """Epsilon spent by the composition of every entry of ``history``, at ``delta``.

    Parameters
    ----------
    history : Sequence[Composition | tuple[float, float, int]]
        Entries with ``noise_multiplier``, ``sample_rate`` and ``steps`` (for example
        the ``Release`` records of a ledger), or ``(sigma, q, steps)`` tuples.
    delta : float
        Target delta, in (0, 1).
    accountant : {"rdp", "prv"}
        ``"rdp"``: Opacus' RDP accountant (orders :data:`RDP_ORDERS`); ``"prv"``: Opacus'
        PRV accountant, upper end of its error band.

    Returns
    -------
    float
        Epsilon; ``0.0`` for an empty history, ``inf`` when a mechanism adds no noise or
        when the bound cannot be computed (never a number below the true bound).

    Raises
    ------
    ValueError
        An argument, or a history entry (named by its index), is out of range.
    """
    _check_delta(delta)
    _check_accountant(accountant)
    grouped = _grouped(history)
    if not grouped:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in grouped):
        return math.inf
    if accountant == "rdp":
        eps = _rdp_epsilon(grouped, delta)
    else:
        try:
            eps = _prv_epsilon(grouped, delta)
        except (ValueError, ArithmeticError, RuntimeError) as err:
            # The RDP bound is valid for the same mechanisms: count with it rather
            # than fail or return less.
            warnings.warn(
                f"PRV accountant failed ({err}); using the RDP bound instead",
                RuntimeWarning,
                stacklevel=2,
            )
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
) -> float:
    """Smallest noise multiplier (to ``epsilon_tolerance``) meeting a budget over a run.

    Parameters
    ----------
    target_epsilon : float
        Budget for the whole run (every step of every round), > 0.
    delta : float
        Target delta, in (0, 1).
    sample_rate : float
        Poisson sampling rate of each step, in (0, 1] (1: no amplification).
    steps : int
        Planned number of compositions in the run (rounds x steps per round), >= 1.
    accountant : {"rdp", "prv"}
        As in :func:`compute_epsilon`.
    epsilon_tolerance : float
        Precision of Opacus' bisection on epsilon.

    Returns
    -------
    float
        sigma such that ``compute_epsilon`` of ``(sigma, sample_rate, steps)`` is at most
        ``target_epsilon`` (checked here, not assumed).

    Raises
    ------
    ValueError
        An argument is out of range, or no sigma up to Opacus' maximum meets the budget.
    """
    if not (isinstance(target_epsilon, int | float) and 0 < target_epsilon < math.inf):
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    _check_delta(delta)
    _check_accountant(accountant)
    if isinstance(sample_rate, bool) or not (
        isinstance(sample_rate, int | float) and 0.0 < sample_rate <= 1.0
    ):
        raise ValueError(f"sample_rate must lie in (0, 1], got {sample_rate!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(epsilon_tolerance, int | float) and epsilon_tolerance > 0):
        raise ValueError(f"epsilon_tolerance must be > 0, got {epsilon_tolerance!r}")
    try:
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            # The bisection's first, far too large sigmas have their best order at the
            # edge of Opacus' default set; that bound is loose, not wrong.
            warnings.filterwarnings("ignore", message="Optimal order is the")
            sigma = float(
                get_noise_multiplier(
                    target_epsilon=target_epsilon,
                    target_delta=delta,
                    sample_rate=sample_rate,
                    steps=steps,
                    accountant=accountant,
                    epsilon_tolerance=epsilon_tolerance,
                )
            )
    except ValueError as err:
        raise ValueError(
            f"target_epsilon={target_epsilon} cannot be met at delta={delta}, "
            f"sample_rate={sample_rate}, steps={steps}: {err}"
        ) from err
    # Opacus searched with its own settings (default RDP orders, PRV error); make sure
    # our accounting of the same run stays within the target, raising sigma if not.
    for _ in range(100):
        spent = compute_epsilon(
            history=[(sigma, sample_rate, steps)], delta=delta, accountant=accountant
        )
        if spent <= target_epsilon:
            return sigma
        sigma *= 1.01
    raise ValueError(
        f"target_epsilon={target_epsilon}: no noise multiplier found that our "
        f"{accountant} accounting confirms"
    )
