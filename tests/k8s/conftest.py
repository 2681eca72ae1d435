"""The rendered manifests, shared by the tests of this folder."""

from __future__ import annotations

from typing import Any

import pytest

from tests.k8s.manifests import render_all


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Every kustomization rendered once: target name -> documents."""
    return render_all()
