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
import hashlib
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
from fedrank.privacy.ledger import PrivacyLedger
from fedrank.protos.records import from_array_record, to_array_record
from fedrank.server.checkpoint import (
    CheckpointState,
    list_checkpoints,
    load_latest_checkpoint,
    save_checkpoint,
)
from fedrank.server.results import ResultsWriter

log = logging.getLogger(__name__)

SCENARIO_FILE = "scenario.json"
CHECKPOINT_FOLDER = "checkpoints"
KEEP_CHECKPOINTS = 2  # the newest, and the one to fall back to if it is damaged

# Fields a resumed run may change: they do not change what is computed. (The results
# folder is the one resumed, wherever it has moved.)
RESUMABLE_FIELDS = frozenset(
    {"rounds", "round-timeout", "num-cpus-per-client", "num-gpus-per-client", "device"}
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
    path = Path(results_dir) / SCENARIO_FILE
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(
            "resume", f"no {SCENARIO_FILE} in {results_dir}: not the results folder of a run"
        ) from err
    except json.JSONDecodeError as err:
        raise ConfigError("resume", f"{path} is not valid JSON: {err}") from err
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


# ------------------------------------------------------------------ privacy ledgers


def ledgers_of(strategy: Strategy) -> list[PrivacyLedger]:
    """Every privacy ledger a strategy (or a strategy it wraps) records releases in.

    A wrapper keeps its inner strategy as ``.strategy`` and its ledger as ``.ledger``
    (:class:`fedrank.strategies.dp_client_level.ClientLevelDp` does).
    """
    found: list[PrivacyLedger] = []
    current: object = strategy
    for _ in range(16):  # wrappers nest a few levels at most; never loop forever
        ledger = getattr(current, "ledger", None)
        if isinstance(ledger, PrivacyLedger) and ledger not in found:
            found.append(ledger)
        current = getattr(current, "strategy", None)
        if current is None:
            break
    return found


def _releases_digest(ledger: PrivacyLedger, count: int) -> str:
    lines = "\n".join(r.to_json() for r in ledger.releases[:count])
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _ledger_key(ledger: PrivacyLedger, results_dir: Path) -> str:
    path = ledger.path.resolve()
    try:
        return str(path.relative_to(results_dir.resolve()))
    except ValueError:
        return str(path)


def ledger_positions(strategy: Strategy, results_dir: Path) -> list[dict[str, Any]]:
    """Where each of the strategy's ledgers stands: path, releases, their digest."""
    return [
        {
            "path": _ledger_key(ledger, results_dir),
            "releases": len(ledger.releases),
            "sha256": _releases_digest(ledger, len(ledger.releases)),
        }
        for ledger in ledgers_of(strategy)
    ]


def check_ledger_positions(
    positions: list[dict[str, Any]], strategy: Strategy, results_dir: Path
) -> None:
    """Refuse to resume with a ledger that lacks releases the checkpoint saw.

    Raises
    ------
    CheckpointError
        A ledger recorded in the checkpoint is not used by ``strategy``, holds fewer
        releases than it did, or holds other ones (replaced or edited).
    """
    live = {_ledger_key(ledger, results_dir): ledger for ledger in ledgers_of(strategy)}
    for position in positions:
        ledger = live.get(position["path"])
        if ledger is None:
            raise CheckpointError(
                f"the checkpoint counts releases in the privacy ledger {position['path']}, "
                "which this run does not use: resume with the same privacy settings"
            )
        have, need = len(ledger.releases), int(position["releases"])
        if have < need:
            raise CheckpointError(
                f"privacy ledger {ledger.path} holds {have} releases, the checkpoint saw "
                f"{need}: epsilon would be undercounted; restore the ledger file"
            )
        if _releases_digest(ledger, need) != position["sha256"]:
            raise CheckpointError(
                f"privacy ledger {ledger.path}: its first {need} releases are not those the "
                "checkpoint saw (file replaced or edited); restore the ledger file"
            )
        if have > need:
            log.warning(
                "privacy ledger %s: %d releases after the checkpoint (the interrupted "
                "round) still count",
                ledger.path,
                have - need,
            )


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

        Fresh (``resume_from`` is None): earlier checkpoints in the folder are removed
        and ``scenario.json`` written; ``initial()`` gives the arrays, round 1 is next.
        Resumed: the checkpoint is checked against the scenario and the ledgers, the
        RNG and strategy states restored, ``metrics.jsonl`` cut after its round.
        """
        if resume_from is None:
            for _, path in list_checkpoints(self.folder):
                path.unlink()
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
        dropped = results.keep_rounds_through(state.round)
        write_scenario(self.results_dir, self.scenario)
        log.warning(
            "resuming %s after round %d%s",
            self.results_dir,
            state.round,
            f" (dropped {dropped} metrics rows past it)" if dropped else "",
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
