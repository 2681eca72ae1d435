"""Accountant inputs are bounded: a foreign report can only be rejected, never crash."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedrank.errors import ConfigError, InvalidUpdate, PrivacyBudgetExhausted
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.bounds import (
    ABSOLUTE_BOUNDS,
    MALFORMED,
    OUT_OF_RANGE,
    AccountantBounds,
    grouped_history,
    scenario_bounds,
)
from fedrank.privacy.ledger import PrivacyLedger, Release, dp_sgd_release

DELTA = 1e-5


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        # The reports of issue 16 that crashed the coordinator.
        ((1e-300, 0.01, 100), OUT_OF_RANGE),
        ((1e300, 0.01, 100), OUT_OF_RANGE),
        ((math.inf, 0.01, 100), OUT_OF_RANGE),
        ((1.0, 1e-300, 100), OUT_OF_RANGE),
        ((1.0, math.nan, 100), OUT_OF_RANGE),
        ((1.0, 0.01, 10**12), OUT_OF_RANGE),
        ((1.0, 0.01, True), MALFORMED),
        (("1.0", 0.01, 1), MALFORMED),
        ((1.0, None, 1), MALFORMED),
        ((1.0, 0.01), MALFORMED),
    ],
)
@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_out_of_range_entries_are_typed_rejections(
    entry: tuple[object, ...], reason: str, accountant: str
) -> None:
    with pytest.raises(InvalidUpdate) as caught:
        compute_epsilon(history=[entry], delta=DELTA, accountant=accountant)  # type: ignore[list-item, arg-type]

    assert caught.value.reason == reason
    assert "history[0]" in str(caught.value)


def test_history_level_limits() -> None:
    bounds = scenario_bounds(max_mechanisms=2, max_releases=3, max_steps_per_release=10)

    many = [(1.0 + i, 0.1, 1) for i in range(3)]
    with pytest.raises(InvalidUpdate, match="distinct"):
        grouped_history(many, bounds)
    with pytest.raises(InvalidUpdate, match="entries"):
        grouped_history([(1.0, 0.1, 1)] * 4, bounds)
    with pytest.raises(InvalidUpdate, match="steps"):
        grouped_history([(1.0, 0.1, 11)], bounds)
    assert grouped_history([(1.0, 0.1, 10)] * 3, bounds) == [(1.0, 0.1, 30)]


def test_zero_noise_and_zero_rate_stay_allowed() -> None:
    # sigma 0 is "no privacy" (infinite epsilon), q 0 is "no data touched" (free).
    assert compute_epsilon(history=[(0.0, 0.1, 1)], delta=DELTA, accountant="rdp") == math.inf
    assert compute_epsilon(history=[(1.0, 0.0, 5)], delta=DELTA, accountant="prv") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"min_noise_multiplier": 1e-13}, "min_noise_multiplier"),
        ({"max_noise_multiplier": 1e3}, "max_noise_multiplier"),
        ({"min_noise_multiplier": 2.0, "max_noise_multiplier": 1.0}, "min_noise_multiplier"),
        ({"max_sample_rate": 1.5}, "max_sample_rate"),
        ({"max_delta": 0.5}, "max_delta"),
        ({"max_steps": 0}, "max_steps"),
        ({"max_mechanisms": 1000}, "max_mechanisms"),
        ({"max_entries": 2.5}, "max_entries"),
    ],
)
def test_bounds_outside_the_absolute_ones_are_refused(
    kwargs: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        AccountantBounds(**kwargs)  # type: ignore[arg-type]

    assert caught.value.field == field


def test_scenario_bounds_narrow_the_absolute_ones() -> None:
    bounds = scenario_bounds(
        noise_multipliers=(0.8, 0.8),
        sample_rates=(0.01, 0.0625),
        max_steps_per_release=32,
        max_releases=6,
        max_mechanisms=2,
        delta=DELTA,
    )

    assert (bounds.min_noise_multiplier, bounds.max_noise_multiplier) == (0.8, 0.8)
    assert bounds.max_total_steps == 32 * 6
    assert bounds.max_entries == 6
    assert bounds.min_delta == bounds.max_delta == DELTA
    with pytest.raises(InvalidUpdate, match="noise_multiplier"):
        compute_epsilon(history=[(0.7, 0.01, 1)], delta=DELTA, accountant="rdp", bounds=bounds)
    with pytest.raises(ConfigError, match="delta"):
        compute_epsilon(history=[(0.8, 0.01, 1)], delta=1e-6, accountant="rdp", bounds=bounds)


# Values that hit both sides of every bound, and a few in range (cached after first use).
_FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 1e-9, 0.01, 0.5, 1.0, 1.5, 100.0, 1e300, 5e-324]),
)
_SIGMAS = st.one_of(_FLOATS, st.sampled_from([0.6, 1.1, 4.0]))
_RATES = st.one_of(_FLOATS, st.sampled_from([1e-4, 0.01, 0.0625, 1.0]))
_STEPS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, 96, 10**5, 10**7, 10**7 + 1]),
    st.floats(allow_nan=True),
    st.booleans(),
)
_ANY = st.one_of(_FLOATS, _STEPS, st.none(), st.text(max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    history=st.lists(
        st.one_of(st.tuples(_SIGMAS, _RATES, _STEPS), st.tuples(_ANY, _ANY), _ANY), max_size=4
    ),
    delta=st.one_of(st.just(DELTA), _FLOATS),
    accountant=st.sampled_from(["rdp", "prv"]),
)
def test_compute_epsilon_returns_a_bound_or_a_typed_rejection(
    history: list[object], delta: float, accountant: str
) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # PRV fallbacks are allowed
            eps = compute_epsilon(history=history, delta=delta, accountant=accountant)  # type: ignore[arg-type]
    except (InvalidUpdate, ConfigError):
        return
    assert eps >= 0  # a number, or inf; never NaN


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    reports=st.lists(
        st.tuples(_SIGMAS, _RATES, _STEPS, st.one_of(_FLOATS, st.just(1.0))),
        min_size=1,
        max_size=3,
    ),
    accountant=st.sampled_from(["rdp", "prv"]),
)
def test_the_ledger_raises_only_the_typed_rejection(
    tmp_path_factory: pytest.TempPathFactory,
    reports: list[tuple[object, object, object, object]],
    accountant: str,
) -> None:
    # Arrange: a budgeted ledger, as the server keeps for sample-level DP.
    path = tmp_path_factory.mktemp("ledger") / "ledger.jsonl"
    ledger = PrivacyLedger(path, budget_epsilon=8.0, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]

    for round_, (sigma, q, steps, clip) in enumerate(reports):
        try:
            # Act: a decoded report becomes a release and is recorded.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                release = dp_sgd_release(
                    server_round=round_,
                    party="partition-0",
                    noise_multiplier=sigma,  # type: ignore[arg-type]
                    sample_rate=q,  # type: ignore[arg-type]
                    steps=steps,  # type: ignore[arg-type]
                    clip_norm=clip,  # type: ignore[arg-type]
                )
                epsilon = ledger.record(release)
        except (InvalidUpdate, PrivacyBudgetExhausted):
            continue
        # Assert: what was recorded is within budget, and is what the ledger reads back.
        assert 0 <= epsilon <= 8.0
    reread = PrivacyLedger(path, budget_epsilon=8.0, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    assert reread.releases == ledger.releases


def test_ledger_refuses_a_release_outside_its_scenario_bounds(tmp_path: Path) -> None:
    bounds = scenario_bounds(noise_multipliers=(1.0, 1.0), sample_rates=(1.0, 1.0), delta=DELTA)
    ledger = PrivacyLedger(
        tmp_path / "l.jsonl", budget_epsilon=None, delta=DELTA, accountant="rdp", bounds=bounds
    )
    release = Release(
        round=0,
        mechanism="client-gaussian",
        noise_multiplier=0.5,
        sample_rate=1.0,
        steps=1,
        clip_norm=1.0,
        unit="client",
        party="server",
    )

    with pytest.raises(InvalidUpdate, match="noise_multiplier"):
        ledger.record(release)
    assert not (tmp_path / "l.jsonl").exists()
    assert ABSOLUTE_BOUNDS.max_noise_multiplier == 100.0
