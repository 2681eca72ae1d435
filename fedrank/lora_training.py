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
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from torch.utils.data import DataLoader, TensorDataset

from fedrank.data.text import TokenizedText
from fedrank.devices import model_device
from fedrank.errors import ConfigError, PrivacyBudgetExhausted
from fedrank.models.evaluation import classifier_logits as _logits
from fedrank.models.evaluation import evaluate_lora as evaluate_lora
from fedrank.models.lora import trainable_tensors
from fedrank.models.proximal import ProximalTerm
from fedrank.privacy.accountant import compute_epsilon, noise_multiplier_for_epsilon
from fedrank.privacy.canaries import GradientCanaries
from fedrank.privacy.randomness import RandomSource

AccountantHistory = tuple[tuple[float, float, int], ...]
"""An Opacus accountant's history: ``(noise_multiplier, sample_rate, steps)`` runs."""
AccountantName = Literal["rdp", "prv"]


@dataclass(frozen=True)
class DpSgdConfig:
    """Sample-level DP-SGD settings of one client.

    Parameters
    ----------
    noise_multiplier : float
        Noise standard deviation over the clip norm. For a target epsilon over the
        whole run use :func:`noise_multiplier_for_budget`.
    max_grad_norm : float
        Per-example clip norm C (over all trained tensors together).
    delta : float
        The delta of the reported (epsilon, delta).
    physical_batch_size : int or None
        Largest batch put through the model at once; a logical batch (Poisson
        sampled, expected size ``batch_size``) is split into such pieces and the
        optimizer steps once per logical batch. None: the whole logical batch at once.
    accountant : {"rdp", "prv"}
    epsilon_budget : float or None
        If set, a round whose cumulative epsilon would exceed it is not run
        (:class:`PrivacyBudgetExhausted`).
    """

    noise_multiplier: float
    max_grad_norm: float
    delta: float = 1e-5
    physical_batch_size: int | None = None
    accountant: AccountantName = "rdp"
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        if not self.noise_multiplier > 0:
            raise ConfigError("noise_multiplier", f"must be positive, got {self.noise_multiplier}")
        if not self.max_grad_norm > 0:
            raise ConfigError("max_grad_norm", f"must be positive, got {self.max_grad_norm}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError("delta", f"must lie in (0, 1), got {self.delta}")
        if self.physical_batch_size is not None and self.physical_batch_size < 1:
            raise ConfigError(
                "physical_batch_size", f"must be positive or None, got {self.physical_batch_size}"
            )
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError("accountant", f"must be 'rdp' or 'prv', got {self.accountant!r}")
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise ConfigError("epsilon_budget", f"must be positive, got {self.epsilon_budget}")


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


def cumulative_epsilon(
    history: Sequence[tuple[float, float, int]],
    *,
    delta: float,
    accountant: AccountantName = "rdp",
) -> float:
    """Epsilon spent by every run in ``history`` together (0 for an empty history).

    The same accounting as the server's privacy ledger
    (:func:`fedrank.privacy.accountant.compute_epsilon`), so a client's report and
    the ledger agree exactly.
    """
    return compute_epsilon(history=list(history), delta=delta, accountant=accountant)


def noise_multiplier_for_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: AccountantName = "rdp",
) -> float:
    """Smallest noise multiplier (to 0.01 in epsilon) that spends ``target_epsilon``.

    ``steps`` is the whole run's: rounds the client will join x epochs x
    :func:`steps_per_epoch`. See :func:`fedrank.privacy.accountant.noise_multiplier_for_epsilon`.
    """
    if not target_epsilon > 0:
        raise ConfigError("target_epsilon", f"must be positive, got {target_epsilon}")
    if steps < 1:
        raise ConfigError("steps", f"must be positive, got {steps}")
    return noise_multiplier_for_epsilon(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        steps=steps,
        accountant=accountant,
    )


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
            losses, privacy, new_state = _train_dp(
                model, opt, loader, epochs, dp, tuple(accountant_state), randomness, canaries
            )
        model.eval()
    metrics = {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "num_examples": float(len(data)),
        "steps": float(privacy["steps"]) if privacy else float(epochs * len(loader)),
    }
    return LoraTrainResult(trainable_tensors(model), metrics, privacy, new_state)


