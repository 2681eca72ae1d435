"""Crash-safe checkpoints of the server's round state, and resume.

One file per round, ``round-00000012.ckpt``, laid out as::

    {"format": "fedrank-checkpoint", "version": 1, "payload_bytes": N, "payload_sha256": H}\\n
    <N bytes of payload: an uncompressed .npz, no pickled objects>

The payload holds the global arrays (stored as ``a0``, ``a1``, ... so any array
name survives) and ``meta``: a JSON document (as ``uint8``) with the round, the
array names, the numpy ``bit_generator.state``, the strategy's state and free-form
metadata. The header's length and SHA-256 cover the whole payload, so a torn,
truncated or bit-flipped file is detected before anything is used.

Writes are atomic: a temporary file in the same directory is written, flushed and
fsynced, renamed over the final name with ``os.replace``, and the directory is
fsynced, so a crash leaves either the old or the new checkpoint, never a mix.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrank.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION",
    "CheckpointState",
    "checkpoint_path",
    "generator_from_state",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "save_checkpoint",
]

FORMAT_NAME = "fedrank-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^round-(\d+)\.ckpt$")
_TEMP = re.compile(r"^\.round-\d+\.ckpt\..+\.tmp$")
_MAX_HEADER = 4096
logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class CheckpointState:
    """Everything the round loop needs to resume after a given round.

    Parameters
    ----------
    round : int
        The last completed round (``>= 0``).
    arrays : dict[str, numpy.ndarray]
        Global state (FRL rankings per layer, adapter tensors, ...). Object arrays
        are refused: they would need pickle.
    rng_state : dict
        JSON-able RNG state: a Generator's ``bit_generator.state`` (see
        :func:`generator_from_state`), or the process's global generators as
        :func:`fedrank.server.resume.capture_rng_state` takes them.
    strategy_state : dict
        The strategy's own JSON-able state (accountant totals, counters, ...).
    metadata : dict
        Free-form JSON-able context (run id, config hash, wall time, ...).
    """

    round: int
    arrays: dict[str, npt.NDArray[Any]]
    rng_state: dict[str, Any]
    strategy_state: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.round, bool) or not isinstance(self.round, int) or self.round < 0:
            raise ValueError(f"round: must be an integer >= 0, got {self.round!r}")
        for name, array in self.arrays.items():
            if not isinstance(name, str):
                raise ValueError(f"arrays: names must be strings, got {name!r}")
            if not isinstance(array, np.ndarray) or array.dtype.hasobject:
                raise ValueError(f"arrays: {name!r} must be a numpy array without objects")


def checkpoint_path(directory: str | os.PathLike[str], round_number: int) -> Path:
    """The file that holds the checkpoint of ``round_number`` in ``directory``."""
    return Path(directory) / f"round-{round_number:08d}.ckpt"


def list_checkpoints(directory: str | os.PathLike[str]) -> list[tuple[int, Path]]:
    """``(round, path)`` of every checkpoint file in ``directory``, oldest first."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _NAME.match(path.name)
        if match and path.is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def generator_from_state(rng_state: Mapping[str, Any]) -> np.random.Generator:
    """A Generator whose next draws are those of the one ``rng_state`` was taken from."""
    name = rng_state.get("bit_generator")
    bit_generator_class = getattr(np.random, str(name), None)
    if not (
        isinstance(bit_generator_class, type)
        and issubclass(bit_generator_class, np.random.BitGenerator)
    ):
        raise CheckpointError(f"rng_state names an unknown bit generator {name!r}")
    bit_generator = bit_generator_class()
    bit_generator.state = dict(rng_state)
    return np.random.Generator(bit_generator)


