"""The acceptance test of DP randomness: an attacker replays it from anything public.

The attacker has ``scenario.json`` (the seed among it), every message a client
receives, and the global adapters they carry (two consecutive releases). It knows the
code, so it regenerates the server's client-level noise and the Poisson client sample
the way a replayable run would draw them (from the seed), and the way fedrank drew
them before its noise was secret (numpy seeded by (seed, round)). Against secure noise
both fail: the residual of the release minus the guessed noise stays the size of the
noise and the predicted sample agrees with the real one no better than chance. With
``dp-reproducible-noise`` the same attack succeeds, so the test can tell.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from fedrank.cli import main
from fedrank.client.app import query, train_reply
from fedrank.config import Scenario
from fedrank.privacy.plan import client_noise_multiplier
from fedrank.privacy.randomness import RandomSource
from fedrank.protos import keys
from fedrank.simulations.run import simulate

pytestmark = pytest.mark.integration

N, ROUNDS, CLIP = 16, 4, 0.01
SCENARIO = Scenario.of(
    strategy="lora",
    dataset="rotten-tomatoes",
    model="tiny-bert",
    num_clients=N,
    clients_per_round=N // 2,  # Poisson q = 1/2: chance agreement 1/2
    rounds=ROUNDS,
    local_epochs=1,
    partitioner="iid",
    batch_size=4,
    lr=0.01,
    max_length=16,
    train_records=4 * N,
    test_records=16,
    seed=13,
    dp="client",
    dp_client_noise_multiplier=1.0,
    dp_client_clip_norm=CLIP,
)

Seen = dict[int, dict[int, dict[str, np.ndarray]]]
"""round -> partition -> the global adapter arrays its train message carried."""


def recording_app(seen: Seen) -> ClientApp:
    """fedrank's ClientApp, plus a record of every train message each client receives."""
    app = ClientApp()
    app.query()(query)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        config = msg.content.config_records[keys.CONFIG]
        server_round = int(config[keys.SERVER_ROUND])  # type: ignore[arg-type]
        arrays = msg.content.array_records[keys.ARRAYS]
        seen[server_round][int(context.node_config[keys.PARTITION_ID])] = {  # type: ignore[arg-type]
            name: array.numpy().copy() for name, array in arrays.items()
        }
        return train_reply(msg, context)

    return app


def run(tmp_path: Path, scenario: Scenario) -> tuple[dict[str, Any], Seen]:
    seen: Seen = defaultdict(dict)
    results = tmp_path / scenario.dp.noise_kind
    simulate(
        scenario.replace(results_dir=str(results)),
        backend="local",
        client_app=recording_app(seen),
    )
    public = json.loads((results / "scenario.json").read_text())
    return public, seen


def noise_guesses(
    public: dict[str, Any], server_round: int, shapes: dict[str, tuple[int, ...]], std: float
) -> list[dict[str, np.ndarray]]:
    """What the code would draw from the public seed: the replayable scheme, the old one."""
    seed = int(public["seed"])
    replay = (
        RandomSource.reproducible(seed)
        .derive("coordinator")
        .derive("client-noise", server_round, 0)
        .normal_like(shapes, std=std)
    )
    old = np.random.default_rng([seed, server_round, 0, 0])
    legacy = {name: old.normal(0.0, std, size=shape) for name, shape in shapes.items()}
    return [replay, legacy]


def sample_guesses(public: dict[str, Any], server_round: int, q: float) -> list[set[int]]:
    seed = int(public["seed"])
    ids = list(range(int(public["num-clients"])))
    replay = (
        RandomSource.reproducible(seed)
        .derive("coordinator")
        .derive("client-sampling", server_round)
        .poisson_subset(ids, q)
    )
    draws = np.random.default_rng([seed, server_round, 1]).random(len(ids))
    return [set(replay), {i for i, u in zip(ids, draws, strict=True) if u < q}]


def attack(public: dict[str, Any], seen: Seen) -> tuple[float, float]:
    """(best residual over the noise's size, best agreement of the predicted samples)."""
    scenario = Scenario.from_mapping(public)
    sigma = client_noise_multiplier(scenario)
    m = scenario.run.clients_per_round
    q = m / scenario.run.num_clients
    ratios = []
    for r in range(2, ROUNDS):
        before = next(iter(seen[r].values()))  # released after round r - 1
        after = next(iter(seen[r + 1].values()))  # released after round r
        shapes = {name: value.shape for name, value in before.items()}
        d = sum(v.size for v in before.values())
        size = sigma * CLIP * math.sqrt(d) / m  # norm of the noise on the average
        for guess in noise_guesses(public, r, shapes, sigma * CLIP):
            residual = [after[n].astype(np.float64) - before[n] - guess[n] / m for n in before]
            ratios.append(math.sqrt(sum(float(np.sum(x * x)) for x in residual)) / size)
    agreements = []
    for guess_of in range(2):
        hits = total = 0
        for r in range(1, ROUNDS + 1):
            guess = sample_guesses(public, r, q)[guess_of]
            for pid in range(N):
                hits += (pid in guess) == (pid in seen[r])
                total += 1
        agreements.append(hits / total)
    return min(ratios), max(agreements)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        kind: tmp_path_factory.mktemp(f"attacker-{kind}") for kind in ("secure", "reproducible")
    }


@pytest.fixture(scope="module")
def runs(folders: dict[str, Path]) -> dict[str, tuple[float, float]]:
    out = {}
    for scenario in (SCENARIO, SCENARIO.replace(dp_reproducible_noise=True)):
        public, seen = run(folders[scenario.dp.noise_kind], scenario)
        assert all(seen[r] for r in range(1, ROUNDS + 1)), "a round sampled nobody"
        out[scenario.dp.noise_kind] = attack(public, seen)
    return out


def test_a_reproducible_run_says_it_is_not_private_everywhere(
    runs: dict[str, tuple[float, float]],
    folders: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    note = "not private: reproducible noise"
    for kind, expected in (("secure", None), ("reproducible", note)):
        results = folders[kind] / kind
        summary = json.loads((results / "summary.json").read_text())
        settings = json.loads((results / "privacy.json").read_text())
        assert (summary["privacy"]["noise"], summary["privacy"]["note"]) == (kind, expected)
        assert (settings["noise"], settings["note"]) == (kind, expected)
        assert settings["neighbouring_relation"] == "add-or-remove-one"
        assert (results / "private").exists() == (kind == "secure")
        assert main(["privacy", str(results)]) == 0
        assert ("NOT PRIVATE: REPRODUCIBLE NOISE" in capsys.readouterr().out) == (
            kind == "reproducible"
        )


def test_secure_noise_cannot_be_regenerated_nor_the_sample_predicted(
    runs: dict[str, tuple[float, float]],
) -> None:
    residual, agreement = runs["secure"]

    # Residual: the true noise minus an independent guess, sqrt(2) times the noise.
    assert residual > 1.2
    # 64 coin guesses against q = 1/2: chance is 1/2, std 1/16; 4 std either side.
    assert abs(agreement - 0.5) < 0.25


def test_the_same_attack_succeeds_against_reproducible_noise(
    runs: dict[str, tuple[float, float]],
) -> None:
    residual, agreement = runs["reproducible"]

    # What is left is the clipped average update, far below the noise it hid in.
    assert residual < 0.2
    assert agreement == 1.0
