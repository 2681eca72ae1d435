"""Cross-device federations of a text classifier's head on frozen MiniLM features.

The privacy grid (:mod:`fedrank.simulations.privacy_grid`) sweeps epsilon for hundreds
of clients on a 2-core machine. Training the LoRA adapter of every sampled client in
every round of every cell is hours; training the head alone is seconds, because the
frozen base's mean-pooled features of every record are computed once and cached
(:func:`frozen_features`: exactly what the model computes for them, the adapter being
untrained). What is federated is the classification head (768 weights + 2 biases on the
384 mean-pooled dimensions): clients, Poisson client sampling, local training, and the
DP mechanisms are those of a LoRA run, through the same functions:

- ``sample``: each sampled client runs Opacus DP-SGD on its records, its noise and
  batches from a fresh secure source, sigma from its budget as a real site plans it
  (:func:`fedrank.privacy.plan.sample_noise_multiplier`);
- ``client`` / ``gaussian``: :func:`fedrank.privacy.mechanisms.client_level_dp_aggregate`
  (or adaptive clipping) with the coordinator's secure source, Poisson sampling at
  q = m / N, sigma from the budget (:func:`fedrank.privacy.plan.client_noise_multiplier`);
- ``client`` / ``rqm`` and ``local-gaussian``: local randomizers at b bits a coordinate
  (:mod:`fedrank.privacy.rqm`, :mod:`fedrank.privacy.quantized_gaussian`), calibrated so
  that a client sending in every round spends the budget.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from torch.utils.data import DataLoader, TensorDataset

from fedrank.config import Scenario
from fedrank.errors import ConfigError
from fedrank.models.lora import load_base_model
from fedrank.models.pooling import masked_mean
from fedrank.privacy.accountant import compute_epsilon
from fedrank.privacy.adaptive_clipping import adaptive_clipping_round
from fedrank.privacy.mechanisms import client_level_dp_aggregate
from fedrank.privacy.plan import (
    client_noise_multiplier,
    client_sample_rate,
    count_stddev,
    planned_steps,
    sample_noise_multiplier,
    steps_per_epoch,
)
from fedrank.privacy.quantized_gaussian import (
    local_gaussian_encode,
    local_gaussian_epsilon,
    local_gaussian_noise_for_epsilon,
)
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.rqm import RqmParams, rqm_decode_update, rqm_encode_update
from fedrank.privacy.rqm_accounting import rqm_epsilon, rqm_extension_for_epsilon
from fedrank.tasks import load_task
from fedrank.tasks.text_lora import TextLoraTask

Level = Literal["none", "sample", "client"]
Mechanism = Literal["gaussian", "rqm", "local-gaussian"]
Features = dict[str, np.ndarray]
Head = dict[str, np.ndarray]
RQM_KEEP_PROBABILITY = 0.5
"""q of RQM's level sub-sampling in the grid (each interior level kept with 1/2)."""


@dataclass(frozen=True)
class HeadCell:
    """One cell of the grid: a privacy level, a budget, a mechanism."""

    level: Level
    epsilon: float | None
    mechanism: Mechanism = "gaussian"
    bits: int = 32
    seed: int = 0


@torch.no_grad()
def frozen_features(scenario: Scenario, cache: Path) -> Features:
    """Mean-pooled MiniLM features of every client's records and of the test records.

    Cached in ``cache`` by model, length, records and partition (computed once, about
    a minute a thousand records on one thread).
    """
    s = scenario
    key = (
        f"{s.effective.model}-{s.model.max_length}-{s.data.train_records}-"
        f"{s.data.test_records}-{s.data.partitioner}-{s.run.num_clients}-{s.run.seed}"
    )
    file = cache / f"features-{key}.npz"
    if file.is_file():
        with np.load(file) as saved:
            return {k: saved[k] for k in saved.files}
    task = load_task(s.replace(lora_pooling="mean"))
    if not isinstance(task, TextLoraTask):
        raise ConfigError("strategy", "the privacy grid federates a text LoRA task's head")
    encoder = load_base_model(task.spec).bert  # BERT inside either base class

    def pooled(data: Any) -> np.ndarray:
        parts = [
            masked_mean(
                encoder(input_ids=data.input_ids[i : i + 256],
                        attention_mask=data.attention_mask[i : i + 256])[0],
                data.attention_mask[i : i + 256],
            )
            for i in range(0, len(data), 256)
        ]  # fmt: skip
        return torch.cat(parts).numpy().astype(np.float32)

    out: Features = {}
    for name, data in (
        *((f"c{c}", task.partition_data(c)) for c in range(s.run.num_clients)),
        ("test", task.heldout()),
    ):
        out[f"x-{name}"] = pooled(data)
        out[f"y-{name}"] = data.labels.numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **out)  # type: ignore[arg-type]  # numpy's stub wants positional arrays
    return out


