"""Flower's FedAvgM, FedAdam, FedYogi, FedProx and Bulyan with fedrank's seeded sampling.

The aggregation and the server optimizers are Flower's own (``flwr.serverapp.strategy``),
not rewritten: each class here puts :class:`~fedrank.strategies.fedavg.SeededFedAvg` in
front of a Flower strategy, so every reply passes the gate and Flower aggregates fresh
messages holding only the validated arrays, in partition order, of the same clients as
FRL in the same rounds.

- :class:`SeededFedAvgM`: server momentum on the pseudo-gradient (Hsu et al., arXiv
  1909.06335);
- :class:`SeededFedAdam` / :class:`SeededFedYogi`: adaptive server optimizers (Reddi et
  al., "Adaptive Federated Optimization", arXiv 2003.00295, Alg. 2);
- :class:`SeededFedProx`: FedAvg at the server; the clients add ``(mu / 2) ||w - w_t||^2``
  to their loss (Li et al., arXiv 1812.06127), ``mu`` sent as Flower does, under
  ``proximal-mu`` in the train config;
- :class:`SeededBulyan`: Multi-Krum selection of ``n - 2f`` replies, then the
  coordinate-wise mean of the ``n - 4f`` values closest to the median (El Mhamdi et al.,
  arXiv 1802.07927); it needs ``n >= 4f + 3`` replies, a round with fewer is skipped.

The same classes aggregate LoRA adapters (:func:`fedrank.strategies.lora.lora_strategy`):
every adapter tensor is a float array of the run's layout, so the server optimizer's
pseudo-gradient is taken on A and B separately under FedIT (as FedIT averages them) and on
B alone under FFA-LoRA, where A is frozen and never travels.

Where Flower's ``configure_train`` remembers the arrays it sends, the seeded one replaces
it (the MRO puts :class:`SeededFedAvg` first), so each class here remembers them itself.
Server optimizer state (momentum, first and second moments) is checkpointed through
``state_dict`` / ``load_state_dict`` (:class:`fedrank.server.resume.SupportsState`), bit
for bit.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Bulyan, FedAdam, FedAvgM, FedProx, FedYogi
from flwr.serverapp.strategy.fedopt import FedOpt

from fedrank.config import Scenario
from fedrank.protos import keys
from fedrank.protos.codecs import ArraysCodec
from fedrank.strategies.fedavg import SeededFedAvg
from fedrank.strategies.robust_vote import trim_count
from fedrank.tasks.registry import FLOWER_BASELINES

__all__ = [
    "BASELINES",
    "DEFAULT_SERVER_LR",
    "SERVER_OPTIMIZERS",
    "SeededBulyan",
    "SeededFedAdam",
    "SeededFedAvgM",
    "SeededFedProx",
    "SeededFedYogi",
    "array_from_json",
    "array_to_json",
    "baseline_strategy",
    "bulyan_malicious",
    "server_lr",
]

SERVER_OPTIMIZERS: tuple[str, ...] = ("fedavgm", "fedadam", "fedyogi")
"""Aggregators that step the global arrays along the pseudo-gradient (stateful)."""
BASELINES: tuple[str, ...] = FLOWER_BASELINES
"""Every aggregator of this module (``aggregator`` values of fedavg and lora)."""
DEFAULT_SERVER_LR: dict[str, float] = {"fedavgm": 1.0, "fedadam": 0.01, "fedyogi": 0.01}
"""``server-lr`` when the scenario leaves it at 0, chosen on data (docs/baselines.md: MNIST-5k
MLP, Dirichlet 1.0, seeds 10 and 11, apart from the seeds of the comparison). FedAvgM: 1.0,
Flower's default, with ``server-momentum`` 0.5 (momentum 0.9 at 1.0 oscillated; at 0.3 and
0.1 it trailed). FedAdam, FedYogi: 0.01, in Reddi et al.'s range of tuned server rates for
SGD clients (arXiv 2003.00295, 10^-2.5 .. 10^-1): 0.001 and 0.003 were too slow for 40
rounds, 0.03 no better."""


# ------------------------------------------------------------------ optimizer state


def array_to_json(value: np.ndarray) -> dict[str, Any]:
    """A numpy array as JSON-able values, exactly (dtype, shape, raw bytes in base64)."""
    array = np.ascontiguousarray(value)
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "data": base64.b64encode(array.tobytes()).decode("ascii"),
    }


def array_from_json(value: Mapping[str, Any]) -> np.ndarray:
    """The array :func:`array_to_json` described (a new, writable copy)."""
    dtype = np.dtype(str(value["dtype"]))
    raw = base64.b64decode(str(value["data"]), validate=True)
    return np.frombuffer(raw, dtype=dtype).reshape([int(d) for d in value["shape"]]).copy()


def _named_to_json(arrays: Mapping[str, np.ndarray] | None) -> dict[str, Any] | None:
    return None if arrays is None else {k: array_to_json(v) for k, v in arrays.items()}


def _named_from_json(state: Mapping[str, Any] | None) -> dict[str, np.ndarray] | None:
    return None if state is None else {k: array_from_json(v) for k, v in state.items()}


def _conform(arrays: ArrayRecord | None, codec: ArraysCodec) -> ArrayRecord | None:
    """``arrays`` in the layout's dtypes: the next round's clients accept nothing else.

    Flower's FedAdam scales by a float64 bias correction, which NumPy 2 promotes the
    float32 weights to; the values are cast back (the global state keeps its dtypes).
    """
    if arrays is None:
        return None
    out: dict[str, Array] = {}
    for name, array in arrays.items():
        value = array.numpy()
        dtype = codec.layout[name][1] if name in codec.layout else value.dtype
        out[name] = Array(np.asarray(value, dtype=dtype))
    return ArrayRecord(out)


# ------------------------------------------------------------------ the strategies


class SeededFedAvgM(SeededFedAvg, FedAvgM):
    """Flower's ``FedAvgM`` (Hsu et al., arXiv 1909.06335) with seeded sampling.

    Parameters
    ----------
    server_learning_rate : float
        Step along the (momentum) pseudo-gradient; 1 with momentum 0 is FedAvg.
    server_momentum : float
        Momentum of the pseudo-gradient, in ``[0, 1)``.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays (the pseudo-gradient's base), then sample."""
        # Flower's FedAvgM keeps the arrays of its first round, then its own aggregate:
        # in a run, always the arrays sent now. Taking them each round makes a resumed
        # run need only the momentum.
        self.current_arrays = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Gate, Flower's FedAvgM step, the layout's dtypes."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        return _conform(arrays, self.codec), metrics

    def state_dict(self) -> dict[str, Any]:
        """The momentum vector (None before the first step)."""
        momentum = self.momentum_vector
        return {"momentum": None if momentum is None else [array_to_json(v) for v in momentum]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the momentum vector :meth:`state_dict` returned."""
        momentum = state.get("momentum")
        self.momentum_vector = None if momentum is None else [array_from_json(v) for v in momentum]


class _SeededFedOpt(SeededFedAvg, FedOpt):
    """Flower's ``FedOpt`` family (FedAdam, FedYogi) with seeded sampling and state."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Remember the global arrays (what Flower's ``FedOpt`` keeps), then sample."""
        self.current_arrays = {name: array.numpy() for name, array in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Gate, Flower's adaptive step, the layout's dtypes."""
        arrays, metrics = super().aggregate_train(server_round, replies)
        return _conform(arrays, self.codec), metrics

    def state_dict(self) -> dict[str, Any]:
        """The first and second moments (None before the first step)."""
        return {"m_t": _named_to_json(self.m_t), "v_t": _named_to_json(self.v_t)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the moments :meth:`state_dict` returned."""
        self.m_t = _named_from_json(state.get("m_t"))
        self.v_t = _named_from_json(state.get("v_t"))


class SeededFedAdam(_SeededFedOpt, FedAdam):
    """Flower's ``FedAdam`` (Reddi et al., arXiv 2003.00295) with seeded sampling.

    Parameters
    ----------
    eta : float
        Server learning rate.
    eta_l : float
        The clients' learning rate (reported by Flower's summary only).
    beta_1, beta_2 : float
        Decay of the first and second moments.
    tau : float
        Adaptivity: added to the root of the second moment.
    """


class SeededFedYogi(_SeededFedOpt, FedYogi):
    """Flower's ``FedYogi`` (Reddi et al., arXiv 2003.00295) with seeded sampling.

    Parameters as :class:`SeededFedAdam`.
    """


class SeededFedProx(SeededFedAvg, FedProx):
    """Flower's ``FedProx`` (Li et al., arXiv 1812.06127) with seeded sampling.

    Parameters
    ----------
    proximal_mu : float
        Sent to every sampled client under ``proximal-mu``; the client adds
        ``(mu / 2) ||w - w_global||^2`` to its loss.
    """

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample, with ``proximal-mu`` in the round's config (the caller's is not touched)."""
        # Flower's FedProx writes the key into the caller's config; a copy carries it here.
        with_mu = ConfigRecord({**config, keys.PROXIMAL_MU: float(self.proximal_mu)})
        return super().configure_train(server_round, arrays, with_mu, grid)


class SeededBulyan(SeededFedAvg, Bulyan):
    """Flower's ``Bulyan`` (El Mhamdi et al., arXiv 1802.07927) with seeded sampling.

    Parameters
    ----------
    num_malicious_nodes : int
        ``f``; a round with fewer than ``4 f + 3`` valid replies is skipped.
    """


# ------------------------------------------------------------------ from a scenario


def server_lr(scenario: Scenario) -> float:
    """The scenario's ``server-lr``, or its aggregator's default when it is 0."""
    rule = scenario.effective.aggregator
    return scenario.aggregation.server_lr or DEFAULT_SERVER_LR.get(rule, 1.0)


def bulyan_malicious(clients_per_round: int, *, trim_fraction: float) -> int:
    """Bulyan's ``f``: ``floor(trim_fraction * clients_per_round)``, as Krum's."""
    return trim_count(clients_per_round, trim_fraction=trim_fraction)


def baseline_strategy(
    scenario: Scenario, *, codec: ArraysCodec, partitions: Mapping[int, int]
) -> SeededFedAvg:
    """The scenario's Flower baseline (``aggregator`` one of :data:`BASELINES`).

    Works on any task whose global state is float arrays (dense image weights, LoRA
    adapters); the scenario's cross-checks have refused the combinations that cannot run.
    """
    rule = scenario.effective.aggregator
    agg = scenario.aggregation
    common: dict[str, Any] = {
        "codec": codec,
        "partitions": partitions,
        "clients_per_round": scenario.run.clients_per_round,
        "seed": scenario.run.seed,
        "min_replies": scenario.run.min_replies,
    }
    if rule == "fedavgm":
        return SeededFedAvgM(
            **common,
            server_learning_rate=server_lr(scenario),
            server_momentum=agg.server_momentum,
        )
    if rule in ("fedadam", "fedyogi"):
        kind: type[_SeededFedOpt] = SeededFedAdam if rule == "fedadam" else SeededFedYogi
        return kind(
            **common,
            eta=server_lr(scenario),
            eta_l=scenario.effective.lr,
            beta_1=agg.server_beta1,
            beta_2=agg.server_beta2,
            tau=agg.server_tau,
        )
    if rule == "fedprox":
        return SeededFedProx(**common, proximal_mu=agg.proximal_mu)
    if rule == "bulyan":
        return SeededBulyan(
            **common,
            num_malicious_nodes=bulyan_malicious(
                scenario.run.clients_per_round, trim_fraction=agg.trim_fraction
            ),
        )
    raise ValueError(f"aggregator: not a Flower baseline of this module: {rule!r}")
