"""The results folder of a run: metrics.jsonl, summary.json, plot and exported model.

A run never deletes or replaces another run's files. A new run starts only in a
missing or empty folder (:func:`check_results_dir` refuses any other, naming it and
what to do); a run that fails while starting leaves the folder as it found it
(:meth:`ResultsWriter.starting`); a resumed run keeps every row up to its checkpoint,
recovers from a last line cut short by a crash, and refuses, naming the file and line,
what it cannot recover (:func:`resume_rows`).

The default folder, ``results/latest``, is a link: a run left at that default writes to
a new ``results/runs/<date>-<time>`` folder and points ``results/latest`` at it
(:func:`new_run_folder`), so running twice never meets an earlier run's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedrank.errors import ConfigError

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
_FIELD = "results-dir"
DEFAULT_RESULTS = "results/latest"
"""``results-dir``'s default: a link to the newest run left at the default."""


def new_run_folder(results_dir: str, *, now: float | None = None) -> str:
    """The folder a new run writes to: ``results_dir`` itself, unless it is the default,
    :data:`DEFAULT_RESULTS`: then a new ``results/runs/<YYYYmmdd-HHMMSS>`` (``-2``,
    ``-3``, ... if taken)."""
    if results_dir != DEFAULT_RESULTS:
        return results_dir
    runs = Path(DEFAULT_RESULTS).parent / "runs"
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    folder, n = runs / stamp, 2
    while folder.exists() or folder.is_symlink():
        folder, n = runs / f"{stamp}-{n}", n + 1
    return str(folder)


def _make_unique(folder: str) -> str:
    """Create ``folder`` (or the next free ``-N`` sibling) atomically; return its path."""
    base, n = folder, 2
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    while True:
        try:
            Path(folder).mkdir()
            return folder
        except FileExistsError:
            folder, n = f"{base}-{n}", n + 1


def claim_results_dir(results_dir: str) -> str:
    """The checked folder of a new run (:func:`new_run_folder`, :func:`check_results_dir`).

    For a run left at the default, ``results/latest`` becomes a link to its folder.
    Nothing is moved or deleted: a ``results/latest`` that is a real folder (written by
    an earlier version) is left as it is, and the run only goes elsewhere.
    """
    folder = new_run_folder(results_dir)
    check_results_dir(folder)
    if folder != results_dir:
        folder = _make_unique(folder)  # two runs started in the same second get two
        link = Path(results_dir)
        if link.is_symlink() or not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            staged = link.with_name(f".latest-{os.getpid()}")
            staged.unlink(missing_ok=True)
            staged.symlink_to(Path(folder).relative_to(link.parent), target_is_directory=True)
            os.replace(staged, link)  # atomic: the link always names one run
        else:
            log.warning("%s is a folder of an earlier run; it is left as it is", link)
    return folder


def _existing_ancestor(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(".")


def check_results_dir(
    directory: str | os.PathLike[str], *, resume_round: int | None = None
) -> None:
    """Refuse a results folder this run cannot use, before anything starts.

    Parameters
    ----------
    directory : path
        The run's ``results-dir``.
    resume_round : int, optional
        A resumed run's checkpoint round: the folder must hold that run, and its
        ``metrics.jsonl`` must be recoverable up to that round (:func:`resume_rows`).
        None: a new run, which needs a missing or empty folder.

    Raises
    ------
    ConfigError
        ``results-dir``: the path or a folder above it is a file; the folder cannot be
        created or written; a new run's folder already holds files (a run never replaces
        another's: ``--resume`` it, or give another ``--results-dir``); a resumed run's
        ``metrics.jsonl`` cannot be recovered.
    """
    path = Path(directory)
    base = _existing_ancestor(path)
    if not base.is_dir():
        where = "is a file" if base == path else f"lies under the file {base}"
        raise ConfigError(_FIELD, f"{path} {where}: give the path of a folder")
    if path.exists():
        try:
            entries = sorted(entry.name for entry in path.iterdir())
        except OSError as err:
            raise ConfigError(_FIELD, f"cannot read {path}: {err.strerror}") from err
        if entries and resume_round is None:
            shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
            raise ConfigError(
                _FIELD,
                f"{path} already holds {shown}: a run never replaces another's files; "
                f"continue that run with --resume {path}, or give another --results-dir",
            )
    elif resume_round is not None:
        raise ConfigError("resume", f"{path} does not exist")
    _check_writable(path, base)
    if resume_round is not None:
        resume_rows(path / METRICS_FILE, resume_round)


def _check_writable(path: Path, base: Path) -> None:
    """Create and remove a probe file where the run will write (root ignores mode bits,
    so only trying tells)."""
    target = path if path.exists() else base
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".fedrank-probe-"):
            pass
    except OSError as err:
        what = "write in" if target == path else f"create {path} in"
        raise ConfigError(_FIELD, f"cannot {what} {target}: {err.strerror}") from err


