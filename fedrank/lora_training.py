"""Local LoRA training on a client, optionally with sample-level DP-SGD (Opacus).

DP-SGD (Abadi et al., arXiv 1607.00133): Poisson-sampled logical batches, each
example's gradient clipped to ``max_grad_norm``, Gaussian noise of standard
deviation ``noise_multiplier * max_grad_norm`` added to the sum. Opacus computes
the per-example gradients of the LoRA matrices (PEFT's ``lora_A``/``lora_B`` are
plain ``nn.Linear`` modules) and of the head; the frozen base has none.

The client's privacy accountant outlives the round: its history (a tuple of
``(noise_multiplier, sample_rate, steps)``) comes in as ``accountant_state``, is
restored into each round's new ``PrivacyEngine``, and goes back out extended, so
the epsilon reported is cumulative over every round the client took part in
(a new engine per round, as in Flower's Opacus example, counts one round only).

Training runs where the model is: the caller puts it on the run's device
(:mod:`fedrank.devices`); batches follow it, and DP-SGD draws its noise there.
The DP-SGD path and its privacy arithmetic live in :mod:`fedrank.lora_dp_sgd`.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from torch.utils.data import DataLoader, TensorDataset

from fedrank.data.text import TokenizedText
from fedrank.devices import model_device
from fedrank.errors import ConfigError
from fedrank.lora_dp_sgd import AccountantHistory as AccountantHistory
from fedrank.lora_dp_sgd import AccountantName as AccountantName
from fedrank.lora_dp_sgd import DpSgdConfig as DpSgdConfig
from fedrank.lora_dp_sgd import cumulative_epsilon as cumulative_epsilon
from fedrank.lora_dp_sgd import noise_multiplier_for_budget as noise_multiplier_for_budget
from fedrank.lora_dp_sgd import to_device, train_dp_sgd
from fedrank.models.evaluation import classifier_logits as _logits
from fedrank.models.evaluation import evaluate_lora as evaluate_lora
from fedrank.models.lora import trainable_tensors
from fedrank.models.proximal import ProximalTerm
from fedrank.privacy.canaries import GradientCanaries
from fedrank.privacy.randomness import RandomSource


class LoraTrainResult(NamedTuple):
    """What one local round returns."""

    tensors: dict[str, np.ndarray]
    """The tensors that travel (:func:`fedrank.models.lora.trainable_tensors`)."""
    metrics: dict[str, float]
    """``train_loss`` (mean over the round's batches), ``num_examples``, ``steps``."""
    privacy: dict[str, float | str] | None
    """None without DP; else mechanism, noise_multiplier, sample_rate, steps,
    max_grad_norm, epsilon (cumulative), delta, accountant."""
    accountant_state: AccountantHistory
    """The client's accountant history after this round (unchanged without DP)."""


def _param_groups(model: Any, lr: float, head_lr: float | None) -> list[dict[str, Any]]:
    """The trained tensors in one group at ``lr``, or the head apart at ``head_lr``."""
    adapter: list[torch.nn.Parameter] = []
    head: list[torch.nn.Parameter] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            # PEFT keeps the trained copy of the head under "modules_to_save".
            (head if ".modules_to_save." in name else adapter).append(param)
    if head_lr is None or not head:
        return [{"params": adapter + head, "lr": lr}]
    return [{"params": adapter, "lr": lr}, {"params": head, "lr": head_lr}]


def _optimizer(
    groups: list[dict[str, Any]], kind: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    if kind == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ConfigError("optimizer", f"must be 'adamw' or 'sgd', got {kind!r}")


def train_lora(
    model: Any,
    data: TokenizedText,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    optimizer: Literal["adamw", "sgd"] = "adamw",
    weight_decay: float = 0.0,
    head_lr: float | None = None,
    dp: DpSgdConfig | None = None,
    accountant_state: AccountantHistory = (),
    randomness: RandomSource | None = None,
    canaries: GradientCanaries | None = None,
    proximal_mu: float = 0.0,
) -> LoraTrainResult:
    """Train the adapter of ``model`` (in place) on ``data``.

    Parameters
    ----------
    model : peft.PeftModel
        From :func:`fedrank.models.lora.build_lora_model` with the global adapter
        set; only its trainable tensors change.
    data : TokenizedText
        The client's records.
    epochs, lr, batch_size : int, float, int
        ``batch_size`` is the logical (expected, under DP) batch size.
    seed : int
        Seeds dropout, and the shuffling of a run without DP. Never the DP noise or
        the Poisson batches: those come from ``randomness``.
    optimizer : {"adamw", "sgd"}
    head_lr : float or None
        Learning rate of the classification head, when it differs from ``lr``: the
        head is new and must travel far from its small initial values, the adapter
        only a little (and under DP a large adapter rate mostly amplifies noise).
    dp : DpSgdConfig or None
        None trains without privacy.
    accountant_state : AccountantHistory
        The client's accountant history from earlier rounds (empty at first).
    randomness : RandomSource, optional
        Required with ``dp``: the DP-SGD noise (Opacus' ``noise_generator``) and the
        Poisson batches (the DataLoader's generator) are drawn from two children of it
        (:meth:`RandomSource.torch_generator`). A secure source makes them unreplayable
        by anyone, the scenario's seed included (Opacus' own ``secure_mode`` needs
        torchcsprng, which is not installable here).
    canaries : GradientCanaries, optional
        Privacy audits only: gradient canaries inserted into DP-SGD
        (:mod:`fedrank.privacy.canaries`).
    proximal_mu : float
        FedProx: ``(mu / 2) ||w - w_start||^2`` over the trained tensors is added to the
        loss (0: none). Not under DP-SGD, whose per-example gradients would drop it.

    Returns
    -------
    LoraTrainResult

    Raises
    ------
    PrivacyBudgetExhausted
        When ``dp.epsilon_budget`` would be exceeded by this round; nothing is trained.
    """
    if epochs < 1:
        raise ConfigError("epochs", f"must be positive, got {epochs}")
    if not lr > 0:
        raise ConfigError("lr", f"must be positive, got {lr}")
    if batch_size < 1:
        raise ConfigError("batch_size", f"must be positive, got {batch_size}")
    if len(data) == 0:
        raise ConfigError("data", "the client has no records")
    if head_lr is not None and not head_lr > 0:
        raise ConfigError("head_lr", f"must be positive or None, got {head_lr}")
    if dp is not None and proximal_mu:
        raise ConfigError("proximal-mu", "DP-SGD would drop the proximal term; use 0 under DP")
    if canaries is not None and dp is None:
        raise ConfigError("canaries", "gradient canaries audit DP-SGD: give dp too")
    if dp is not None and not isinstance(randomness, RandomSource):
        raise ConfigError("randomness", "DP-SGD needs a RandomSource for noise and batches")
    proximal = ProximalTerm([p for p in model.parameters() if p.requires_grad], proximal_mu)
    opt = _optimizer(_param_groups(model, lr, head_lr), optimizer, lr, weight_decay)
    dataset = TensorDataset(data.input_ids, data.attention_mask, data.labels)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        # Under DP, Opacus draws its Poisson batches from this generator.
        generator=(
            torch.Generator().manual_seed(seed)
            if randomness is None or dp is None
            else randomness.derive("batches").torch_generator()
        ),
    )
    device = model_device(model)
    # Dropout draws from the global RNG (of the model's device): fork it so the
    # caller's stream is untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        model.train()
        if dp is None or randomness is None:
            losses = _train_plain(model, opt, loader, epochs, proximal)
            privacy = None
            new_state = tuple(accountant_state)
        else:
            losses, privacy, new_state = train_dp_sgd(
                model, opt, loader, epochs, dp, tuple(accountant_state), randomness, canaries
            )
        model.eval()
    metrics = {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "num_examples": float(len(data)),
        "steps": float(privacy["steps"]) if privacy else float(epochs * len(loader)),
    }
    return LoraTrainResult(trainable_tensors(model), metrics, privacy, new_state)


def _train_plain(
    model: Any,
    opt: torch.optim.Optimizer,
    loader: DataLoader[Any],
    epochs: int,
    proximal: ProximalTerm,
) -> list[float]:
    device = model_device(model)
    losses: list[float] = []
    for _ in range(epochs):
        for batch in loader:
            ids, mask, labels = to_device(device, *batch)
            opt.zero_grad()
            loss = F.cross_entropy(_logits(model, ids, mask), labels)
            proximal.add_to(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            opt.step()
            losses.append(float(loss.detach()))
    return losses
