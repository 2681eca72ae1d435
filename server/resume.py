"""Checkpoint every round of a run, and resume it where it stopped.

A results folder holds everything a resumed run needs: ``scenario.json`` (written
when the run starts) and ``checkpoints/round-NNNNNNNN.ckpt`` (written after every
round by :func:`fedrank.server.checkpoint.save_checkpoint`: atomic, checksummed,
the last few kept). A checkpoint holds the global arrays, the round, the server
process's RNG states, the strategy's own state (for strategies that implement
:class:`SupportsState`) and the position of every privacy ledger the strategy
writes to.

Resuming after round ``r`` restores all of that, drops any ``metrics.jsonl`` row
past ``r`` and runs round ``r + 1`` on. Client sampling is seeded by (seed, round)
and local training by (seed, round, partition), so the resumed run computes what
an uninterrupted one would have, bit for bit.

Privacy ledgers are append-only files that the run itself keeps durable; the
checkpoint records how many releases each held. A resumed run refuses a ledger
with fewer releases than that (or other ones): epsilon read after a resume is never
lower than before the crash. Releases made after the checkpoint, in the round that
crashed, stay in the ledger and count; replaying that round records them again
only if they differ (:meth:`fedrank.privacy.ledger.PrivacyLedger.record`).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedrank import __version__
from fedrank.config import Scenario
from fedrank.errors import CheckpointError, ConfigError
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.server.checkpoint import (
    CheckpointState,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from fedrank.server.ledger_positions import check_ledger_positions, ledger_positions
from fedrank.server.ledger_positions import ledgers_of as ledgers_of
from fedrank.server.results import ResultsWriter

log = logging.getLogger(__name__)

SCENARIO_FILE = "scenario.json"
CHECKPOINT_FOLDER = "checkpoints"
KEEP_CHECKPOINTS = 2  # the newest, and the one to fall back to if it is damaged

# Fields a resumed run may change: they do not change what is computed. (The results
# folder is the one resumed, wherever it has moved.) The status service and the
# deployed ServerApp's resume-from are about serving and finding the run.
RESUMABLE_FIELDS = frozenset(
    {
        "rounds",
        "round-timeout",
        "connect-timeout",
        "discovery-timeout",
        "min-clients",
        "num-cpus-per-client",
        "num-gpus-per-client",
        "device",
    }
    | {"status-address", "status-linger", "resume-from"}
)


@runtime_checkable
class SupportsState(Protocol):
    """A strategy with state of its own that a checkpoint must carry.

    ``state_dict`` returns JSON-able values; ``load_state_dict`` takes what it
    returned. A wrapper strategy includes its inner strategy's state in its own.
    Strategies whose every decision is seeded by (seed, round) need neither.
    """

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state after the last completed round."""
        ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        ...


def checkpoint_folder(results_dir: str | os.PathLike[str]) -> Path:
    """Where a run's checkpoints live."""
    return Path(results_dir) / CHECKPOINT_FOLDER


# ------------------------------------------------------------------ scenario file


