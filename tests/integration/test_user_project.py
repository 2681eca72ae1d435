"""A user's own project, outside the package, run with ``fedrank simulate`` as a user runs it.

``tests/fixtures/user_project`` holds its own model factory (``my_models.py``), a script
that writes its data the way a user would (a ``datasets.save_to_disk`` folder of images
with its own column names, a CSV of reviews) and a scenario per strategy. Nothing of
fedrank is changed for it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrank.artifacts import FINAL_STATE, read_arrays

pytestmark = pytest.mark.integration

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "user_project"
FEDRANK = str(Path(sys.executable).with_name("fedrank"))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("user") / "project"
    shutil.copytree(FIXTURE, folder)
    subprocess.run([sys.executable, "make_data.py"], cwd=folder, check=True, capture_output=True)
    return folder


def fedrank(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [FEDRANK, "simulate", *args, "--quiet"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def summary(project: Path, name: str) -> dict[str, object]:
    return json.loads((project / "results" / name / "summary.json").read_text())  # type: ignore[no-any-return]


def test_frl_on_the_users_model_learns_and_ray_equals_the_local_backend(project: Path) -> None:
    local = fedrank(project, "--scenario", "frl.toml", "--backend", "local")
    on_ray = fedrank(project, "--scenario", "frl.toml", "--results-dir", "results/frl-ray")

    assert local.returncode == 0, local.stderr
    assert on_ray.returncode == 0, on_ray.stderr
    assert float(summary(project, "frl")["final_accuracy"]) > 0.6  # type: ignore[arg-type]
    expected = read_arrays(project / "results" / "frl" / FINAL_STATE)
    got = read_arrays(project / "results" / "frl-ray" / FINAL_STATE)
    assert list(expected) == ["conv", "hidden", "out"]  # every Conv and Linear, by path
    for name, ranks in expected.items():
        np.testing.assert_array_equal(got[name], ranks)


def test_fedavg_trains_the_users_model_as_it_is(project: Path) -> None:
    run = fedrank(project, "--scenario", "fedavg.toml", "--backend", "local")

    assert run.returncode == 0, run.stderr
    assert float(summary(project, "fedavg")["final_accuracy"]) > 0.6  # type: ignore[arg-type]
    assert "conv.bias" in read_arrays(project / "results" / "fedavg" / FINAL_STATE)


def test_lora_learns_from_the_users_csv(project: Path) -> None:
    run = fedrank(project, "--scenario", "lora.toml", "--backend", "local")

    assert run.returncode == 0, run.stderr
    result = summary(project, "lora")
    assert float(result["final_accuracy"]) > 0.6  # type: ignore[arg-type]  # chance: 0.5
    assert (project / "results" / "lora" / "adapter" / "README.md").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--model", "my_models:nothing_here"], "model: "),
        (["--model", "no_such_module:factory"], "model: "),
        (["--label-column", "label"], "label-column: "),
        (["--num-clients", "2000", "--clients-per-round", "2"], "num-clients: "),
    ],
)
def test_a_bad_project_setting_is_one_line_and_touches_nothing(
    project: Path, flags: list[str], message: str
) -> None:
    earlier = project / "results" / "frl-earlier"
    earlier.mkdir(parents=True, exist_ok=True)
    (earlier / "metrics.jsonl").write_text('{"round": 0}\n')

    run = fedrank(
        project,
        "--scenario",
        "frl.toml",
        "--backend",
        "local",
        "--results-dir",
        str(earlier),
        *flags,
    )

    assert run.returncode != 0
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith(f"fedrank: error: {message}")
    assert sorted(p.name for p in earlier.iterdir()) == ["metrics.jsonl"]
    assert (earlier / "metrics.jsonl").read_text() == '{"round": 0}\n'
