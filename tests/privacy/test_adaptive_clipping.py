"""Adaptive clipping: the noise split, the clip norm's walk to the quantile, a round."""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.supercore.differential_privacy import compute_adaptive_noise_params

from fedrank.errors import ConfigError
from fedrank.privacy.adaptive_clipping import (
    adaptive_clipping_round,
    default_count_stddev,
    effective_noise_multiplier,
    next_clip_norm,
    noisy_unclipped_fraction,
    unclipped,
    update_noise_multiplier,
)
from fedrank.privacy.mechanisms import client_level_dp_aggregate
from fedrank.privacy.randomness import RandomSource


@pytest.mark.parametrize(("z", "m"), [(1.0, 100), (0.8, 50), (2.0, 1000), (4.9, 100)])
def test_noise_split_matches_flower_and_inverts(z: float, m: int) -> None:
    sigma_b = default_count_stddev(m)

    z_delta = update_noise_multiplier(noise_multiplier=z, count_stddev=sigma_b)
    _, flower_z_delta = compute_adaptive_noise_params(z, m, None)

    assert sigma_b == m / 20
    assert z_delta == pytest.approx(flower_z_delta, rel=1e-12)
    assert z_delta > z  # the updates get more noise than the target: the count takes some
    assert effective_noise_multiplier(
        update_noise_multiplier=z_delta, count_stddev=sigma_b
    ) == pytest.approx(z, rel=1e-12)


def test_the_effective_multiplier_is_the_gaussian_rdp_of_the_pair() -> None:
    # RDP of a Gaussian mechanism on (sum, centred count), sensitivities (C, 1/2), noise
    # (z_delta C, sigma_b): alpha/2 ((1/z_delta)^2 + (1/(2 sigma_b))^2) = alpha / (2 z^2).
    z_delta, sigma_b = 1.3, 2.5
    z = effective_noise_multiplier(update_noise_multiplier=z_delta, count_stddev=sigma_b)
    for alpha in (2.0, 10.0):
        pair = alpha / 2 * ((1 / z_delta) ** 2 + (0.5 / sigma_b) ** 2)

        assert alpha / (2 * z**2) == pytest.approx(pair, rel=1e-12)


def test_clip_norm_moves_toward_the_target_quantile() -> None:
    grow = next_clip_norm(
        clip_norm=1.0, unclipped_fraction=0.2, target_quantile=0.5, learning_rate=0.2
    )
    shrink = next_clip_norm(
        clip_norm=1.0, unclipped_fraction=0.9, target_quantile=0.5, learning_rate=0.2
    )
    stay = next_clip_norm(
        clip_norm=1.0, unclipped_fraction=0.5, target_quantile=0.5, learning_rate=0.2
    )

    assert grow == pytest.approx(math.exp(0.06))
    assert shrink == pytest.approx(math.exp(-0.08))
    assert stay == 1.0


@pytest.mark.parametrize("count_stddev", [0.0, 5.0])
def test_clip_norm_converges_to_the_quantile_of_the_norms(count_stddev: float) -> None:
    # Arrange: 100 clients a round, update norms log-normal; target: the median.
    source = RandomSource.reproducible(5)
    clip = 0.01
    m = 100
    for _ in range(400):
        norms = np.exp(source.normal(m, std=0.5))
        fraction = noisy_unclipped_fraction(
            unclipped(norms, clip), expected_clients=m, count_stddev=count_stddev, rng=source
        )
        clip = next_clip_norm(
            clip_norm=clip, unclipped_fraction=fraction, target_quantile=0.5, learning_rate=0.2
        )

    # Assert: the median of exp(N(0, 0.5^2)) is 1.
    assert clip == pytest.approx(1.0, rel=0.15)


def test_the_count_is_centred_and_divided_by_the_expected_clients() -> None:
    bits = [True, True, False]

    fraction = noisy_unclipped_fraction(
        bits, expected_clients=4, count_stddev=0.0, rng=RandomSource.reproducible(0)
    )

    assert fraction == pytest.approx((0.5 + 0.5 - 0.5) / 4 + 0.5)


def test_noisy_fraction_is_unbiased_with_the_asked_spread() -> None:
    source = RandomSource.reproducible(6)
    bits = [True] * 30 + [False] * 70

    draws = np.array(
        [
            noisy_unclipped_fraction(bits, expected_clients=100, count_stddev=5.0, rng=source)
            for _ in range(4000)
        ]
    )

    assert abs(draws.mean() - 0.3) < 5 * 0.05 / math.sqrt(4000)
    assert draws.std() == pytest.approx(0.05, rel=0.05)


def test_a_round_releases_dp_fedavg_at_the_update_share_of_the_noise() -> None:
    shapes = {"w": (3, 4)}
    updates = [{"w": np.full((3, 4), v)} for v in (0.01, 0.2, -0.5)]

    result = adaptive_clipping_round(
        updates,
        shapes=shapes,
        clip_norm=0.5,
        noise_multiplier=1.0,
        count_stddev=2.0,
        expected_clients=3,
        target_quantile=0.5,
        learning_rate=0.2,
        rng=RandomSource.reproducible(7),
    )
    # The same draws, made by hand: the update noise first, then the count's.
    source = RandomSource.reproducible(7)
    z_delta = update_noise_multiplier(noise_multiplier=1.0, count_stddev=2.0)
    average = client_level_dp_aggregate(
        updates,
        shapes=shapes,
        clip_norm=0.5,
        noise_multiplier=z_delta,
        rng=source,
        expected_clients=3,
    )
    fraction = noisy_unclipped_fraction(
        [True, False, False], expected_clients=3, count_stddev=2.0, rng=source
    )

    np.testing.assert_array_equal(result.average["w"], average["w"])
    assert result.unclipped_fraction == fraction
    assert result.next_clip_norm == pytest.approx(0.5 * math.exp(-0.2 * (fraction - 0.5)))


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: update_noise_multiplier(noise_multiplier=2.0, count_stddev=1.0), "count_stddev"),
        (
            lambda: update_noise_multiplier(noise_multiplier=0.0, count_stddev=1.0),
            "noise_multiplier",
        ),
        (lambda: default_count_stddev(0), "expected_clients"),
        (
            lambda: next_clip_norm(
                clip_norm=1.0, unclipped_fraction=0.5, target_quantile=1.5, learning_rate=0.2
            ),
            "target_quantile",
        ),
        (
            lambda: next_clip_norm(
                clip_norm=1.0, unclipped_fraction=math.nan, target_quantile=0.5, learning_rate=0.2
            ),
            "unclipped_fraction",
        ),
        (lambda: unclipped([1.0, math.inf], 1.0), "norms"),
    ],
)
def test_bad_arguments_name_the_field(call: object, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        call()  # type: ignore[operator]

    assert caught.value.field == field
