"""A site's data-path is checked when its SuperNode starts: one line, before Flower starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedrank.deploy.site_data import check_site_data
from fedrank.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def supernode(*extra: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``fedrank supernode`` as a site starts it (``--print``: the Flower command only)."""
    argv = [sys.executable, "-m", "fedrank.cli", "supernode", "--insecure-demo"]
    argv += ["--superlink", "127.0.0.1:9", "--partition-id", "0", "--print", *extra]
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(cwd)}
    return subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, check=False)


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.npz", None, "no such file or folder on this site"),
        ("garbage.npz", b"not a zip archive", "not an .npz archive"),
        ("site.xyz", b"1,2\n", "unknown file type '.xyz'"),
    ],
)
def test_a_missing_or_unreadable_data_path_refuses_to_start_in_one_line(
    tmp_path: Path, name: str, content: bytes | None, reason: str
) -> None:
    if content is not None:
        (tmp_path / name).write_bytes(content)
    done = supernode("--data-path", name, cwd=tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"fedrank: error: data-path: {tmp_path / name}")
    assert reason in lines[0]
    assert done.stdout == ""  # no Flower command was printed, nothing started


def test_a_readable_data_path_starts_with_its_absolute_path(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "site.npz", images=rng.random((4, 8, 8)), labels=np.arange(4))
    done = supernode("--data-path", "site.npz", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / "site.npz") in done.stdout


def test_a_folder_is_a_data_path_too(tmp_path: Path) -> None:
    folder = tmp_path / "reviews"
    folder.mkdir()
    (folder / "part.csv").write_text("text,label\ngood,1\nbad,0\n")
    assert check_site_data(folder) == folder
    assert check_site_data(folder / "part.csv") == folder / "part.csv"
    with pytest.raises(ConfigError, match="no such file or folder"):
        check_site_data(tmp_path / "nothing")
