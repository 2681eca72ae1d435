"""Client-level differential privacy around any Flower strategy (DP-FedAvg).

The math lives in :mod:`fedrank.privacy.mechanisms` (fixed clip) and
:mod:`fedrank.privacy.adaptive_clipping`; this module only moves arrays between
Flower messages and those functions, draws every random choice from the run's secret
:class:`~fedrank.privacy.randomness.RandomSource`, and records every release in a
:class:`fedrank.privacy.ledger.PrivacyLedger` before it leaves the server.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.errors import ConfigError
from fedrank.privacy.adaptive_clipping import update_noise_multiplier
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.privacy.mechanisms import l2_norm
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.sources import CLIENT_NOISE, CLIENT_SAMPLING
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.gate import gate, rejection_metrics
from fedrank.strategies.dp_client_release import AdaptiveClipping as AdaptiveClipping
from fedrank.strategies.dp_client_release import (
    FloatState,
    NoisedRelease,
    noised_release,
    updates_against,
)
from fedrank.strategies.sampling import in_partition_order, partition_order
from fedrank.strategies.wrapping import WrappingStrategy

Sampling = Literal["fixed", "poisson"]

_log = logging.getLogger(__name__)


class ClientLevelDp(WrappingStrategy):
    """Client-level DP-FedAvg wrapped around a Flower strategy.

    McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
    arXiv 1710.06963, Algorithm 1 (fixed-denominator estimator). Each round: every
    reply's update (its arrays minus the global arrays sent in ``configure_train``) is
    clipped to L2 norm C over all tensors, the clipped updates are summed,
    N(0, (sigma C)^2) is added per coordinate, and the sum is divided by
    ``expected_clients``: the noise on the average update has std sigma C / m. With
    ``adaptive`` the clip norm follows a noised quantile of the update norms
    (:mod:`fedrank.privacy.adaptive_clipping`); the round is then accounted at the
    effective noise multiplier ``noise_multiplier`` (the updates get the larger
    z_delta that leaves room for the count's noise).

    Design: the inner strategy builds the messages and aggregates evaluations; the
    wrapper samples clients (Poisson) and aggregates training itself, with uniform
    weights. The guarantee rests on the sensitivity of the aggregate: a uniform sum of
    clipped updates has sensitivity C, whereas FedAvg weights by a client-reported
    ``num-examples`` and robust aggregators (median, Krum) have no sensitivity we can
    bound in general. Unlike Flower's ``DifferentialPrivacyServerSideFixedClipping``,
    replies and inputs are never modified, every release is checked against the
    ledger's budget before anything is released and recorded durably before it is
    returned, and the noise is drawn from a secret source.

    Randomness: every draw comes from ``source``, the coordinator's root
    (:func:`fedrank.privacy.sources.coordinator_source`): secure, its key in the
    coordinator's private file, so neither the scenario's seed nor any message lets
    anyone replay the noise or predict the sample. Round r's Poisson sample comes from
    ``source.derive("client-sampling", r)``, its noise from
    ``source.derive("client-noise", r, attempt)``: a resumed round given the same
    replies releases exactly what the crashed one did (the ledger counts it once);
    given other replies it never reuses that noise (the difference of the two releases
    would cancel it): ``attempt`` moves on and the release counts again.

    Accounting, under add/remove of one client's data
    (:data:`fedrank.privacy.relation.NEIGHBOURING_RELATION`): ``sampling="poisson"``
    samples every connected node independently with q = m / N and accounts the
    sampled Gaussian at rate q; ``sampling="fixed"`` (every client every round: m = N,
    refused otherwise) accounts q = 1.

    Published: ``dp-epsilon``, ``dp-delta``, ``dp-noise-std`` (and, with adaptive
    clipping, the released clip norm and noised unclipped fraction). The clip fraction
    and the counts of valid and invalid replies are computed from the clients' data
    without noise: withheld unless ``publish_diagnostics``.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy. In ``"poisson"`` mode it must send the same content to
        every node it selects.
    ledger : PrivacyLedger
        Where releases are checked and recorded (party ``"server"``, unit ``"client"``).
    clip_norm : float
        C, > 0 (the first round's, with ``adaptive``).
    noise_multiplier : float
        sigma, > 0: what each round is accounted at.
    expected_clients : int
        m: clients sampled per round (fixed) or expected per round (Poisson); the
        divisor of the sum.
    source : RandomSource
        The coordinator's root source (never a child drawn from elsewhere).
    sampling : {"fixed", "poisson"}
        See Accounting above.
    total_clients : int | None
        N, required for ``"poisson"`` (q = m / N).
    codec : ArraysCodec
        The run's arrays layout: every reply passes its gate before it is clipped.
    partitions : Mapping[int, int] | None
        Partition id -> node id. Nodes are sampled and updates summed in partition
        order (node ids are drawn anew by each simulation); without it, node id order.
    adaptive : AdaptiveClipping | None
        Adaptive clipping, or None for a fixed clip norm.
    publish_diagnostics : bool
        Also publish the clip fraction and reply counts (outside the guarantee).
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        ledger: PrivacyLedger,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: int,
        source: RandomSource,
        sampling: Sampling = "fixed",
        total_clients: int | None = None,
        codec: ArraysCodec,
        partitions: Mapping[int, int] | None = None,
        adaptive: AdaptiveClipping | None = None,
        publish_diagnostics: bool = False,
    ) -> None:
        if not (math.isfinite(clip_norm) and clip_norm > 0):
            raise ConfigError("clip_norm", f"must be a finite number > 0, got {clip_norm!r}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
            raise ConfigError(
                "noise_multiplier", f"must be a finite number > 0, got {noise_multiplier!r}"
            )
        if isinstance(expected_clients, bool) or expected_clients < 1:
            raise ConfigError(
                "expected_clients", f"must be an integer >= 1, got {expected_clients!r}"
            )
        if not isinstance(source, RandomSource):
            raise ConfigError("source", f"must be a RandomSource, got {type(source).__name__}")
        if sampling not in ("fixed", "poisson"):
            raise ConfigError("sampling", f"must be 'fixed' or 'poisson', got {sampling!r}")
        if sampling == "poisson" and (total_clients is None or total_clients < expected_clients):
            raise ConfigError(
                "total_clients",
                f"Poisson sampling needs total_clients >= expected_clients "
                f"({expected_clients}), got {total_clients!r}",
            )
        if adaptive is not None:
            # Fails early when the count's noise leaves no room for the target sigma.
            update_noise_multiplier(
                noise_multiplier=noise_multiplier, count_stddev=adaptive.count_stddev
            )
        super().__init__(strategy)
        self.ledger = ledger
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_clients = int(expected_clients)
        self.source = source
        self.sampling: Sampling = sampling
        self.total_clients = total_clients
        self.codec = codec
        self.partitions = dict(partitions or {})
        self.adaptive = adaptive
        self.publish_diagnostics = publish_diagnostics
        # Global arrays sent out per configured round: updates are taken against them.
        self._pending: dict[int, dict[str, npt.NDArray[np.floating]]] = {}

    @property
    def sample_rate(self) -> float:
        """q used for accounting: m / N under Poisson sampling, 1 otherwise."""
        if self.sampling == "poisson" and self.total_clients is not None:
            return self.expected_clients / self.total_clients
        return 1.0

    @property
    def noise_std(self) -> float:
        """Standard deviation of the noise on the average update: sigma C / m (fixed C)."""
        sigma = self.noise_multiplier
        if self.adaptive is not None:
            sigma = update_noise_multiplier(
                noise_multiplier=sigma, count_stddev=self.adaptive.count_stddev
            )
        return sigma * self.clip_norm / self.expected_clients

    def _release(self, server_round: int) -> Release:
        return Release(
            round=server_round,
            mechanism="client-gaussian",
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=1,
            clip_norm=self.clip_norm,
            unit="client",
            party="server",
        )

    def _check_budget(self, server_round: int) -> None:
        """Raise PrivacyBudgetExhausted if this round's release cannot be made."""
        self.ledger.check(self._release(server_round))

    def summary(self) -> None:
        """Log the DP settings, then the inner strategy's summary."""
        _log.info(
            "ClientLevelDp: C=%g%s sigma=%g m=%d sampling=%s q=%g noise=%s, epsilon so far %.4f",
            self.clip_norm,
            " (adaptive)" if self.adaptive else "",
            self.noise_multiplier,
            self.expected_clients,
            self.sampling,
            self.sample_rate,
            self.source.kind,
            self.ledger.spent(unit="client", party="server"),
        )
        self.strategy.summary()

    def state_dict(self) -> dict[str, Any]:
        """The clip norm of the next round (it moves under adaptive clipping)."""
        return {"clip_norm": self.clip_norm, **super().state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.clip_norm = float(state.get("clip_norm", self.clip_norm))
        super().load_state_dict(state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays, then let the inner strategy build the messages.

        Raises
        ------
        PrivacyBudgetExhausted
            This round's release would exceed the ledger's budget; nothing is sent.
        """
        reference: dict[str, npt.NDArray[np.floating]] = {}
        for name, array in arrays.items():
            value = np.array(array.numpy(), copy=True)
            if not np.issubdtype(value.dtype, np.floating):
                raise ConfigError(
                    "arrays",
                    f"client-level DP needs floating-point arrays; {name!r} is {value.dtype}",
                )
            reference[name] = value
        # The inner strategy may write into the config (FedAvg adds "server-round").
        messages = list(
            self.strategy.configure_train(server_round, arrays, ConfigRecord(dict(config)), grid)
        )
        if not messages:
            # The inner strategy skips training this round: nothing is computed from
            # client data, nothing will be released.
            self._pending.pop(server_round, None)
            return []
        # Refuse the round before any client trains for it: a release it cannot make
        # is not worth the clients' work (aggregate_train checks again).
        self._check_budget(server_round)
        if self.sampling == "poisson":
            messages = self._poisson_messages(server_round, messages, grid)
        elif len(messages) != self.expected_clients:
            _log.warning(
                "ClientLevelDp: the inner strategy sampled %d clients, expected_clients "
                "is %d; the average is still divided by %d",
                len(messages),
                self.expected_clients,
                self.expected_clients,
            )
        self._pending[server_round] = reference
        return messages

    def _poisson_messages(
        self, server_round: int, template: list[Message], grid: Grid
    ) -> list[Message]:
        first = template[0]
        if any(m.content is not first.content for m in template[1:]):
            raise ConfigError(
                "sampling",
                "Poisson sampling needs an inner strategy that sends the same content "
                "to every node",
            )
        # One secret coin per node, in partition order: the same partitions in a
        # resumed round as in the crashed one. A node that discovery left out (no
        # valid partition id) is connected but takes no part: it is not a candidate.
        nodes = partition_order(grid.get_node_ids(), self.partitions)
        if self.partitions:
            mapped = set(self.partitions.values())
            nodes = [node for node in nodes if node in mapped]
        chosen = self.source.derive(CLIENT_SAMPLING, server_round).poisson_subset(
            nodes, self.sample_rate
        )
        _log.info(
            "ClientLevelDp: Poisson sampling (q=%g) chose %d of %d nodes",
            self.sample_rate,
            len(chosen),
            len(nodes),
        )
        return [
            Message(first.content, dst_node_id=node, message_type=first.metadata.message_type)
            for node in chosen
        ]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, sum, noise and release the new global arrays (after the budget check).

        Raises
        ------
        PrivacyBudgetExhausted
            The release would exceed the ledger's budget; nothing is returned.
        """
        reference = self._pending.pop(server_round, None)
        if reference is None:
            # configure_train sent nothing for this round: no client data was used.
            return None, None
        release = self._release(server_round)
        # Before anything is computed from the replies: a refused release reveals
        # nothing about them. A replay of a recorded round is counted here as new (it
        # may turn out free below, but is not assumed to be).
        self.ledger.check(release)

        updates, rejected = self._updates(server_round, replies, reference)
        earlier = [r for r in self.ledger.releases if r.key == release.key]
        outcome = self._noised(server_round, updates, reference, attempt=0)
        if earlier and all(r.digest != outcome.digest for r in earlier):
            # This round was released before from other replies (a resumed run whose
            # clients trained differently). Reusing its noise would let the difference
            # of the two releases cancel it: draw fresh noise and count a new release.
            outcome = self._noised(server_round, updates, reference, attempt=len(earlier))
        epsilon = self.ledger.record(dataclasses.replace(release, digest=outcome.digest))
        metrics: dict[str, Any] = {
            "dp-epsilon": epsilon,
            "dp-delta": self.ledger.delta,
            "dp-noise-std": self.noise_std,
        }
        if self.adaptive is not None:
            metrics["dp-clip-norm"] = self.clip_norm
            metrics["dp-unclipped-fraction"] = outcome.unclipped_fraction
            self.clip_norm = outcome.next_clip_norm
        if self.publish_diagnostics:
            clipped = sum(1 for u in updates if l2_norm(u) > release.clip_norm)
            metrics["dp-clip-fraction"] = clipped / len(updates) if updates else 0.0
            metrics.update(rejection_metrics(len(updates), rejected))
        return outcome.arrays, MetricRecord(metrics)

    def _updates(
        self,
        server_round: int,
        replies: Iterable[Message],
        reference: Mapping[str, npt.NDArray[np.floating]],
    ) -> tuple[list[FloatState], Counter[str]]:
        """Valid updates (reply minus reference, in partition order) and the rejections.

        A fixed order, so that the float sum, hence the result, depends neither on the
        order in which replies arrived nor on the node ids of this simulation.
        """
        valid, rejected = gate(
            server_round,
            in_partition_order(replies, self.partitions),
            lambda reply: self.codec.decode_reply(server_round, reply).state,
        )
        return updates_against(valid, reference), rejected

    def _noised(
        self,
        server_round: int,
        updates: list[FloatState],
        reference: Mapping[str, npt.NDArray[np.floating]],
        *,
        attempt: int,
    ) -> NoisedRelease:
        """:func:`noised_release` of the round, noised from (round, ``attempt``)."""
        return noised_release(
            updates,
            reference,
            rng=self.source.derive(CLIENT_NOISE, server_round, attempt),
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            expected_clients=self.expected_clients,
            adaptive=self.adaptive,
        )
