"""The default results folder: a new folder each run, ``results/latest`` linking the newest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedrank.errors import ConfigError
from fedrank.server.results import DEFAULT_RESULTS, claim_results_dir, new_run_folder


def test_two_runs_at_the_default_get_two_folders_and_latest_names_the_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    first = claim_results_dir(DEFAULT_RESULTS)
    assert Path(first).is_dir()  # claimed: made at once, empty
    (Path(first) / "metrics.jsonl").write_text("{}\n", encoding="utf-8")
    second = claim_results_dir(DEFAULT_RESULTS)

    assert first != second
    assert Path(first).parent == Path(second).parent == Path("results/runs")
    assert Path(DEFAULT_RESULTS).is_symlink()
    assert Path(DEFAULT_RESULTS).resolve() == Path(second).resolve()
    assert (Path(first) / "metrics.jsonl").read_text(encoding="utf-8") == "{}\n"  # kept


def test_a_taken_stamp_gets_a_suffix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    now = 1_800_000_000.0
    Path(new_run_folder(DEFAULT_RESULTS, now=now)).mkdir(parents=True)

    again = new_run_folder(DEFAULT_RESULTS, now=now)

    assert again.endswith("-2")


def test_an_explicit_folder_is_used_as_given_and_refused_when_it_holds_a_run(
    tmp_path: Path,
) -> None:
    given = tmp_path / "mine"

    assert claim_results_dir(str(given)) == str(given)
    given.mkdir()
    (given / "summary.json").write_text("{}", encoding="utf-8")
    with pytest.raises(ConfigError, match="a run never replaces another's files"):
        claim_results_dir(str(given))


def test_a_real_latest_folder_of_an_earlier_version_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    old = Path(DEFAULT_RESULTS)
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}", encoding="utf-8")

    folder = claim_results_dir(DEFAULT_RESULTS)

    assert not old.is_symlink()
    assert os.listdir(old) == ["summary.json"]
    assert Path(folder).parent == Path("results/runs")


def test_two_claims_in_the_same_second_get_two_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        "fedrank.server.results.time.localtime", lambda now=None: (2026, 1, 2, 3, 4, 5, 0, 2, 0)
    )

    first, second = claim_results_dir(DEFAULT_RESULTS), claim_results_dir(DEFAULT_RESULTS)

    assert first == "results/runs/20260102-030405"
    assert second == "results/runs/20260102-030405-2"
