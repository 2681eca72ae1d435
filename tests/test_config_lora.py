"""The LoRA / DP-LoRA fields of Scenario: validated for LoRA, inert for FRL and FedAvg."""

from __future__ import annotations

import pytest

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.simulations.run import scenario_path
from fedrank.tasks import load_task

LORA = {"strategy": "lora", "dataset": "rotten-tomatoes", "model": "tiny-bert"}


def test_a_lora_scenario_gets_the_lora_learning_rate_and_no_dp() -> None:
    s = Scenario.from_mapping(LORA)

    assert s.effective.lr == 5e-4
    assert s.dp.mode == "none"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"lora-aggregation": "fedprox"}, "lora-aggregation"),
        ({"lora-rank": 0}, "lora-rank"),
        ({"lora-alpha": 0}, "lora-alpha"),
        ({"lora-dropout": 1.0}, "lora-dropout"),
        ({"lora-head-lr": -1.0}, "lora-head-lr"),
        ({"lora-pooling": "max"}, "lora-pooling"),
        ({"lora-targets": "query,,value"}, "lora-targets"),
        ({"max-length": 1}, "max-length"),
        ({"train-records": 3, "num-clients": 4, "clients-per-round": 4}, "train-records"),
        ({"test-records": -1}, "test-records"),
        ({"physical-batch-size": 0}, "physical-batch-size"),
        ({"dp": "local"}, "dp"),
        ({"dp": "sample"}, "dp-target-epsilon"),
        ({"dp": "client"}, "dp-client-target-epsilon"),
        ({"dp": "sample", "dp-target-epsilon": -1.0}, "dp-target-epsilon"),
        ({"dp": "sample", "dp-target-epsilon": 8.0, "dp-delta": 0.0}, "dp-delta"),
        ({"dp": "sample", "dp-noise-multiplier": 1.0, "dp-clip-norm": 0.0}, "dp-clip-norm"),
        ({"dp": "sample", "dp-noise-multiplier": 1.0, "dp-accountant": "gdp"}, "dp-accountant"),
        (
            {"dp": "client", "dp-client-noise-multiplier": 1.0, "dp-client-sampling": "x"},
            "dp-client-sampling",
        ),
        (
            {"dp": "client", "dp-client-target-epsilon": 8.0, "lora-aggregation": "svd"},
            "lora-aggregation",
        ),
        # Client-level DP averages the clipped updates itself: a robust rule would not run.
        ({"dp": "client", "dp-client-target-epsilon": 8.0, "aggregator": "median"}, "aggregator"),
        ({"aggregator": "trimmed", "lora-aggregation": "svd"}, "aggregator"),
        ({"aggregator": "filtered"}, "aggregator"),  # a ranking vote
        ({"attack": "reverse_ranking", "malicious-fraction": 0.2}, "attack"),
        # A DP setting its mode ignores would silently not protect anything.
        ({"dp-target-epsilon": 8.0}, "dp-target-epsilon"),
        (
            {"dp": "sample", "dp-noise-multiplier": 1.0, "dp-client-noise-multiplier": 1.0},
            "dp-client-noise-multiplier",
        ),
    ],
)
def test_bad_lora_values_name_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        Scenario.from_mapping(LORA | values)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"model": "mlp"}, "model"),
        ({"dataset": "digits"}, "dataset"),
        ({"max-length": 200}, "max-length"),  # tiny-bert has 128 positions
        (
            {"attack": "label_flip", "malicious-fraction": 0.5, "attack-flip-rule": "targeted"},
            "attack-target-class",  # the default 1 -> 7 does not exist in a 2-class corpus
        ),
    ],
)
def test_what_only_the_task_knows_is_refused_before_any_round(
    values: dict[str, object], field: str
) -> None:
    scenario = Scenario.from_mapping(LORA | values)
    with pytest.raises(ConfigError) as info:
        load_task(scenario).check()
    assert info.value.field == field


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"dataset": "rotten-tomatoes"}, "dataset"),
        ({"model": "minilm"}, "model"),
        ({"dp": "sample", "dp-target-epsilon": 8.0}, "dp"),
        ({"dp-noise-multiplier": 1.0}, "dp-noise-multiplier"),
    ],
)
def test_lora_values_do_not_make_a_bad_frl_scenario_pass(
    values: dict[str, object], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_task(Scenario.from_mapping({"strategy": "frl"} | values)).check()
    assert info.value.field == field


@pytest.mark.parametrize("strategy", ["frl", "fedavg"])
def test_lora_shape_fields_do_not_make_a_good_frl_scenario_fail(strategy: str) -> None:
    # Only meaningful for LoRA; FRL and FedAvg ignore them, whatever they hold.
    s = Scenario.from_mapping({"strategy": strategy, "lora-dropout": 0.5, "max-length": 2})

    assert s.run.strategy == strategy


def test_both_dp_modes_with_budgets_are_accepted() -> None:
    s = Scenario.from_mapping(
        LORA | {"dp": "both", "dp-target-epsilon": 8.0, "dp-client-target-epsilon": 4.0}
    )
    assert (s.dp.target_epsilon, s.dp.client_target_epsilon) == (8.0, 4.0)


@pytest.mark.parametrize("name", ["lora-sentiment", "dp-lora-sentiment"])
def test_the_packaged_lora_scenarios_load(name: str) -> None:
    s = Scenario.from_toml(scenario_path(name))

    assert (s.run.strategy, s.effective.dataset, s.effective.model) == (
        "lora",
        "rotten-tomatoes",
        "minilm",
    )
    assert s.dp.mode == ("sample" if name.startswith("dp-") else "none")


def test_the_dp_scenario_and_its_non_private_twin_differ_only_in_dp() -> None:
    # The privacy-utility table compares these two rows: only DP may differ.
    private = Scenario.from_toml(scenario_path("dp-lora-sentiment"))
    plain = Scenario.from_toml(scenario_path("lora-sentiment"))

    a, b = private.to_run_config(), plain.to_run_config()
    differ = {key for key in a if a[key] != b[key]}

    assert differ
    assert all(key.startswith("dp") or key == "results-dir" for key in differ)
    assert private.lora.pooling == plain.lora.pooling == "mean"


@pytest.mark.parametrize(
    "values",
    [
        {"aggregator": "median"},
        {"aggregator": "krum", "num-clients": 5, "clients-per-round": 5},
        {"aggregator": "multikrum", "lora-aggregation": "svd", "num-clients": 5,
         "clients-per-round": 5},
        {"aggregator": "trimmed", "lora-aggregation": "ffa"},
        {"attack": "sign_flip", "malicious-fraction": 0.5},
        {"attack": "alie", "malicious-fraction": 0.5, "aggregator": "median", "dp": "sample",
         "dp-target-epsilon": 8.0},
        {"attack": "label_flip", "malicious-fraction": 0.5, "attack-flip-rule": "targeted",
         "attack-source-class": 1, "attack-target-class": 0},
    ],
)  # fmt: skip
def test_robust_rules_and_update_attacks_are_accepted_for_lora(values: dict[str, object]) -> None:
    s = Scenario.from_mapping(LORA | values)

    assert s.effective.aggregator == values.get("aggregator", "mean")
