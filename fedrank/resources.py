"""Data files shipped inside the fedrank package, found wherever the code runs from.

``flwr run .`` sends the app's folder as a bundle that keeps only source and text
files (``*.py``, ``*.toml``, ``*.md``, ``*.json``, ...; Flower's ``fab-include`` can
narrow that list, never widen it), and every SuperExec puts the bundle first on
``sys.path``. The ``fedrank`` imported there is the bundle's, without the binary
data files of the installed package (the compressed text corpus). :func:`packaged_file`
looks in the imported package first, then in every other copy of the package on the
import path (the installed one: a regular or an editable install).
"""

from __future__ import annotations

import sys
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from fedrank.errors import ConfigError


def _copies(package: str) -> list[Path]:
    """Folders of ``package`` in every copy of its top-level package on the import path:
    each ``sys.path`` entry, then finders such as an editable install's."""
    from importlib.machinery import ModuleSpec, PathFinder

    top, _, rest = package.partition(".")
    specs: list[ModuleSpec | None] = [PathFinder.find_spec(top, [entry]) for entry in sys.path]
    for finder in sys.meta_path:
        if finder is not PathFinder and hasattr(finder, "find_spec"):
            try:
                specs.append(finder.find_spec(top, None))
            except (ImportError, ValueError):  # a finder that cannot answer for the name
                continue
    found: list[Path] = []
    for spec in specs:
        for location in (spec.submodule_search_locations or []) if spec else []:
            folder = Path(location).joinpath(*rest.split(".")) if rest else Path(location)
            if folder.is_dir() and folder not in found:
                found.append(folder)
    return found


def packaged_file(package: str, *parts: str) -> Traversable:
    """A data file of ``package`` (``packaged_file("fedrank.data", "x", "y.csv.bz2")``).

    Raises
    ------
    ConfigError
        ``packaged-data``: no copy of the package on the import path holds the file.
    """
    here = resources.files(package).joinpath(*parts)
    if here.is_file():
        return here
    for folder in _copies(package):
        candidate = folder.joinpath(*parts)
        if candidate.is_file():
            return candidate
    raise ConfigError(
        "packaged-data",
        f"{'/'.join(parts)} of {package} is in no copy of fedrank on the import path "
        "(an app bundle leaves data files out: install fedrank where the app runs)",
    )
