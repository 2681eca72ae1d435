import tomllib
from pathlib import Path

import pytest

from fedrank.cli import _scenario_from_args, build_parser
from fedrank.config import FIELDS, Scenario
from fedrank.config.app_config import app_config_toml
from fedrank.config.scenario import config_reference
from fedrank.errors import ConfigError
from fedrank.simulations.run import list_scenarios, scenario_path
from fedrank.tasks.registry import STRATEGIES


def test_defaults_are_the_reference_scenario() -> None:
    s = Scenario.of()
    eff = s.effective
    assert (s.run.strategy, eff.dataset, eff.model) == ("frl", "mnist5k", "mlp")
    run = s.run
    assert (run.num_clients, run.clients_per_round, run.rounds, s.train.local_epochs) == (
        50,
        10,
        40,
        2,
    )
    assert s.data.partitioner == "dirichlet"
    assert s.data.alpha == 1.0


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_only_the_strategy_given_gives_that_strategys_defaults(strategy: str) -> None:
    # Resolved after every override: a changed strategy never keeps another's lr.
    spec = STRATEGIES[strategy]
    for s in (Scenario.of(strategy=strategy), Scenario.of().replace(strategy=strategy)):
        assert s.effective.lr == spec.default_lr
        assert s.effective.model == spec.default_model
        assert s.effective.dataset == spec.default_dataset
        assert s.effective.aggregator == spec.aggregators[0]


def test_the_cli_applies_the_strategy_default_lr_after_the_override() -> None:
    args = build_parser().parse_args(["simulate", "--strategy", "fedavg"])
    assert _scenario_from_args(args).effective.lr == STRATEGIES["fedavg"].default_lr


def test_an_explicit_lr_is_kept_across_a_change_of_strategy() -> None:
    assert Scenario.of(lr=0.3).replace(strategy="fedavg").effective.lr == 0.3


def test_every_key_round_trips_through_the_flat_form() -> None:
    s = Scenario.of()
    assert set(s.to_run_config()) == set(FIELDS)
    assert Scenario.from_mapping(s.to_run_config()) == s


def test_describe_prints_effective_values_of_the_sections_in_use() -> None:
    lines = Scenario.of(strategy="fedavg").describe()
    text = "\n".join(lines)
    assert "lr=0.1" in text
    assert "model=mlp" in text
    assert not any(line.startswith(("frl:", "lora:", "dp:", "attack:")) for line in lines)


def test_every_flag_has_a_description_and_its_choices() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    simulate = sub.choices["simulate"]  # type: ignore[index]
    flags = {a.dest: a for a in simulate._actions}
    for key, info in FIELDS.items():
        action = flags["set_" + key.replace("-", "_")]
        assert action.help
        assert info.help in action.help
        if info.choices:
            assert list(action.choices) == list(info.choices)


def test_seed_out_of_range_is_one_line() -> None:
    with pytest.raises(ConfigError, match="seed: must lie in"):
        Scenario.of(seed=2**64)


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"k": 0.0}, "k"),
        ({"k": 1.5}, "k"),
        ({"k": float("nan")}, "k"),
        ({"clients-per-round": 11, "num-clients": 10}, "clients-per-round"),
        ({"strategy": "fedsgd"}, "strategy"),
        ({"seed": 2**64}, "seed"),
        ({"device": "tpu"}, "device"),
        ({"partitioner": "random"}, "partitioner"),
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
    s = Scenario.of(model="cnn", k=0.3, seed=7, num_clients=5, clients_per_round=2)
    assert Scenario.from_mapping(s.to_run_config()) == s


def test_ints_are_accepted_for_floats() -> None:
    s = Scenario.from_mapping({"k": 1, "lr": 2})
    assert s.frl.k == 1.0
    assert isinstance(s.train.lr, float)


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
    assert Scenario.of().effective.aggregator == "borda"
    assert Scenario.of(strategy="fedavg").effective.aggregator == "mean"
    assert Scenario.of(aggregator="filtered").effective.aggregator == "filtered"
    # "auto" survives a change of strategy (it is resolved anew on every construction).
    assert Scenario.of().replace(strategy="fedavg").effective.aggregator == "mean"


def test_attack_fields_round_trip_through_run_config() -> None:
    s = Scenario.of(
        attack="adaptive_reverse", malicious_fraction=0.2, attack_seed=4, aggregator="filtered"
    )
    assert Scenario.from_mapping(s.to_run_config()) == s


def test_the_flower_app_config_lists_every_key_and_is_current() -> None:
    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert app_config_toml() in text  # else: python scripts/gen_app_config.py
    table = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    assert list(table) == list(FIELDS)
    Scenario.from_mapping(table)  # a runnable scenario


def test_the_configuration_reference_is_current() -> None:
    doc = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
    assert doc.read_text() == config_reference()  # else: python scripts/gen_config_doc.py
