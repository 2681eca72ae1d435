from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrank.errors import CheckpointError
from fedrank.server import checkpoint as checkpoint_module
from fedrank.server.checkpoint import (
    CheckpointState,
    checkpoint_path,
    generator_from_state,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
)


def make_state(round_number: int, *, seed: int = 0) -> CheckpointState:
    rng = np.random.default_rng(seed + round_number)
    nan_with_payload = np.array([0x7FC00001, 1], dtype=np.uint32).view(np.float32)
    arrays = {
        "fc1.weight": rng.permutation(50).astype(np.int64),
        "blocks/0/lora_B": rng.normal(size=(3, 4)).astype(np.float32),
        "odd name ü": nan_with_payload,
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), dtype=np.int16),
        "mask": rng.random(7) > 0.5,
    }
    return CheckpointState(
        round=round_number,
        arrays=arrays,
        rng_state=rng.bit_generator.state,
        strategy_state={"epsilon_spent": 1.25, "rejected": {"not_permutation": 2}},
        metadata={"run": "test", "seed": seed},
    )


def files_in(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = make_state(3)
    save_checkpoint(tmp_path, state)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded.round == 3
    assert list(loaded.arrays) == list(state.arrays)
    for name, array in state.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        assert loaded.arrays[name].shape == array.shape
        assert loaded.arrays[name].tobytes() == array.tobytes()
    assert loaded.strategy_state == state.strategy_state
    assert loaded.metadata == state.metadata


def test_restored_rng_state_gives_the_same_draws(tmp_path: Path) -> None:
    rng = np.random.default_rng(42)
    rng.normal(size=5)  # advance past the seed state
    state = CheckpointState(round=1, arrays={}, rng_state=rng.bit_generator.state)
    save_checkpoint(tmp_path, state)
    expected = rng.normal(size=10)
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert np.array_equal(generator_from_state(loaded.rng_state).normal(size=10), expected)


def test_empty_or_missing_directory_has_no_checkpoint(tmp_path: Path) -> None:
    assert load_latest_checkpoint(tmp_path) is None
    assert load_latest_checkpoint(tmp_path / "absent") is None


def test_keeps_the_last_n_checkpoints(tmp_path: Path) -> None:
    for round_number in range(1, 6):
        save_checkpoint(tmp_path, make_state(round_number))
    assert [r for r, _ in list_checkpoints(tmp_path)] == [4, 5]
    save_checkpoint(tmp_path, make_state(6), keep=3)
    assert [r for r, _ in list_checkpoints(tmp_path)] == [4, 5, 6]
    save_checkpoint(tmp_path, make_state(7), keep=1)
    assert files_in(tmp_path) == [checkpoint_path(tmp_path, 7).name]


def test_no_temporary_files_are_left_behind(tmp_path: Path) -> None:
    for round_number in range(3):
        save_checkpoint(tmp_path, make_state(round_number))
    assert all(name.startswith("round-") and name.endswith(".ckpt") for name in files_in(tmp_path))


def test_a_failed_write_leaves_no_temp_file_and_the_old_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_checkpoint(tmp_path, make_state(1))

    def crash(source: Any, target: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, make_state(2))
    monkeypatch.undo()
    assert files_in(tmp_path) == [checkpoint_path(tmp_path, 1).name]
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded.round == 1


def test_a_stale_temp_file_from_a_crash_is_ignored_then_removed(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, make_state(1))
    stale = tmp_path / ".round-00000002.ckpt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded.round == 1
    save_checkpoint(tmp_path, make_state(2))
    assert not stale.exists()


def corrupt_payload_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[-100] ^= 0x01  # one bit inside the payload
    path.write_bytes(bytes(content))


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (corrupt_payload_byte, "checksum mismatch"),
        (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:30]), "no header line"),
        (lambda p: p.write_bytes(b""), "no header line"),
        (lambda p: p.write_bytes(b"{not json\n" + b"x" * 10), "not valid JSON"),
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Any, reason: str
) -> None:
    save_checkpoint(tmp_path, make_state(1))
    newest = save_checkpoint(tmp_path, make_state(2))
    damage(newest)
    with caplog.at_level(logging.WARNING, logger="fedrank.server.checkpoint"):
        loaded = load_latest_checkpoint(tmp_path)
    assert loaded is not None
    assert loaded.round == 1
    assert np.array_equal(loaded.arrays["fc1.weight"], make_state(1).arrays["fc1.weight"])
    assert newest.name in caplog.text
    assert reason in caplog.text


def test_unsupported_version_and_misnamed_files_are_rejected(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, make_state(1))
    header, _, payload = path.read_bytes().partition(b"\n")
    fields = json.loads(header)
    path.write_bytes(json.dumps({**fields, "version": 99}).encode() + b"\n" + payload)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
    good = save_checkpoint(tmp_path / "other", make_state(1))
    misnamed = tmp_path / "other" / "round-00000009.ckpt"
    os.replace(good, misnamed)
    with pytest.raises(CheckpointError, match="named round 00000009 but holds 1"):
        load_checkpoint(misnamed)


def test_all_checkpoints_corrupt_raises(tmp_path: Path) -> None:
    for round_number in (1, 2):
        corrupt_payload_byte(save_checkpoint(tmp_path, make_state(round_number)))
    with pytest.raises(CheckpointError, match=r"no valid checkpoint.*00000002.*00000001"):
        load_latest_checkpoint(tmp_path)


def test_bad_states_are_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="round"):
        CheckpointState(round=-1, arrays={}, rng_state={})
    with pytest.raises(ValueError, match="arrays"):
        CheckpointState(round=1, arrays={"x": np.array([object()])}, rng_state={})
    bad = CheckpointState(round=1, arrays={}, rng_state={}, strategy_state={"x": {1, 2}})
    with pytest.raises(CheckpointError, match="strategy_state"):
        save_checkpoint(tmp_path, bad)
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, make_state(1), keep=0)
    assert files_in(tmp_path) == []


def test_generator_from_state_rejects_unknown_bit_generators() -> None:
    with pytest.raises(CheckpointError, match="bit generator"):
        generator_from_state({"bit_generator": "Nonsense", "state": {}})
