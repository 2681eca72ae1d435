"""One release of a differentially private mechanism, as the privacy ledger records it."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.privacy.bounds import (
    ABSOLUTE_BOUNDS,
    MALFORMED,
    AccountantBounds,
    check_entry,
    is_number,
)

Mechanism = Literal["dp-sgd", "client-gaussian"]
Unit = Literal["record", "client"]

# Which privacy unit each mechanism protects: DP-SGD on a client protects its records;
# the server's clipped-and-noised aggregate protects whole clients.
UNIT_OF: dict[str, Unit] = {"dp-sgd": "record", "client-gaussian": "client"}


@dataclass(frozen=True)
class Release:
    """One released result of a differentially private mechanism.

    Parameters
    ----------
    round : int
        Federated round, >= 0.
    mechanism : {"dp-sgd", "client-gaussian"}
        Per-record DP-SGD on a client, or client-level Gaussian noise at the server
        (DP-FedAvg; with adaptive clipping, sigma is the effective noise multiplier of
        :func:`fedrank.privacy.adaptive_clipping.effective_noise_multiplier`).
    noise_multiplier : float
        sigma, noise std over L2 sensitivity, >= 0.
    sample_rate : float
        Poisson sampling rate q of one step, in [0, 1] (1: no amplification).
    steps : int
        Number of compositions in this release (optimizer steps; 1 for a server round).
    clip_norm : float
        L2 clipping bound C, > 0 (recorded for audit; epsilon does not depend on it).
    unit : {"record", "client"}
        What is protected; must match ``mechanism``.
    party : str
        Who spends: the client id for sample-level DP, ``"server"`` for client-level.
    digest : str
        SHA-256 (hex) of the released values, or ``""`` when not known. Two releases
        with equal fields and digests are the same release (a replay costs nothing);
        the same parameters with another digest are another release and count again.
    """

    round: int
    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    unit: Unit
    party: str
    digest: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.round, int) or isinstance(self.round, bool) or self.round < 0:
            raise ConfigError("round", f"must be an integer >= 0, got {self.round!r}")
        if self.mechanism not in UNIT_OF:
            raise ConfigError(
                "mechanism", f"must be one of {tuple(UNIT_OF)}, got {self.mechanism!r}"
            )
        if not (
            is_number(self.noise_multiplier)
            and math.isfinite(self.noise_multiplier)
            and self.noise_multiplier >= 0
        ):
            raise ConfigError(
                "noise_multiplier", f"must be a finite number >= 0, got {self.noise_multiplier!r}"
            )
        if not (is_number(self.sample_rate) and 0.0 <= self.sample_rate <= 1.0):
            raise ConfigError("sample_rate", f"must lie in [0, 1], got {self.sample_rate!r}")
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ConfigError("steps", f"must be an integer >= 0, got {self.steps!r}")
        if not (is_number(self.clip_norm) and math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError("clip_norm", f"must be a finite number > 0, got {self.clip_norm!r}")
        if self.unit != UNIT_OF[self.mechanism]:
            raise ConfigError(
                "unit",
                f"must be {UNIT_OF[self.mechanism]!r} for mechanism {self.mechanism!r}, "
                f"got {self.unit!r}",
            )
        if not isinstance(self.party, str) or not self.party:
            raise ConfigError("party", f"must be a non-empty string, got {self.party!r}")
        if not isinstance(self.digest, str) or not (
            self.digest == ""
            or (len(self.digest) == 64 and all(c in "0123456789abcdef" for c in self.digest))
        ):
            raise ConfigError(
                "digest", f"must be '' or 64 lowercase hex digits, got {self.digest!r}"
            )
        # JSON may hand back 1 for 1.0; store floats so equal releases compare equal.
        for name in ("noise_multiplier", "sample_rate", "clip_norm"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def key(self) -> tuple[int, str, str]:
        """Identity of a release for idempotent recording: (round, party, mechanism)."""
        return (self.round, self.party, self.mechanism)

    def to_json(self) -> str:
        """One JSON line (no newline); floats round-trip exactly."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> Release:
        """Parse a line written by :meth:`to_json`; ``ValueError`` (``ConfigError`` for a
        bad field) if it is not one."""
        data: Any = json.loads(text)
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) != fields:
            raise ValueError(f"expected an object with exactly the keys {sorted(fields)}")
        return cls(**data)


def dp_sgd_release(
    *,
    server_round: int,
    party: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    clip_norm: float,
    bounds: AccountantBounds = ABSOLUTE_BOUNDS,
) -> Release:
    """The ledger entry of a client's DP-SGD report, or the typed rejection.

    For values read from a reply: anything that cannot be a release, or lies outside
    ``bounds``, raises :class:`InvalidUpdate` (``privacy_malformed`` or
    ``privacy_out_of_range``), never another exception.
    """
    check_entry(0, (noise_multiplier, sample_rate, steps), bounds)
    try:
        return Release(
            round=server_round,
            mechanism="dp-sgd",
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            clip_norm=clip_norm,
            unit="record",
            party=party,
        )
    except ConfigError as err:
        raise InvalidUpdate(MALFORMED, f"not a DP-SGD release: {err}") from err
