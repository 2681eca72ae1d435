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
    from pathlib import Path

    path = Path(str(tmp_path)) / "s.toml"
    path.write_text('strategy = "frl"\nclients_per_rnd = 3\n')
    assert main(["simulate", "--scenario", str(path)]) == 2
    assert "clients_per_rnd: unknown key" in capsys.readouterr().err


def test_scenarios_lists_the_packaged_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["scenarios"]) == 0
    assert "frl-mnist" in capsys.readouterr().out.split()
