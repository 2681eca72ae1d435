"""Accountant: golden epsilons from published results, validation, round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.privacy.accountant import (
    PRV_MAX_POINTS,
    RDP_ORDERS,
    compute_epsilon,
    history_from_array,
    history_to_array,
    noise_multiplier_for_epsilon,
    prv_fallback_reason,
    run_lengths,
)
from fedrank.privacy.analysis import OPACUS_ALPHAS

DELTA = 1e-5


@pytest.mark.parametrize(
    ("accountant", "expected"),
    [
        # Abadi et al. 2016, "Deep Learning with Differential Privacy", arXiv 1607.00133:
        # q = 0.01, sigma = 4, 10,000 steps, delta = 1e-5. Opacus 1.6.0 gives 1.035
        # (RDP, Balle et al. 2020 conversion) and 0.957 (PRV, Gopi et al. 2021).
        ("rdp", 1.0355),
        ("prv", 0.9569),
    ],
)
def test_abadi_tuple_matches_opacus_published_figures(accountant: str, expected: float) -> None:
    eps = compute_epsilon(history=[(4.0, 0.01, 10_000)], delta=DELTA, accountant=accountant)  # type: ignore[arg-type]

    assert eps == pytest.approx(expected, rel=0.01)


def test_opacus_test_suite_tuple() -> None:
    # pytorch/opacus, opacus/tests/accountants_test.py::test_rdp_accountant:
    # sigma = 1.5, q = 0.04, int(90 / 0.04) = 2250 steps, delta = 1e-5 -> 7.32911117143.
    eps = compute_epsilon(history=[(1.5, 0.04, 2250)], delta=DELTA, accountant="rdp")

    assert eps == pytest.approx(7.32911117143, rel=0.01)


# tensorflow/privacy, tutorials/README.md, "Select Parameters": MNIST DP-SGD, N = 60,000,
# 256 examples a batch, delta = 1e-5; eps from TF Privacy's RDP accountant, which converted
# RDP to (eps, delta) with Mironov 2017 (arXiv 1702.07476), Prop. 3.
TF_PRIVACY_MNIST = [
    # (noise multiplier, epochs, published eps)
    (1.1, 60, 3.01),
    (1.3, 15, 1.19),
    (0.7, 45, 7.10),
]


@pytest.mark.parametrize(("sigma", "epochs", "published"), TF_PRIVACY_MNIST)
def test_tf_privacy_mnist_table(sigma: float, epochs: int, published: float) -> None:
    q = 256 / 60_000
    steps = math.ceil(epochs * 60_000 / 256)  # compute_dp_sgd_privacy rounds steps up
    orders = np.array(RDP_ORDERS)

    # The RDP curve our accounting rests on, with the published (older) conversion.
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(RDP_ORDERS))
    classic = float(np.min(rdp + math.log(1 / DELTA) / (orders - 1)))
    eps = compute_epsilon(history=[(sigma, q, steps)], delta=DELTA, accountant="rdp")

    assert classic == pytest.approx(published, rel=0.01)
    # Balle et al.'s conversion is never looser than Mironov's, and the gap is modest.
    assert 0.8 * published < eps <= classic


@pytest.mark.parametrize("history", [[(4.0, 0.01, 10_000)], [(1.0, 1.0, 10)]])
def test_prv_is_no_looser_than_rdp(history: list[tuple[float, float, int]]) -> None:
    rdp = compute_epsilon(history=history, delta=DELTA, accountant="rdp")
    prv = compute_epsilon(history=history, delta=DELTA, accountant="prv")

    assert 0 < prv <= rdp


def test_history_accepts_objects_with_the_three_fields() -> None:
    class Entry:
        noise_multiplier = 1.5
        sample_rate = 0.04
        steps = 2250

    assert compute_epsilon(history=[Entry()], delta=DELTA, accountant="rdp") == compute_epsilon(
        history=[(1.5, 0.04, 2250)], delta=DELTA, accountant="rdp"
    )


def test_split_history_composes_to_the_merged_one() -> None:
    split = [(1.0, 0.1, 10), (2.0, 0.2, 5), (1.0, 0.1, 20)]

    eps = compute_epsilon(history=split, delta=DELTA, accountant="rdp")
    merged = compute_epsilon(history=[(1.0, 0.1, 30), (2.0, 0.2, 5)], delta=DELTA, accountant="rdp")
    alone = compute_epsilon(history=[(1.0, 0.1, 20)], delta=DELTA, accountant="rdp")

    assert eps == merged
    assert eps > alone


def test_edge_histories() -> None:
    assert compute_epsilon(history=[], delta=DELTA, accountant="prv") == 0.0
    assert (
        compute_epsilon(history=[(1.0, 0.0, 100), (1.0, 0.5, 0)], delta=DELTA, accountant="rdp")
        == 0.0
    )
    assert compute_epsilon(history=[(0.0, 0.1, 1)], delta=DELTA, accountant="rdp") == math.inf


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"history": [(1.0, 0.1, 1)], "delta": 0.0, "accountant": "rdp"}, ConfigError, "delta"),
        ({"history": [(1.0, 0.1, 1)], "delta": 1.0, "accountant": "rdp"}, ConfigError, "delta"),
        (
            {"history": [(1.0, 0.1, 1)], "delta": DELTA, "accountant": "gdp"},
            ConfigError,
            "accountant",
        ),
        (
            {"history": [(1.0, 0.1, 1), (1.0, 1.5, 1)], "delta": DELTA, "accountant": "rdp"},
            InvalidUpdate,
            "history[1].sample_rate",
        ),
        (
            {"history": [(-1.0, 0.1, 1)], "delta": DELTA, "accountant": "rdp"},
            InvalidUpdate,
            "history[0].noise_multiplier",
        ),
        (
            {"history": [(math.nan, 0.1, 1)], "delta": DELTA, "accountant": "rdp"},
            InvalidUpdate,
            "history[0].noise_multiplier",
        ),
        (
            {"history": [(1.0, 0.1, -2)], "delta": DELTA, "accountant": "rdp"},
            InvalidUpdate,
            "history[0].steps",
        ),
        (
            {"history": [(1.0, 0.1, 1.5)], "delta": DELTA, "accountant": "rdp"},
            InvalidUpdate,
            "history[0].steps",
        ),
        (
            {"history": [(1.0, 0.1)], "delta": DELTA, "accountant": "rdp"},
            InvalidUpdate,
            "history[0]",
        ),
    ],
)
def test_compute_epsilon_names_the_bad_argument(
    kwargs: dict[str, object], error: type[Exception], named: str
) -> None:
    with pytest.raises(error, match=named.replace("[", r"\[").replace("]", r"\]")):
        compute_epsilon(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "history",
    [
        [(4.0, 0.01, 10_000)],
        [(1.0, 1.0, 10)],
        [(1.5, 0.04, 2250)],
        [(1.0, 0.1, 30), (2.0, 0.2, 5)],
        [(0.8, 0.0625, 96)],
    ],
)
def test_equal_to_opacus_accountants_on_the_same_history(
    history: list[tuple[float, float, int]],
) -> None:
    rdp, prv = RDPAccountant(), PRVAccountant()
    rdp.history, prv.history = list(history), list(history)
    with np.errstate(all="ignore"):
        expected_prv = prv.get_epsilon(delta=DELTA, eps_error=0.01)
    expected_rdp = rdp.get_epsilon(delta=DELTA, alphas=list(RDP_ORDERS))

    assert compute_epsilon(history=history, delta=DELTA, accountant="prv") == expected_prv
    assert compute_epsilon(history=history, delta=DELTA, accountant="rdp") == expected_rdp


def test_the_prv_domain_is_sized_at_opacus_own_default_orders() -> None:
    assert list(OPACUS_ALPHAS) == [float(a) for a in RDPAccountant.DEFAULT_ALPHAS]
    assert set(OPACUS_ALPHAS) <= set(RDP_ORDERS)


def test_a_prv_grid_over_the_cap_falls_back_to_rdp_with_a_warning() -> None:
    # 100,000 steps at sigma 1, q 0.01: Opacus' grid would hold ~7.5e6 points (~1.2 GB).
    history = [(1.0, 0.01, 100_000)]

    reason = prv_fallback_reason(history=history, delta=DELTA)
    with pytest.warns(RuntimeWarning, match="RDP bound"):
        eps = compute_epsilon(history=history, delta=DELTA, accountant="prv")

    assert reason is not None
    assert str(PRV_MAX_POINTS) in reason
    assert eps == compute_epsilon(history=history, delta=DELTA, accountant="rdp")
    assert prv_fallback_reason(history=[(4.0, 0.01, 10_000)], delta=DELTA) is None


def test_noise_multiplier_matches_opacus_test_suite() -> None:
    # pytorch/opacus, opacus/tests/accountants_test.py::test_get_noise_multiplier_rdp_steps:
    # eps = 8, delta = 1e-5, q = 0.04, 2000 steps -> sigma = 1.3562.
    sigma = noise_multiplier_for_epsilon(
        target_epsilon=8.0, delta=DELTA, sample_rate=0.04, steps=2000, accountant="rdp"
    )

    assert sigma == pytest.approx(1.3562, rel=0.01)


@pytest.mark.parametrize(
    ("accountant", "target", "q", "steps"),
    [("rdp", 8.0, 0.04, 2000), ("rdp", 2.0, 1.0, 20), ("prv", 2.0, 1.0, 20)],
)
def test_noise_multiplier_round_trips(accountant: str, target: float, q: float, steps: int) -> None:
    sigma = noise_multiplier_for_epsilon(
        target_epsilon=target,
        delta=DELTA,
        sample_rate=q,
        steps=steps,
        accountant=accountant,  # type: ignore[arg-type]
    )
    eps = compute_epsilon(history=[(sigma, q, steps)], delta=DELTA, accountant=accountant)  # type: ignore[arg-type]

    assert eps <= target
    assert eps == pytest.approx(target, abs=0.05)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"target_epsilon": math.inf}, "target_epsilon"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"steps": 0}, "steps"),
        ({"delta": 2.0}, "delta"),
        ({"accountant": "moments"}, "accountant"),
        ({"target_epsilon": 1e-9, "sample_rate": 1.0, "steps": 1000}, "target_epsilon"),
    ],
)
def test_noise_multiplier_names_the_bad_argument(kwargs: dict[str, object], named: str) -> None:
    args: dict[str, object] = {
        "target_epsilon": 1.0,
        "delta": DELTA,
        "sample_rate": 0.01,
        "steps": 100,
        "accountant": "rdp",
    }
    args.update(kwargs)

    with pytest.raises(ValueError, match=named):
        noise_multiplier_for_epsilon(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("accountant_class", [RDPAccountant, PRVAccountant])
def test_run_lengths_is_the_history_opacus_keeps_after_the_same_steps(
    accountant_class: type[RDPAccountant] | type[PRVAccountant],
) -> None:
    # Arrange: rounds of steps, with a change of sigma and of q in between.
    rounds = [(1.0, 0.25, 4), (1.0, 0.25, 4), (1.5, 0.25, 2), (1.5, 0.5, 3), (1.5, 0.5, 0)]
    accountant = accountant_class()
    for sigma, q, steps in rounds:
        for _ in range(steps):
            accountant.step(noise_multiplier=sigma, sample_rate=q)

    # Act
    merged = run_lengths(rounds)

    # Assert
    assert merged == tuple(accountant.history)
    assert history_from_array(history_to_array(merged)) == merged
