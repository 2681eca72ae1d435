"""Who holds which random source: the coordinator's private key file, a site's fresh one."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from fedrank.errors import CheckpointError
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.site import SITE_ROOT_ENV, simulated_sites
from fedrank.privacy.sources import (
    coordinator_source,
    coordinator_source_path,
    site_source,
)


def draws(source: RandomSource) -> np.ndarray:
    return source.derive("client-noise", 3, 0).normal(8)


def test_a_fresh_run_keeps_its_key_private_and_a_resumed_run_reads_it_back(
    tmp_path: Path,
) -> None:
    root = coordinator_source(tmp_path, reproducible=False, seed=0, fresh=True)
    path = coordinator_source_path(tmp_path)

    resumed = coordinator_source(tmp_path, reproducible=False, seed=0, fresh=False)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert root.kind == "secure"
    np.testing.assert_array_equal(draws(resumed), draws(root))
    # A new run in the same folder draws another key.
    again = coordinator_source(tmp_path, reproducible=False, seed=0, fresh=True)
    assert not np.array_equal(draws(again), draws(root))


def test_a_resumed_run_whose_key_is_gone_starts_a_new_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = coordinator_source(tmp_path, reproducible=False, seed=0, fresh=True)
    os.remove(coordinator_source_path(tmp_path))

    with caplog.at_level(logging.WARNING):
        resumed = coordinator_source(tmp_path, reproducible=False, seed=0, fresh=False)

    assert "new secret key" in caplog.text
    assert not np.array_equal(draws(resumed), draws(root))
    assert coordinator_source_path(tmp_path).exists()


def test_a_damaged_key_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    coordinator_source(tmp_path, reproducible=False, seed=0, fresh=True)
    coordinator_source_path(tmp_path).write_text("{}", encoding="ascii")

    with pytest.raises(CheckpointError):
        coordinator_source(tmp_path, reproducible=False, seed=0, fresh=False)


def test_reproducible_sources_come_from_the_seed_and_write_nothing(tmp_path: Path) -> None:
    first = coordinator_source(tmp_path, reproducible=True, seed=9, fresh=True)
    second = coordinator_source(tmp_path / "b", reproducible=True, seed=9, fresh=True)

    np.testing.assert_array_equal(draws(first), draws(second))
    assert first.kind == "reproducible"
    assert not coordinator_source_path(tmp_path).exists()
    site = site_source(reproducible=True, seed=9, partition_id=2, server_round=4)
    assert site.uniform(4).tolist() == (
        site_source(reproducible=True, seed=9, partition_id=2, server_round=4).uniform(4).tolist()
    )


def test_a_secure_site_source_is_fresh_every_round() -> None:
    a = site_source(reproducible=False, seed=9, partition_id=2, server_round=4)
    b = site_source(reproducible=False, seed=9, partition_id=2, server_round=4)

    assert a.kind == b.kind == "secure"
    assert not np.array_equal(a.uniform(4), b.uniform(4))


def test_simulated_sites_get_a_ledger_folder_for_the_run_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(SITE_ROOT_ENV, raising=False)
    old = tmp_path / "sites" / "partition-0" / "privacy-ledger.jsonl"
    old.parent.mkdir(parents=True)
    old.write_text("{}\n", encoding="utf-8")

    with simulated_sites(tmp_path / "new") as fresh:
        created = fresh.exists()  # nothing is made before a site records a release
    with simulated_sites(tmp_path) as root:
        assert os.environ[SITE_ROOT_ENV] == str(root)

    assert not created
    assert old.read_text(encoding="utf-8") == "{}\n"  # a resumed run's books are kept
    assert SITE_ROOT_ENV not in os.environ
