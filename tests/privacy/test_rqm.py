"""RQM: the sampler has the distribution we account, and the accounting is exact."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.rqm import (
    RqmParams,
    clip_update,
    rqm_bits_per_coordinate,
    rqm_decode,
    rqm_decode_update,
    rqm_encode_update,
    rqm_quantize,
)
from fedrank.privacy.rqm_accounting import (
    candidate_inputs,
    renyi_divergence,
    rqm_epsilon,
    rqm_output_pmf,
    rqm_output_pmf_enumerated,
    rqm_rdp,
)

PARAMS = [
    RqmParams(clip=c, extension=d, levels=m, keep_probability=q)
    for c, d, m, q in itertools.product(
        [1.0, 0.05], [0.1, 1.0, 5.0], [2, 3, 5, 8, 12], [0.0, 0.3, 0.9]
    )
]
ORDERS = [1.5, 2.0, 8.0, 32.0]


@pytest.mark.parametrize("params", PARAMS, ids=str)
def test_closed_form_distribution_equals_enumeration(params: RqmParams) -> None:
    for x in np.linspace(-params.clip, params.clip, 21):
        exact = rqm_output_pmf(float(x), params)
        enumerated = rqm_output_pmf_enumerated(float(x), params)

        np.testing.assert_allclose(exact, enumerated, rtol=0, atol=1e-12)
        assert exact.sum() == pytest.approx(1.0, abs=1e-12)
        # Unbiased: the expected level is x itself, for any kept subset.
        assert float(exact @ params.level_values()) == pytest.approx(x, abs=1e-12)


@pytest.mark.parametrize("params", PARAMS[::4], ids=str)
def test_renyi_divergence_agrees_with_the_enumerated_one_within_one_percent(
    params: RqmParams,
) -> None:
    # The acceptance: the accounting against an independent computation, < 1%.
    inputs = candidate_inputs(params)
    enumerated = [rqm_output_pmf_enumerated(float(x), params) for x in inputs]
    for alpha in ORDERS:
        independent = max(renyi_divergence(p, r, alpha) for p in enumerated for r in enumerated)

        assert rqm_rdp(params, alpha) == pytest.approx(independent, rel=1e-9)


@pytest.mark.parametrize(
    "params",
    [
        RqmParams(clip=1.0, extension=0.8, levels=5, keep_probability=0.4),
        RqmParams(clip=1.0, extension=0.3, levels=8, keep_probability=0.7),
        RqmParams(clip=0.5, extension=2.0, levels=3, keep_probability=0.1),
    ],
    ids=str,
)
def test_worst_case_over_a_dense_grid_is_at_the_candidate_inputs(params: RqmParams) -> None:
    # The convexity argument, checked: no pair on a fine grid beats the candidates.
    grid = np.linspace(-params.clip, params.clip, 81)
    pmfs = [rqm_output_pmf(float(x), params) for x in grid]
    for alpha in (2.0, 16.0):
        dense = max(renyi_divergence(p, r, alpha) for p in pmfs for r in pmfs)

        assert dense <= rqm_rdp(params, alpha) * (1 + 1e-12)


def test_two_levels_is_randomized_response_in_closed_form() -> None:
    # m = 2: output 1 with probability (x + X) / (2X), X = c + Delta; the worst pair is
    # x = c against x' = -c, a Bernoulli divergence in closed form.
    params = RqmParams(clip=1.0, extension=0.5, levels=2, keep_probability=0.0)
    half = params.half_range
    p, r = (1 + half) / (2 * half), (half - 1) / (2 * half)
    for alpha in (1.5, 3.0, 20.0):
        closed = math.log(p**alpha * r ** (1 - alpha) + (1 - p) ** alpha * (1 - r) ** (1 - alpha))

        assert rqm_rdp(params, alpha) == pytest.approx(closed / (alpha - 1), rel=1e-12)
    # As alpha grows it tends to the pure-DP epsilon log((2c + Delta) / Delta).
    assert rqm_rdp(params, 4000.0) == pytest.approx(math.log(2.5 / 0.5), rel=1e-3)


def test_the_sampler_draws_the_accounted_distribution() -> None:
    # Arrange
    params = RqmParams(clip=1.0, extension=0.8, levels=6, keep_probability=0.4)
    n = 200_000

    for x in (-1.0, -0.2, 0.37, 1.0):
        # Act
        indices = rqm_quantize(np.full(n, x), params, RandomSource.reproducible(3))

        # Assert
        expected = rqm_output_pmf(x, params) * n
        observed = np.bincount(indices, minlength=params.levels)
        mask = expected > 0
        assert np.all(observed[~mask] == 0)
        assert stats.chisquare(observed[mask], expected[mask]).pvalue > 1e-3
        decoded = rqm_decode(indices, params)
        assert abs(decoded.mean() - x) < 5 * decoded.std() / math.sqrt(n)


def test_update_round_trip_clips_and_is_unbiased() -> None:
    params = RqmParams(clip=0.5, extension=0.5, levels=16, keep_probability=0.5)
    update = {"a": np.full((40, 50), 0.001), "b": np.array([3.0, -3.0])}
    source = RandomSource.reproducible(4)

    encoded = rqm_encode_update(update, params=params, norm="linf", source=source)
    decoded = rqm_decode_update(encoded, params)
    clipped = clip_update(update, params=params, norm="l2")

    assert encoded["a"].dtype == np.uint8
    assert encoded["a"].shape == (40, 50)
    assert set(np.unique(decoded["a"])) <= set(params.level_values())
    assert abs(decoded["a"].mean() - 0.001) < 5 * decoded["a"].std() / math.sqrt(2000)
    assert np.linalg.norm(np.concatenate([v.ravel() for v in clipped.values()])) == pytest.approx(
        0.5
    )


@pytest.mark.parametrize(
    ("levels", "bits"), [(2, 1), (3, 2), (4, 2), (5, 3), (16, 4), (17, 5), (256, 8), (65_536, 16)]
)
def test_bits_per_coordinate(levels: int, bits: int) -> None:
    assert rqm_bits_per_coordinate(levels) == bits
    if levels > 2:
        assert (
            RqmParams(clip=1, extension=1, levels=levels, keep_probability=0.5).bits_per_coordinate
            == bits
        )


def test_epsilon_grows_with_rounds_and_coordinates_and_falls_with_the_extension() -> None:
    base = RqmParams(clip=1.0, extension=2.0, levels=4, keep_probability=0.5)
    wider = RqmParams(clip=1.0, extension=4.0, levels=4, keep_probability=0.5)

    one = rqm_epsilon(params=base, dimension=10, rounds=1, delta=1e-5)

    assert rqm_epsilon(params=base, dimension=10, rounds=5, delta=1e-5) > one
    assert rqm_epsilon(params=base, dimension=100, rounds=1, delta=1e-5) > one
    assert rqm_epsilon(params=wider, dimension=10, rounds=1, delta=1e-5) < one
    # Composition is additive in RDP: 10 coordinates x 5 rounds = 50 coordinates x 1 round.
    assert rqm_epsilon(params=base, dimension=10, rounds=5, delta=1e-5) == pytest.approx(
        rqm_epsilon(params=base, dimension=50, rounds=1, delta=1e-5)
    )


def test_quantize_refuses_unclipped_or_non_finite_values() -> None:
    params = RqmParams(clip=1.0, extension=1.0, levels=4, keep_probability=0.5)

    with pytest.raises(InvalidUpdate, match="rqm_out_of_range"):
        rqm_quantize(np.array([1.5]), params, RandomSource.reproducible(0))
    with pytest.raises(InvalidUpdate, match="rqm_out_of_range"):
        rqm_quantize(np.array([math.nan]), params, RandomSource.reproducible(0))
    with pytest.raises(InvalidUpdate, match="rqm_bad_index"):
        rqm_decode(np.array([4]), params)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"clip": 0.0}, "clip"),
        ({"extension": -1.0}, "extension"),
        ({"extension": math.inf}, "extension"),
        ({"levels": 1}, "levels"),
        ({"keep_probability": 1.0}, "keep_probability"),
    ],
)
def test_params_name_the_bad_field(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"clip": 1.0, "extension": 1.0, "levels": 4, "keep_probability": 0.5}
    args.update(kwargs)

    with pytest.raises(ConfigError) as caught:
        RqmParams(**args)  # type: ignore[arg-type]

    assert caught.value.field == field
