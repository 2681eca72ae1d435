"""Every user mistake of issue 16, set up for real: each is one line and a non-zero exit.

:data:`CASES` maps a name to a function that prepares the mistake in a folder and
returns the ``fedrank`` arguments that make it. ``test_user_input.py`` runs each
through ``fedrank.cli.main`` in process; ``python -m tests.faults.user_input`` runs each
through the real ``fedrank`` command and prints the table of the closing note.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord

from fedrank.config import Scenario
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.records import to_array_record
from fedrank.server.resume import RunCheckpointer, write_scenario
from fedrank.strategies.fedavg import SeededFedAvg

Setup = Callable[[Path], list[str]]
"""(an empty folder to work in) -> the ``fedrank`` arguments of the mistake."""

QUICK = ["--backend", "local", "--quiet", "--dataset", "digits", "--model", "mlp"]


def _scenario_file(content: bytes) -> Setup:
    def setup(tmp: Path) -> list[str]:
        (tmp / "scenario.toml").write_bytes(content)
        return ["simulate", "--scenario", str(tmp / "scenario.toml"), *QUICK]

    return setup


def _folder_as_scenario(tmp: Path) -> list[str]:
    (tmp / "frl.toml").mkdir()
    return ["simulate", "--scenario", str(tmp / "frl.toml"), *QUICK]


def _big_seed(tmp: Path) -> list[str]:
    return ["simulate", "--seed", str(2**64), "--results-dir", str(tmp / "r"), *QUICK]


def _results_dir_is_a_file(tmp: Path) -> list[str]:
    (tmp / "results").write_text("not a folder\n")
    return ["simulate", "--results-dir", str(tmp / "results"), *QUICK]


def _results_dir_under_a_file(tmp: Path) -> list[str]:
    # Not quiet: refused after the scenario is described, where a progress bar once was
    # drawn around the error.
    (tmp / "results").write_text("not a folder\n")
    loud = [arg for arg in QUICK if arg != "--quiet"]
    return ["simulate", "--results-dir", str(tmp / "results" / "run1"), *loud]


def _results_dir_not_writable(tmp: Path) -> list[str]:
    # Root ignores mode bits, so the folder lies where nobody may create one.
    return ["simulate", "--results-dir", "/sys/fedrank-results", *QUICK]


def _results_dir_of_another_run(tmp: Path) -> list[str]:
    _finished_run(tmp / "run", rounds=2)
    return ["simulate", "--results-dir", str(tmp / "run"), *QUICK]


def _resume_a_file(tmp: Path) -> list[str]:
    (tmp / "results").write_text("not a folder\n")
    return ["simulate", "--resume", str(tmp / "results")]


def _scenario_json_list(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "scenario.json").write_text("[]\n")
    return ["simulate", "--resume", str(tmp / "run")]


def _finished_run(folder: Path, *, rounds: int) -> Scenario:
    """What a run of ``rounds`` rounds leaves behind: scenario, checkpoints, metrics."""
    scenario = Scenario.of(
        dataset="digits", model="mlp", num_clients=4, clients_per_round=2, rounds=rounds,
        results_dir=str(folder),
    )  # fmt: skip
    folder.mkdir(parents=True)
    write_scenario(folder, scenario)
    state = {"w": np.zeros(2, dtype=np.float32)}
    strategy = SeededFedAvg(
        codec=ArraysCodec.for_state(state), partitions={0: 1, 1: 2}, clients_per_round=2
    )
    arrays: ArrayRecord = to_array_record(state)
    checkpoints = RunCheckpointer(scenario, strategy)
    for r in range(rounds + 1):
        checkpoints.save(r, arrays)
    rows = [{"round": r, "accuracy": 0.1 * r, "loss": 1.0} for r in range(rounds + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return scenario


def _metrics(edit: Callable[[list[str]], list[str]] | None) -> Setup:
    def setup(tmp: Path) -> list[str]:
        _finished_run(tmp / "run", rounds=3)
        path = tmp / "run" / "metrics.jsonl"
        if edit is None:
            path.unlink()
        else:
            path.write_text("".join(line + "\n" for line in edit(path.read_text().splitlines())))
        return ["simulate", "--resume", str(tmp / "run"), "--quiet"]

    return setup


def _cut_line(lines: list[str]) -> list[str]:
    return [*lines[:1], lines[1][:9], *lines[2:]]


def _row_without_round(lines: list[str]) -> list[str]:
    row = json.loads(lines[2])
    del row["round"]
    return [*lines[:2], json.dumps(row), *lines[3:]]


def _too_many_clients(tmp: Path) -> list[str]:
    return ["simulate", "--num-clients", "2000", "--clients-per-round", "2", "--partitioner",
            "iid", "--results-dir", str(tmp / "r"), *QUICK]  # fmt: skip


def _too_many_classes(tmp: Path) -> list[str]:
    return ["simulate", "--partitioner", "pathological", "--classes-per-client", "20",
            "--num-clients", "4", "--clients-per-round", "2", "--results-dir", str(tmp / "r"),
            *QUICK]  # fmt: skip


def _status_nan(tmp: Path) -> list[str]:
    return ["status", "127.0.0.1:9", "--timeout", "nan"]


CASES: dict[str, Setup] = {
    "binary scenario file": _scenario_file(bytes(range(256))),
    "UTF-16 scenario file": _scenario_file("rounds = 2\n".encode("utf-16")),
    "a folder as --scenario": _folder_as_scenario,
    "seed = 2^64": _big_seed,
    "--results-dir is a file": _results_dir_is_a_file,
    "--results-dir under a file": _results_dir_under_a_file,
    "--results-dir not writable": _results_dir_not_writable,
    "--results-dir holds another run": _results_dir_of_another_run,
    "--resume on a file": _resume_a_file,
    "scenario.json holding []": _scenario_json_list,
    "a cut line in metrics.jsonl": _metrics(_cut_line),
    "a metrics row without round": _metrics(_row_without_round),
    "metrics.jsonl missing": _metrics(None),
    "num-clients larger than the dataset": _too_many_clients,
    "classes-per-client above the class count": _too_many_classes,
    "fedrank status --timeout nan": _status_nan,
}
"""Each mistake (name -> setup); every one exits 2 with one line, nothing started."""


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes (to show that nothing changed)."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def main() -> None:
    """Run every case through the real ``fedrank`` command; print a markdown table."""
    print("| mistake | what fedrank prints | exit |")
    print("|---|---|---|")
    for name, setup in CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            args = setup(Path(tmp))
            done = subprocess.run(
                [sys.executable, "-m", "fedrank.cli", *args],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            line = " / ".join(done.stderr.strip().splitlines()).replace(tmp, "$TMP")
            print(f"| {name} | `{line}` | {done.returncode} |")


if __name__ == "__main__":
    main()
