from pathlib import Path

import pytest

from fedrank.cli import main


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--k", "1.5"], "k"),
        (["--num-clients", "4", "--clients-per-round", "5"], "clients-per-round"),
        (["--scenario", "no-such-scenario"], "scenario"),
    ],
)
def test_bad_scenario_fails_before_ray_starts(
    args: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    status = main(["simulate", *args])
    assert status == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedrank: error: {field}:")
    assert not ray.is_initialized()


def test_unknown_scenario_key_in_a_file_is_named(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(str(tmp_path)) / "s.toml"
    path.write_text('strategy = "frl"\nclients_per_rnd = 3\n')
    assert main(["simulate", "--scenario", str(path)]) == 2
    assert "clients_per_rnd: unknown key" in capsys.readouterr().err


def test_scenarios_lists_the_packaged_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    assert "frl-mnist" in capsys.readouterr().out.split()


def test_resume_needs_a_results_folder_and_keeps_its_scenario(
    tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    from fedrank.config import Scenario
    from fedrank.server.resume import write_scenario

    folder = Path(str(tmp_path))
    assert main(["simulate", "--resume", str(folder / "nothing")]) == 2
    assert "fedrank: error: resume: no scenario.json in" in capsys.readouterr().err
    write_scenario(folder, Scenario.of(results_dir=str(folder)))
    assert main(["simulate", "--resume", str(folder), "--seed", "3"]) == 2
    assert "fedrank: error: resume: cannot change seed" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(folder), "--scenario", "frl-mnist"]) == 2
    assert "drop --scenario" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(folder), "--rounds", "50"]) == 2
    assert "nothing to resume" in capsys.readouterr().err
    assert not ray.is_initialized()
