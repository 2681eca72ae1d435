"""The CSV an experiment grid keeps: one row a finished run, appended as each run ends,
so that an interrupted grid resumes where it stopped."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any


def append_row(path: Path, fields: Sequence[str], row: Mapping[str, Any]) -> None:
    """Append ``row`` (its ``fields``) to ``path``, writing the header first if it is new."""
    new_file = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fields))
        if new_file:
            writer.writeheader()
        writer.writerow({name: row[name] for name in fields})


def read_csv(
    path: Path, *, floats: Iterable[str] = (), ints: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """The rows of ``path`` with the ``floats`` and ``ints`` columns parsed (an absent
    file: no rows)."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows: list[dict[str, Any]] = list(csv.DictReader(handle))
    floats, ints = tuple(floats), tuple(ints)
    for row in rows:
        for name in floats:
            row[name] = float(row[name])
        for name in ints:
            row[name] = int(row[name])
    return rows
