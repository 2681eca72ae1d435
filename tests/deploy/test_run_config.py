"""`fedrank check-run-config`: a `flwr run --run-config` string checked before any run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedrank.cli import main
from fedrank.config import FIELDS
from fedrank.config.app_config import app_config
from fedrank.deploy.run_config import app_defaults, check_run_config, parse_run_config
from fedrank.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_flowers_reading_of_values() -> None:
    assert parse_run_config('rounds=3 dp="sample" lr=0.5 status-address="0.0.0.0:9095"') == {
        "rounds": 3,
        "dp": "sample",
        "lr": 0.5,
        "status-address": "0.0.0.0:9095",
    }
    assert parse_run_config("  ") == {}


def test_an_unknown_key_is_named_with_the_nearest_known_ones() -> None:
    with pytest.raises(ConfigError) as err:
        check_run_config("rounds=3 num-clinets=4")
    assert err.value.field == "num-clinets"
    assert "did you mean num-clients" in str(err.value)
    assert "[code: 15]" in str(err.value)


def test_a_bad_value_or_settings_that_cannot_run_together_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^partitioner: must be one of"):
        check_run_config('partitioner="diri"')
    with pytest.raises(ConfigError, match=r"^rounds: must be an integer"):
        check_run_config('rounds="three"')
    with pytest.raises(ConfigError, match=r"^dp: only strategy 'lora' supports DP"):
        check_run_config('dp="sample" dp-target-epsilon=8.0')
    with pytest.raises(ConfigError, match=r"^run-config: 'rounds=x' cannot be read"):
        check_run_config("rounds=x")
    with pytest.raises(ConfigError, match=r"^attack: attacks are simulated"):
        check_run_config('attack="reverse_ranking" malicious-fraction=0.2')


def test_a_valid_run_config_gives_the_scenario_the_server_would_build() -> None:
    scenario = check_run_config(
        'strategy="lora" model="tiny-bert" dp="sample" dp-target-epsilon=8.0 rounds=4'
    )
    assert scenario.run.strategy == "lora"
    assert scenario.dp.sample
    assert scenario.run.rounds == 4
    assert scenario.run.num_clients == app_config()["num-clients"]


def test_the_apps_own_defaults_are_read_from_its_pyproject() -> None:
    assert app_defaults(ROOT) == app_config()
    assert set(app_defaults(ROOT)) == set(FIELDS)


def test_a_folder_that_is_not_a_flower_app_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    with pytest.raises(ConfigError, match=r"^app: .* has no \[tool\.flwr\.app\.config\]"):
        check_run_config("rounds=2", app=tmp_path)


def test_the_command_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-run-config", "rounds=2 k-fraction=0.3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fedrank: error: k-fraction: unknown run-config key")
    assert main(["check-run-config", "--app", str(ROOT), "rounds=2"]) == 0
    assert "the run config is valid" in capsys.readouterr().out


def test_federation_up_refuses_a_bad_run_before_starting_anything(tmp_path: Path) -> None:
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedrank.cli",
            "federation",
            "up",
            "--sites",
            "2",
            "--dir",
            str(tmp_path / "fed"),
            "--run",
            str(ROOT),
            "--run-config",
            "rounds=2 num-clinets=2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2
    assert "num-clinets: unknown run-config key" in done.stderr
    assert not (tmp_path / "fed").exists()  # no certificate, no process, nothing
    assert time.monotonic() - started < 60
