"""The DP section of a scenario: one relation, the reproducible switch, adaptive clipping."""

from __future__ import annotations

from typing import Any

import pytest
from flwr.app import Context, RecordDict

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.privacy.plan import privacy_settings
from fedrank.server.app import main

LORA: dict[str, Any] = {"strategy": "lora", "num_clients": 8, "clients_per_round": 4}
CLIENT: dict[str, Any] = {**LORA, "dp": "client", "dp_client_noise_multiplier": 1.0}


def test_fixed_client_sampling_of_fewer_than_all_clients_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        Scenario.of(**CLIENT, dp_client_sampling="fixed")

    assert caught.value.field == "dp-client-sampling"
    assert "poisson" in str(caught.value)
    every = Scenario.of(**{**CLIENT, "clients_per_round": 8}, dp_client_sampling="fixed")
    assert privacy_settings(every)["client"]["sample_rate"] == 1.0


def test_poisson_is_the_default_and_accounts_q_m_over_n() -> None:
    settings = privacy_settings(Scenario.of(**CLIENT))

    assert settings["client"]["sampling"] == "poisson"
    assert settings["client"]["sample_rate"] == 0.5
    assert settings["neighbouring_relation"] == "add-or-remove-one"


def test_the_reproducible_switch_is_marked_not_private() -> None:
    secure = privacy_settings(Scenario.of(**CLIENT))
    replayable = privacy_settings(Scenario.of(**CLIENT, dp_reproducible_noise=True))

    assert (secure["noise"], secure["note"]) == ("secure", None)
    assert (replayable["noise"], replayable["note"]) == (
        "reproducible",
        "not private: reproducible noise",
    )


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({**LORA, "dp_reproducible_noise": True}, "dp-reproducible-noise"),
        ({**LORA, "dp": "sample", "dp_noise_multiplier": 1.0, "dp_adaptive_clipping": True},
         "dp-adaptive-clipping"),
        ({**CLIENT, "dp_clip_quantile": 0.7}, "dp-clip-quantile"),
        ({**CLIENT, "dp_publish_diagnostics": True, "dp": "sample", "dp_noise_multiplier": 1.0,
          "dp_client_noise_multiplier": 0.0}, "dp-publish-diagnostics"),
    ],
)  # fmt: skip
def test_a_setting_its_mode_ignores_is_refused(values: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Scenario.of(**values)

    assert caught.value.field == field


def test_what_is_withheld_and_what_is_published_outside_the_guarantee() -> None:
    withheld = privacy_settings(Scenario.of(**CLIENT))
    published = privacy_settings(Scenario.of(**CLIENT, dp_publish_diagnostics=True))

    assert {"num-examples", "train-loss", "dp-clip-fraction"} <= set(withheld["withheld"])
    assert "dp-clip-fraction" not in published["withheld"]
    assert "dp-clip-fraction" in published["outside_guarantee"]


def test_adaptive_clipping_is_recorded_with_its_count_noise() -> None:
    s = Scenario.of(**CLIENT, dp_adaptive_clipping=True, dp_clip_quantile=0.7)

    assert privacy_settings(s)["client"]["adaptive_clipping"] == {
        "target_quantile": 0.7,
        "learning_rate": 0.2,
        "count_stddev": 4 / 20,
    }


def test_a_deployment_refuses_reproducible_noise() -> None:
    run_config = Scenario.of(**CLIENT, dp_reproducible_noise=True).to_run_config()
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)
    )

    with pytest.raises(ConfigError) as caught:
        main(None, context)  # type: ignore[arg-type]  # refused before the grid is used

    assert caught.value.field == "dp-reproducible-noise"


def test_rqm_is_calibrated_to_a_budget_and_its_settings_need_it() -> None:
    rqm = Scenario.of(**{**CLIENT, "dp_client_noise_multiplier": 0.0}, dp_client_target_epsilon=8.0,
                      dp_mechanism="rqm", dp_rqm_levels=4)  # fmt: skip
    settings = privacy_settings(rqm)["client"]

    assert settings["mechanism"] == "rqm"
    assert settings["noise_multiplier"] is None
    assert settings["rqm"] == {"levels": 4, "keep_probability": 0.5, "bits_per_coordinate": 2}
    with pytest.raises(ConfigError) as no_budget:
        Scenario.of(**CLIENT, dp_mechanism="rqm")
    assert no_budget.value.field == "dp-client-noise-multiplier"
    with pytest.raises(ConfigError) as stray:
        Scenario.of(**CLIENT, dp_rqm_levels=4)
    assert stray.value.field == "dp-rqm-levels"
