"""What the colluding malicious clients of a scenario send, given what they know.

The threat model (docs/robustness.md): a fixed set of partitions, drawn from the
attack seed (:func:`malicious_partitions`), is malicious for the whole run. Its
clients collude: in every round they pool what they have. Each of them trains
honestly first (so it knows its own benign update), then they craft their replies
together. They know

- the global state the server sent this round (every client receives it);
- their own honest replies of the round ("colluders"), or, for the omniscient
  worst case, every benign client's reply of the round too ("all");
- the scenario: the aggregator and its parameters, ``k``, the number of clients.

They do not know which clients the server will sample in later rounds, nor the
server's held-out data. Label flipping (:mod:`fedrank.simulations.attacks.poisoning`) is the
exception: it poisons the data, where the data is, and sends an honest reply.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from fedrank.config import RANKING_ATTACKS, UPDATE_ATTACKS, AttackConfig, Scenario
from fedrank.simulations.attacks.adaptive import (
    DIRECTION_MARGIN,
    estimated_threshold,
    evade_filters,
)
from fedrank.simulations.attacks.attacks import (
    alie_attack,
    estimate_benign_ranking,
    gaussian_noise_attack,
    malicious_clients,
    mask_boundary_attack,
    min_max_attack,
    min_sum_attack,
    random_ranking_attack,
    reverse_ranking_attack,
    scaling_attack,
    sign_flip_attack,
)
from fedrank.strategies.filtered_vote import spearman_to_reference

State = Mapping[str, np.ndarray]
# (server round, [(partition id, honest reply)], benign replies known, global state) -> replies
Crafter = Callable[
    [int, Sequence[tuple[int, State]], Sequence[State], State], list[dict[str, np.ndarray]]
]

__all__ = [
    "Crafter",
    "craft_rankings",
    "craft_updates",
    "crafter",
    "malicious_partitions",
]


def malicious_partitions(scenario: Scenario) -> frozenset[int]:
    """The partition ids the scenario's attacker controls (empty without an attack)."""
    if not scenario.attack.enabled:
        return frozenset()
    return malicious_clients(scenario.attack, scenario.run.num_clients)


def _rng(spec: AttackConfig, server_round: int, partition: int) -> np.random.Generator:
    return np.random.default_rng([spec.seed, server_round, partition])


def craft_rankings(
    spec: AttackConfig,
    *,
    server_round: int,
    colluders: Sequence[tuple[int, State]],
    known: Sequence[State],
    reference: State,
    k: float,
    filter_mads: float,
) -> list[dict[str, np.ndarray]]:
    """Rank vectors for every colluder (same order as ``colluders``).

    ``known`` are the honest rankings the attacker may use (its own, or all benign);
    ``reference`` is the global ranking of the round. The benign estimate is the
    Borda vote of ``known``; reversal, boundary and adaptive attackers all send the
    same crafted ranking, random attackers one permutation each.
    """
    if spec.kind not in RANKING_ATTACKS:
        raise ValueError(f"spec.kind: {spec.kind!r} is not a ranking attack")
    if not colluders or not known:
        raise ValueError("colluders, known: need at least one of each")
    if spec.kind == "random_ranking":
        return [
            {
                name: random_ranking_attack(g.shape[0], _rng(spec, server_round, pid))
                for name, g in reference.items()
            }
            for pid, _ in colluders
        ]
    shared: dict[str, np.ndarray] = {}
    for name, g in reference.items():
        stacked = np.stack([u[name] for u in known])
        estimate = estimate_benign_ranking(stacked)
        if spec.kind in ("reverse_ranking", "adaptive_reverse"):
            target = reverse_ranking_attack(estimate)
        else:
            target = mask_boundary_attack(estimate, k=k, boundary_fraction=spec.boundary_fraction)
        if spec.kind.startswith("adaptive"):
            target = evade_filters(
                g,
                target,
                estimate,
                stacked,
                min_agreement=estimated_threshold(
                    spearman_to_reference(stacked, g), mads=filter_mads
                ),
                min_direction=DIRECTION_MARGIN,
            )
        shared[name] = target
    return [dict(shared) for _ in colluders]


def craft_updates(
    spec: AttackConfig,
    *,
    server_round: int,
    colluders: Sequence[tuple[int, State]],
    known: Sequence[State],
    reference: State,
    replies_in_round: int,
) -> list[dict[str, np.ndarray]]:
    """Weights for every colluder (same order as ``colluders``).

    The attacks of :mod:`fedrank.simulations.attacks.attacks` act on *updates*, ``w - g`` with
    ``g`` the global weights sent this round; the reply is ``g`` plus the crafted
    update. Sign flip, scaling and noise change each colluder's own update; ALIE,
    min-max and min-sum send one update computed from the ``known`` ones.
    """
    if spec.kind not in UPDATE_ATTACKS:
        raise ValueError(f"spec.kind: {spec.kind!r} is not an update attack")
    if not colluders or not known:
        raise ValueError("colluders, known: need at least one of each")

    def delta(state: State) -> dict[str, npt.NDArray[np.floating]]:
        return {
            n: (state[n].astype(np.float64) - reference[n]).astype(state[n].dtype)
            for n in reference
        }

    def plus_reference(update: Mapping[str, npt.NDArray[np.floating]]) -> dict[str, np.ndarray]:
        return {n: (reference[n] + update[n]).astype(reference[n].dtype) for n in reference}

    if spec.kind == "sign_flip":
        return [plus_reference(sign_flip_attack(delta(s))) for _, s in colluders]
    if spec.kind == "scaling":
        return [plus_reference(scaling_attack(delta(s), factor=spec.scale)) for _, s in colluders]
    if spec.kind == "gaussian_noise":
        return [
            plus_reference(
                gaussian_noise_attack(delta(s), std=spec.noise_std, rng=_rng(spec, server_round, p))
            )
            for p, s in colluders
        ]
    known_updates = [delta(s) for s in known]
    if spec.kind == "alie":
        # Baruch et al.'s z needs f < n/2 + 1; a round with more colluders uses the largest f.
        f = min(len(colluders), math.floor(replies_in_round / 2 + 1) - 1)
        crafted = alie_attack(
            known_updates,
            num_clients=replies_in_round,
            num_malicious=max(f, 1),
            z_max=spec.z_max or None,
        )
    elif spec.kind == "min_max":
        crafted = min_max_attack(known_updates, direction=spec.direction)
    else:
        crafted = min_sum_attack(known_updates, direction=spec.direction)
    return [plus_reference(crafted) for _ in colluders]


def crafter(scenario: Scenario) -> Crafter | None:
    """The scenario's reply-crafting attacker (``None``: no attack crafts replies)."""
    chosen = scenario.attack
    if chosen.kind not in RANKING_ATTACKS | UPDATE_ATTACKS:
        return None

    def craft(
        server_round: int,
        colluders: Sequence[tuple[int, State]],
        benign: Sequence[State],
        reference: State,
    ) -> list[dict[str, np.ndarray]]:
        known = [s for _, s in colluders] + (list(benign) if chosen.knowledge == "all" else [])
        if chosen.kind in RANKING_ATTACKS:
            return craft_rankings(
                chosen,
                server_round=server_round,
                colluders=colluders,
                known=known,
                reference=reference,
                k=scenario.frl.k,
                filter_mads=scenario.aggregation.filter_mads,
            )
        return craft_updates(
            chosen,
            server_round=server_round,
            colluders=colluders,
            known=known,
            reference=reference,
            replies_in_round=len(colluders) + len(benign),
        )

    return craft
