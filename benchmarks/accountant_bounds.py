"""Worst-case time and peak memory of one accountant call within the absolute bounds.

Run: ``PYTHONPATH=. nice python -m benchmarks.accountant_bounds [--quick]``.

Each case runs in a fresh process (cold RDP cache, its own peak memory), and reports
the wall time of one ``compute_epsilon`` call and the growth of the process's peak
resident memory during it, next to the ratio to a baseline call in the same kind of
process (the Abadi et al. tuple, sigma 4, q 0.01, 10,000 steps, under PRV). The cases
are the corners :mod:`fedrank.privacy.bounds` and :mod:`fedrank.privacy.accountant`
allow: the slowest single RDP curve (found by a sweep), the most distinct mechanisms
at that corner, the largest PRV grid under the cap with one and with the most
mechanisms, and the issue-16 reports that used to crash or exhaust memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
import warnings
from typing import Any

from fedrank.privacy import accountant as acc
from fedrank.privacy import bounds

# Cases: (name, accountant, history). Built lazily: some need the grid-size search.
Case = tuple[str, str, list[tuple[float, float, int]]]
DELTA = 1e-5


def _measure(accountant: str, history: list[tuple[float, float, int]]) -> dict[str, Any]:
    """In this (fresh) process: one call's seconds and peak-memory growth in MB."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        eps = acc.compute_epsilon(history=history, delta=DELTA, accountant=accountant)  # type: ignore[arg-type]
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "epsilon": eps,
        "seconds": seconds,
        "peak_mb": (after - before) / 1024,
        "fallback": any("RDP bound" in str(w.message) for w in caught),
        "grid_points": acc.prv_grid_points(history=history, delta=DELTA),
    }


def _run_case(accountant: str, history: list[tuple[float, float, int]]) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.accountant_bounds", "--child", accountant]
    done = subprocess.run(
        command, input=json.dumps(history), capture_output=True, text=True, check=True
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _slowest_curve(sigmas: list[float], rates: list[float]) -> tuple[float, float, float]:
    """(seconds, sigma, q) of the slowest single RDP curve over a grid (in this process)."""
    worst = (0.0, sigmas[0], rates[0])
    for sigma in sigmas:
        for q in rates:
            started = time.perf_counter()
            acc.compute_epsilon(history=[(sigma, q, 1)], delta=DELTA, accountant="rdp")
            worst = max(worst, (time.perf_counter() - started, sigma, q))
    return worst


def _steps_for_grid(mechanisms: list[tuple[float, float]], target: float) -> int:
    """Largest common step count whose PRV grid (points x mechanisms) stays <= target."""

    def points(steps: int) -> float:
        history = [(s, q, steps) for s, q in mechanisms]
        return acc.prv_grid_points(history=history, delta=DELTA)

    low, high = 1, 10**7 // len(mechanisms)
    if points(high) <= target:
        return high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if points(middle) <= target else (low, middle)
    return low


def main(argv: list[str] | None = None) -> None:
    """Print one row per case: seconds, ratio to the baseline, peak MB, PRV or fallback."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a coarser sweep, fewer cases")
    args = parser.parse_args(argv)
    if args.child:
        history = [tuple(e) for e in json.loads(sys.stdin.read())]
        print(json.dumps(_measure(args.child, history)))  # type: ignore[arg-type]
        return

    sigmas = [bounds.ABSOLUTE_MIN_NOISE_MULTIPLIER, 1.0, 10.0, bounds.ABSOLUTE_MAX_NOISE_MULTIPLIER]
    rates = [bounds.ABSOLUTE_MIN_SAMPLE_RATE, 0.01, 0.3, 0.5, 0.7, 0.999999, 1.0]
    if not args.quick:
        sigmas += [0.1, 3.0, 30.0]
        rates += [0.45, 0.49, 0.51, 0.55]
    slow_seconds, slow_sigma, slow_q = _slowest_curve(sigmas, rates)
    print(
        f"slowest RDP curve in the sweep: sigma {slow_sigma:g}, q {slow_q:g}, {slow_seconds:.2f} s"
    )
    most = bounds.ABSOLUTE_MAX_MECHANISMS
    # Distinct mechanisms at the slow corner: sigma varied below its maximum.
    slow_many = [(slow_sigma * (1 - i / 1000), slow_q, 1) for i in range(most)]
    prv_most = acc.PRV_MAX_MECHANISMS
    one_big = _steps_for_grid([(1.0, 0.01)], acc.PRV_MAX_POINTS)
    spread = [(1.0 + i / 10, 0.01 + i / 1000) for i in range(prv_most)]
    many_big = _steps_for_grid(spread, acc.PRV_MAX_POINTS)
    slow_prv = [(slow_sigma * (1 - i / 1000), slow_q) for i in range(prv_most)]
    slow_prv_steps = _steps_for_grid(slow_prv, acc.PRV_MAX_POINTS)

    cases: list[Case] = [
        ("baseline: Abadi tuple", "prv", [(4.0, 0.01, 10_000)]),
        ("baseline: Abadi tuple", "rdp", [(4.0, 0.01, 10_000)]),
        ("slowest single curve", "rdp", [(slow_sigma, slow_q, 1)]),
        (f"{most} distinct mechanisms, slow corner", "rdp", slow_many),
        (f"PRV, 1 mechanism, grid at the cap ({one_big} steps)", "prv", [(1.0, 0.01, one_big)]),
        (
            f"PRV, {prv_most} mechanisms, grid at the cap ({many_big} steps each)",
            "prv",
            [(s, q, many_big) for s, q in spread],
        ),
        (
            f"PRV, {prv_most} mechanisms at the slow corner ({slow_prv_steps} steps each)",
            "prv",
            [(s, q, slow_prv_steps) for s, q in slow_prv],
        ),
        ("issue 16: 100,000 steps (was > 5 GB)", "prv", [(1.0, 0.01, 100_000)]),
        ("max steps, sigma min, q 1", "prv", [(bounds.ABSOLUTE_MIN_NOISE_MULTIPLIER, 1.0, 10**7)]),
    ]
    if args.quick:
        cases = cases[:5] + cases[7:8]
    rows = []
    for name, accountant, history in cases:
        result = _run_case(accountant, history)
        rows.append((name, accountant, result))
    base = rows[0][2]["seconds"]
    print(f"\none accountant call, fresh process each (delta {DELTA:g}); baseline {rows[0][0]} PRV")
    for name, accountant, r in rows:
        how = "RDP fallback" if r["fallback"] else accountant.upper()
        print(
            f"  {name:<58} {accountant:>3}  {r['seconds']:7.2f} s  {r['seconds'] / base:6.1f}x  "
            f"peak +{r['peak_mb']:6.0f} MB  grid {r['grid_points']:.3g}  {how}  "
            f"eps {r['epsilon']:.4g}"
        )
    worst_time = max(rows, key=lambda row: row[2]["seconds"])
    worst_memory = max(rows, key=lambda row: row[2]["peak_mb"])
    print(f"\nworst time: {worst_time[2]['seconds']:.2f} s ({worst_time[0]}, {worst_time[1]})")
    print(f"worst peak memory growth: {worst_memory[2]['peak_mb']:.0f} MB ({worst_memory[0]})")


if __name__ == "__main__":
    main()
