"""Sample-level DP-SGD of a LoRA client's round (Opacus), and its privacy arithmetic.

:class:`DpSgdConfig` holds a client's settings, :func:`train_dp_sgd` runs the epochs
of one round through Opacus with the accountant history restored, and
:func:`cumulative_epsilon` / :func:`noise_multiplier_for_budget` do the accounting the
server's ledger does. Privacy audits insert gradient canaries here
(:mod:`fedrank.privacy.canaries`). The entry point is
:func:`fedrank.lora_training.train_lora`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from torch.utils.data import DataLoader

from fedrank.devices import model_device
from fedrank.errors import ConfigError, PrivacyBudgetExhausted
from fedrank.models.evaluation import classifier_logits as _logits
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


def to_device(device: torch.device, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """The batch's tensors on ``device`` (copied without blocking where it can)."""
    return [t.to(device, non_blocking=True) for t in tensors]


def train_dp_sgd(
    model: Any,
    opt: torch.optim.Optimizer,
    loader: DataLoader[Any],
    epochs: int,
    dp: DpSgdConfig,
    history: AccountantHistory,
    randomness: RandomSource,
    canaries: GradientCanaries | None = None,
) -> tuple[list[float], dict[str, float | str], AccountantHistory]:
    """Run ``epochs`` of DP-SGD on ``model`` (in place), accounting from ``history``.

    Parameters
    ----------
    model : peft.PeftModel
        Its trainable tensors change; Opacus' hooks are removed again afterwards.
    opt : torch.optim.Optimizer
        Over the trainable tensors; Opacus wraps it.
    loader : DataLoader
        The client's records; Opacus replaces it with Poisson sampling from its
        generator.
    epochs : int
    dp : DpSgdConfig
    history : AccountantHistory
        The client's accountant history before this round.
    randomness : RandomSource
        Its ``"noise"`` child draws the DP-SGD noise, its ``"canaries"`` child the
        canaries' coins.
    canaries : GradientCanaries, optional
        Privacy audits only.

    Returns
    -------
    tuple
        The batches' losses, the round's privacy report (see
        :attr:`fedrank.lora_training.LoraTrainResult.privacy`) and the extended history.

    Raises
    ------
    PrivacyBudgetExhausted
        When ``dp.epsilon_budget`` would be exceeded by this round; nothing is trained.
    """
    # Imported here: Opacus costs seconds to import, which a LoRA run without DP-SGD
    # need not pay (fedrank.privacy.analysis says why).
    from opacus import PrivacyEngine
    from opacus.utils.batch_memory_manager import BatchMemoryManager

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
                    ids, mask, labels = to_device(device, *batch)
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
