"""Nothing written is ever lost: no run replaces another's files, a run that fails to
start leaves its folder as it found it, and a resumed run keeps one row per round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord

from fedrank.client import app as fedrank_client
from fedrank.config import Scenario
from fedrank.errors import ConfigError, FedrankError
from fedrank.server.loop import run_rounds
from fedrank.server.results import ResultsWriter, check_results_dir, resume_rows
from fedrank.simulations.run import simulate
from tests.faults.foreign_client import foreign_client_app

ROWS = [{"round": r, "accuracy": r / 10} for r in range(4)]


def write_rows(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_a_new_run_takes_a_missing_or_empty_folder_and_refuses_any_other(
    tmp_path: Path,
) -> None:
    check_results_dir(tmp_path / "new" / "run")
    check_results_dir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")

    with pytest.raises(ConfigError) as refused:
        check_results_dir(tmp_path)

    assert f"{tmp_path} already holds notes.txt" in str(refused.value)
    assert f"--resume {tmp_path}, or give another --results-dir" in str(refused.value)
    assert not (tmp_path / "new").exists()  # checking creates nothing


@pytest.mark.parametrize("existed", [False, True])
def test_a_run_that_fails_to_start_leaves_the_folder_as_it_found_it(
    tmp_path: Path, existed: bool
) -> None:
    folder = tmp_path / "results"
    if existed:
        folder.mkdir()
    scenario = Scenario.of(
        dataset="digits", model="mlp", num_clients=4, clients_per_round=3, rounds=1,
        results_dir=str(folder),
    )  # fmt: skip
    # Two of four sites fail discovery: three are needed.
    app = foreign_client_app(fedrank_client.app, query={0: "raise", 1: "id_999"})

    with pytest.raises(FedrankError, match="only 2 of 4 nodes gave a valid partition id"):
        simulate(scenario, client_app=app, backend="local")

    assert folder.exists() is existed
    if existed:
        assert list(folder.iterdir()) == []


def test_resume_recovers_a_cut_last_line_and_says_what_it_dropped(tmp_path: Path) -> None:
    lines = [json.dumps(row) for row in ROWS]
    write_rows(tmp_path / "metrics.jsonl", [*lines, lines[0], '{"round": 4, "acc'])

    kept = ResultsWriter(tmp_path, append=True).keep_rounds_through(2)

    assert [json.loads(line)["round"] for line in kept.kept] == [0, 1, 2]
    assert kept.describe() == (
        "its last line was cut short by the crash (that round is run again); "
        "1 rows past the checkpoint dropped (run again); 1 duplicate rows dropped"
    )
    assert (tmp_path / "metrics.jsonl").read_text().splitlines() == lines[:3]


def test_resume_names_the_rounds_it_cannot_recover(tmp_path: Path) -> None:
    lines = [json.dumps(row) for row in ROWS]
    write_rows(tmp_path / "metrics.jsonl", [lines[0], lines[3]])

    kept = resume_rows(tmp_path / "metrics.jsonl", 5)

    assert kept.missing == [1, 2, 4, 5]
    assert "the rows of rounds 1-2, 4-5 are lost (not recoverable)" in kept.describe()


def test_resume_refuses_a_damaged_line_naming_it(tmp_path: Path) -> None:
    lines = [json.dumps(row) for row in ROWS]
    write_rows(tmp_path / "metrics.jsonl", [lines[0], "[1, 2]", *lines[2:]])

    with pytest.raises(ConfigError, match=r"metrics.jsonl line 2 is not a round's row"):
        resume_rows(tmp_path / "metrics.jsonl", 3)


class _NoRounds:
    """A strategy that samples nobody (the round loop's bookkeeping alone)."""

    def configure_train(self, *args: object) -> list[object]:
        return []

    def aggregate_train(self, *args: object) -> tuple[None, None]:
        return None, None

    def configure_evaluate(self, *args: object) -> list[object]:
        return []  # no federated evaluation


def test_a_run_resumed_from_round_zero_writes_its_row_once(tmp_path: Path) -> None:
    results = ResultsWriter(tmp_path, append=True)
    results.write_round({"round": 0, "accuracy": 0.1, "loss": 2.0, "seconds": 0.0})
    evaluated: list[int] = []

    run_rounds(
        grid=type("Grid", (), {"send_and_receive": lambda self, m, timeout: []})(),  # type: ignore[arg-type]
        strategy=_NoRounds(),  # type: ignore[arg-type]
        arrays=ArrayRecord(),
        config=ConfigRecord(),
        num_rounds=2,
        evaluate=lambda arrays: (evaluated.append(1), (1.0, 0.5))[1],  # type: ignore[func-returns-value]
        results=results,
        timeout=1.0,
        start_round=1,
    )

    assert [row["round"] for row in results.read_rounds()] == [0, 1, 2]
    assert len(evaluated) == 2  # round 0 was not evaluated again
