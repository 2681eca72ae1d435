"""Real Ray-backed Flower simulations (small: sklearn digits, a few clients and rounds)."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.config import Scenario
from fedrank.protos import bits_for, packed_size
from fedrank.simulations.attacks.collusion import malicious_partitions
from fedrank.simulations.inprocess import run_in_process
from fedrank.simulations.run import simulate
from fedrank.strategies.sampling import SPOT_CHECKS, sample_partitions
from fedrank.tasks import load_task
from fedrank.tasks.image import MASK_FILE, ImageTask

pytestmark = pytest.mark.integration


def _scenario(results: Path, *, num_clients: int = 6) -> Scenario:
    return Scenario.of(
        dataset="digits",
        model="mlp",
        num_clients=num_clients,
        clients_per_round=3,
        rounds=4,
        local_epochs=2,
        lr=1.0,
        seed=11,
        results_dir=str(results),
    )


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same scenario on Ray, then on the local backend (one Ray start, not two: each
    costs about 30 s of CPU here; run-to-run equality on Ray follows from both runs
    equalling the in-process one below). Ten clients: on Ray the server reads the
    engine's node map and asks only eight of them, so partition 1 gets the run's
    settings with its first train message (round 1)."""
    unasked = set(range(10)) - set(
        sample_partitions(list(range(10)), count=SPOT_CHECKS, seed=11, server_round=0)
    )
    assert unasked & set(sample_partitions(list(range(10)), count=3, seed=11, server_round=1))
    first = tmp_path_factory.mktemp("run-ray")
    second = tmp_path_factory.mktemp("run-local")
    simulate(_scenario(first, num_clients=10))
    simulate(_scenario(second, num_clients=10), backend="local")
    return first, second


def test_ray_simulation_learns_well_above_chance(two_runs: tuple[Path, Path]) -> None:
    results, _ = two_runs
    rows = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["accuracy"] < 0.3
    assert rows[-1]["accuracy"] > 0.6  # chance is 0.1
    assert all(r["replies"] == 3 and r["rejected"] == 0 for r in rows[1:])
    # Both directions carry bit-packed rankings: ceil(log2 n) bits per edge plus a small header.
    task = load_task(_scenario(results, num_clients=10))
    assert isinstance(task, ImageTask)
    sizes = task.layer_sizes()
    packed = sum(packed_size(n=n, bits=bits_for(n)) for n in sizes.values())
    for r in rows[1:]:
        assert packed <= r["bytes_up_per_client"] < packed + 256
        assert packed <= r["bytes_down_per_client"] < packed + 256
    summary = json.loads((results / "summary.json").read_text())
    assert summary["final_accuracy"] == rows[-1]["accuracy"]
    assert (results / "accuracy.png").stat().st_size > 1000


def test_same_seed_same_final_ranking_bit_for_bit(
    two_runs: tuple[Path, Path], tmp_path: Path
) -> None:
    first, second = (read_arrays(p / FINAL_STATE) for p in two_runs)
    assert sorted(first) == sorted(second) == ["fc1", "fc2", "fc3"]
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    # And both equal the same ServerApp and ClientApp in one process.
    in_process = run_in_process(_scenario(tmp_path, num_clients=10))
    for name in first:
        np.testing.assert_array_equal(first[name], in_process[name])
    mask = read_arrays(two_runs[0] / MASK_FILE)
    assert mask["fc1"].mean() == pytest.approx(0.5, abs=0.01)


def test_ray_run_with_an_attacker_is_attacked_filtered_and_equals_the_local_backend(
    tmp_path: Path,
) -> None:
    scenario = _scenario(tmp_path / "ray").replace(
        rounds=3,
        aggregator="filtered",
        attack="reverse_ranking",
        malicious_fraction=0.34,
        attack_seed=4,
    )
    malicious = malicious_partitions(scenario)
    expected = [
        len(set(sample_partitions(list(range(6)), count=3, seed=11, server_round=r)) & malicious)
        for r in (1, 2, 3)
    ]
    assert 1 in expected  # the seeds put a lone attacker into some round

    rows: list[dict[str, object]] = []
    simulate(scenario, on_round=rows.append)

    assert [r["malicious"] for r in rows[1:]] == expected
    for row, attackers in zip(rows[1:], expected, strict=True):
        if attackers == 1:  # a lone reversal among two benign replies is filtered out
            assert int(row["filtered"]) >= 1  # type: ignore[call-overload]
    local = run_in_process(scenario.replace(results_dir=str(tmp_path / "local")))
    on_ray = read_arrays(tmp_path / "ray" / FINAL_STATE)
    for name in on_ray:
        np.testing.assert_array_equal(on_ray[name], local[name])
