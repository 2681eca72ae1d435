"""Client-level DP mechanisms: clipping, seeded Gaussian noise, DP-FedAvg aggregate."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrank.privacy.mechanisms import (
    client_level_dp_aggregate,
    clip_by_l2_norm,
    gaussian_noise_like,
    l2_norm,
)


def _update(rng: np.random.Generator, norm: float) -> dict[str, np.ndarray]:
    raw = {"w": rng.normal(size=(4, 3)), "b": rng.normal(size=3)}
    scale = norm / l2_norm(raw)
    return {k: (v * scale).astype(np.float32) for k, v in raw.items()}


def test_clip_scales_a_large_update_onto_the_sphere() -> None:
    update = _update(np.random.default_rng(0), norm=5.0)
    before = {k: v.copy() for k, v in update.items()}

    clipped, norm = clip_by_l2_norm(update, clip_norm=1.0)

    assert norm == pytest.approx(5.0, rel=1e-6)
    assert l2_norm(clipped) <= 1.0 + 1e-6
    assert l2_norm(clipped) == pytest.approx(1.0, rel=1e-9)
    # Direction kept: one common factor over all tensors.
    for k in update:
        np.testing.assert_allclose(clipped[k], update[k].astype(np.float64) / norm, rtol=1e-12)
        np.testing.assert_array_equal(update[k], before[k])  # input untouched


def test_clip_leaves_an_update_inside_the_ball_unchanged() -> None:
    update = _update(np.random.default_rng(1), norm=0.3)

    clipped, norm = clip_by_l2_norm(update, clip_norm=1.0)

    assert norm == pytest.approx(0.3, rel=1e-6)
    for k in update:
        np.testing.assert_array_equal(clipped[k], update[k].astype(np.float64))
        assert clipped[k] is not update[k]


def test_clip_of_a_zero_update_is_zero_without_warnings() -> None:
    update = {"w": np.zeros((2, 2), dtype=np.float32), "b": np.zeros(0, dtype=np.float32)}

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clipped, norm = clip_by_l2_norm(update, clip_norm=0.5)

    assert norm == 0.0
    assert all(np.all(v == 0) and not np.any(np.isnan(v)) for v in clipped.values())


@settings(max_examples=50, deadline=None)
@given(
    values=arrays(
        np.float64,
        st.integers(1, 50),
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
    ),
    clip_norm=st.floats(1e-3, 1e3),
)
def test_clipped_norm_never_exceeds_the_bound(values: np.ndarray, clip_norm: float) -> None:
    clipped, _ = clip_by_l2_norm({"x": values, "y": values[::-1]}, clip_norm=clip_norm)

    assert l2_norm(clipped) <= clip_norm * (1 + 1e-9)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_clip_rejects_non_finite_updates(bad: float) -> None:
    with pytest.raises(ValueError, match="non-finite"):
        clip_by_l2_norm({"w": np.array([1.0, bad])}, clip_norm=1.0)


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.inf, math.nan])
def test_clip_names_a_bad_clip_norm(clip_norm: float) -> None:
    with pytest.raises(ValueError, match="clip_norm"):
        clip_by_l2_norm({"w": np.ones(2)}, clip_norm=clip_norm)


def test_gaussian_noise_is_seeded_and_shaped() -> None:
    shapes = {"w": (3, 2), "b": (2,)}

    a = gaussian_noise_like(shapes, std=0.5, rng=np.random.default_rng(7))
    b = gaussian_noise_like(shapes, std=0.5, rng=np.random.default_rng(7))
    c = gaussian_noise_like(shapes, std=0.5, rng=np.random.default_rng(8))

    assert {k: v.shape for k, v in a.items()} == shapes
    for k in shapes:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["w"], c["w"])
    with pytest.raises(ValueError, match="std"):
        gaussian_noise_like(shapes, std=-1.0, rng=np.random.default_rng(0))


def test_aggregate_noise_has_std_sigma_c_over_m() -> None:
    # Arrange: 3 clients over a 100,000-coordinate model, two of them far outside the ball.
    rng = np.random.default_rng(2024)
    n, sigma, clip, m = 100_000, 1.3, 0.7, 5
    shapes = {"w": (n // 4, 2), "b": (n // 2,)}
    updates = [
        {k: rng.normal(scale=s, size=shape) for k, shape in shapes.items()}
        for s in (1.0, 0.001, 5.0)
    ]
    clipped_sum = {k: np.zeros(shape) for k, shape in shapes.items()}
    for u in updates:
        c, _ = clip_by_l2_norm(u, clip_norm=clip)
        for k in shapes:
            clipped_sum[k] += c[k]

    # Act
    average = client_level_dp_aggregate(
        updates,
        shapes=shapes,
        clip_norm=clip,
        noise_multiplier=sigma,
        rng=np.random.default_rng(5),
        expected_clients=m,
    )

    # Assert: what remains once the clipped mean is removed is the noise alone.
    noise = np.concatenate([(average[k] - clipped_sum[k] / m).ravel() for k in shapes])
    expected_std = sigma * clip / m
    assert noise.size == n
    assert abs(noise.std() / expected_std - 1) < 0.02
    assert abs(noise.mean()) < 5 * expected_std / math.sqrt(n)


def test_aggregate_without_noise_is_the_clipped_sum_over_m() -> None:
    shapes = {"w": (2,)}
    updates = [{"w": np.array([3.0, 4.0])}, {"w": np.array([0.3, 0.0])}]

    average = client_level_dp_aggregate(
        updates,
        shapes=shapes,
        clip_norm=1.0,
        noise_multiplier=0.0,
        rng=np.random.default_rng(0),
        expected_clients=4,
    )

    # (0.6, 0.8) + (0.3, 0) over a fixed m = 4, whatever the number of replies.
    np.testing.assert_allclose(average["w"], [0.225, 0.2])


def test_aggregate_of_no_updates_is_noise_alone() -> None:
    average = client_level_dp_aggregate(
        [],
        shapes={"w": (10_000,)},
        clip_norm=2.0,
        noise_multiplier=1.0,
        rng=np.random.default_rng(1),
        expected_clients=2,
    )

    assert average["w"].std() == pytest.approx(1.0, rel=0.05)


def test_aggregate_is_reproducible_from_the_seed() -> None:
    updates = [_update(np.random.default_rng(i), norm=2.0) for i in range(3)]
    shapes = {k: v.shape for k, v in updates[0].items()}

    def run(seed: int) -> dict[str, np.ndarray]:
        return client_level_dp_aggregate(
            updates,
            shapes=shapes,
            clip_norm=1.0,
            noise_multiplier=1.0,
            rng=np.random.default_rng(seed),
            expected_clients=3,
        )

    first, again, other = run(3), run(3), run(4)
    for k in shapes:
        np.testing.assert_array_equal(first[k], again[k])
    assert not np.array_equal(first["w"], other["w"])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"noise_multiplier": -0.1}, "noise_multiplier"),
        ({"expected_clients": 0}, "expected_clients"),
        ({"updates": [{"w": np.ones(2)}, {"w": np.ones(3)}]}, r"updates\[1\]\['w'\]"),
        ({"updates": [{"v": np.ones(2)}]}, r"updates\[0\]"),
    ],
)
def test_aggregate_names_the_bad_argument(kwargs: dict[str, object], named: str) -> None:
    args: dict[str, object] = {
        "updates": [{"w": np.ones(2)}],
        "shapes": {"w": (2,)},
        "clip_norm": 1.0,
        "noise_multiplier": 1.0,
        "rng": np.random.default_rng(0),
        "expected_clients": 2,
    }
    args.update(kwargs)

    with pytest.raises(ValueError, match=named):
        client_level_dp_aggregate(**args)  # type: ignore[arg-type]
