"""Whole federations with a foreign faulty site: rejected under each reason, counted once,
every round run, and the final model bit for bit that of the run where it sent nothing.

The default suite runs FRL on the ``local`` backend; the ``slow`` suite runs every
strategy and aggregator with every fault on both backends (on Ray a crash runs in a test
of its own, one site a run), a hung and a late site against every strategy on Ray, and
late sites locally (``pytest -m slow tests/faults/test_runs.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedrank.config import Scenario
from tests.faults import foreign_client
from tests.faults.harness import (
    CASES,
    QUERY_REASON,
    RUNTIME_REASON,
    TRAIN_REASON,
    applicable_faults,
    scenario,
)
from tests.faults.runs import Outcome, Plan, check_same_result, faulty_and_silent

FRL = Scenario.of(
    dataset="digits",
    model="mlp",
    num_clients=5,
    clients_per_round=4,
    min_clients=4,
    min_replies=2,
    rounds=3,
    local_epochs=1,
    seed=3,
    partitioner="iid",
    round_timeout=120.0,
)


def test_frl_with_a_faulty_site_ends_as_if_it_sent_nothing(tmp_path: Path) -> None:
    # Partition 2 claims partition 999 (left out at discovery: 4 nodes remain, all
    # sampled every round); partition 0 misbehaves differently every round, the last
    # time with a reply the SuperLink drops (locally, once a timeout and a vote).
    plan = Plan(
        train={(0, 1): "junk_record", (0, 2): "crash", (0, 3): "long_ttl"},
        query={2: "id_999"},
    )

    faulty, silent = faulty_and_silent(FRL, plan, tmp_path, backend="local")

    check_same_result(
        faulty,
        silent,
        {1: {"unknown_record": 1}, 2: {"worker_died": 1}, 3: {"timeout": 1}},
    )
    assert faulty.rows[1]["bytes_up_per_client"] == silent.rows[1]["bytes_up_per_client"]


# ------------------------------------------------------------------ slow: every strategy

FAULTY = (0, 1, 2)  # partitions misbehaving in training; the others stay honest
NON_DUPLICATE_QUERY_FAULTS = sorted(set(QUERY_REASON) - {"duplicate"})


def matrix(case: str, results: Path, runtime_faults: tuple[str, ...] = ("raise", "crash")) -> Plan:
    """``case``'s faults: partitions 0-2 try every train fault that applies (three a
    round, the first round two sites claiming 1e308 examples), then ``runtime_faults``;
    the last partition one discovery fault."""
    base = matrix_scenario(case, results)
    faults = ["huge_examples", "huge_examples"]
    faults += [f for f in applicable_faults(base) if f != "huge_examples"] + list(runtime_faults)
    # Full rounds: a site that trained and then misbehaved has moved its own state on (its
    # DP-SGD accountant and noise, its optimizer), so its later honest replies would not
    # be those of a site that never trained. A faulty site stays faulty to the last round.
    faults += ["raise"] * (-len(faults) % len(FAULTY))
    train = {
        (FAULTY[i % len(FAULTY)], i // len(FAULTY) + 1): fault for i, fault in enumerate(faults)
    }
    index = sorted(CASES).index(case) % len(NON_DUPLICATE_QUERY_FAULTS)
    left_out = base.run.num_clients - 1
    return Plan(train=train, query={left_out: NON_DUPLICATE_QUERY_FAULTS[index]})


def matrix_scenario(case: str, results: Path, plan: Plan | None = None) -> Scenario:
    """``case``'s run: every site but the one left out at discovery is sampled every
    round, for as many rounds as ``plan`` needs. Six sites; eleven under Bulyan, which
    needs ``4 f + 3`` valid replies (f = 1) beside the three faulty ones."""
    sites = 11 if case.endswith("bulyan") else 6
    s = scenario(
        case,
        results,
        num_clients=sites,
        clients_per_round=sites - 1,
        min_clients=sites - 1,
        round_timeout=300.0,
        **({"trim_fraction": 0.1} if case.endswith("bulyan") else {}),
    )
    return s if plan is None else s.replace(rounds=max(r for _, r in plan.train))


def expected_rejections(plan: Plan, s: Scenario, faulty: Outcome) -> dict[int, dict[str, int]]:
    """Each planned train fault that reached its site, counted under its reason.

    Every site is sampled every round, except under client-level DP's Poisson sampling
    (each site with probability 5/6): there a fault is counted where it was sent.
    """
    sent = {key: fault for key, fault in plan.train.items() if key in faulty.received}
    if s.dp.client and s.dp.client_sampling == "poisson":
        assert len(sent) >= len(plan.train) // 2, sorted(sent)  # not a vacuous run
    else:
        assert sent == plan.train, sorted(set(plan.train) - set(sent))
    expected: dict[int, dict[str, int]] = {}
    for (_, server_round), fault in sent.items():
        reason = TRAIN_REASON.get(fault) or RUNTIME_REASON[fault]
        counts = expected.setdefault(server_round, {})
        counts[reason] = counts.get(reason, 0) + 1
    return expected


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_fault_against_every_strategy_locally(case: str, tmp_path: Path) -> None:
    plan = matrix(case, tmp_path)
    s = matrix_scenario(case, tmp_path, plan)

    faulty, silent = faulty_and_silent(s, plan, tmp_path, backend="local")

    check_same_result(faulty, silent, expected_rejections(plan, s, faulty))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_every_fault_against_every_strategy_on_ray(case: str, tmp_path: Path) -> None:
    # A crash, which makes Ray restart its actor, runs alone: below.
    plan = matrix(case, tmp_path, runtime_faults=("raise",))
    s = matrix_scenario(case, tmp_path, plan)

    faulty, silent = faulty_and_silent(s, plan, tmp_path, backend="ray")

    check_same_result(faulty, silent, expected_rejections(plan, s, faulty))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["frl-borda", "fedavg-mean", "lora-mean", "dp-lora-sample"])
def test_a_late_site_is_a_timeout_counted_once_locally(case: str, tmp_path: Path) -> None:
    # Local clients run one after another in partition order: the late one goes last,
    # so that it delays nobody (on Ray they run side by side).
    s = scenario(case, tmp_path, num_clients=5, clients_per_round=5, round_timeout=40.0)
    plan = Plan(train={(4, 2): "late", (4, 1): "hang"})

    faulty, silent = faulty_and_silent(s, plan, tmp_path, backend="local", late_seconds=41.0)

    check_same_result(faulty, silent, {1: {"timeout": 1}, 2: {"timeout": 1}})


def all_sampled(case: str, results: Path, **changes: Any) -> Scenario:
    """``case``'s run where every site is sampled every round (client-level DP's Poisson
    rate is 1); five sites, eight under Bulyan (4 f + 3 = 7 replies beside a silent one)."""
    sites = 8 if case.endswith("bulyan") else 5
    return scenario(case, results, num_clients=sites, clients_per_round=sites, **changes)


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_hung_and_a_late_site_against_every_strategy_on_ray(case: str, tmp_path: Path) -> None:
    s = all_sampled(case, tmp_path, round_timeout=20.0)
    last = s.run.num_clients - 1
    plan = Plan(train={(last, 1): "hang", (last, 2): "late"})

    faulty, silent = faulty_and_silent(s, plan, tmp_path, backend="ray", late_seconds=21.0)

    check_same_result(faulty, silent, expected_rejections(plan, s, faulty))


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_crashing_site_against_every_strategy_on_ray(case: str, tmp_path: Path) -> None:
    # The last site's process dies mid-round 1 (its work done, nothing sent). Ray then
    # restarts its actor; a client handed to it meanwhile never ran and is asked again.
    s = all_sampled(case, tmp_path)
    plan = Plan(train={(s.run.num_clients - 1, 1): "crash"})

    faulty, silent = faulty_and_silent(s, plan, tmp_path, backend="ray")

    check_same_result(faulty, silent, expected_rejections(plan, s, faulty))


@pytest.mark.slow
def test_two_hundred_megabytes_of_junk_cost_one_vote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(foreign_client, "JUNK_BYTES", 200 * 2**20)
    plan = Plan(train={(0, 1): "junk_record", (0, 2): "junk_record"})

    faulty, silent = faulty_and_silent(FRL.replace(rounds=2), plan, tmp_path, backend="local")

    check_same_result(faulty, silent, {1: {"unknown_record": 1}, 2: {"unknown_record": 1}})
    assert faulty.rows[1]["bytes_up_per_client"] < 2**20  # the junk is not counted


# ------------------------------------------------------------------ Ray: late sites, mixed

# Each faulty site misbehaves in both rounds (see matrix: a site that trained has moved its
# own state on, e.g. its DP-SGD budget sets its next round's noise).
RAY_PLANS: dict[str, tuple[dict[tuple[int, int], str], dict[int, dict[str, int]]]] = {
    "frl-borda": (
        {(0, 1): "junk_record", (1, 1): "ranking_garbage", (0, 2): "late", (1, 2): "long_ttl"},
        {1: {"unknown_record": 1, "malformed": 1}, 2: {"timeout": 2}},
    ),
    "fedavg-krum": (
        {
            (0, 1): "huge_examples",
            (1, 1): "huge_examples",
            (0, 2): "nan_weights",
            (1, 2): "wrong_shape",
        },
        {1: {"bad_num_examples": 2}, 2: {"not_finite": 1, "wrong_shape": 1}},
    ),
    "lora-mean": (
        {(0, 1): "no_metrics", (1, 1): "garbage_bytes", (0, 2): "no_payload", (1, 2): "raise"},
        {
            1: {"missing_record": 1, "malformed_array": 1},
            2: {"missing_record": 1, "client_error": 1},
        },
    ),
    "dp-lora-sample": (
        {(0, 1): "sigma_tiny", (1, 1): "sigma_huge", (0, 2): "steps_huge", (1, 2): "raise"},
        {1: {"privacy_out_of_range": 2}, 2: {"privacy_out_of_range": 1, "client_error": 1}},
    ),
}


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(RAY_PLANS))
def test_faults_on_ray(case: str, tmp_path: Path) -> None:
    train, expected = RAY_PLANS[case]
    s = scenario(
        case, tmp_path, num_clients=6, clients_per_round=4, min_clients=4, round_timeout=90.0
    )
    plan = Plan(train=train, query={5: "duplicate"}, victim=4)  # 5 and 4 left out

    faulty, silent = faulty_and_silent(s, plan, tmp_path, backend="ray", late_seconds=95.0)

    check_same_result(faulty, silent, expected)
