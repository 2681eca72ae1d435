"""One neighbouring relation; client sampling accounted under it, or refused."""

from __future__ import annotations

import warnings

import pytest

from fedrank.errors import ConfigError
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.relation import NEIGHBOURING_RELATION, client_sampling_rate


def test_the_relation_is_add_or_remove_one() -> None:
    # The name Google's dp-accounting and Flower 1.41's privacy_accounting use.
    assert NEIGHBOURING_RELATION == "add-or-remove-one"


def test_poisson_sampling_is_accounted_at_m_over_n() -> None:
    assert client_sampling_rate(sampling="poisson", clients_per_round=50, total_clients=500) == 0.1


def test_fixed_sampling_of_every_client_is_the_plain_gaussian() -> None:
    assert client_sampling_rate(sampling="fixed", clients_per_round=4, total_clients=4) == 1.0


def test_fixed_sampling_of_some_clients_is_refused_with_the_way_out() -> None:
    with pytest.raises(ConfigError) as caught:
        client_sampling_rate(sampling="fixed", clients_per_round=3, total_clients=4)

    assert caught.value.field == "dp-client-sampling"
    assert "poisson" in str(caught.value)
    assert "clients-per-round = 4" in str(caught.value)


def test_why_fixed_size_sampling_cannot_claim_q_one() -> None:
    # N = 4, m = 3, sigma = 1: the replace-one bound with sampling (sigma / 2 at q = m/N),
    # which add/remove with fixed-size sampling reduces to, is far above q = 1's figure.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        claimed = compute_epsilon(history=[(1.0, 1.0, 1)], delta=1e-5, accountant="prv")
        swap = compute_epsilon(history=[(0.5, 0.75, 1)], delta=1e-5, accountant="prv")

    assert claimed == pytest.approx(4.39, abs=0.01)
    assert swap == pytest.approx(9.59, abs=0.01)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"sampling": "uniform", "clients_per_round": 1, "total_clients": 2}, "dp-client-sampling"),
        ({"sampling": "poisson", "clients_per_round": 0, "total_clients": 2}, "clients-per-round"),
        ({"sampling": "poisson", "clients_per_round": 3, "total_clients": 2}, "clients-per-round"),
        ({"sampling": "poisson", "clients_per_round": 1, "total_clients": True}, "num-clients"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        client_sampling_rate(**kwargs)  # type: ignore[arg-type]

    assert caught.value.field == field
