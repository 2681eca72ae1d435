"""The examples outside the package run as their READMEs say."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parent.parent.parent / "examples"


def test_a_plain_flower_app_trains_its_own_model_with_fedranks_frl() -> None:
    folder = EXAMPLES / "frl_flower_app"
    assert "../../.venv/bin/python app.py" in (folder / "README.md").read_text()

    run = subprocess.run(
        [sys.executable, "app.py"],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    assert run.returncode == 0, run.stderr[-2000:]
    accuracies = [float(a) for a in re.findall(r"round \d+: accuracy ([\d.]+)", run.stdout)]
    assert len(accuracies) == 6  # round 0 (the initial ranking), then 5 rounds
    assert accuracies[0] < 0.3
    assert accuracies[-1] > 0.8  # chance: 0.1
