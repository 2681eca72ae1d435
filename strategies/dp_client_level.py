"""Client-level differential privacy around any Flower strategy (DP-FedAvg).

The math lives in :mod:`fedrank.privacy.mechanisms`; this module only moves arrays
between Flower messages and those functions, and records every release in a
:class:`fedrank.privacy.ledger.PrivacyLedger` before it leaves the server.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Literal

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrank.errors import ConfigError
from fedrank.privacy.ledger import PrivacyLedger, Release
from fedrank.privacy.mechanisms import client_level_dp_aggregate, l2_norm
from fedrank.protos.codecs import ArraysCodec
from fedrank.protos.gate import gate, rejection_metrics
from fedrank.strategies.sampling import in_partition_order, partition_order
from fedrank.strategies.wrapping import WrappingStrategy

Sampling = Literal["fixed", "poisson"]

_log = logging.getLogger(__name__)

# Independent random streams per round, derived from (seed, round, stream).
_NOISE_STREAM = 0
_SAMPLING_STREAM = 1


class ClientLevelDp(WrappingStrategy):
    """Client-level DP-FedAvg wrapped around a Flower strategy.

    McMahan et al. 2018, "Learning Differentially Private Recurrent Language Models",
    arXiv 1710.06963, Algorithm 1 (fixed-denominator estimator). Each round: every
    reply's update (its arrays minus the global arrays sent in ``configure_train``) is
    clipped to L2 norm ``clip_norm`` over all tensors, the clipped updates are summed,
    N(0, (sigma C)^2) is added per coordinate, and the sum is divided by
    ``expected_clients``: the noise on the average update has std sigma C / m.

    Design: the inner strategy selects clients, builds messages and aggregates
    evaluations; the wrapper aggregates training itself, with uniform weights, through
    :func:`fedrank.privacy.mechanisms.client_level_dp_aggregate`. The DP guarantee
    rests on the sensitivity of the aggregate: a uniform sum of clipped updates has
    sensitivity C, whereas FedAvg weights by a client-reported ``num-examples`` (one
    client could raise its own weight) and robust aggregators (median, Krum) have no
    sensitivity we can bound in general. Flower's ``DifferentialPrivacyServerSide
    FixedClipping`` instead lets the inner strategy average the clipped models; it
    also writes clipped arrays into the replies and draws unseeded noise.

    Differences from Flower's wrapper: noise is seeded by ``(seed, round)``; every
    release is checked against the ledger's budget before anything is released
    (:class:`fedrank.errors.PrivacyBudgetExhausted` stops the run with nothing sent)
    and recorded durably before it is returned; sampling amplification is claimed only
    for Poisson sampling, which the wrapper then performs itself; replies and inputs
    are never modified. Client train metrics are not released (they carry no DP
    guarantee); the returned metrics are epsilon and server-side diagnostics
    (clip fraction, reply counts), which are outside the guarantee too.

    Accounting: ``sampling="poisson"`` samples every connected node independently with
    q = expected_clients / total_clients (seeded) and accounts the sampled Gaussian
    with rate q; ``sampling="fixed"`` keeps the inner strategy's fixed-size sampling
    and accounts with q = 1 (no amplification, conservative). The neighbouring relation
    is add/remove of one client's data (zero-out, Kairouz et al. 2021, arXiv
    2103.00039); under replace-one, account with sigma / 2.

    Parameters
    ----------
    strategy : Strategy
        The inner strategy (FedAvg or any other new-style Flower strategy). In
        ``"poisson"`` mode it must send the same content to every node it selects.
    ledger : PrivacyLedger
        Where releases are checked and recorded (party ``"server"``, unit ``"client"``).
    clip_norm : float
        C, > 0.
    noise_multiplier : float
        sigma, > 0.
    expected_clients : int
        m: clients sampled per round (fixed) or expected per round (Poisson); the
        divisor of the sum.
    seed : int
        Seed of the noise (and of Poisson sampling); with the round number it fixes
        every draw, so a resumed round given the same replies releases exactly what the
        crashed one did, and the ledger counts it once (same digest). Given other
        replies, the noise of a round already released is never reused: the replay
        draws fresh noise and is counted as a second release.
    sampling : {"fixed", "poisson"}
        See Accounting above.
    total_clients : int | None
        N, required for ``"poisson"`` (q = m / N).
    codec : ArraysCodec
        The run's arrays layout: every reply passes its gate before it is clipped.
    partitions : Mapping[int, int] | None
        Partition id -> node id. Updates are summed in partition order (node ids are
        drawn anew by each simulation, so a resumed run sums in the same order as an
        uninterrupted one); without it, in node id order.
    """

    def __init__(
        self,
        strategy: Strategy,
        *,
        ledger: PrivacyLedger,
        clip_norm: float,
        noise_multiplier: float,
        expected_clients: int,
        seed: int,
        sampling: Sampling = "fixed",
        total_clients: int | None = None,
        codec: ArraysCodec,
        partitions: Mapping[int, int] | None = None,
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
        if isinstance(seed, bool) or seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {seed!r}")
        if sampling not in ("fixed", "poisson"):
            raise ConfigError("sampling", f"must be 'fixed' or 'poisson', got {sampling!r}")
        if sampling == "poisson" and (total_clients is None or total_clients < expected_clients):
            raise ConfigError(
                "total_clients",
                f"Poisson sampling needs total_clients >= expected_clients "
                f"({expected_clients}), got {total_clients!r}",
            )
        super().__init__(strategy)
        self.ledger = ledger
        self.clip_norm = float(clip_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_clients = int(expected_clients)
        self.seed = int(seed)
        self.sampling: Sampling = sampling
        self.total_clients = total_clients
        self.codec = codec
        self.partitions = dict(partitions or {})
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
        """Standard deviation of the noise on the average update: sigma C / m."""
        return self.noise_multiplier * self.clip_norm / self.expected_clients

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

    def summary(self) -> None:
        """Log the DP settings, then the inner strategy's summary."""
        _log.info(
            "ClientLevelDp: C=%g sigma=%g m=%d sampling=%s q=%g, epsilon so far %.4f",
            self.clip_norm,
            self.noise_multiplier,
            self.expected_clients,
            self.sampling,
            self.sample_rate,
            self.ledger.spent(unit="client", party="server"),
        )
        self.strategy.summary()

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
        self.ledger.check(self._release(server_round))
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
        rng = np.random.default_rng([self.seed, server_round, _SAMPLING_STREAM])
        # One draw per node in partition order: the same partitions in every run.
        nodes = partition_order(grid.get_node_ids(), self.partitions)
        draws = rng.random(len(nodes))
        chosen = [node for node, u in zip(nodes, draws, strict=True) if u < self.sample_rate]
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
        clipped = sum(1 for u in updates if l2_norm(u) > self.clip_norm)
        earlier = [r for r in self.ledger.releases if r.key == release.key]
        new_arrays, digest = self._noised(server_round, updates, reference, attempt=0)
        if earlier and all(r.digest != digest for r in earlier):
            # This round was released before from other replies (a resumed run whose
            # clients trained differently). Reusing its noise would let the difference
            # of the two releases cancel it: draw fresh noise and count a new release.
            new_arrays, digest = self._noised(
                server_round, updates, reference, attempt=len(earlier)
            )
        release = dataclasses.replace(release, digest=digest)
        epsilon = self.ledger.record(release)
        metrics = MetricRecord(
            {
                "dp-epsilon": epsilon,
                "dp-delta": self.ledger.delta,
                "dp-noise-std": self.noise_std,
                "dp-clip-fraction": clipped / len(updates) if updates else 0.0,
                **rejection_metrics(len(updates), rejected),
            }
        )
        return new_arrays, metrics

    def _updates(
        self,
        server_round: int,
        replies: Iterable[Message],
        reference: Mapping[str, npt.NDArray[np.floating]],
    ) -> tuple[list[dict[str, npt.NDArray[np.float64]]], Counter[str]]:
        """Valid updates (reply minus reference, in partition order) and the rejections.

        A fixed order, so that the float sum, hence the result, depends neither on the
        order in which replies arrived nor on the node ids of this simulation.
        """
        valid, rejected = gate(
            server_round,
            in_partition_order(replies, self.partitions),
            lambda reply: self.codec.decode_reply(server_round, reply).state,
        )
        updates = [
            {
                name: state[name].astype(np.float64) - base.astype(np.float64)
                for name, base in reference.items()
            }
            for state in valid
        ]
        return updates, rejected

    def _noised(
        self,
        server_round: int,
        updates: list[dict[str, npt.NDArray[np.float64]]],
        reference: Mapping[str, npt.NDArray[np.floating]],
        *,
        attempt: int,
    ) -> tuple[ArrayRecord, str]:
        """New global arrays (reference + noised average update) and their digest."""
        average = client_level_dp_aggregate(
            updates,
            shapes={name: value.shape for name, value in reference.items()},
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            rng=np.random.default_rng([self.seed, server_round, _NOISE_STREAM, attempt]),
            expected_clients=self.expected_clients,
        )
        values = {
            name: np.asarray(base.astype(np.float64) + average[name], dtype=base.dtype)
            for name, base in reference.items()
        }
        digest = hashlib.sha256()
        for name, value in values.items():
            digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        return ArrayRecord(
            {name: Array(value) for name, value in values.items()}
        ), digest.hexdigest()
