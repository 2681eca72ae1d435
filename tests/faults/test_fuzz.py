"""Whole fuzzed Flower replies fed to every strategy's ``aggregate_train``.

Each strategy, composed as a run composes it, gets seeded fuzzed replies
(:mod:`tests.faults.fuzz`), one per sampled node a call: no exception escapes, every
reply is counted once (valid or under a rejection reason), none is found undecodable
(a decoder raising something other than the typed rejection), no call hangs, and the
process's peak memory stays bounded. The default suite sends 2,000 replies per strategy
beside other tests (a call must end within :data:`HANG_SECONDS`); the ``slow`` suite,
run alone (``pytest -m slow tests/faults/test_fuzz.py``), sends 100,000 after a warm-up
of 2,000, its growth measured from there, and no call may take a second.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message

from tests.faults.fuzz import fuzzed_content
from tests.faults.harness import CASES, Round, configure, honest_round, rejections, scenario

RECOMPOSE_EVERY = 50  # rounds: then a fresh strategy and ledgers (histories stay short)
MAX_SECONDS = 1.0  # a call of the slow suite, alone on the machine
HANG_SECONDS = 30.0  # a call of the default suite, which shares the cores with others
MAX_GROWTH_MB = 256.0


def fuzz_strategy(case: str, replies: int, directory: Path, *, seed: int) -> dict[str, float]:
    """Send ``replies`` fuzzed replies to ``case``'s strategy; return what was measured.

    Each call is a round of its own (configured first, as the round loop does); the
    strategy and its ledgers are composed afresh every :data:`RECOMPOSE_EVERY` rounds.
    """
    s = scenario(case, Path("unused"), rounds=RECOMPOSE_EVERY)
    rng = np.random.default_rng([seed, len(case)])
    worst = 0.0
    counted = calls = 0
    run = honest_round(s, directory / "0")
    # From here: the first honest round loads the model, which the fuzzed replies do not
    # grow (first in a process, DP-LoRA's load alone raised the peak by 326 MB).
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    while counted < replies:
        server_round = calls % RECOMPOSE_EVERY + 1
        if calls and server_round == 1:
            run = honest_round(s, directory / str(calls))
        elif calls:
            run = configure(run, server_round)
        batch = [
            Message(fuzzed_content(rng, reply.content), reply_to=message)
            for message, reply in zip(run.messages, _in_order(run), strict=True)
        ]
        started = time.perf_counter()
        _, metrics = run.strategy.aggregate_train(server_round, batch)
        worst = max(worst, time.perf_counter() - started)
        counts = rejections(metrics)
        assert "undecodable" not in counts, (case, counts)
        assert int(dict(metrics or {}).get("replies", 0)) + counts["*"] == len(batch), counts
        counted += len(batch)
        calls += 1
    growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    return {"replies": counted, "worst_seconds": worst, "peak_growth_mb": growth}


def _in_order(run: Round) -> list[Message]:
    by_node = {r.metadata.src_node_id: r for r in run.replies.values()}
    return [by_node[m.metadata.dst_node_id] for m in run.messages]


@pytest.mark.parametrize("case", sorted(CASES))
def test_fuzzed_replies_are_counted_and_never_crash(
    case: str, tmp_path: Path, flower_identity: None
) -> None:
    measured = fuzz_strategy(case, 2_000, tmp_path, seed=1)

    assert measured["worst_seconds"] < HANG_SECONDS
    assert measured["peak_growth_mb"] < MAX_GROWTH_MB


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hundred_thousand_fuzzed_replies(
    case: str, tmp_path: Path, flower_identity: None, capsys: pytest.CaptureFixture[str]
) -> None:
    fuzz_strategy(case, 2_000, tmp_path / "warm-up", seed=1)  # models, caches, first ledgers
    # pytest keeps every log record of a test in memory for its report (one warning a
    # rejected reply here); a coordinator's log goes to a stream. Measure without it.
    logging.disable(logging.WARNING)
    try:
        measured = fuzz_strategy(case, 100_000, tmp_path / "measured", seed=2)
    finally:
        logging.disable(logging.NOTSET)

    with capsys.disabled():
        print(f"\nfuzz {case}: {measured}")
    assert measured["worst_seconds"] < MAX_SECONDS
    assert measured["peak_growth_mb"] < MAX_GROWTH_MB
