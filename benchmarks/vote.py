"""Vote time: 25 clients x one 1.6M-edge layer.

Compares fedrank's Borda vote with (a) the floor of its unavoidable parts, one
pass over the stacked rank vectors plus one sort of a 1.6M-entry array, and (b)
the FRL authors' formulation, where clients send argsort orders and the server
inverts each with a second argsort before summing.

Run: ``python -m benchmarks.vote``
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import best_time, report
from fedrank.strategies.ranking import borda_vote, ranks_from_order

CLIENTS = 25
EDGES = 1_600_000


def authors_vote(orders: np.ndarray) -> np.ndarray:
    """Argsort of argsort per client, sum, argsort (FRL reference code's method)."""
    positions = np.argsort(orders, axis=1)
    return ranks_from_order(np.argsort(positions.sum(axis=0), kind="stable"))


def main() -> dict[str, float]:
    rng = np.random.default_rng(0)
    ranks = np.stack([rng.permutation(EDGES) for _ in range(CLIENTS)])
    orders = np.argsort(ranks, axis=1)  # what the authors' clients send
    sums = ranks.sum(axis=0)
    np.testing.assert_array_equal(borda_vote(ranks), authors_vote(orders))

    def floor() -> None:
        ranks.sum(axis=0, dtype=np.int64)
        np.argsort(sums, kind="stable")

    rows = [
        ("floor (sum pass + one sort)", best_time(floor)),
        ("fedrank borda_vote", best_time(lambda: borda_vote(ranks))),
        ("authors' argsort-of-argsort", best_time(lambda: authors_vote(orders), repeats=2)),
    ]
    report(
        f"Vote, {CLIENTS} clients x {EDGES:,} edges", rows, baseline="floor (sum pass + one sort)"
    )
    t = dict(rows)
    ratios = {
        "vote_over_floor": t["fedrank borda_vote"] / t["floor (sum pass + one sort)"],
        "authors_over_vote": t["authors' argsort-of-argsort"] / t["fedrank borda_vote"],
    }
    print(
        f"  fedrank is {ratios['authors_over_vote']:.1f}x faster than the authors' method "
        f"and {ratios['vote_over_floor']:.2f}x its floor"
    )
    return ratios


if __name__ == "__main__":
    main()
