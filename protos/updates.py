"""What the rest of fedrank sees of a client update: plain frozen dataclasses.

The protobuf messages never leave :mod:`fedrank.protos.serde`; these
dataclasses (and numpy arrays) are what it hands out and takes in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "ADAPTER_DTYPES",
    "MECHANISMS",
    "SCHEMA_VERSION",
    "AdapterExpectation",
    "AdapterUpdateData",
    "Factors",
    "Mechanism",
    "PrivacyReportData",
    "RankingExpectation",
    "UpdateHeader",
    "model_fingerprint",
    "privacy_report_problem",
]

SCHEMA_VERSION = 1
"""The only ``fedrank.v1`` schema version this code writes and accepts."""

Factors = Literal["AB", "B"]
Mechanism = Literal["dp_sgd", "gaussian"]
MECHANISMS: tuple[Mechanism, ...] = ("dp_sgd", "gaussian")
ADAPTER_DTYPES = ("float16", "float32", "float64")


def _require(condition: bool, name: str, value: object, what: str) -> None:
    if not condition:
        raise ValueError(f"{name}: {what}, got {value!r}")


def _check_identity(run_id: object, round_: object, fingerprint: object, version: object) -> None:
    _require(isinstance(run_id, str) and run_id != "", "run_id", run_id, "a non-empty string")
    _require(isinstance(round_, int) and round_ >= 0, "round", round_, "an integer >= 0")
    _require(
        isinstance(fingerprint, str) and fingerprint != "",
        "model_fingerprint",
        fingerprint,
        "a non-empty string",
    )
    _require(isinstance(version, int) and version >= 1, "schema_version", version, "an int >= 1")


@dataclass(frozen=True, kw_only=True)
class UpdateHeader:
    """Who an update is for: run, round and model (the envelope of every update)."""

    schema_version: int = SCHEMA_VERSION
    run_id: str
    round: int
    model_fingerprint: str

    def __post_init__(self) -> None:
        _check_identity(self.run_id, self.round, self.model_fingerprint, self.schema_version)


@dataclass(frozen=True, kw_only=True)
class RankingExpectation:
    """What the server accepts as an FRL ranking reply this round (arXiv 2110.04350).

    ``layer_sizes`` maps every layer name to its number of edges ``n``; the
    reply must carry exactly these layers, each a permutation of ``0..n-1``.
    ``max_bytes`` bounds the payload before it is parsed
    (:func:`fedrank.protos.serde.ranking_size_limit` gives a tight bound).
    ``bucket_bits`` > 0 expects a coarse ranking instead: each edge's rank bucket in
    that many bits (:mod:`fedrank.protos.coarse`).
    """

    run_id: str
    round: int
    model_fingerprint: str
    layer_sizes: Mapping[str, int]
    max_bytes: int
    schema_version: int = SCHEMA_VERSION
    bucket_bits: int = 0

    def __post_init__(self) -> None:
        _check_identity(self.run_id, self.round, self.model_fingerprint, self.schema_version)
        sizes = dict(self.layer_sizes)
        _require(len(sizes) > 0, "layer_sizes", sizes, "at least one layer")
        for name, n in sizes.items():
            _require(isinstance(name, str) and name != "", "layer_sizes", name, "non-empty names")
            _require(isinstance(n, int) and n >= 1, f"layer_sizes[{name!r}]", n, "an int >= 1")
        _require(
            isinstance(self.max_bytes, int) and self.max_bytes > 0,
            "max_bytes",
            self.max_bytes,
            "an int > 0",
        )
        _require(
            isinstance(self.bucket_bits, int) and 0 <= self.bucket_bits <= 16,
            "bucket_bits",
            self.bucket_bits,
            "an int in 0..16",
        )
        object.__setattr__(self, "layer_sizes", MappingProxyType(sizes))


@dataclass(frozen=True, kw_only=True)
class AdapterExpectation:
    """What the server accepts as a LoRA adapter reply (LoRA arXiv 2106.09685;
    FFA-LoRA arXiv 2403.12313 sends B only).

    ``tensors`` maps every tensor name to its shape; all tensors have
    ``dtype``; the LoRA rank, alpha and factors must match the run's.
    """

    run_id: str
    round: int
    model_fingerprint: str
    tensors: Mapping[str, tuple[int, ...]]
    dtype: str
    max_bytes: int
    lora_rank: int
    lora_alpha: float
    factors: Factors
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_identity(self.run_id, self.round, self.model_fingerprint, self.schema_version)
        shapes = {name: tuple(shape) for name, shape in self.tensors.items()}
        _require(len(shapes) > 0, "tensors", shapes, "at least one tensor")
        for name, shape in shapes.items():
            _require(isinstance(name, str) and name != "", "tensors", name, "non-empty names")
            _require(
                all(isinstance(d, int) and d >= 0 for d in shape),
                f"tensors[{name!r}]",
                shape,
                "a shape of ints >= 0",
            )
        _require(self.dtype in ADAPTER_DTYPES, "dtype", self.dtype, f"one of {ADAPTER_DTYPES}")
        _require(
            isinstance(self.max_bytes, int) and self.max_bytes > 0,
            "max_bytes",
            self.max_bytes,
            "an int > 0",
        )
        _require(
            isinstance(self.lora_rank, int) and self.lora_rank >= 1,
            "lora_rank",
            self.lora_rank,
            "an int >= 1",
        )
        _require(
            math.isfinite(self.lora_alpha) and self.lora_alpha > 0,
            "lora_alpha",
            self.lora_alpha,
            "a finite number > 0",
        )
        _require(self.factors in ("AB", "B"), "factors", self.factors, "'AB' or 'B'")
        object.__setattr__(self, "tensors", MappingProxyType(shapes))


@dataclass(frozen=True, kw_only=True)
class AdapterUpdateData:
    """A decoded, validated adapter update: new writable arrays in native byte order."""

    lora_rank: int
    lora_alpha: float
    factors: Factors
    tensors: Mapping[str, npt.NDArray[np.floating[Any]]] = field(default_factory=dict)


def privacy_report_problem(
    *,
    mechanism: str,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    clipping_norm: float,
    epsilon_spent: float,
    delta: float,
) -> tuple[str, str] | None:
    """Say what is wrong with a privacy report, as ``(reason, message)``, or ``None``.

    The reason is the :class:`fedrank.errors.InvalidUpdate` code the server
    uses: ``unknown_mechanism``, ``non_finite``, ``negative``,
    ``bad_sample_rate`` or ``bad_delta``.
    """
    if mechanism not in MECHANISMS:
        return "unknown_mechanism", f"mechanism: expected one of {MECHANISMS}, got {mechanism!r}"
    numbers = {
        "noise_multiplier": noise_multiplier,
        "sample_rate": sample_rate,
        "clipping_norm": clipping_norm,
        "epsilon_spent": epsilon_spent,
        "delta": delta,
    }
    for name, value in numbers.items():
        if not math.isfinite(value):
            return "non_finite", f"{name}: expected a finite number, got {value!r}"
    for name, value in [*numbers.items(), ("steps", steps)]:
        if value < 0:
            return "negative", f"{name}: expected >= 0, got {value!r}"
    if sample_rate > 1:
        return "bad_sample_rate", f"sample_rate: expected a rate in [0, 1], got {sample_rate!r}"
    if delta >= 1:
        return "bad_delta", f"delta: expected a value in [0, 1), got {delta!r}"
    return None


@dataclass(frozen=True, kw_only=True)
class PrivacyReportData:
    """A client's account of the privacy spent by its local training.

    ``dp_sgd``: per-record clipping and Gaussian noise at every step
    (Abadi et al., arXiv 1607.00133); ``gaussian``: one Gaussian release of
    the clipped update. ``epsilon_spent`` is cumulative over the run at
    ``delta``.
    """

    mechanism: Mechanism
    noise_multiplier: float
    sample_rate: float
    steps: int
    clipping_norm: float
    epsilon_spent: float
    delta: float

    def __post_init__(self) -> None:
        problem = privacy_report_problem(
            mechanism=self.mechanism,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=self.steps,
            clipping_norm=self.clipping_norm,
            epsilon_spent=self.epsilon_spent,
            delta=self.delta,
        )
        if problem is not None:
            raise ValueError(problem[1])


def model_fingerprint(**parts: Any) -> str:
    """Hash what an update is relative to, so replies for another model are refused.

    FRL: ``model_fingerprint(architecture="mlp-784-256-128-10", seed=0, k=0.5)``;
    LoRA: the base model's name and revision plus the adapter configuration.

    Parameters
    ----------
    **parts
        JSON-serialisable values (str, int, float, bool, None, lists, dicts).

    Returns
    -------
    str
        The first 16 bytes of the SHA-256 of the parts' canonical JSON
        (sorted keys, no spaces), as 32 hex digits.

    Raises
    ------
    ValueError
        With no parts, or a part that is not JSON-serialisable (NaN included).
    """
    if not parts:
        raise ValueError("parts: give at least one part to fingerprint")
    try:
        canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ValueError(f"parts: not JSON-serialisable: {error}") from error
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]
