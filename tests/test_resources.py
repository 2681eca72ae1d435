"""Packaged data files are found when the code runs from an app bundle that left them out."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedrank.errors import ConfigError
from fedrank.resources import packaged_file

ROOT = Path(__file__).resolve().parents[1]


def test_a_file_of_the_imported_package_is_found() -> None:
    found = packaged_file("fedrank.data", "rotten_tomatoes", "ATTRIBUTION.md")
    assert found.is_file()


def test_a_file_no_copy_holds_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^packaged-data: rotten_tomatoes/nope\.bin of"):
        packaged_file("fedrank.data", "rotten_tomatoes", "nope.bin")


def test_the_corpus_is_read_from_the_installed_package_under_a_bundle(tmp_path: Path) -> None:
    """What `flwr run .` ships: the package's .py/.md files, not the .csv.bz2 corpus,
    first on sys.path; the installed fedrank (here: the environment's) still holds it."""
    bundle = tmp_path / "bundle"
    for source in (ROOT / "fedrank").rglob("*"):
        if source.is_file() and source.suffix in (".py", ".md", ".toml", ".json"):
            target = bundle / "fedrank" / source.relative_to(ROOT / "fedrank")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    assert not list(bundle.rglob("*.bz2"))
    code = (
        "import fedrank, fedrank.data.text as text; "
        "print(fedrank.__file__); print(len(text.read_corpus()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(bundle), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout.split()
    assert out[0].startswith(str(bundle))  # the bundle's code runs
    assert out[1] == "12808"  # and the corpus came from the installed package
