"""Canaries for one-run privacy audits: Dirac updates on secret coordinates.

Steinke, Nasr and Jagielski 2023 ("Privacy Auditing with One (1) Training Run",
arXiv 2305.08846) audit DP-SGD in the white-box setting with *gradient canaries*:
m canaries, each included independently with probability 1/2 (the auditor's secret
coin), each a gradient that is zero but on one coordinate; after one run the auditor
scores each canary by how far the model moved along its coordinate and guesses the
highest scores "included", the lowest "excluded" (:mod:`fedrank.privacy.audit`).
The guarantee being audited holds for *any* record or client, so a canary may be
anything the mechanism's sensitivity allows:

- **sample level** (DP-SGD on a site): a canary record whose per-example gradient is
  ``-sign * C * e_j`` (norm C, the clip norm: clipping leaves it whole; gradient
  descent pushes coordinate j towards ``sign``). It belongs to
  one site's data and, like every record, is Poisson-sampled into each step with the
  site's rate q (:class:`GradientCanaries`, applied by
  :func:`fedrank.lora_training.train_lora`).
- **client level** (the server's DP-FedAvg): a canary client whose update is
  ``sign * C * e_j``: the server clips it to itself, sums and noises it like any other.

Coordinates are distinct and drawn (with the signs) from the auditor's own
:class:`~fedrank.privacy.randomness.RandomSource`, so no real client's training is
aligned with a canary except by chance; the score is
``sign * (final[j] - initial[j])``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, RecordDict

from fedrank.errors import ConfigError
from fedrank.privacy.audit import draw_inclusion
from fedrank.privacy.randomness import RandomSource

State = Mapping[str, npt.NDArray[np.floating]]


@dataclass(frozen=True)
class Canary:
    """One canary: a coordinate of a tensor and a direction.

    Parameters
    ----------
    tensor : str
        The state tensor's name (as in :func:`fedrank.models.lora.trainable_tensors`).
    position : int
        That tensor's position in the state (the trained parameters' model order).
    index : int
        Flat index of the coordinate inside the tensor.
    sign : int
        +1 or -1.
    """

    tensor: str
    position: int
    index: int
    sign: int

    def __post_init__(self) -> None:
        if self.sign not in (-1, 1):
            raise ConfigError("sign", f"must be +1 or -1, got {self.sign!r}")
        for name in ("position", "index"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(name, f"must be an integer >= 0, got {value!r}")


@dataclass(frozen=True)
class CanaryPlan:
    """The auditor's secret: which canaries exist, where, and who holds them.

    Attributes
    ----------
    canaries : tuple[Canary, ...]
        Every canary, included or not (the excluded ones are scored too).
    included : np.ndarray
        Boolean, one per canary: inserted into the run (probability 1/2 each).
    owners : np.ndarray
        Integer, one per canary: the site (partition) holding a sample-level canary;
        -1 for client-level canaries (each is a client of its own).
    """

    canaries: tuple[Canary, ...]
    included: npt.NDArray[np.bool_] = field(repr=False)
    owners: npt.NDArray[np.int64] = field(repr=False)

    def held_by(self, owner: int) -> tuple[Canary, ...]:
        """The included canaries of one site."""
        return tuple(
            c
            for c, inside, who in zip(self.canaries, self.included, self.owners, strict=True)
            if inside and who == owner
        )

    def included_canaries(self) -> tuple[Canary, ...]:
        """Every included canary."""
        return tuple(c for c, inside in zip(self.canaries, self.included, strict=True) if inside)


def plan_canaries(
    shapes: Mapping[str, Sequence[int]],
    count: int,
    *,
    source: RandomSource,
    owners: int = 0,
    tensors: Sequence[str] | None = None,
) -> CanaryPlan:
    """Draw ``count`` canaries on distinct coordinates, each included with probability 1/2.

    Parameters
    ----------
    shapes : Mapping[str, Sequence[int]]
        The trained state's tensor shapes, in its order.
    count : int
        m, >= 1 and at most the number of coordinates available.
    source : RandomSource
        The auditor's randomness (secret from the run).
    owners : int
        Sample level: the number of sites; each canary goes to one, uniformly. 0: client
        level (owners -1).
    tensors : Sequence[str], optional
        Only coordinates of these tensors (default: all).
    """
    names = list(shapes)
    chosen = list(tensors) if tensors is not None else names
    unknown = [t for t in chosen if t not in shapes]
    if unknown or not chosen:
        raise ConfigError("tensors", f"must name tensors of the state, got {unknown or chosen}")
    sizes = [math.prod(shapes[t]) for t in chosen]
    total = sum(sizes)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= total:
        raise ConfigError("canaries", f"must be an integer in [1, {total}], got {count!r}")
    # Distinct coordinates: the first `count` of a random permutation of all of them.
    flat = source.derive("coordinates").permutation(total)[:count]
    starts = np.cumsum([0, *sizes])
    canaries = []
    signs = source.derive("signs").bernoulli(count, 0.5)
    for k, coordinate in enumerate(flat):
        which = int(np.searchsorted(starts, coordinate, side="right") - 1)
        tensor = chosen[which]
        canaries.append(
            Canary(
                tensor=tensor,
                position=names.index(tensor),
                index=int(coordinate - starts[which]),
                sign=1 if signs[k] else -1,
            )
        )
    included = draw_inclusion(count, source.derive("inclusion"))
    if owners:
        who = source.derive("owners").integers(owners, count)
    else:
        who = np.full(count, -1, dtype=np.int64)
    return CanaryPlan(canaries=tuple(canaries), included=included, owners=who)


def canary_scores(
    initial: State, final: State, canaries: Sequence[Canary]
) -> npt.NDArray[np.float64]:
    """``sign * (final - initial)`` at each canary's coordinate (higher: more likely in)."""
    out = np.empty(len(canaries), dtype=np.float64)
    for k, canary in enumerate(canaries):
        before = np.asarray(initial[canary.tensor], dtype=np.float64).ravel()[canary.index]
        after = np.asarray(final[canary.tensor], dtype=np.float64).ravel()[canary.index]
        out[k] = canary.sign * (after - before)
    return out


