"""LoRA aggregators against a dense reference on small matrices."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.strategies.lora_aggregation import (
    fedit_average,
    ffa_average,
    lora_pairs,
    svd_recompress,
    svd_recompress_updates,
    weighted_product_sum,
)


def _pair(rng: np.random.Generator, *, r: int, out: int = 6, inp: int = 5) -> tuple:
    return rng.normal(size=(r, inp)), rng.normal(size=(out, r))


def _update(rng: np.random.Generator, *, r: int = 2) -> dict[str, np.ndarray]:
    a, b = _pair(rng, r=r)
    return {
        "enc.query.lora_A": a.astype(np.float32),
        "enc.query.lora_B": b.astype(np.float32),
        "classifier.weight": rng.normal(size=(2, 6)).astype(np.float32),
        "classifier.bias": rng.normal(size=2).astype(np.float32),
    }


def test_fedit_average_is_weighted_mean_of_each_tensor() -> None:
    rng = np.random.default_rng(0)
    updates = [_update(rng) for _ in range(3)]
    weights = [1.0, 2.0, 5.0]

    result = fedit_average(updates, weights)

    for name in updates[0]:
        expected = sum(w * u[name] for w, u in zip(weights, updates, strict=True)) / 8.0
        np.testing.assert_allclose(result[name], expected, rtol=1e-6)
        assert result[name].dtype == np.float32


def test_fedit_average_of_factors_is_not_the_average_product() -> None:
    # The reason exact aggregators exist: mean(B) mean(A) != mean(B A).
    rng = np.random.default_rng(1)
    updates = [_update(rng) for _ in range(2)]
    avg = fedit_average(updates, [1.0, 1.0])
    pairs = [lora_pairs(u)["enc.query"] for u in updates]

    dense = weighted_product_sum(pairs, [1.0, 1.0])

    product_of_means = avg["enc.query.lora_B"] @ avg["enc.query.lora_A"]
    assert np.linalg.norm(product_of_means - dense) > 0.1


def test_ffa_average_is_exact_for_a_shared_a() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(2, 5))
    bs = [rng.normal(size=(6, 2)) for _ in range(3)]
    weights = [3.0, 1.0, 1.0]
    updates = [{"enc.query.lora_B": b} for b in bs]

    result = ffa_average(updates, weights)

    dense = weighted_product_sum([(a, b) for b in bs], weights)
    np.testing.assert_allclose(result["enc.query.lora_B"] @ a, dense, atol=1e-12)


def test_ffa_average_rejects_updates_that_carry_a() -> None:
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match="carry no A"):
        ffa_average([_update(rng), _update(rng)], [1.0, 1.0])


def test_inputs_are_not_modified() -> None:
    rng = np.random.default_rng(4)
    updates = [_update(rng) for _ in range(2)]
    copies = [{k: v.copy() for k, v in u.items()} for u in updates]

    fedit_average(updates, [1.0, 1.0])
    svd_recompress_updates(updates, [1.0, 1.0], rank=2)

    for u, c in zip(updates, copies, strict=True):
        for name in u:
            np.testing.assert_array_equal(u[name], c[name])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    ranks=st.lists(st.integers(1, 3), min_size=1, max_size=4),
)
def test_svd_recompress_is_exact_when_the_sum_fits_the_rank(seed: int, ranks: list[int]) -> None:
    rng = np.random.default_rng(seed)
    pairs = [_pair(rng, r=r, out=16, inp=14) for r in ranks]
    weights = rng.uniform(0.1, 2.0, size=len(pairs))
    total_rank = sum(ranks)  # rank(sum_i B_i A_i) <= sum_i r_i

    a, b = svd_recompress(pairs, weights, rank=total_rank)

    assert a.shape == (total_rank, 14)
    assert b.shape == (16, total_rank)
    np.testing.assert_allclose(b @ a, weighted_product_sum(pairs, weights), atol=1e-9)


def test_svd_recompress_is_the_eckart_young_optimum_below_full_rank() -> None:
    rng = np.random.default_rng(5)
    pairs = [_pair(rng, r=3, out=8, inp=7) for _ in range(3)]
    weights = [1.0, 2.0, 3.0]
    dense = weighted_product_sum(pairs, weights)
    singular = np.linalg.svd(dense, compute_uv=False)
    rank = 2

    a, b = svd_recompress(pairs, weights, rank=rank)

    error = b @ a - dense
    # Eckart-Young: the least errors any rank-2 matrix can reach.
    np.testing.assert_allclose(np.linalg.norm(error, "fro"), np.sqrt(np.sum(singular[rank:] ** 2)))
    np.testing.assert_allclose(np.linalg.norm(error, 2), singular[rank])
    # And no other rank-2 factorisation of the data does better.
    for _ in range(20):
        other = (b + 0.01 * rng.normal(size=b.shape)) @ (a + 0.01 * rng.normal(size=a.shape))
        assert np.linalg.norm(other - dense, "fro") >= np.linalg.norm(error, "fro") - 1e-12


def test_svd_recompress_updates_keeps_names_and_averages_the_head() -> None:
    rng = np.random.default_rng(6)
    updates = [_update(rng, r=2) for _ in range(2)]

    result = svd_recompress_updates(updates, [1.0, 3.0], rank=4)

    assert result.keys() == updates[0].keys()
    pairs = [lora_pairs(u)["enc.query"] for u in updates]
    np.testing.assert_allclose(
        result["enc.query.lora_B"].astype(np.float64) @ result["enc.query.lora_A"],
        weighted_product_sum(pairs, [1.0, 3.0]),
        atol=1e-5,
    )
    np.testing.assert_allclose(
        result["classifier.bias"],
        0.25 * updates[0]["classifier.bias"] + 0.75 * updates[1]["classifier.bias"],
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    ("weights", "match"),
    [([1.0], "expected 2 weights"), ([-1.0, 2.0], "non-negative"), ([0.0, 0.0], "not all zero")],
)
def test_bad_weights_are_rejected(weights: list[float], match: str) -> None:
    rng = np.random.default_rng(7)
    with pytest.raises(ValueError, match=match):
        fedit_average([_update(rng), _update(rng)], weights)


def test_mismatched_layouts_are_rejected() -> None:
    rng = np.random.default_rng(8)
    small, large = _update(rng, r=2), _update(rng, r=3)
    with pytest.raises(ValueError, match="shape"):
        fedit_average([small, large], [1.0, 1.0])
    with pytest.raises(ValueError, match="names differ"):
        fedit_average([small, {"other": small["classifier.bias"]}], [1.0, 1.0])


def test_lora_pairs_requires_both_factors() -> None:
    a = np.zeros((2, 3))
    with pytest.raises(ValueError, match="no matching"):
        lora_pairs({"m.lora_A": a})
    with pytest.raises(ValueError, match="B without A"):
        lora_pairs({"m.lora_B": a.T})


def test_svd_recompress_rejects_an_impossible_rank() -> None:
    rng = np.random.default_rng(9)
    with pytest.raises(ValueError, match="rank"):
        svd_recompress([_pair(rng, r=2)], [1.0], rank=6)
