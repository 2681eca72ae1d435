"""Every user mistake is one line with a non-zero exit, and nothing is started or written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrank.cli import main
from tests.faults.user_input import CASES, snapshot


@pytest.mark.parametrize("case", list(CASES))
def test_a_mistake_is_one_line_and_changes_nothing(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = CASES[case](tmp_path)
    before = snapshot(tmp_path)
    capsys.readouterr()

    if args[0] == "status":  # argparse refuses it, in one line too
        with pytest.raises(SystemExit) as done:
            main(args)
        status = done.value.code
    else:
        status = main(args)

    out, err = capsys.readouterr()
    assert status == 2
    assert "%|" not in out, out  # no progress bar drawn around the error
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedrank"), err
    assert "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_run_whose_every_round_is_skipped_exits_non_zero(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No client answers within a millisecond: every round is skipped.
    status = main(
        ["simulate", "--backend", "local", "--quiet", "--dataset", "digits", "--model", "mlp",
         "--num-clients", "3", "--clients-per-round", "2", "--rounds", "2", "--local-epochs",
         "1", "--round-timeout", "0.001", "--results-dir", str(tmp_path / "r")]
    )  # fmt: skip

    err = capsys.readouterr().err
    assert status == 1
    assert "fedrank: error: every round was skipped" in err
    rows = [
        json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["skipped"] for row in rows[1:]] == [True, True]
