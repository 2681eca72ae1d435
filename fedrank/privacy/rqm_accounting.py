"""Renyi-DP accounting of RQM (:mod:`fedrank.privacy.rqm`): exact, per coordinate.

Youn et al. 2023 (arXiv 2306.11913) prove that RQM satisfies Renyi DP. Here the Renyi
divergence of one coordinate is computed exactly from the mechanism's output
distribution instead of through a closed-form bound:

- **Output distribution** (:func:`rqm_output_pmf`). For x in grid cell j
  (B(j) <= x <= B(j + 1)) the nearest kept level below is a = 0 with probability
  (1 - q)^j or a = i (1 <= i <= j) with probability q (1 - q)^(j - i); the nearest kept
  level above is b = m - 1 with probability (1 - q)^(m - 2 - j) or b = k
  (j + 1 <= k <= m - 2) with probability q (1 - q)^(k - j - 1); the two are independent
  (disjoint levels), and the output is b with probability (x - B(a)) / (B(b) - B(a)).
- **Worst case over inputs** (:func:`rqm_rdp`). Within one cell the output distribution
  is affine in x. For alpha > 1, sum_i p_i^alpha p'_i^(1 - alpha) is convex in p (for
  fixed p') and in p' (for fixed p), so over each product of cells it is largest at a
  corner: the supremum over all x, x' in [-c, c] is a maximum over the finite set of
  grid levels inside [-c, c] and the two ends +-c. It is the exact RDP of one
  coordinate, no looser than any bound the paper derives for the same mechanism.
- **Independent check** (:func:`rqm_output_pmf_enumerated`): the distribution by
  enumerating all 2^(m - 2) kept-level subsets and rounding in each, for small m.

A client's update of d coordinates is d independent RQM draws; under the relation
"this client's update replaced by any other in the clipping domain" (which covers the
zero update of a client without data) the per-round RDP is at most d times the
per-coordinate RDP (exact for L-infinity clipping; an upper bound under L2 clipping).
Rounds compose additively; :func:`rqm_epsilon` converts to (epsilon, delta) as Opacus
does (Balle et al. 2020, arXiv 1905.09982, Thm. 21).

Not covered: amplification by client sampling. RQM is a local randomizer: the server
sees each participant's message, so who took part is not hidden from it, and no
sampling amplification holds against the server. The paper's abstract claims RDP for
RQM only; its full text was not available to check a sampled variant.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import RDP_ORDERS
from fedrank.privacy.analysis import epsilon_of_rdp, least_within, rdp_total
from fedrank.privacy.bounds import check_delta
from fedrank.privacy.rqm import RqmParams, cell_of

FloatArray = npt.NDArray[np.float64]
# Enumeration is 2^(m - 2) subsets: a check for small m only.
MAX_ENUMERATED_LEVELS = 16


def _check_input(x: float, params: RqmParams) -> float:
    if isinstance(x, bool) or not (
        isinstance(x, int | float) and math.isfinite(x) and abs(x) <= params.clip
    ):
        raise ConfigError("x", f"must lie in [-{params.clip:g}, {params.clip:g}], got {x!r}")
    return float(x)


def _neighbour_probabilities(j: int, params: RqmParams) -> tuple[FloatArray, FloatArray]:
    """P(lower kept level = i) for i in 0..j, P(upper kept level = k) for k in j+1..m-1."""
    m, q = params.levels, params.keep_probability
    lower = np.array([q * (1 - q) ** (j - i) for i in range(j + 1)], dtype=np.float64)
    lower[0] = (1 - q) ** j
    upper = np.array([q * (1 - q) ** (k - j - 1) for k in range(j + 1, m)], dtype=np.float64)
    upper[-1] = (1 - q) ** (m - 2 - j)
    return lower, upper


def rqm_output_pmf(x: float, params: RqmParams) -> FloatArray:
    """P(RQM(x) = level i) for i = 0..m-1, in closed form (module docstring), O(m^2)."""
    x = _check_input(x, params)
    levels = params.level_values()
    j = int(cell_of(np.array([x]), params)[0])
    lower, upper = _neighbour_probabilities(j, params)
    a_values = levels[: j + 1][:, None]  # candidate lower levels, as a column
    b_values = levels[j + 1 :][None, :]  # candidate upper levels, as a row
    up = (x - a_values) / (b_values - a_values)  # P(round up | a, b)
    joint = lower[:, None] * upper[None, :]
    pmf = np.zeros(params.levels, dtype=np.float64)
    pmf[: j + 1] = (joint * (1.0 - up)).sum(axis=1)
    pmf[j + 1 :] = (joint * up).sum(axis=0)
    return pmf


def rqm_output_pmf_enumerated(x: float, params: RqmParams) -> FloatArray:
    """The same distribution by brute force: every kept subset, its probability, rounding.

    An independent check of :func:`rqm_output_pmf` (no formula shared); m <= 16.
    """
    x = _check_input(x, params)
    m, q = params.levels, params.keep_probability
    if m > MAX_ENUMERATED_LEVELS:
        raise ConfigError("levels", f"enumeration is for m <= {MAX_ENUMERATED_LEVELS}, got {m}")
    levels = params.level_values()
    pmf = np.zeros(m, dtype=np.float64)
    for pattern in itertools.product((False, True), repeat=m - 2):
        weight = math.prod(q if kept else 1 - q for kept in pattern)
        if weight == 0.0:
            continue
        kept = [0, *(i + 1 for i, k in enumerate(pattern) if k), m - 1]
        # The first kept level strictly above x (or the top), and the one before it.
        position = next((n for n, level in enumerate(kept) if levels[level] > x), len(kept) - 1)
        a, b = kept[position - 1], kept[position]
        p_up = (x - levels[a]) / (levels[b] - levels[a])
        pmf[b] += weight * p_up
        pmf[a] += weight * (1 - p_up)
    return pmf


def renyi_divergence(p: FloatArray, p_prime: FloatArray, alpha: float) -> float:
    """D_alpha(P || P') of two distributions on the same finite set, alpha > 1.

    ``inf`` when P puts mass where P' has none. Computed in log space.
    """
    if not (isinstance(alpha, int | float) and alpha > 1 and math.isfinite(alpha)):
        raise ConfigError("alpha", f"must be a finite number > 1, got {alpha!r}")
    support = p > 0
    if np.any(p_prime[support] <= 0):
        return math.inf
    with np.errstate(divide="ignore"):
        terms = alpha * np.log(p[support]) + (1 - alpha) * np.log(p_prime[support])
    top = float(terms.max())
    return (top + math.log(float(np.exp(terms - top).sum()))) / (alpha - 1)


def candidate_inputs(params: RqmParams) -> FloatArray:
    """The inputs where the worst case is attained: +-c and every level inside [-c, c]."""
    levels = params.level_values()
    inside = levels[np.abs(levels) < params.clip]
    return np.unique(np.concatenate([[-params.clip, params.clip], inside]))


@functools.lru_cache(maxsize=256)
def _pmfs(params: RqmParams) -> tuple[FloatArray, ...]:
    return tuple(rqm_output_pmf(float(x), params) for x in candidate_inputs(params))


def rqm_rdp(params: RqmParams, alpha: float) -> float:
    """RDP of one coordinate at order ``alpha``: max over inputs x, x' of D_alpha.

    Exact (module docstring). Cost O(k^2 m) for k candidate inputs (about m).
    """
    pmfs = _pmfs(params)
    return max(renyi_divergence(p, p_prime, alpha) for p in pmfs for p_prime in pmfs)


def rqm_rdp_curve(params: RqmParams, orders: Sequence[float] = RDP_ORDERS) -> FloatArray:
    """:func:`rqm_rdp` at each of ``orders``."""
    return np.array([rqm_rdp(params, float(a)) for a in orders], dtype=np.float64)


def rqm_epsilon(
    *,
    params: RqmParams,
    dimension: int,
    rounds: int,
    delta: float,
    orders: Sequence[float] = RDP_ORDERS,
) -> float:
    """Epsilon of a client that sent ``rounds`` RQM updates of ``dimension`` coordinates.

    RDP(alpha) = rounds x dimension x :func:`rqm_rdp`, converted to (epsilon, delta)
    with Opacus' ``get_privacy_spent`` (Balle et al. 2020). No amplification by
    sampling (module docstring).

    Raises
    ------
    ConfigError
        ``dimension`` or ``rounds`` is not an integer >= 1, or ``delta`` is out of range.
    """
    for name, value in (("dimension", dimension), ("rounds", rounds)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, f"must be an integer >= 1, got {value!r}")
    delta = check_delta(delta)
    rdp = rqm_rdp_curve(params, orders) * (dimension * rounds)
    if not np.any(np.isfinite(rdp)):
        return math.inf
    return epsilon_of_rdp(rdp, delta, orders)


def rqm_extension_for_epsilon(
    *,
    target_epsilon: float,
    clip: float,
    levels: int,
    keep_probability: float,
    dimension: int,
    rounds: int,
    delta: float,
    tolerance: float = 0.01,
) -> float:
    """The smallest extension Delta (to ``tolerance`` in epsilon) that keeps the budget.

    Epsilon of :func:`rqm_epsilon` falls as Delta grows (the levels spread, every
    output becomes likelier under every input); a geometric bisection over
    Delta in [1e-3 c, 1e9 c] returns one whose epsilon our own accounting confirms.

    Raises
    ------
    ConfigError
        Even Delta = 1e9 c spends more than ``target_epsilon``.
    """
    if not (isinstance(target_epsilon, int | float) and math.isfinite(target_epsilon)):
        raise ConfigError("target_epsilon", f"must be a finite number, got {target_epsilon!r}")
    if target_epsilon <= 0:
        raise ConfigError("target_epsilon", f"must be > 0, got {target_epsilon!r}")

    def spent(extension: float) -> float:
        params = RqmParams(
            clip=clip, extension=extension, levels=levels, keep_probability=keep_probability
        )
        return rqm_epsilon(params=params, dimension=dimension, rounds=rounds, delta=delta)

    low, high = 1e-3 * clip, 1e9 * clip
    high_eps = spent(high)
    if high_eps > target_epsilon:
        raise ConfigError(
            "target_epsilon",
            f"{target_epsilon} cannot be met: even Delta {high:g} spends {high_eps:.4g}",
        )
    if spent(low) <= target_epsilon:
        return low
    return least_within(spent, target_epsilon, low, high, high_eps, tolerance=tolerance)


def epsilon_with_rqm(
    gaussian: Sequence[tuple[float, float, int]],
    rqm: Sequence[tuple[RqmParams, int]],
    *,
    delta: float,
    orders: Sequence[float] = RDP_ORDERS,
) -> float:
    """Epsilon of a history of sampled-Gaussian entries and RQM releases together.

    ``gaussian``: (sigma, q, steps) entries, already checked and grouped
    (:func:`fedrank.privacy.bounds.grouped_history`); ``rqm``: (params, coordinates) of
    each RQM release. Their RDP curves add (composition), then Opacus' conversion. RDP
    only: the PRV accountant has no RQM. ``inf`` when a Gaussian entry has no noise.
    """
    if any(sigma == 0 for sigma, _, _ in gaussian):
        return math.inf
    curve = rdp_total(list(gaussian)) if orders is RDP_ORDERS else None
    if curve is None:
        raise ConfigError("orders", "RQM is accounted at RDP_ORDERS only")
    for params, coordinates in rqm:
        curve = curve + rqm_rdp_curve(params, orders) * coordinates
    if not np.any(np.isfinite(curve)):
        return math.inf
    delta = check_delta(delta)
    eps = epsilon_of_rdp(curve, delta, orders)
    return eps if math.isfinite(eps) and eps >= 0 else math.inf
