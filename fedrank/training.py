"""Local training and evaluation of image classifiers (supermask or dense).

The same loop trains FRL scores and FedAvg weights: only the parameters that
require gradients differ (scores for a supermask network, weights for a dense
one), so the comparison between the two is like for like.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.data.digits import ImageSplit
from fedrank.models.proximal import ProximalTerm


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What one local training run reports."""

    num_examples: int
    loss: float
    steps: int


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
        Draws the shuffling order; the same seed gives the same training.
    proximal_mu : float
        FedProx: ``(mu / 2) ||w - w_start||^2`` is added to the loss (0: plain training).
        The reported loss is the cross-entropy alone.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    proximal = ProximalTerm(params, proximal_mu)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
    x = torch.from_numpy(data.images)
    y = torch.from_numpy(data.labels)
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        order = torch.randperm(len(data), generator=generator)
        for start in range(0, len(data), batch_size):
            idx = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
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
    loss_sum, correct = 0.0, 0
    for start in range(0, len(data), batch_size):
        x = torch.from_numpy(data.images[start : start + batch_size])
        y = torch.from_numpy(data.labels[start : start + batch_size])
        logits = model(x)
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    n = max(len(data), 1)
    return loss_sum / n, correct / n


def numpy_state(model: nn.Module) -> dict[str, np.ndarray]:
    """Trainable dense weights as numpy arrays (copies), keyed by parameter name."""
    return {name: p.detach().numpy().copy() for name, p in model.named_parameters()}


def load_numpy_state(model: nn.Module, state: dict[str, np.ndarray]) -> None:
    """Load dense weights from numpy arrays (strict: names must match)."""
    model.load_state_dict(
        {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, strict=True
    )
