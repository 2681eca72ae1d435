"""The typed exceptions of fedrank.

Every error says what was wrong and, where there is one, what to do about it.
A bad client reply is an expected event: it raises :class:`InvalidUpdate`, which
the server catches, logs and counts; it never crashes a round.
"""

from __future__ import annotations


class FedrankError(Exception):
    """Base class of every error fedrank raises on purpose."""


class ConfigError(FedrankError, ValueError):
    """A run configuration is invalid; raised before anything starts.

    Parameters
    ----------
    field : str
        The configuration field at fault (as written in a scenario file).
    message : str
        What was wrong with it and what is accepted.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidUpdate(FedrankError):
    """A client's reply failed validation and is rejected.

    Parameters
    ----------
    reason : str
        A short, stable reason code (``"not_permutation"``, ``"wrong_round"``, ...)
        used as the key in the round's ``rejected`` metrics.
    message : str
        What exactly was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"[{reason}] {message}")
        self.reason = reason


class PrivacyBudgetExhausted(FedrankError):
    """A release would spend more privacy budget than configured; it is not made."""


class CheckpointError(FedrankError):
    """A checkpoint is missing, partial or corrupt."""
