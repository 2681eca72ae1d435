"""Ranges every accountant input must lie in, and the checks that enforce them.

A privacy report from a foreign client is untrusted input to the accountant: sigma
1e-300 divides by zero inside Opacus' RDP analysis, sigma 1e300 overflows, and 100,000
steps under PRV build a discretisation grid of gigabytes. Every entry point of
:mod:`fedrank.privacy.accountant` and :class:`fedrank.privacy.ledger.PrivacyLedger`
therefore checks its inputs against an :class:`AccountantBounds` first, and raises only
typed errors: :class:`fedrank.errors.InvalidUpdate` for a history entry (what a report
brings), :class:`fedrank.errors.ConfigError` for a setting (delta, the bounds).

:data:`ABSOLUTE_BOUNDS` holds for every run; a run narrows them with what its scenario
allows (:func:`scenario_bounds`). Within the absolute bounds one accountant call is
measured by ``python -m benchmarks.accountant_bounds``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fedrank.errors import ConfigError, InvalidUpdate

OUT_OF_RANGE = "privacy_out_of_range"
"""Reason code of an accountant input outside its bounds."""
MALFORMED = "privacy_malformed"
"""Reason code of an accountant input that is not (noise_multiplier, sample_rate, steps)."""

# Why these absolute values (each keeps one accountant call bounded; see the benchmark):
# - sigma: from 1e-12 ("negligible noise", as tests of DP code paths use; epsilon is
#   astronomically large but finite, and a budget refuses it). Below ~1e-154 sigma^2
#   underflows and Opacus divides by zero. Above 100 Opacus' fractional-order series
#   runs longer with sigma while epsilon is ~0 anyway. 0 stays allowed: no noise,
#   epsilon infinite.
# - q: below 1e-9 nothing is sampled from any real dataset; 0 stays allowed (no data
#   touched, costs nothing).
# - steps: 1e7 per release, 1e8 in a history (RDP is linear in steps; PRV's grid grows
#   with their square root and is capped separately).
# - delta: (1e-12, 0.1]: a delta above 0.1 is no guarantee; below 1e-12 PRV's
#   floating point cannot resolve it.
# - distinct (sigma, q) pairs per history: 8. Each costs one RDP curve, computed once per
#   process: up to ~1 s at q near 1/2 (measured; a run with fixed sigma and q has one).
ABSOLUTE_MIN_NOISE_MULTIPLIER = 1e-12
ABSOLUTE_MAX_NOISE_MULTIPLIER = 100.0
ABSOLUTE_MIN_SAMPLE_RATE = 1e-9
ABSOLUTE_MAX_STEPS = 10**7
ABSOLUTE_MAX_TOTAL_STEPS = 10**8
ABSOLUTE_MIN_DELTA = 1e-12
ABSOLUTE_MAX_DELTA = 0.1
ABSOLUTE_MAX_MECHANISMS = 8
ABSOLUTE_MAX_ENTRIES = 10**6


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


def is_number(value: object) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


@dataclass(frozen=True)
class AccountantBounds:
    """Ranges of (sigma, q, steps, delta) an accountant call accepts.

    Each field must lie within the absolute bound of the same name
    (``ABSOLUTE_*``); a scenario narrows them (:func:`scenario_bounds`).

    Parameters
    ----------
    min_noise_multiplier, max_noise_multiplier : float
        Range of a nonzero sigma (0 means no noise and is always accepted).
    min_sample_rate, max_sample_rate : float
        Range of a nonzero q (0 means no data touched and is always accepted).
    max_steps : int
        Most compositions in one history entry (one release).
    max_total_steps : int
        Most compositions in a whole history.
    min_delta, max_delta : float
        Range of delta.
    max_mechanisms : int
        Most distinct (sigma, q) pairs in a history.
    max_entries : int
        Most entries in a history.
    """

    min_noise_multiplier: float = ABSOLUTE_MIN_NOISE_MULTIPLIER
    max_noise_multiplier: float = ABSOLUTE_MAX_NOISE_MULTIPLIER
    min_sample_rate: float = ABSOLUTE_MIN_SAMPLE_RATE
    max_sample_rate: float = 1.0
    max_steps: int = ABSOLUTE_MAX_STEPS
    max_total_steps: int = ABSOLUTE_MAX_TOTAL_STEPS
    min_delta: float = ABSOLUTE_MIN_DELTA
    max_delta: float = ABSOLUTE_MAX_DELTA
    max_mechanisms: int = ABSOLUTE_MAX_MECHANISMS
    max_entries: int = ABSOLUTE_MAX_ENTRIES

    def __post_init__(self) -> None:
        ranges = (
            ("noise_multiplier", ABSOLUTE_MIN_NOISE_MULTIPLIER, ABSOLUTE_MAX_NOISE_MULTIPLIER),
            ("sample_rate", ABSOLUTE_MIN_SAMPLE_RATE, 1.0),
            ("delta", ABSOLUTE_MIN_DELTA, ABSOLUTE_MAX_DELTA),
        )
        for name, low, high in ranges:
            lo, hi = getattr(self, f"min_{name}"), getattr(self, f"max_{name}")
            for which, value in ((f"min_{name}", lo), (f"max_{name}", hi)):
                if not (is_number(value) and low <= value <= high):
                    raise ConfigError(which, f"must lie in [{low:g}, {high:g}], got {value!r}")
            if lo > hi:
                raise ConfigError(f"min_{name}", f"{lo!r} is above max_{name} = {hi!r}")
        counts = (
            ("max_steps", ABSOLUTE_MAX_STEPS),
            ("max_total_steps", ABSOLUTE_MAX_TOTAL_STEPS),
            ("max_mechanisms", ABSOLUTE_MAX_MECHANISMS),
            ("max_entries", ABSOLUTE_MAX_ENTRIES),
        )
        for name, high in counts:
            value = getattr(self, name)
            if not (_is_int(value) and 1 <= value <= high):
                raise ConfigError(name, f"must be an integer in [1, {high}], got {value!r}")


ABSOLUTE_BOUNDS = AccountantBounds()
"""The widest ranges: what any run accepts, and what the benchmark measures."""


def scenario_bounds(
    *,
    noise_multipliers: tuple[float, float] | None = None,
    sample_rates: tuple[float, float] | None = None,
    max_steps_per_release: int | None = None,
    max_releases: int | None = None,
    max_mechanisms: int | None = None,
    delta: float | None = None,
) -> AccountantBounds:
    """:data:`ABSOLUTE_BOUNDS` narrowed to what a run's scenario can produce.

    Parameters
    ----------
    noise_multipliers : (float, float) | None
        Lowest and highest sigma a release may use (a fixed sigma: ``(s, s)``; one a
        client derives from its budget: the site's minimum to the absolute maximum).
    sample_rates : (float, float) | None
        Lowest and highest q (DP-SGD: batch / largest partition to batch / smallest;
        client-level Poisson: ``(m / N, m / N)``; every client: ``(1, 1)``).
    max_steps_per_release : int | None
        Most steps of one release (local epochs x steps per epoch; 1 for the server).
    max_releases : int | None
        Most releases one party can have: rounds, doubled if a resumed run may replay
        a round with other replies. Bounds the entries and the total steps.
    max_mechanisms : int | None
        Most distinct (sigma, q) pairs per party (1 when both are fixed for the run).
    delta : float | None
        The run's delta (min and max).

    Raises
    ------
    ConfigError
        A range outside the absolute bounds, or reversed.
    """
    fields: dict[str, float | int] = {}
    if noise_multipliers is not None:
        fields["min_noise_multiplier"], fields["max_noise_multiplier"] = noise_multipliers
    if sample_rates is not None:
        fields["min_sample_rate"], fields["max_sample_rate"] = sample_rates
    if max_steps_per_release is not None:
        fields["max_steps"] = max_steps_per_release
    if max_releases is not None:
        if not (_is_int(max_releases) and max_releases >= 1):
            raise ConfigError("max_releases", f"must be an integer >= 1, got {max_releases!r}")
        steps = max_steps_per_release or ABSOLUTE_MAX_STEPS
        fields["max_total_steps"] = min(steps * max_releases, ABSOLUTE_MAX_TOTAL_STEPS)
        fields["max_entries"] = min(max_releases, ABSOLUTE_MAX_ENTRIES)
    if max_mechanisms is not None:
        fields["max_mechanisms"] = max_mechanisms
    if delta is not None:
        fields["min_delta"] = fields["max_delta"] = delta
    return dataclasses.replace(ABSOLUTE_BOUNDS, **fields)  # type: ignore[arg-type]


def check_delta(delta: float, bounds: AccountantBounds = ABSOLUTE_BOUNDS) -> float:
    """``delta`` as a float, or ``ConfigError("delta", ...)`` outside the bounds."""
    if not (is_number(delta) and bounds.min_delta <= delta <= bounds.max_delta):
        raise ConfigError(
            "delta", f"must lie in [{bounds.min_delta:g}, {bounds.max_delta:g}], got {delta!r}"
        )
    return float(delta)


def _entry_fields(index: int, entry: object) -> tuple[object, object, object]:
    if isinstance(entry, tuple):
        if len(entry) != 3:
            raise InvalidUpdate(
                MALFORMED,
                f"history[{index}] must be (noise_multiplier, sample_rate, steps), "
                f"got {len(entry)} values",
            )
        return entry[0], entry[1], entry[2]
    try:
        return entry.noise_multiplier, entry.sample_rate, entry.steps  # type: ignore[attr-defined]
    except AttributeError as err:
        raise InvalidUpdate(
            MALFORMED, f"history[{index}] is neither a tuple nor a release: {err}"
        ) from err


def check_entry(
    index: int, entry: HistoryEntry, bounds: AccountantBounds = ABSOLUTE_BOUNDS
) -> tuple[float, float, int]:
    """One history entry as ``(sigma, q, steps)``, checked against ``bounds``.

    Raises
    ------
    InvalidUpdate
        ``privacy_malformed`` (not three numbers of the right types) or
        ``privacy_out_of_range`` (a value outside ``bounds``); the message names the
        entry's index and field.
    """
    sigma, q, steps = _entry_fields(index, entry)
    name = f"history[{index}]"
    if not (is_number(sigma) and is_number(q)):
        raise InvalidUpdate(MALFORMED, f"{name}: noise_multiplier and sample_rate must be numbers")
    if not _is_int(steps):
        raise InvalidUpdate(MALFORMED, f"{name}.steps must be an integer, got {steps!r}")
    sigma_f, q_f, steps_i = float(sigma), float(q), int(steps)  # type: ignore[arg-type, call-overload]
    if sigma_f != 0.0 and not (
        bounds.min_noise_multiplier <= sigma_f <= bounds.max_noise_multiplier
    ):
        raise InvalidUpdate(
            OUT_OF_RANGE,
            f"{name}.noise_multiplier must be 0 or lie in [{bounds.min_noise_multiplier:g}, "
            f"{bounds.max_noise_multiplier:g}], got {sigma!r}",
        )
    if q_f != 0.0 and not (bounds.min_sample_rate <= q_f <= bounds.max_sample_rate):
        raise InvalidUpdate(
            OUT_OF_RANGE,
            f"{name}.sample_rate must be 0 or lie in [{bounds.min_sample_rate:g}, "
            f"{bounds.max_sample_rate:g}], got {q!r}",
        )
    if not 0 <= steps_i <= bounds.max_steps:
        raise InvalidUpdate(
            OUT_OF_RANGE, f"{name}.steps must lie in [0, {bounds.max_steps}], got {steps!r}"
        )
    return sigma_f, q_f, steps_i


def grouped_history(
    history: Sequence[HistoryEntry], bounds: AccountantBounds = ABSOLUTE_BOUNDS
) -> list[tuple[float, float, int]]:
    """Check every entry, then merge entries with the same (sigma, q), in first-seen order.

    Composition is commutative, so summing the steps of equal mechanisms is exact; it
    keeps an accountant's work proportional to the distinct mechanisms, however long
    the run. Entries that touch no data (q = 0 or no steps) cost nothing and are dropped.

    Raises
    ------
    InvalidUpdate
        As :func:`check_entry`, or the history is longer, has more steps or more
        distinct mechanisms than ``bounds`` allow (``privacy_out_of_range``).
    """
    if isinstance(history, str | bytes) or not isinstance(history, Sequence):
        raise InvalidUpdate(MALFORMED, f"history must be a sequence, got {type(history).__name__}")
    if len(history) > bounds.max_entries:
        raise InvalidUpdate(
            OUT_OF_RANGE, f"history has {len(history)} entries, at most {bounds.max_entries}"
        )
    steps_by_mechanism: dict[tuple[float, float], int] = {}
    total = 0
    for i, entry in enumerate(history):
        sigma, q, steps = check_entry(i, entry, bounds)
        total += steps
        if q == 0 or steps == 0:
            continue
        key = (sigma, q)
        steps_by_mechanism[key] = steps_by_mechanism.get(key, 0) + steps
    if total > bounds.max_total_steps:
        raise InvalidUpdate(
            OUT_OF_RANGE, f"history has {total} steps in all, at most {bounds.max_total_steps}"
        )
    if len(steps_by_mechanism) > bounds.max_mechanisms:
        raise InvalidUpdate(
            OUT_OF_RANGE,
            f"history has {len(steps_by_mechanism)} distinct (noise_multiplier, sample_rate) "
            f"pairs, at most {bounds.max_mechanisms}",
        )
    return [(sigma, q, steps) for (sigma, q), steps in steps_by_mechanism.items()]


def check_finite_positive(field: str, value: float) -> float:
    """``value`` as a float if finite and > 0, else ``ConfigError(field, ...)``."""
    if not (is_number(value) and math.isfinite(value) and value > 0):
        raise ConfigError(field, f"must be a finite number > 0, got {value!r}")
    return float(value)