def dirac_update(
    shapes: Mapping[str, Sequence[int]], canary: Canary, *, norm: float
) -> dict[str, npt.NDArray[np.float64]]:
    """A canary client's update: zero but ``sign * norm`` at the canary's coordinate."""
    update = {name: np.zeros(tuple(shape), dtype=np.float64) for name, shape in shapes.items()}
    update[canary.tensor].reshape(-1)[canary.index] = canary.sign * norm
    return update


Optimizer = Literal["adamw", "sgd"]


@dataclass(frozen=True)
class GradientCanaries:
    """Sample-level canaries a site inserts into its DP-SGD (audits only).

    Parameters
    ----------
    canaries : tuple[Canary, ...]
        This site's included canaries: each is a record whose per-example gradient is
        ``-sign * C * e_index`` on the trained tensor at ``position``; it is sampled into
        each logical batch with the site's Poisson rate, as every record is.
    noise_scale : float
        1: DP-SGD as accounted. 0: the noise switched off while the claim is kept, a
        deliberately broken mechanism for the audit's self-test (nothing else may use
        it).
    optimizer : {"sgd", "adamw"}
        The local optimizer during the audit. SGD moves a canary's coordinate by the
        noised gradient sum; Adam divides each coordinate by its own running scale,
        which makes a coordinate no canary touches move as far as one it does and
        blurs the scores. The guarantee audited is DP-SGD's noised gradient sum, of
        which any optimizer is post-processing.
    """

    canaries: tuple[Canary, ...] = ()
    noise_scale: float = 1.0
    optimizer: Optimizer = "sgd"

    def __post_init__(self) -> None:
        if self.noise_scale not in (0.0, 1.0):
            raise ConfigError("noise_scale", f"must be 1 or 0 (self-test), got {self.noise_scale}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError("optimizer", f"must be 'sgd' or 'adamw', got {self.optimizer!r}")


AUDIT_STATE = "fedrank-audit"
"""The ConfigRecord of a simulated site's own state that holds its audit canaries."""


def write_site_canaries(node_state: RecordDict, canaries: GradientCanaries) -> None:
    """Hand a simulated site its canaries (its own state: no message can set them)."""
    node_state.config_records[AUDIT_STATE] = ConfigRecord(
        {
            "tensor": [c.tensor for c in canaries.canaries],
            "position": [c.position for c in canaries.canaries],
            "index": [c.index for c in canaries.canaries],
            "sign": [c.sign for c in canaries.canaries],
            "noise-scale": canaries.noise_scale,
            "optimizer": canaries.optimizer,
        }
    )


def read_site_canaries(node_state: RecordDict) -> GradientCanaries | None:
    """The canaries :func:`write_site_canaries` left in a site's state, or None."""
    record = node_state.config_records.get(AUDIT_STATE)
    if record is None:
        return None
    columns = [list(record[key]) for key in ("tensor", "position", "index", "sign")]  # type: ignore[arg-type]
    canaries = tuple(
        Canary(tensor=str(t), position=int(p), index=int(i), sign=int(s))
        for t, p, i, s in zip(*columns, strict=True)
    )
    return GradientCanaries(
        canaries,
        noise_scale=float(record["noise-scale"]),  # type: ignore[arg-type]
        optimizer=str(record["optimizer"]),  # type: ignore[arg-type]
    )
