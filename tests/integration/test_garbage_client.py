"""A client that sends garbage every round, in a real Ray-backed Flower simulation.

Every garbage reply must be rejected with its reason and counted, the rounds
go on, and the vote over the remaining clients is exactly the vote of a run in
which that client sent nothing at all.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.simulation import run_simulation

from fedrank.artifacts import FINAL_STATE, read_arrays
from fedrank.client import app as fedrank_client
from fedrank.config import Scenario
from fedrank.protos import UpdateHeader, encode_ranking_update
from fedrank.protos.codecs import RankingCodec
from fedrank.server.app import make_server_app
from fedrank.simulations.run import backend_config, simulate
from fedrank.strategies.sampling import sample_partitions
from fedrank.tasks import load_task

pytestmark = pytest.mark.integration

BAD_PARTITION = 0


def _scenario(results: Path) -> Scenario:
    return Scenario.of(
        dataset="digits",
        model="mlp",
        num_clients=4,
        clients_per_round=3,
        rounds=4,
        local_epochs=1,
        lr=1.0,
        seed=3,
        results_dir=str(results),
    )


def _garbage(msg: Message, reply: Message, server_round: int) -> RecordDict:
    """A different kind of bad reply each round, built from the client's honest one."""
    codec = load_task(_scenario(Path("unused"))).codec(msg.metadata.run_id)
    assert isinstance(codec, RankingCodec)
    wire = codec.wire
    honest = wire.decode(server_round, reply.content)
    payload = reply.content.config_records["update"]["ranking"]
    assert isinstance(payload, bytes)
    rng = np.random.default_rng(server_round)
    if server_round == 1:  # random bytes
        bad = rng.bytes(len(payload))
    elif server_round == 2:  # a valid update, replayed for the wrong round
        header = UpdateHeader(
            run_id=str(msg.metadata.run_id),
            round=server_round + 7,
            model_fingerprint=wire.fingerprint,
        )
        bad = encode_ranking_update(header, honest)
    elif server_round == 3:  # a duplicated rank: not a permutation
        header = UpdateHeader(
            run_id=str(msg.metadata.run_id), round=server_round, model_fingerprint=wire.fingerprint
        )
        broken = {name: r.copy() for name, r in honest.items()}
        broken["fc1"][0] = broken["fc1"][1]
        bad = encode_ranking_update(header, broken)
    else:  # truncated
        bad = payload[: len(payload) // 2]
    # Only the payload is bad: the reply's other records are the honest ones.
    return RecordDict(
        {"update": ConfigRecord({"ranking": bad}), "metrics": reply.content["metrics"]}
    )


def _client_app(misbehave: Callable[[Message, Message, int], RecordDict | None]) -> ClientApp:
    app = ClientApp()
    app.query()(fedrank_client.query)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        reply = fedrank_client.train(msg, context)
        if fedrank_client.partition_id(context) != BAD_PARTITION:
            return reply
        server_round = int(msg.content.config_records["config"]["server-round"])  # type: ignore[arg-type]
        content = misbehave(msg, reply, server_round)
        if content is None:
            raise RuntimeError("this client fails every round")
        return Message(content=content, reply_to=msg)

    return app


def _silent(msg: Message, reply: Message, server_round: int) -> RecordDict | None:
    return None


def _rows(results: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]


def test_garbage_every_round_is_rejected_counted_and_changes_nothing(tmp_path: Path) -> None:
    # The garbage run on Flower's own Ray simulation; the reference, where that client
    # sends nothing, on the local backend (equal to Ray's bit for bit: test_simulation.py).
    scenario = _scenario(tmp_path / "garbage")
    run_simulation(
        server_app=make_server_app(scenario),
        client_app=_client_app(_garbage),
        num_supernodes=scenario.run.num_clients,
        backend_config=backend_config(scenario, ray_address=None),
    )
    simulate(_scenario(tmp_path / "silent"), client_app=_client_app(_silent), backend="local")
    garbage_rows, silent_rows = _rows(tmp_path / "garbage"), _rows(tmp_path / "silent")

    rounds = garbage_rows[1:]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    # The seed samples the bad partition in every round (checked, not assumed).
    assert all(
        BAD_PARTITION in sample_partitions(list(range(4)), count=3, seed=3, server_round=r)
        for r in range(1, 5)
    )
    expected = ["malformed", "round", "not_permutation", "malformed"]
    for row, reason in zip(rounds, expected, strict=True):
        assert not row["skipped"]
        assert row["replies"] == 2
        assert row["rejected"] == 1
        assert {k: v for k, v in row.items() if k.startswith("rejected.")} == {
            f"rejected.{reason}": 1
        }
    assert rounds[-1]["accuracy"] > 0.5  # chance is 0.1

    for name in ("fc1", "fc2", "fc3"):
        np.testing.assert_array_equal(
            read_arrays(tmp_path / "garbage" / FINAL_STATE)[name],
            read_arrays(tmp_path / "silent" / FINAL_STATE)[name],
        )
    assert [r["accuracy"] for r in garbage_rows] == [r["accuracy"] for r in silent_rows]
    assert [r.get("rejected.client_error") for r in silent_rows[1:]] == [1, 1, 1, 1]
