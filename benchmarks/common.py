"""Timing helpers: best-of-N wall time, printed as ratios."""

from __future__ import annotations

import time
from collections.abc import Callable


def best_time(fn: Callable[[], object], *, repeats: int = 5) -> float:
    """Fastest of ``repeats`` calls, in seconds (the least disturbed measurement)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def report(title: str, rows: list[tuple[str, float]], *, baseline: str) -> None:
    """Print rows of (name, seconds) with each one's ratio to the baseline row."""
    base = dict(rows)[baseline]
    print(f"\n{title}")
    width = max(len(name) for name, _ in rows)
    for name, seconds in rows:
        print(f"  {name:<{width}}  {seconds * 1e3:10.1f} ms   {seconds / base:6.2f}x {baseline}")