def _local_train(
    scenario: Scenario, head: Head, x: np.ndarray, y: np.ndarray, *, dp: bool, seed: int
) -> Head:
    """The head after one client's local epochs (Opacus DP-SGD when ``dp``)."""
    model = torch.nn.Linear(x.shape[1], 2)
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(head["weight"]))
        model.bias.copy_(torch.as_tensor(head["bias"]))
    lr = scenario.lora.head_lr or scenario.effective.lr
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    source = RandomSource.secure()
    loader: DataLoader[Any] = DataLoader(
        TensorDataset(torch.as_tensor(x), torch.as_tensor(y).long()),
        batch_size=scenario.train.batch_size,
        shuffle=True,
        generator=source.derive("batches").torch_generator()
        if dp
        else torch.Generator().manual_seed(seed),
    )
    trained: torch.nn.Module = model
    if dp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            engine = PrivacyEngine(accountant=scenario.dp.accountant)
        trained, opt, loader = engine.make_private(
            module=model,
            optimizer=opt,
            data_loader=loader,
            noise_multiplier=sample_noise_multiplier(scenario, len(y)),
            max_grad_norm=scenario.dp.clip_norm,
            poisson_sampling=True,
            noise_generator=source.derive("noise").torch_generator(),
        )
    for _ in range(scenario.train.local_epochs):
        for xb, yb in loader:
            opt.zero_grad()
            if len(yb) == 0:  # an empty Poisson batch still takes its noisy step
                for p in model.parameters():
                    setattr(p, "grad_sample", torch.zeros((0, *p.shape)))  # noqa: B010
            else:
                F.cross_entropy(trained(xb), yb).backward()  # type: ignore[no-untyped-call]
            opt.step()
    return {
        "weight": model.weight.detach().numpy().astype(np.float64),
        "bias": model.bias.detach().numpy().astype(np.float64),
    }


def _calibration(scenario: Scenario, cell: HeadCell, dimension: int) -> tuple[float, float]:
    """(noise parameter, epsilon a client or the server spends over the run)."""
    s, rounds, delta = scenario, scenario.run.rounds, scenario.dp.delta
    if cell.level == "client" and cell.mechanism == "gaussian":
        sigma = client_noise_multiplier(s)
        history = [(sigma, client_sample_rate(s), rounds)]
        return sigma, compute_epsilon(history=history, delta=delta, accountant=s.dp.accountant)
    if cell.level == "client" and cell.epsilon is not None:
        if cell.mechanism == "rqm":
            extension = rqm_extension_for_epsilon(
                target_epsilon=cell.epsilon, clip=s.dp.client_clip_norm, levels=1 << cell.bits,
                keep_probability=RQM_KEEP_PROBABILITY, dimension=dimension, rounds=rounds,
                delta=delta,
            )  # fmt: skip
            params = RqmParams(s.dp.client_clip_norm, extension, 1 << cell.bits,
                               RQM_KEEP_PROBABILITY)  # fmt: skip
            return extension, rqm_epsilon(
                params=params, dimension=dimension, rounds=rounds, delta=delta
            )
        sigma = local_gaussian_noise_for_epsilon(
            target_epsilon=cell.epsilon, rounds=rounds, delta=delta
        )
        return sigma, local_gaussian_epsilon(noise_multiplier=sigma, rounds=rounds, delta=delta)
    if cell.level == "sample":
        n = len(load_task(s).partition_data(0))
        sigma = sample_noise_multiplier(s, n)
        q = 1 / steps_per_epoch(num_examples=n, batch_size=s.train.batch_size)
        spent = compute_epsilon(
            history=[(sigma, q, planned_steps(s, n))], delta=delta, accountant=s.dp.accountant
        )
        return sigma, spent
    return 0.0, float("inf")


