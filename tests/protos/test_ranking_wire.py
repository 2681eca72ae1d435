import numpy as np
import pytest
from flwr.app import ConfigRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrank.config import Scenario
from fedrank.errors import InvalidUpdate
from fedrank.protos import bits_for
from fedrank.protos.codecs import RankingCodec
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import content_bytes
from fedrank.tasks import load_task

SIZES = {"fc1": 300, "fc2": 17}


def _wire(**model: str | int | float) -> RankingWire:
    return RankingWire.for_model(run_id=5, layer_sizes=SIZES, **({"seed": 0} | model))


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 10**6))
def test_round_trip_is_exact_and_packed(seed: int, server_round: int) -> None:
    rng = np.random.default_rng(seed)
    ranks = {name: rng.permutation(n) for name, n in SIZES.items()}
    wire = _wire()

    content = wire.encode(server_round, ranks)
    decoded = wire.decode(server_round, content)

    for name in SIZES:
        np.testing.assert_array_equal(decoded[name], ranks[name])
    packed_bits = sum(n * bits_for(n) for n in SIZES.values())
    assert content_bytes(content) < packed_bits / 8 + 200  # ceil(log2 n) bits, small header


def test_another_model_run_or_round_is_refused() -> None:
    ranks = {name: np.arange(n) for name, n in SIZES.items()}
    content = _wire().encode(3, ranks)
    with pytest.raises(InvalidUpdate) as err:
        _wire(seed=1).decode(3, content)
    assert err.value.reason == "fingerprint"
    with pytest.raises(InvalidUpdate) as err:
        RankingWire.for_model(run_id=6, layer_sizes=SIZES, seed=0).decode(3, content)
    assert err.value.reason == "run_id"
    with pytest.raises(InvalidUpdate) as err:
        _wire().decode(4, content)
    assert err.value.reason == "round"


@pytest.mark.parametrize(
    "content",
    [
        RecordDict({}),
        RecordDict({"update": ConfigRecord({})}),
        RecordDict({"update": ConfigRecord({"ranking": "text"})}),
        RecordDict({"update": ConfigRecord({"ranking": 12})}),
    ],
)
def test_a_missing_or_mistyped_payload_is_malformed(content: RecordDict) -> None:
    with pytest.raises(InvalidUpdate) as err:
        _wire().decode(1, content)
    assert err.value.reason == "malformed"


def test_the_scenario_wire_matches_the_model_layers() -> None:
    scenario = Scenario.of(dataset="digits", model="mlp", num_clients=2, clients_per_round=1)
    wire = scenario_wire(scenario)
    assert dict(wire.layer_sizes) == {"fc1": 64 * 256, "fc2": 256 * 128, "fc3": 128 * 10}
    assert wire.fingerprint != scenario_wire(scenario.replace(k=0.3)).fingerprint


def scenario_wire(scenario: Scenario) -> RankingWire:
    codec = load_task(scenario).codec(1)
    assert isinstance(codec, RankingCodec)
    return codec.wire
