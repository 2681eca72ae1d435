"""RQM in the ledger, RQM calibrated to a budget, and the quantized local Gaussian."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.privacy.quantized_gaussian import (
    local_gaussian_encode,
    local_gaussian_epsilon,
    local_gaussian_noise_for_epsilon,
    stochastic_round,
)
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.release import Release
from fedrank.privacy.rqm import RqmParams
from fedrank.privacy.rqm_accounting import (
    epsilon_with_rqm,
    rqm_epsilon,
    rqm_extension_for_epsilon,
    rqm_rdp_curve,
)

DELTA = 1e-5
PARAMS = RqmParams(clip=1.0, extension=30.0, levels=16, keep_probability=0.5)


def rqm_release(server_round: int, party: str = "partition-0") -> Release:
    return Release(
        round=server_round, mechanism="client-rqm", noise_multiplier=0.0, sample_rate=0.0,
        steps=0, clip_norm=1.0, unit="client", party=party, rqm_levels=16,
        rqm_extension=30.0, rqm_keep_probability=0.5, rqm_coordinates=50,
    )  # fmt: skip


def test_the_ledger_accounts_rqm_releases_exactly(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / "l.jsonl", budget_epsilon=None, delta=DELTA, accountant="prv")
    for r in (1, 2, 3):
        ledger.record(rqm_release(r))

    again = PrivacyLedger(tmp_path / "l.jsonl", budget_epsilon=None, delta=DELTA, accountant="rdp")

    expected = rqm_epsilon(params=PARAMS, dimension=50, rounds=3, delta=DELTA)
    assert again.spent(unit="client", party="partition-0") == expected
    assert ledger.spent(unit="client", party="partition-0") == expected


def test_rqm_and_gaussian_releases_compose_by_adding_their_rdp() -> None:
    gaussian = [(1.2, 0.1, 30)]
    together = epsilon_with_rqm(gaussian, [(PARAMS, 50)], delta=DELTA)

    assert together > compute_epsilon(history=gaussian, delta=DELTA, accountant="rdp")
    assert together > rqm_epsilon(params=PARAMS, dimension=50, rounds=1, delta=DELTA)
    assert np.all(np.isfinite(rqm_rdp_curve(PARAMS)))


def test_a_budget_refuses_the_rqm_release_that_would_exceed_it(tmp_path: Path) -> None:
    one = rqm_epsilon(params=PARAMS, dimension=50, rounds=1, delta=DELTA)
    ledger = PrivacyLedger(
        tmp_path / "l.jsonl", budget_epsilon=one * 1.01, delta=DELTA, accountant="rdp"
    )
    ledger.record(rqm_release(1))

    with pytest.raises(Exception, match="budget"):
        ledger.record(rqm_release(2))


@pytest.mark.parametrize(
    "changes",
    [
        {"rqm_levels": 0},
        {"noise_multiplier": 1.0},
        {"rqm_coordinates": 0},
        {"mechanism": "client-gaussian"},
    ],
)
def test_an_rqm_release_with_a_missing_or_gaussian_part_is_refused(
    changes: dict[str, object],
) -> None:
    fields = {**rqm_release(1).__dict__, **changes}
    with pytest.raises(ConfigError):
        Release(**fields)  # type: ignore[arg-type]


def test_lines_written_before_rqm_still_load() -> None:
    old = (
        '{"clip_norm": 1.0, "digest": "", "mechanism": "client-gaussian", '
        '"noise_multiplier": 1.0, "party": "server", "round": 1, "sample_rate": 0.5, '
        '"steps": 1, "unit": "client"}'
    )
    assert Release.from_json(old).rqm_levels == 0


def test_the_extension_for_a_budget_spends_at_most_it() -> None:
    extension = rqm_extension_for_epsilon(
        target_epsilon=8.0, clip=1.0, levels=16, keep_probability=0.5, dimension=200,
        rounds=10, delta=DELTA,
    )  # fmt: skip
    params = RqmParams(1.0, extension, 16, 0.5)

    spent = rqm_epsilon(params=params, dimension=200, rounds=10, delta=DELTA)
    assert 7.99 <= spent <= 8.0
    smaller = RqmParams(1.0, extension * 0.9, 16, 0.5)
    assert rqm_epsilon(params=smaller, dimension=200, rounds=10, delta=DELTA) > 8.0


def test_stochastic_rounding_is_unbiased_inside_the_range() -> None:
    source = RandomSource.reproducible(3)
    values = np.full(200_000, 0.3)

    rounded = stochastic_round(values, bound=1.0, bits=2, source=source)

    np.testing.assert_allclose(np.unique(rounded), [-1 / 3, 1 / 3])  # the levels around 0.3
    assert abs(rounded.mean() - 0.3) < 5 * rounded.std() / np.sqrt(values.size)


def test_the_local_gaussian_is_calibrated_under_replace_one() -> None:
    sigma = local_gaussian_noise_for_epsilon(target_epsilon=4.0, rounds=20, delta=DELTA)

    assert 3.95 <= local_gaussian_epsilon(noise_multiplier=sigma, rounds=20, delta=DELTA) <= 4.0
    # Replace-one doubles the sensitivity: sigma / 2 is what is accounted.
    assert local_gaussian_epsilon(noise_multiplier=sigma, rounds=20, delta=DELTA) == (
        compute_epsilon(history=[(sigma / 2, 1.0, 20)], delta=DELTA, accountant="rdp")
    )
    sent = local_gaussian_encode(
        {"w": np.ones(4)}, clip_norm=1.0, noise_multiplier=sigma, bits=3,
        source=RandomSource.reproducible(1),
    )  # fmt: skip
    bound = 1.0 * (1 + 4 * sigma)
    assert np.all(np.abs(sent["w"]) <= bound + 1e-12)