class _Server:
    """The server's side of one cell: aggregation by the cell's mechanism."""

    def __init__(self, scenario: Scenario, cell: HeadCell, noise: float, root: RandomSource):
        self.scenario, self.cell, self.noise, self.root = scenario, cell, noise, root
        self.clip = scenario.dp.client_clip_norm

    def aggregate(
        self, server_round: int, updates: list[Head], shapes: dict[str, tuple[int, ...]]
    ) -> Head:
        s, cell = self.scenario, self.cell
        m = s.run.clients_per_round
        if cell.level != "client":
            if not updates:
                return {k: np.zeros(v) for k, v in shapes.items()}
            return {k: np.mean([u[k] for u in updates], axis=0) for k in shapes}
        rng = self.root.derive("client-noise", server_round, 0)
        if cell.mechanism == "gaussian" and s.dp.adaptive_clipping:
            result = adaptive_clipping_round(
                updates, shapes=shapes, clip_norm=self.clip, noise_multiplier=self.noise,
                count_stddev=count_stddev(s), expected_clients=m,
                target_quantile=s.dp.clip_quantile, learning_rate=s.dp.clip_learning_rate,
                rng=rng,
            )  # fmt: skip
            self.clip = result.next_clip_norm
            return result.average
        if cell.mechanism == "gaussian":
            return client_level_dp_aggregate(
                updates, shapes=shapes, clip_norm=self.clip, noise_multiplier=self.noise,
                rng=rng, expected_clients=m,
            )  # fmt: skip
        # Local randomizers: each client's own secure source; the server averages.
        received = []
        for update in updates:
            source = RandomSource.secure()
            if cell.mechanism == "rqm":
                params = RqmParams(self.clip, self.noise, 1 << cell.bits, RQM_KEEP_PROBABILITY)
                received.append(
                    rqm_decode_update(
                        rqm_encode_update(update, params=params, norm="l2", source=source),
                        params,
                    )
                )
            else:
                received.append(
                    local_gaussian_encode(
                        update,
                        clip_norm=self.clip,
                        noise_multiplier=self.noise,
                        bits=cell.bits,
                        source=source,
                    )
                )
        if not received:
            return {k: np.zeros(v) for k, v in shapes.items()}
        return {k: np.mean([r[k] for r in received], axis=0) for k in shapes}


def run_head_federation(scenario: Scenario, cell: HeadCell, feats: Features) -> dict[str, Any]:
    """One cell: the federated head's held-out accuracy and what it cost in privacy.

    ``scenario`` already carries the cell's DP settings (mode and target epsilon).
    """
    started = time.perf_counter()
    s = scenario
    dim = feats["x-test"].shape[1]
    init = np.random.default_rng([s.run.seed, cell.seed])
    head: Head = {"weight": init.normal(0, 0.02, (2, dim)), "bias": np.zeros(2)}
    shapes = {name: value.shape for name, value in head.items()}
    noise, spent = _calibration(s, cell, sum(v.size for v in head.values()))
    root = RandomSource.secure()
    server = _Server(s, cell, noise, root)
    n, m = s.run.num_clients, s.run.clients_per_round
    sampled: list[int] = []
    for r in range(1, s.run.rounds + 1):
        chosen = root.derive("client-sampling", r).poisson_subset(range(n), m / n)
        sampled.append(len(chosen))
        updates = []
        for c in chosen:
            local = _local_train(
                s, head, feats[f"x-c{c}"], feats[f"y-c{c}"], dp=cell.level == "sample",
                seed=1000 * r + c,
            )  # fmt: skip
            updates.append({k: local[k] - head[k] for k in head})
        step = server.aggregate(r, updates, shapes)
        head = {k: head[k] + step[k] for k in head}
    logits = feats["x-test"] @ head["weight"].T + head["bias"]
    accuracy = float(np.mean(logits.argmax(axis=1) == feats["y-test"]))
    return {
        "level": cell.level,
        "mechanism": cell.mechanism if cell.level == "client" else "-",
        "bits": cell.bits if cell.level == "client" else 32,
        "target_epsilon": cell.epsilon,
        "epsilon": spent,
        "noise": noise,
        "accuracy": accuracy,
        "clients": n,
        "expected_per_round": m,
        "mean_sampled": float(np.mean(sampled)),
        "rounds": s.run.rounds,
        "seed": cell.seed,
        "seconds": time.perf_counter() - started,
    }
