"""fedrank: federated rank learning and (DP-)LoRA on Flower and Ray."""

from pathlib import Path as _Path

from fedrank.errors import (
    CheckpointError,
    ConfigError,
    FedrankError,
    InvalidUpdate,
    PrivacyBudgetExhausted,
)

__version__ = "0.1.0"

# In a source checkout whose root comes first on sys.path (``flwr run .``,
# ``python -m`` from the root) this folder is imported directly, without the
# installed ``package-dir`` mapping; the component folders beside it
# (``server/``, ``client/``, ...) are then its subpackages.
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "strategies" / "__init__.py").is_file():
    __path__.append(str(_root))


def __getattr__(name: str) -> object:
    # The Python API loads on first use: `import fedrank` stays light (no torch, no Flower).
    if name in ("Scenario", "simulate", "load_model"):
        from fedrank import api

        return getattr(api, name)
    raise AttributeError(f"module 'fedrank' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "FedrankError",
    "InvalidUpdate",
    "PrivacyBudgetExhausted",
    "Scenario",
    "__version__",
    "load_model",
    "simulate",
]
