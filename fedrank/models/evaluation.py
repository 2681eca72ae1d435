"""Logits and held-out accuracy of a sequence classifier on tokenised text.

Shared by the client's trainer and the server's evaluation of the global adapter.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F  # noqa: N812 (the usual alias)

from fedrank.data.text import TokenizedText
from fedrank.devices import model_device
from fedrank.errors import ConfigError


def classifier_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of ``model`` for a batch, computed over the batch's non-padding width.

    Trailing columns that are padding in every row change nothing (attention gives
    them zero weight, so their gradients are zero too); dropping them saves work,
    which grows with the number of tokens.
    """
    width = int(torch.nonzero(mask.any(dim=0)).max()) + 1 if bool(mask.any()) else mask.shape[1]
    out: torch.Tensor = model(input_ids=ids[:, :width], attention_mask=mask[:, :width]).logits
    return out


@torch.no_grad()
def evaluate_lora(model: Any, data: TokenizedText, *, batch_size: int = 256) -> tuple[float, float]:
    """Accuracy and mean cross-entropy of ``model`` on ``data`` (eval mode, on the
    model's device).

    Returns
    -------
    tuple of float
        ``(accuracy, loss)``.
    """
    if len(data) == 0:
        raise ConfigError("data", "nothing to evaluate")
    model.eval()
    device = model_device(model)
    correct = 0
    total_loss = 0.0
    # Records of similar length share a batch, so little padding is computed.
    order = torch.argsort(data.attention_mask.sum(dim=1), stable=True)
    for start in range(0, len(data), batch_size):
        part = order[start : start + batch_size]
        ids, mask = data.input_ids[part].to(device), data.attention_mask[part].to(device)
        logits = classifier_logits(model, ids, mask)
        labels = data.labels[part].to(device)
        total_loss += float(F.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=-1) == labels).sum())
    return correct / len(data), total_loss / len(data)
