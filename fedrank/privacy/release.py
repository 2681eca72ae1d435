"""One release of a differentially private mechanism, as the privacy ledger records it."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.privacy.bounds import (
    ABSOLUTE_BOUNDS,
    MALFORMED,
    AccountantBounds,
    check_entry,
    is_number,
)
from fedrank.privacy.rqm import RqmParams

Mechanism = Literal["dp-sgd", "client-gaussian", "client-rqm"]
Unit = Literal["record", "client"]

# Which privacy unit each mechanism protects: DP-SGD on a client protects its records;
# the server's clipped-and-noised aggregate, and a client's own randomized
# quantization, protect whole clients.
UNIT_OF: dict[str, Unit] = {
    "dp-sgd": "record",
    "client-gaussian": "client",
    "client-rqm": "client",
}
_RQM_FIELDS = ("rqm_levels", "rqm_extension", "rqm_keep_probability", "rqm_coordinates")


@dataclass(frozen=True)
class Release:
    """One released result of a differentially private mechanism.

    Parameters
    ----------
    round : int
        Federated round, >= 0.
    mechanism : {"dp-sgd", "client-gaussian", "client-rqm"}
        Per-record DP-SGD on a client, client-level Gaussian noise at the server
        (DP-FedAvg; with adaptive clipping, sigma is the effective noise multiplier of
        :func:`fedrank.privacy.adaptive_clipping.effective_noise_multiplier`), or one
        client's update sent through RQM (:mod:`fedrank.privacy.rqm`; its Gaussian
        fields are 0, its ``rqm_*`` fields say what was composed).
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
    rqm_levels, rqm_extension, rqm_keep_probability, rqm_coordinates : int, float, float, int
        RQM only (0 otherwise): m, Delta, q and the number of coordinates quantized;
        ``clip_norm`` is its c. Accounted exactly, coordinate by coordinate
        (:mod:`fedrank.privacy.rqm_accounting`).
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
    rqm_levels: int = 0
    rqm_extension: float = 0.0
    rqm_keep_probability: float = 0.0
    rqm_coordinates: int = 0

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
        self._check_rqm()
        # JSON may hand back 1 for 1.0; store floats so equal releases compare equal.
        for name in ("noise_multiplier", "sample_rate", "clip_norm", "rqm_extension",
                     "rqm_keep_probability"):  # fmt: skip
            object.__setattr__(self, name, float(getattr(self, name)))

    def _check_rqm(self) -> None:
        values = [getattr(self, name) for name in _RQM_FIELDS]
        if self.mechanism != "client-rqm":
            if any(v != 0 for v in values):
                raise ConfigError("rqm_levels", f"only a client-rqm release has RQM fields: {self}")
            return
        # Its cost is all in the RQM fields: none may be missing, none Gaussian.
        if (self.noise_multiplier, self.sample_rate, self.steps) != (0.0, 0.0, 0):
            raise ConfigError("noise_multiplier", "a client-rqm release has no Gaussian part")
        if self.rqm_params is None:  # validates, or says which field is wrong
            raise ConfigError("rqm_levels", "a client-rqm release needs its RQM fields")
        if isinstance(self.rqm_coordinates, bool) or not (
            isinstance(self.rqm_coordinates, int) and self.rqm_coordinates >= 1
        ):
            raise ConfigError("rqm_coordinates", f"must be >= 1, got {self.rqm_coordinates!r}")

    @property
    def rqm_params(self) -> RqmParams | None:
        """The RQM parameters of a client-rqm release (None for other mechanisms)."""
        if self.mechanism != "client-rqm":
            return None
        return RqmParams(
            clip=self.clip_norm,
            extension=self.rqm_extension,
            levels=self.rqm_levels,
            keep_probability=self.rqm_keep_probability,
        )

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
        required = fields - set(_RQM_FIELDS)  # lines written before RQM lack them
        if not isinstance(data, dict) or not required <= set(data) <= fields:
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
    digest: str = "",
) -> Release:
    """The ledger entry of a client's DP-SGD report, or the typed rejection.

    ``digest``: of the tensors the reply carries (:func:`state_digest`).

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
            digest=digest,
        )
    except ConfigError as err:
        raise InvalidUpdate(MALFORMED, f"not a DP-SGD release: {err}") from err


def state_digest(state: Mapping[str, npt.NDArray[Any]], *extra: float) -> str:
    """SHA-256 (hex) of released tensors (names, dtypes, shapes, bytes) and scalars.

    What a ledger stores as a release's ``digest``: two releases with equal parameters
    and equal digests are the same release (a replay, counted once).
    """
    digest = hashlib.sha256()
    for name, value in state.items():
        array = np.ascontiguousarray(value)
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    for scalar in extra:
        digest.update(f"|{float(scalar)!r}".encode())
    return digest.hexdigest()