def _encode(state: CheckpointState) -> bytes:
    """The checkpoint file's bytes: header line + npz payload."""
    meta: dict[str, Any] = {"round": state.round, "array_names": list(state.arrays)}
    for name in ("rng_state", "strategy_state", "metadata"):
        try:
            json.dumps(getattr(state, name))
        except (TypeError, ValueError) as err:
            raise CheckpointError(f"{name} is not JSON-serialisable: {err}") from err
        meta[name] = getattr(state, name)
    members = {f"a{i}": array for i, array in enumerate(state.arrays.values())}
    members["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, allow_pickle=False, **members)
    payload = buffer.getvalue()
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }
    return json.dumps(header).encode() + b"\n" + payload


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; some platforms cannot open a directory.
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def save_checkpoint(
    directory: str | os.PathLike[str], state: CheckpointState, *, keep: int = 2
) -> Path:
    """Write ``state`` atomically and keep only the ``keep`` newest checkpoints.

    Parameters
    ----------
    directory : path
        Checkpoint folder (created if missing).
    state : CheckpointState
        The state after round ``state.round``; an existing checkpoint of the same
        round is replaced.
    keep : int
        How many checkpoints (highest rounds) to keep, ``>= 1``. The file just
        written is never removed. Leftover temporary files of interrupted writes
        are removed too.

    Returns
    -------
    pathlib.Path
        The checkpoint file written.
    """
    if keep < 1:
        raise ValueError(f"keep: must be at least 1, got {keep}")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    content = _encode(state)  # fails on bad state before any file is touched
    final = checkpoint_path(folder, state.round)
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{final.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(content)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    _fsync_directory(folder)
    _prune(folder, keep=keep, written=final)
    return final


def _prune(folder: Path, *, keep: int, written: Path) -> None:
    removed = False
    for _, path in list_checkpoints(folder)[:-keep]:
        if path != written:
            path.unlink(missing_ok=True)
            removed = True
    for path in folder.iterdir():
        # Only one writer per folder: any temp file left is from a crashed write.
        if _TEMP.match(path.name):
            path.unlink(missing_ok=True)
            removed = True
    if removed:
        _fsync_directory(folder)


def load_checkpoint(path: str | os.PathLike[str]) -> CheckpointState:
    """Read and verify one checkpoint file.

    Raises
    ------
    CheckpointError
        The file is missing, truncated, corrupt (checksum), of another format or
        version, or inconsistent; the message says which.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"{path}: cannot be read ({err})") from err
    end = content.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        raise CheckpointError(f"{path}: no header line (truncated, or not a checkpoint)")
    try:
        header = json.loads(content[:end])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: header is not valid JSON ({err})") from err
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} file")
    if header.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format version {header.get('version')!r} is not supported "
            f"(this fedrank reads version {FORMAT_VERSION})"
        )
    payload = content[end + 1 :]
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(
            f"{path}: payload is {len(payload)} bytes, header says "
            f"{header.get('payload_bytes')} (truncated or partially written)"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"{path}: checksum mismatch (payload corrupt)")
    try:
        state = _decode(payload)
    except (ValueError, KeyError, TypeError, OSError, zipfile.BadZipFile) as err:
        # Checksummed but undecodable: written by a buggy or foreign writer.
        raise CheckpointError(f"{path}: payload cannot be decoded ({err})") from err
    match = _NAME.match(path.name)
    if match and int(match.group(1)) != state.round:
        raise CheckpointError(f"{path}: named round {match.group(1)} but holds {state.round}")
    return state


def _decode(payload: bytes) -> CheckpointState:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        meta = json.loads(archive["meta"].tobytes().decode())
        names = meta["array_names"]
        arrays = {name: archive[f"a{i}"] for i, name in enumerate(names)}
    return CheckpointState(
        round=meta["round"],
        arrays=arrays,
        rng_state=meta["rng_state"],
        strategy_state=meta["strategy_state"],
        metadata=meta["metadata"],
    )


def load_latest_checkpoint(directory: str | os.PathLike[str]) -> CheckpointState | None:
    """The newest valid checkpoint in ``directory``, or ``None`` if there is none.

    A newest checkpoint that is corrupt or partial is logged (a warning naming the
    file and the reason) and the previous one is tried.

    Raises
    ------
    CheckpointError
        Checkpoints exist but none is valid (the message lists each file and why).
    """
    candidates = list_checkpoints(directory)
    failures = []
    for _, path in reversed(candidates):
        try:
            return load_checkpoint(path)
        except CheckpointError as err:
            logger.warning("Skipping unusable checkpoint: %s; trying an older one", err)
            failures.append(str(err))
    if failures:
        raise CheckpointError(
            f"no valid checkpoint in {directory}: " + "; ".join(failures)
            + ". Remove the folder to start afresh, or restore a backup."
        )  # fmt: skip
    return None
