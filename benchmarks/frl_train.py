"""FRL local training against FedAvg local training, per epoch, on the same model and data.

One client's round, as the ClientApp runs it, on MNIST-5k (400 training examples
drawn at random, batch 16, SGD with momentum, one torch thread: a client's default CPU share):

- ``fedavg``: load the global weights, train the dense network, read the weights;
- ``frl``: set the global ranking, train the supermask scores, read the ranking (with the
  compiled selection and ranking, ``fedrank/models/_topk.c``, where it was built);
- ``frl-torch``: the same round with the torch selection and ranking (what a layer off
  the CPU, or an install without a C compiler, runs); its rankings must equal ``frl``'s;
- ``frl-before``: the same FRL round with the selection fedrank used before
  (``torch.topk`` + scatter for every mask, a float stable argsort per ranking),
  patched in here only; its rankings must equal ``frl``'s bit for bit.

Times are per epoch (a round of ``--epochs`` epochs divided by the epochs), the
best of ``--repeats`` rounds run in turn, as thread CPU time (what this thread
computed, robust to other processes on the machine) and as wall time.
``--profile`` also prints where each FRL variant spends its time (torch profiler).

Run: ``python -m benchmarks.frl_train [--model mlp cnn] [--repeats 7] [--profile]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
import types
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from fedrank.data.source import DataSource, load_image_data
from fedrank.data.splits import ImageSplit
from fedrank.models import topk
from fedrank.models.supermask import (
    SupermaskMixin,
    build_model,
    get_rankings,
    kept_count,
    set_rankings,
    supermask_layers,
)
from fedrank.training import load_numpy_state, numpy_state, train_local

EXAMPLES, BATCH, K, SEED = 400, 16, 0.5, 0
LR = {"fedavg": 0.1, "frl": 1.0}  # the strategies' default learning rates


class _TopKBefore(torch.autograd.Function):
    """The former mask: ``topk`` then a scatter, identity backward."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, k: float) -> torch.Tensor:
        flat = scores.flatten()
        mask = torch.zeros_like(flat)
        mask[torch.topk(flat, kept_count(flat.numel(), k), sorted=False).indices] = 1.0
        return mask.view_as(scores)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


def _masked_weight_before(self: SupermaskMixin) -> torch.Tensor:
    mask: torch.Tensor = _TopKBefore.apply(self.scores, self.k)  # type: ignore[no-untyped-call]
    return self.weight * mask


