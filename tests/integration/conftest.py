"""Fixtures of the integration tests that start real processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.processes import Processes


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """A :class:`Processes` whose every process is stopped at the end of the module."""
    tracker = Processes(tmp_path_factory.mktemp("logs"))
    try:
        yield tracker
    finally:
        tracker.stop_all()
