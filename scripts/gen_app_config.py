"""Rewrite ``[tool.flwr.app.config]`` in pyproject.toml from the scenario definition."""

from __future__ import annotations

import re
from pathlib import Path

from fedrank.config.app_config import BEGIN, END, app_config_toml

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def main() -> None:
    text = PYPROJECT.read_text(encoding="utf-8")
    block = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n", re.S)
    if not block.search(text):
        raise SystemExit(f"{PYPROJECT}: no generated block between the markers")
    PYPROJECT.write_text(block.sub(lambda _: app_config_toml(), text), encoding="utf-8")


if __name__ == "__main__":
    main()
