"""The results folder of a run: metrics.jsonl, summary.json, plot and exported model."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class ResultsWriter:
    """Writes one run's outputs under ``directory``.

    ``metrics.jsonl`` gets one JSON object per round, flushed and fsynced as it is
    written so that an interrupted run keeps every completed round.
    """

    def __init__(self, directory: str | Path, *, append: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.directory / "metrics.jsonl"
        if not append and self.metrics_path.exists():
            log.warning("overwriting the earlier run's results in %s", self.directory)
            self.metrics_path.unlink()

    def write_round(self, row: Mapping[str, Any]) -> None:
        """Append one round's metrics durably."""
        with self.metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read_rounds(self) -> list[dict[str, Any]]:
        """Every round written so far."""
        if not self.metrics_path.exists():
            return []
        with self.metrics_path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def keep_rounds_through(self, last_round: int) -> int:
        """Drop every row past ``last_round`` (a resumed run redoes them); return how many.

        A last line cut short by a crash is dropped too. The file is rewritten
        atomically (temporary file, fsync, rename).
        """
        if not self.metrics_path.exists():
            return 0
        kept: list[str] = []
        dropped = 0
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if number < len(lines):
                    raise
                dropped += 1  # the write that the crash interrupted
                continue
            if int(row["round"]) <= last_round:
                kept.append(line)
            else:
                dropped += 1
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics_path)
        return dropped

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