def _to(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.to(device, non_blocking=True) for t in tensors]


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
            ids, mask, labels = _to(device, *batch)
            opt.zero_grad()
            loss = F.cross_entropy(_logits(model, ids, mask), labels)
            proximal.add_to(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
            opt.step()
            losses.append(float(loss.detach()))
    return losses


def _train_dp(
    model: Any,
    opt: torch.optim.Optimizer,
    loader: DataLoader[Any],
    epochs: int,
    dp: DpSgdConfig,
    history: AccountantHistory,
    randomness: RandomSource,
    canaries: GradientCanaries | None = None,
) -> tuple[list[float], dict[str, float | str], AccountantHistory]:
    device = model_device(model)
    sample_rate = 1.0 / len(loader)
    planned = epochs * len(loader)
    if dp.epsilon_budget is not None:
        projected = cumulative_epsilon(
            (*history, (dp.noise_multiplier, sample_rate, planned)),
            delta=dp.delta,
            accountant=dp.accountant,
        )
        if projected > dp.epsilon_budget:
            raise PrivacyBudgetExhausted(
                f"this round would bring the client's epsilon to {projected:.3f} "
                f"(delta {dp.delta}), over its budget {dp.epsilon_budget}; not training"
            )
    with warnings.catch_warnings():
        # "Secure RNG turned off": Opacus' secure_mode is not used; the generators come
        # from ``randomness`` (secure unless a simulation asked for reproducible noise).
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=dp.accountant)
    engine.accountant.history = [(float(s), float(q), int(t)) for s, q, t in history]
    dp_model, dp_opt, dp_loader = engine.make_private(
        module=model,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=dp.noise_multiplier,
        max_grad_norm=dp.max_grad_norm,
        poisson_sampling=True,
        # Opacus draws the noise on the parameters' device, with a generator of that device.
        noise_generator=randomness.derive("noise").torch_generator(device),
    )
    inserter = _CanaryInserter(model, canaries, dp, sample_rate, randomness) if canaries else None
    if canaries is not None and canaries.noise_scale == 0.0:
        _switch_noise_off(dp_opt)
    physical = dp.physical_batch_size or len(loader.dataset)  # type: ignore[arg-type]
    losses: list[float] = []
    steps_before = sum(int(t) for _, _, t in history)
    try:
        for _ in range(epochs):
            with BatchMemoryManager(
                data_loader=dp_loader, max_physical_batch_size=physical, optimizer=dp_opt
            ) as batches:
                for batch in batches:
                    ids, mask, labels = _to(device, *batch)
                    dp_opt.zero_grad()
                    if len(labels) == 0:
                        # Poisson sampling drew nobody. BERT cannot run an empty batch, but
                        # the step must still happen (noise only) or skipping it would leak
                        # that the batch was empty: hand Opacus empty per-example grads.
                        for p in dp_opt.params:
                            p.grad_sample = torch.zeros(
                                (0, *p.shape), dtype=p.dtype, device=p.device
                            )
                        if inserter is not None:
                            inserter.insert(dp_opt)
                        dp_opt.step()
                        continue
                    loss = F.cross_entropy(_logits(dp_model, ids, mask), labels)
                    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
                    if inserter is not None:
                        inserter.insert(dp_opt)
                    dp_opt.step()
                    losses.append(float(loss.detach()))
    finally:
        # Remove Opacus' hooks and per-sample attributes from the caller's model.
        dp_model._close()
    new_history: AccountantHistory = tuple(
        (float(s), float(q), int(t)) for s, q, t in engine.accountant.history
    )
    steps = sum(t for _, _, t in new_history) - steps_before
    privacy: dict[str, float | str] = {
        "mechanism": "dp-sgd",
        "accountant": dp.accountant,
        "noise_multiplier": dp.noise_multiplier,
        "sample_rate": sample_rate,
        "steps": float(steps),
        "max_grad_norm": dp.max_grad_norm,
        "epsilon": cumulative_epsilon(new_history, delta=dp.delta, accountant=dp.accountant),
        "delta": dp.delta,
    }
    return losses, privacy, new_history


class _CanaryInserter:
    """Adds the site's included gradient canaries to a logical DP-SGD step.

    Each canary is a record: sampled into each logical batch with the records' Poisson
    rate (an independent coin from the site's source). Its per-example gradient
    ``-sign * C * e_j`` (norm C; descent pushes coordinate j towards ``sign``) is
    appended to the per-sample gradients Opacus is about to clip, sum and noise. Only
    the last physical batch of a logical batch gets them: once per logical step.
    """

    def __init__(
        self,
        model: Any,
        canaries: GradientCanaries,
        dp: DpSgdConfig,
        sample_rate: float,
        randomness: RandomSource,
    ) -> None:
        trained = [p for p in model.parameters() if p.requires_grad]
        for canary in canaries.canaries:
            if canary.position >= len(trained) or canary.index >= trained[canary.position].numel():
                raise ConfigError("canaries", f"{canary} lies outside the trained tensors")
        self.targets = [(trained[c.position], c.index, float(c.sign)) for c in canaries.canaries]
        self.norm = dp.max_grad_norm
        self.sample_rate = sample_rate
        self.coins = randomness.derive("canaries")

    def insert(self, optimizer: Any) -> None:
        if optimizer._check_skip_next_step(pop_next=False):
            return  # not the last physical batch of this logical batch
        drawn = self.coins.bernoulli(len(self.targets), self.sample_rate)
        rows = [t for t, keep in zip(self.targets, drawn, strict=True) if keep]
        if not rows:
            return
        for p in optimizer.params:
            extra = torch.zeros((len(rows), *p.shape), dtype=p.dtype)
            for k, (target, index, sign) in enumerate(rows):
                if target is p:
                    # A gradient of -sign C e_j: descent moves the coordinate by +sign.
                    extra[k].view(-1)[index] = -sign * self.norm
            p.grad_sample = torch.cat([p.grad_sample, extra], dim=0)


def _switch_noise_off(optimizer: Any) -> None:
    """Audit self-test only: the optimizer adds no noise; the accounting is unchanged."""

    def add_no_noise() -> None:
        for p in optimizer.params:
            p.grad = p.summed_grad.view_as(p)

    optimizer.add_noise = add_no_noise
