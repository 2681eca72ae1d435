"""Attacks on LoRA adapters and Flower's robust rules, in real (tiny BERT) federations.

Each run is a whole simulation on the in-process backend (the Ray backend computes
the same, bit for bit: tests/integration/test_simulation_backends.py): the adversary
wraps the LoRA strategy, replaces the malicious partitions' replies with crafted
adapters, and the server aggregates with the scenario's rule.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrank.config import Scenario
from fedrank.server.resume import latest_checkpoint
from fedrank.simulations.attacks.collusion import malicious_partitions
from fedrank.simulations.run import simulate

pytestmark = pytest.mark.integration


# Five clients, all sampled every round: 20% is one attacker in every round.
TINY: dict[str, Any] = {
    "strategy": "lora",
    "dataset": "rotten-tomatoes",
    "model": "tiny-bert",
    "num_clients": 5,
    "clients_per_round": 5,
}


def run(tmp: Path, **changes: Any) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The final global adapter and the metrics rows of one tiny LoRA federation."""
    name = "-".join(f"{k}={v}" for k, v in sorted(changes.items())) or "clean"
    scenario = Scenario.of(
        **TINY,
        rounds=2,
        local_epochs=1,
        partitioner="iid",
        batch_size=16,
        lr=1e-2,
        max_length=16,
        train_records=80,
        test_records=32,
        results_dir=str(tmp / name),
    ).replace(**changes)
    simulate(scenario, backend="local")
    lines = (tmp / name / "metrics.jsonl").read_text().splitlines()
    rows = [row for row in map(json.loads, lines) if row["round"] >= 1]  # 0: the initial adapter
    return dict(latest_checkpoint(tmp / name).arrays), rows


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[n].astype(np.float64) - b[n]) ** 2) for n in a)))


ATTACK = {"attack": "scaling", "attack_scale": -20.0, "malicious_fraction": 0.2}


def test_a_scaled_adapter_moves_the_mean_far_and_flowers_median_barely(tmp_path: Path) -> None:
    clean_mean, _ = run(tmp_path)
    attacked_mean, rows = run(tmp_path, **ATTACK)
    clean_median, _ = run(tmp_path, aggregator="median")
    attacked_median, _ = run(tmp_path, aggregator="median", **ATTACK)

    # One partition of five is malicious and, with all five sampled, in every round.
    assert [r["malicious"] for r in rows] == [1, 1]
    moved_mean = distance(attacked_mean, clean_mean)
    moved_median = distance(attacked_median, clean_median)
    assert moved_mean > 3 * moved_median  # measured: 2.27 against 0.59


def test_krum_leaves_the_crafted_adapter_out_every_round(tmp_path: Path) -> None:
    scenario_changes = {"aggregator": "krum", "trim_fraction": 0.2, **ATTACK}
    _, rows = run(tmp_path, **scenario_changes)

    # Krum keeps one reply of five: four left out per round, the scaled one among them.
    assert [r["filtered"] for r in rows] == [4, 4]
    assert [r["malicious"] for r in rows] == [1, 1]


def test_label_flipping_lora_clients_train_on_reversed_labels_in_a_real_run(
    tmp_path: Path,
) -> None:
    flip = {"attack": "label_flip", "malicious_fraction": 0.4}
    assert len(malicious_partitions(Scenario.of(**TINY, **flip))) == 2

    clean, _ = run(tmp_path)
    poisoned, rows = run(tmp_path, **flip)

    assert len(rows) == 2
    assert distance(poisoned, clean) > 0.0