def write_scenario(results_dir: str | os.PathLike[str], scenario: Scenario) -> Path:
    """Write ``scenario.json`` atomically (what ``--resume`` reads back)."""
    path = Path(results_dir) / SCENARIO_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(scenario.to_run_config(), indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def resume_scenario(
    results_dir: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None
) -> Scenario:
    """The scenario of the run in ``results_dir``, with allowed ``overrides`` applied.

    Parameters
    ----------
    results_dir : path
        A results folder written by an earlier run (it may have moved: the scenario's
        ``results-dir`` becomes this path).
    overrides : Mapping[str, Any], optional
        Flat key (dashed or underscored) -> new value; only :data:`RESUMABLE_FIELDS`
        (more rounds, another timeout, resources or device). Anything else would make
        a different run.

    Raises
    ------
    ConfigError
        No ``scenario.json`` there, or an override of another field.
    """
    folder = Path(results_dir)
    if folder.exists() and not folder.is_dir():
        raise ConfigError("resume", f"{folder} is a file: give the results folder of a run")
    path = folder / SCENARIO_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(
            "resume", f"no {SCENARIO_FILE} in {results_dir}: not the results folder of a run"
        ) from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError("resume", f"{path} is not valid JSON: {err}") from err
    except OSError as err:
        raise ConfigError("resume", f"cannot read {path}: {err.strerror}") from err
    changes = {key.replace("_", "-"): value for key, value in (overrides or {}).items()}
    refused = sorted(key for key in changes if key not in RESUMABLE_FIELDS)
    if refused:
        raise ConfigError(
            "resume",
            f"cannot change {', '.join(refused)} of a run being "
            f"resumed (allowed: {', '.join(sorted(RESUMABLE_FIELDS))})",
        )
    if not isinstance(values, dict):
        raise ConfigError("resume", f"{path} does not hold a scenario (a JSON object)")
    return Scenario.from_mapping(
        {**values, **changes, "results-dir": str(results_dir)}, source=str(path)
    )


def latest_checkpoint(results_dir: str | os.PathLike[str]) -> CheckpointState:
    """The newest valid checkpoint of the run in ``results_dir``.

    A damaged newest checkpoint is reported (a warning naming the file and what is
    wrong) and the previous one is used.

    Raises
    ------
    CheckpointError
        There is none, or none is valid.
    """
    folder = checkpoint_folder(results_dir)
    state = load_latest_checkpoint(folder)
    if state is None:
        raise CheckpointError(f"no checkpoint in {folder}: nothing to resume")
    newest = max(r for r, _ in list_checkpoints(folder))
    if state.round < newest:
        log.warning(
            "the checkpoint of round %d is unusable; resuming from round %d instead",
            newest,
            state.round,
        )
    return state


# ------------------------------------------------------------------ RNG states


def capture_rng_state() -> dict[str, Any]:
    """JSON-able states of this process's global generators (Python, NumPy, torch)."""
    version, internal, gauss = random.getstate()
    # The legacy global generator is what third-party code draws from unseeded.
    legacy = np.random.get_state(legacy=False)  # noqa: NPY002
    numpy_state = {**legacy, "state": {**legacy["state"], "key": legacy["state"]["key"].tolist()}}
    torch_bytes = torch.get_rng_state().numpy().tobytes()
    return {
        "python": [version, list(internal), gauss],
        "numpy": numpy_state,
        "torch": base64.b64encode(torch_bytes).decode("ascii"),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Put back what :func:`capture_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(state["numpy"])
    numpy_state["state"] = {
        **numpy_state["state"],
        "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32),
    }
    np.random.set_state(numpy_state)  # noqa: NPY002
    raw = bytearray(base64.b64decode(state["torch"]))
    torch.set_rng_state(torch.frombuffer(raw, dtype=torch.uint8).clone())


# ------------------------------------------------------------------ the checkpointer


class RunCheckpointer:
    """Saves the run's state after every round; starts a run fresh or from a checkpoint.

    Parameters
    ----------
    scenario : Scenario
        The run (its ``results_dir`` holds ``scenario.json`` and ``checkpoints/``).
    strategy : Strategy
        Its state is saved when it implements :class:`SupportsState`; its privacy
        ledgers (:func:`ledgers_of`) are tracked.
    keep : int
        Checkpoints kept (the newest ones).
    """

    def __init__(self, scenario: Scenario, strategy: Strategy, *, keep: int = KEEP_CHECKPOINTS):
        self.scenario = scenario
        self.strategy = strategy
        self.keep = keep
        self.results_dir = Path(scenario.output.results_dir)
        self.folder = checkpoint_folder(self.results_dir)

    def start(
        self,
        initial: Callable[[], ArrayRecord],
        *,
        results: ResultsWriter,
        resume_from: CheckpointState | None = None,
    ) -> tuple[ArrayRecord, int]:
        """The global arrays to start from and the first round to run.

        Fresh (``resume_from`` is None): ``scenario.json`` is written; ``initial()``
        gives the arrays, round 1 is next. A folder holding another run's checkpoints is
        refused (never deleted). Resumed: the checkpoint is checked against the scenario
        and the ledgers, the RNG and strategy states restored, ``metrics.jsonl`` kept
        through its round (:func:`fedrank.server.results.resume_rows`: one row per
        round; what cannot be recovered is logged).

        Raises
        ------
        CheckpointError
            A fresh start in a folder with checkpoints, or a checkpoint that does not
            fit the scenario or the ledgers.
        """
        if resume_from is None:
            earlier = list_checkpoints(self.folder)
            if earlier:
                raise CheckpointError(
                    f"{self.folder} holds the checkpoints of an earlier run (round "
                    f"{max(r for r, _ in earlier)}): continue it with --resume "
                    f"{self.results_dir}, or give another --results-dir"
                )
            write_scenario(self.results_dir, self.scenario)
            return initial(), 1
        state = resume_from
        self._check_scenario(state)
        check_ledger_positions(state.metadata.get("ledgers", []), self.strategy, self.results_dir)
        restore_rng_state(state.rng_state)
        if "state" in state.strategy_state:
            if not isinstance(self.strategy, SupportsState):
                raise CheckpointError(
                    f"the checkpoint holds state of a {state.strategy_state.get('class')} "
                    f"strategy, but {type(self.strategy).__name__} cannot load it"
                )
            self.strategy.load_state_dict(state.strategy_state["state"])
        rows = results.keep_rounds_through(state.round)
        write_scenario(self.results_dir, self.scenario)
        said = rows.describe()
        log.warning(
            "resuming %s after round %d%s",
            self.results_dir,
            state.round,
            f"; metrics.jsonl: {said}" if said else "",
        )
        return to_array_record(state.arrays), state.round + 1

    def save(self, server_round: int, arrays: ArrayRecord) -> None:
        """Checkpoint the state after ``server_round`` (atomically)."""
        strategy_state: dict[str, Any] = {}
        if isinstance(self.strategy, SupportsState):
            strategy_state = {
                "class": type(self.strategy).__name__,
                "state": self.strategy.state_dict(),
            }
        state = CheckpointState(
            round=server_round,
            arrays=from_array_record(arrays),
            rng_state=capture_rng_state(),
            strategy_state=strategy_state,
            metadata={
                "scenario": self.scenario.to_run_config(),
                "ledgers": ledger_positions(self.strategy, self.results_dir),
                "fedrank": __version__,
            },
        )
        save_checkpoint(self.folder, state, keep=self.keep)

    def _check_scenario(self, state: CheckpointState) -> None:
        saved = state.metadata.get("scenario", {})
        now = self.scenario.to_run_config()
        changeable = RESUMABLE_FIELDS | {"results-dir"}
        differ = [
            f"{key} (checkpoint {saved[key]!r}, now {now[key]!r})"
            for key in sorted(set(saved) & set(now))
            if key not in changeable and saved[key] != now[key]
        ]
        if differ:
            raise CheckpointError(
                f"the checkpoint of round {state.round} belongs to another scenario: "
                + "; ".join(differ)
            )
        if self.scenario.run.rounds < state.round:
            raise ConfigError(
                "rounds",
                f"{self.scenario.run.rounds} is fewer than the {state.round} rounds already done",
            )
