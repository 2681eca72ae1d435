"""Write docs/configuration.md: every scenario key, its default and what it does."""

from __future__ import annotations

from pathlib import Path

from fedrank.config.scenario import config_reference

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


if __name__ == "__main__":
    DOC.write_text(config_reference(), encoding="utf-8")