def _get_ranks_before(self: SupermaskMixin) -> torch.Tensor:
    order = torch.argsort(self.scores.detach().flatten(), stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(order.numel())
    return ranks


def _set_ranks_before(self: SupermaskMixin, ranks: torch.Tensor) -> None:
    with torch.no_grad():
        self.scores.copy_(self.get_buffer("score_levels")[ranks.flatten()].view_as(self.scores))


def before(model: torch.nn.Module) -> torch.nn.Module:
    """Give ``model``'s supermask layers the former selection and ranking (this run only)."""
    for layer in supermask_layers(model).values():
        layer._forward_weight = types.MethodType(_masked_weight_before, layer)  # type: ignore[method-assign]
        layer.get_ranks = types.MethodType(_get_ranks_before, layer)  # type: ignore[method-assign]
        layer.set_ranks = types.MethodType(_set_ranks_before, layer)  # type: ignore[method-assign]
    return model


@contextlib.contextmanager
def without_kernels() -> Iterator[None]:
    """fedrank.models.topk without its compiled kernels, inside the block."""
    kernels = topk._masked_update, topk._rank_into
    topk._masked_update = topk._rank_into = None
    try:
        yield
    finally:
        topk._masked_update, topk._rank_into = kernels


def client_rounds(
    name: str, data: ImageSplit, shape: tuple[int, int, int], epochs: int
) -> dict[str, Callable[[], dict[str, np.ndarray]]]:
    """One client round per variant: load the global state, train, read the reply."""
    dense = build_model(name, image_shape=shape, num_classes=10, seed=SEED, k=K, dense=True)
    frl = build_model(name, image_shape=shape, num_classes=10, seed=SEED, k=K)
    with without_kernels():  # its layers never keep a compiled masked weight
        plain = build_model(name, image_shape=shape, num_classes=10, seed=SEED, k=K)
    old = before(build_model(name, image_shape=shape, num_classes=10, seed=SEED, k=K))
    weights, ranking = numpy_state(dense), get_rankings(frl)

    def train(model: torch.nn.Module, lr: float) -> None:
        generator = torch.Generator().manual_seed(1)
        train_local(
            model, data, epochs=epochs, lr=lr, momentum=0.9, batch_size=BATCH, generator=generator
        )

    def fedavg() -> dict[str, np.ndarray]:
        load_numpy_state(dense, weights)
        train(dense, LR["fedavg"])
        return numpy_state(dense)

    def frl_round(model: torch.nn.Module) -> dict[str, np.ndarray]:
        set_rankings(model, ranking)
        train(model, LR["frl"])
        return get_rankings(model)

    def torch_round() -> dict[str, np.ndarray]:
        with without_kernels():
            return frl_round(plain)

    return {
        "fedavg": fedavg,
        "frl": lambda: frl_round(frl),
        "frl-torch": torch_round,
        "frl-before": lambda: frl_round(old),
    }


def measure(
    rounds: dict[str, Callable[[], object]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Best (thread CPU, wall) seconds of each round, the variants taking turns."""
    best = {name: (float("inf"), float("inf")) for name in rounds}
    for _ in range(repeats):
        for name, fn in rounds.items():
            cpu, wall = time.thread_time(), time.perf_counter()
            fn()
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            best[name] = (min(best[name][0], cpu), min(best[name][1], wall))
    return best


def profile(fn: Callable[[], object], rows: int) -> str:
    """The top ``rows`` torch ops of one call by self CPU time."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Print FRL/FedAvg per-epoch ratios (and before/after) for each model."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    ds = load_image_data(DataSource("mnist5k", test_fraction=0.2))
    # A random client's worth (the packaged set is sorted by label).
    idx = np.random.default_rng(SEED).choice(len(ds.train), EXAMPLES, replace=False)
    data = ImageSplit(ds.train.images[idx], ds.train.labels[idx])
    ratios: dict[str, float] = {}
    for name in args.model:
        rounds = client_rounds(name, data, ds.image_shape, args.epochs)
        replies = {variant: fn() for variant, fn in rounds.items()}  # also a warm-up
        same = all(
            np.array_equal(replies["frl"][layer], replies[other][layer])
            for layer in replies["frl"]
            for other in ("frl-torch", "frl-before")
        )
        best = measure(rounds, args.repeats)
        base_cpu, base_wall = best["fedavg"]
        print(
            f"\n{name} on MNIST-5k: {EXAMPLES} examples, batch {BATCH}, {args.epochs} epochs"
            f" per round, 1 thread; per epoch, best of {args.repeats}"
        )
        print(f"  {'':<11}{'cpu ms':>9}{'x fedavg':>10}{'wall ms':>10}{'x fedavg':>10}")
        for variant, (cpu, wall) in best.items():
            cpu_e, wall_e = cpu / args.epochs * 1e3, wall / args.epochs * 1e3
            print(
                f"  {variant:<11}{cpu_e:9.1f}{cpu / base_cpu:10.2f}"
                f"{wall_e:10.1f}{wall / base_wall:10.2f}"
            )
        before_cpu, after_cpu = best["frl-before"][0], best["frl"][0]
        print(f"  frl speed-up over before: {before_cpu / after_cpu:.2f}x (cpu)")
        print(f"  rankings identical to frl-torch's and before's: {same}")
        print(f"  compiled selection: {topk.COMPILED_SELECTION}")
        ratios[f"{name}_frl_over_fedavg"] = after_cpu / base_cpu
        ratios[f"{name}_before_over_fedavg"] = before_cpu / base_cpu
        if args.profile:
            for variant in ("frl-before", "frl-torch", "frl", "fedavg"):
                print(f"\n{name} {variant}: top ops by self CPU time")
                print(profile(rounds[variant], 12))
    print(f"\nload average (1, 5, 15 min): {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return ratios


if __name__ == "__main__":
    main()