@dataclasses.dataclass(frozen=True)
class ResumeRows:
    """What a resumed run keeps of ``metrics.jsonl`` (:func:`resume_rows`).

    Parameters
    ----------
    kept : list of str
        The lines of rounds ``0..last_round``, one per round, in file order.
    dropped : int
        Rows past ``last_round`` (the resumed run writes them again).
    duplicates : int
        Second rows of a round already kept (an earlier resume wrote them).
    cut : bool
        The last line was cut short by a crash (its round is written again).
    missing : list of int
        Rounds ``0..last_round`` without a row: not recoverable.
    """

    kept: list[str]
    dropped: int
    duplicates: int
    cut: bool
    missing: list[int]

    def describe(self) -> str:
        """One line saying what was dropped and what cannot be recovered ('' if nothing)."""
        parts = []
        if self.cut:
            parts.append("its last line was cut short by the crash (that round is run again)")
        if self.dropped:
            parts.append(f"{self.dropped} rows past the checkpoint dropped (run again)")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate rows dropped")
        if self.missing:
            parts.append(f"the rows of rounds {_ranges(self.missing)} are lost (not recoverable)")
        return "; ".join(parts)


def _ranges(rounds: Sequence[int]) -> str:
    spans: list[list[int]] = []
    for r in rounds:
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)


def resume_rows(path: Path, last_round: int) -> ResumeRows:
    """Read ``metrics.jsonl`` for a run resumed after ``last_round``; change nothing.

    A last line that is not valid JSON was cut short by a crash: its round is redone,
    so it is dropped. Any other line must be a JSON object with an integer ``round``.

    Raises
    ------
    ConfigError
        ``resume``: the file is missing, or a line other than the last is not a row
        (the message names the file, the line, and what to do).
    """
    if not path.is_file():
        raise ConfigError(
            "resume",
            f"{path} is missing: the rows of rounds 0-{last_round} cannot be recovered; "
            "create it empty to resume without them",
        )
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError("resume", f"cannot read {path}: {err}") from err
    while lines and not lines[-1].strip():
        lines.pop()
    kept: dict[int, str] = {}
    dropped = duplicates = 0
    cut = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines):
                cut = True
                continue
            raise ConfigError(
                "resume",
                f"{path} line {number} is not valid JSON ({err.msg}): the file was damaged "
                "or edited; restore it, or delete that line to resume without it",
            ) from err
        server_round = row.get("round") if isinstance(row, dict) else None
        if isinstance(server_round, bool) or not isinstance(server_round, int):
            raise ConfigError(
                "resume",
                f"{path} line {number} is not a round's row (no integer 'round'): restore "
                "the file, or delete that line to resume without it",
            )
        if server_round > last_round:
            dropped += 1
        elif server_round in kept:
            duplicates += 1
        else:
            kept[server_round] = line
    missing = [r for r in range(last_round + 1) if r not in kept]
    return ResumeRows(list(kept.values()), dropped, duplicates, cut, missing)


class ResultsWriter:
    """Writes one run's outputs under ``directory``.

    ``metrics.jsonl`` gets one JSON object per round, flushed and fsynced as it is
    written so that an interrupted run keeps every completed round.

    Parameters
    ----------
    directory : path
        The results folder: a new run's must be missing or empty
        (:func:`check_results_dir`); it is created.
    append : bool
        A resumed run's folder: kept as it is.
    """

    def __init__(self, directory: str | os.PathLike[str], *, append: bool = False) -> None:
        self.directory = Path(directory)
        self.append = append
        self._created: Path | None = None  # the top folder this writer created
        if not append:
            check_results_dir(self.directory)
            if not self.directory.exists():
                self._created = _highest_missing(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.directory / METRICS_FILE

    @contextlib.contextmanager
    def starting(self) -> Iterator[None]:
        """Undo a new run's writes if the block raises: the folder is left as it was found.

        A new run's folder was missing (then it is removed again) or empty (then it is
        emptied again). A resumed run changes nothing before its rounds start but its
        checkpointer's last step, so nothing is undone for it.
        """
        try:
            yield
        except BaseException:
            if not self.append:
                self._undo()
            raise

    def _undo(self) -> None:
        if self._created is not None:
            shutil.rmtree(self._created, ignore_errors=True)
            log.warning("the run did not start; removed %s, which it had created", self._created)
            return
        for entry in self.directory.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        log.warning("the run did not start; %s is empty again", self.directory)

    def write_round(self, row: Mapping[str, Any]) -> None:
        """Append one round's metrics durably."""
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_rounds(self) -> list[dict[str, Any]]:
        """Every round written so far (a last line cut short by a crash is left out)."""
        if not self.metrics_path.exists():
            return []
        rows = []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                if number < len(lines):
                    raise
        return rows

    def keep_rounds_through(self, last_round: int) -> ResumeRows:
        """Keep one row per round ``0..last_round``, drop the rest (:func:`resume_rows`).

        The file is rewritten atomically (temporary file, fsync, rename).
        """
        plan = resume_rows(self.metrics_path, last_round)
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in plan.kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)
        return plan

    def write_summary(self, summary: Mapping[str, Any]) -> Path:
        """Write ``summary.json`` (atomically)."""
        path = self.directory / "summary.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(dict(summary), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    def plot_accuracy(self, rows: Sequence[Mapping[str, Any]], *, title: str) -> Path:
        """Accuracy per round as ``accuracy.png``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.directory / "accuracy.png"
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["round"] for r in rows], [100 * r["accuracy"] for r in rows], marker=".")
        ax.set_xlabel("round")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path


def _highest_missing(path: Path) -> Path:
    """The topmost folder of ``path`` that does not exist yet (what mkdir -p creates)."""
    top = path
    for parent in path.parents:
        if parent.exists():
            break
        top = parent
    return top
