"""Local training and evaluation of image classifiers (supermask or dense).

The same loop trains FRL scores and FedAvg weights: only the parameters that
require gradients differ (scores for a supermask network, weights for a dense
one), so the comparison between the two is like for like.

Both run where the model is (:func:`~fedrank.devices.model_device`): the caller puts
the model on the run's device (:mod:`fedrank.devices`); batches follow it. The
shuffling order is drawn on the CPU, so it is the same on every device.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.data.splits import ImageSplit
from fedrank.devices import model_device
from fedrank.models.proximal import ProximalTerm


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What one local training run reports."""

    num_examples: int
    loss: float
    steps: int


@contextlib.contextmanager
def _seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Torch's global generator seeded from ``generator``'s seed, restored afterwards.

    Dropout and other layers of a user's model draw from the global generator; this
    makes them reproducible too, without drawing from ``generator`` (the shuffling
    order stays what it was).
    """
    seed = int(np.random.SeedSequence([generator.initial_seed(), 1]).generate_state(1)[0])
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class MomentumSGD:
    """SGD with momentum, step for step what ``torch.optim.SGD(params, lr, momentum)``
    computes on the CPU (bit for bit, tested), without ``torch.optim``.

    Constructing any ``torch.optim`` optimizer imports ``torch._dynamo`` (about 1.5 s),
    which every process that trains (each Ray worker, each deployed ClientApp) would
    pay before its first step, for a compiler these loops never use.
    """

    def __init__(self, params: Sequence[torch.Tensor], *, lr: float, momentum: float) -> None:
        self.params = list(params)
        self.lr = lr
        self.momentum = momentum
        self.buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if self.momentum != 0:
                buf = self.buffers[i]
                if buf is None:
                    buf = self.buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-self.lr)


def train_local(
    model: nn.Module,
    data: ImageSplit,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    batch_size: int,
    generator: torch.Generator,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train the model's trainable parameters with SGD + momentum for ``epochs``.

    Parameters
    ----------
    model : nn.Module
        Trained in place (scores of a supermask network, or dense weights).
    data : ImageSplit
        The client's examples.
    generator : torch.Generator
        Draws the shuffling order, and seeds torch's global generator for the
        model's own draws (dropout); the same seed gives the same training.
    proximal_mu : float
        FedProx: ``(mu / 2) ||w - w_start||^2`` is added to the loss (0: plain training).
        The reported loss is the cross-entropy alone.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    proximal = ProximalTerm(params, proximal_mu)
    optimizer = MomentumSGD(params, lr=lr, momentum=momentum)
    device = model_device(model)
    x = torch.from_numpy(data.images).to(device)
    y = torch.from_numpy(data.labels).to(device)
    model.train()
    total, steps = 0.0, 0
    with _seeded_global_rng(generator, device):
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=generator).to(device)
            for start in range(0, len(data), batch_size):
                idx = order[start : start + batch_size]
                optimizer.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                proximal.add_to(loss).backward()  # type: ignore[no-untyped-call]  # untyped in torch
                optimizer.step()
                total += float(loss.detach())
                steps += 1
    return TrainResult(num_examples=len(data), loss=total / max(steps, 1), steps=steps)


@torch.no_grad()
def evaluate(model: nn.Module, data: ImageSplit, *, batch_size: int = 1024) -> tuple[float, float]:
    """Mean cross-entropy loss and accuracy of ``model`` on ``data``."""
    model.eval()
    device = model_device(model)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.images[start : start + batch_size]).to(device)
        y = torch.from_numpy(data.labels[start : start + batch_size]).to(device)
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(data), 1)
    return loss_sum / n, correct / n


def numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
    """The model's floating-point state as numpy arrays (copies), keyed by state-dict name.

    Parameters and floating-point buffers (BatchNorm running statistics), in
    ``state_dict`` order; integer buffers (``num_batches_tracked``) stay local.
    For a model without buffers this is every parameter.
    """
    return {
        name: t.detach().cpu().numpy().copy()
        for name, t in model.state_dict().items()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    }


def load_numpy_state(model: nn.Module, state: Mapping[str, np.ndarray]) -> None:
    """Load what :func:`numpy_state` gives (strict: the names must be the same)."""
    expected = [
        name
        for name, t in model.state_dict().items()
        if isinstance(t, torch.Tensor) and t.is_floating_point()
    ]
    if set(expected) != set(state):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"state does not match the model: missing {missing}, unexpected {extra}")
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=False
    )
