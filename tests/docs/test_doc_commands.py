"""Every command of README.md and docs/*.md runs as written (integration, minutes).

Each document's shell blocks run in order in a fresh copy of the checkout, with the
changes its ``<!-- commands-test: ... -->`` comments declare (placeholders such as
hostnames and ports, and a tiny number of rounds and clients); see
``tests/docs/commands.py``. A command that fails or hangs fails the test with its
output; every process started is stopped by PID at the end, descendants included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs.commands import read_blocks
from tests.docs.runner import ROOT, run_document

pytestmark = pytest.mark.integration

RUNNABLE = [
    doc
    for doc in sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    if any(b.is_shell and not (b.of("skip") or b.of("same-as")) for b in read_blocks(doc))
]


@pytest.mark.timeout(2400)
@pytest.mark.parametrize("doc", RUNNABLE, ids=lambda d: d.name)
def test_document_commands_run_as_written(doc: Path, tmp_path: Path) -> None:
    run_document(doc, tmp_path)
