from pathlib import Path

import pytest

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.run import list_scenarios, scenario_path


def test_defaults_are_the_reference_scenario() -> None:
    s = Scenario()
    assert (s.strategy, s.dataset, s.model) == ("frl", "mnist5k", "mlp")
    assert (s.num_clients, s.clients_per_round, s.rounds, s.local_epochs) == (50, 10, 40, 2)
    assert s.partitioner == "dirichlet"
    assert s.alpha == 1.0


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"k": 0.0}, "k"),
        ({"k": 1.5}, "k"),
        ({"k": float("nan")}, "k"),
        ({"clients-per-round": 11, "num-clients": 10}, "clients-per-round"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"rounds": 0}, "rounds"),
        ({"lr": -1.0}, "lr"),
        ({"rounds": "ten"}, "rounds"),
        ({"rounds": 2.5}, "rounds"),
        ({"min-replies": 20}, "min-replies"),
        ({"num-clinets": 3}, "num-clinets"),
        ({"aggregator": "krum"}, "aggregator"),
        ({"aggregator": "borda", "strategy": "fedavg"}, "aggregator"),
        ({"aggregator": "vote"}, "aggregator"),
        ({"attack": "sign_flip"}, "attack"),
        ({"attack": "reverse_ranking", "strategy": "fedavg"}, "attack"),
        ({"attack": "backdoor"}, "attack"),
        ({"malicious-fraction": 0.2}, "malicious-fraction"),
        ({"attack": "label_flip", "malicious-fraction": 1.0}, "malicious-fraction"),
        ({"trim-fraction": 0.5}, "trim-fraction"),
        ({"strategy": "fedavg", "aggregator": "krum", "trim-fraction": 0.4}, "trim-fraction"),
        ({"filter-mads": 0.0}, "filter-mads"),
        ({"vote-smoothing": -0.1}, "vote-smoothing"),
        ({"vote-smoothing": float("inf")}, "vote-smoothing"),
        ({"attack-seed": -1}, "attack-seed"),
        ({"attack-scale": 0.0}, "attack-scale"),
        ({"attack-knowledge": "some"}, "attack-knowledge"),
        ({"attack-boundary-fraction": 0.0}, "attack-boundary-fraction"),
        ({"attack-flip-rule": "targeted", "attack-target-class": 1}, "attack-target-class"),
    ],
)
def test_bad_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scenario.from_mapping(values)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}:")


def test_unknown_key_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="did you mean num-clients"):
        Scenario.from_mapping({"num-clinets": 3})


def test_run_config_round_trips() -> None:
    s = Scenario(model="cnn", k=0.3, seed=7, num_clients=5, clients_per_round=2)
    assert Scenario.from_mapping(s.to_run_config()) == s


def test_ints_are_accepted_for_floats() -> None:
    assert Scenario.from_mapping({"k": 1, "lr": 2}).k == 1.0


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("rounds = = 3\n")
    with pytest.raises(ConfigError, match=r"broken\.toml is not valid TOML"):
        Scenario.from_toml(path)


def test_every_packaged_scenario_is_valid() -> None:
    names = list_scenarios()
    assert "frl-mnist" in names
    for name in names:
        Scenario.from_toml(scenario_path(name))


def test_unknown_scenario_name_lists_the_packaged_ones() -> None:
    with pytest.raises(ConfigError, match="frl-mnist"):
        scenario_path("no-such-scenario")


def test_aggregator_auto_is_each_strategys_plain_rule() -> None:
    assert Scenario().aggregation == "borda"
    assert Scenario(strategy="fedavg").aggregation == "mean"
    assert Scenario(aggregator="filtered").aggregation == "filtered"
    # "auto" survives a change of strategy (it is resolved on use, not at construction).
    assert Scenario().replace(strategy="fedavg").aggregation == "mean"


def test_attack_fields_round_trip_through_run_config() -> None:
    s = Scenario(
        attack="adaptive_reverse", malicious_fraction=0.2, attack_seed=4, aggregator="filtered"
    )
    assert Scenario.from_mapping(s.to_run_config()) == s
