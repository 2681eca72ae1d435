"""The one neighbouring relation fedrank's guarantees are stated under, and what it allows.

Two datasets are neighbours when one is the other with one *unit* added or removed:
one training record (sample-level DP, the unit of a client's DP-SGD) or one client's
whole data (client-level DP, the unit of the server's releases). This is the relation
Opacus' accounting of Poisson-sampled DP-SGD assumes (Mironov, Talwar and Zhang 2019,
"Renyi Differential Privacy of the Sampled Gaussian Mechanism", arXiv 1908.10530,
Sec. 3), that Google's ``dp-accounting`` and Flower 1.41 call ``add-or-remove-one``,
and that DP-FedAvg's sensitivity argument uses (McMahan et al. 2018, arXiv 1710.06963):
adding or removing one client changes a sum of updates clipped to norm C by at most C.

It is not "zero-out" (one unit replaced by a null one) and not "replace-one" (one unit
swapped for another; sensitivity 2C, so a sigma accounted here would have to be
halved). The difference matters for client sampling:

- **Poisson sampling** (each client independently with probability q = m / N): the
  sampled Gaussian mechanism with rate q is accounted exactly under add/remove.
- **Fixed-size sampling** (exactly m of N clients): a client added to the population
  changes which others are drawn, so the two sampled sets can differ by a swap; the
  bound for add/remove is then that of replace-one with q = m / N, far above the
  q = 1 figure. For N = 4, m = 3, sigma = 1, one round costs epsilon 9.59 (PRV, delta
  1e-5, sigma / 2 at q = 0.75) against 4.39 for q = 1. Only when every client takes
  part in every round (m = N) is the round the plain Gaussian mechanism with q = 1.
"""

from __future__ import annotations

from typing import Final, Literal

from fedrank.errors import ConfigError

NEIGHBOURING_RELATION: Final = "add-or-remove-one"
"""The neighbouring relation of every guarantee fedrank states (``privacy.json`` carries it)."""

RELATION_DESCRIPTION: Final = (
    "add or remove one unit: one training record (sample-level DP) or one client's "
    "whole data (client-level DP)"
)
"""One line for reports: what :data:`NEIGHBOURING_RELATION` means."""

ClientSampling = Literal["poisson", "fixed"]
CLIENT_SAMPLINGS: tuple[ClientSampling, ...] = ("poisson", "fixed")


def _check_count(field: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(field, f"must be an integer >= 1, got {value!r}")
    return value


def client_sampling_rate(
    *, sampling: ClientSampling, clients_per_round: int, total_clients: int
) -> float:
    """The sampling rate q that accounts a client-level round under add/remove, or refuse.

    Parameters
    ----------
    sampling : {"poisson", "fixed"}
        How the server samples clients each round (``dp-client-sampling``).
    clients_per_round : int
        m: expected (Poisson) or exact (fixed) number of clients a round.
    total_clients : int
        N: the clients that can be sampled.

    Returns
    -------
    float
        ``m / N`` for Poisson sampling; ``1.0`` for fixed-size sampling of every client.

    Raises
    ------
    ConfigError
        ``clients-per-round`` exceeds ``num-clients``, or fixed-size sampling of fewer
        than all clients, which add/remove accounting cannot bound at q = 1 (the message
        says to use Poisson sampling or sample every client).
    """
    if sampling not in CLIENT_SAMPLINGS:
        raise ConfigError(
            "dp-client-sampling", f"must be one of {CLIENT_SAMPLINGS}, got {sampling!r}"
        )
    m = _check_count("clients-per-round", clients_per_round)
    n = _check_count("num-clients", total_clients)
    if m > n:
        raise ConfigError(
            "clients-per-round", f"{m} clients a round, but only {n} clients (num-clients)"
        )
    if sampling == "poisson":
        return m / n
    if m != n:
        raise ConfigError(
            "dp-client-sampling",
            f"fixed-size sampling of {m} of {n} clients cannot be accounted under the "
            f"{NEIGHBOURING_RELATION} relation (adding one client changes which others "
            "are drawn; q = 1 would under-count). Use dp-client-sampling = 'poisson' "
            f"(q = {m}/{n}), or sample every client (clients-per-round = {n}).",
        )
    return 1.0
