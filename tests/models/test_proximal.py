"""FedProx's proximal term on the clients (Li et al., arXiv 1812.06127)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, RecordDict
from torch import nn

from fedrank.data.splits import ImageSplit
from fedrank.data.text import TokenizedText
from fedrank.errors import ConfigError
from fedrank.models.proximal import ProximalTerm
from fedrank.protos import keys
from fedrank.tasks.base import proximal_mu
from fedrank.training import train_local


def test_the_terms_gradient_pulls_each_parameter_back_by_mu_times_its_drift() -> None:
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    term = ProximalTerm([w], mu=0.3)
    with torch.no_grad():
        w.add_(torch.tensor([0.5, 1.0, -1.0]))

    value = term()
    assert value is not None
    value.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped

    assert float(value) == pytest.approx(0.3 / 2 * (0.25 + 1.0 + 1.0))
    torch.testing.assert_close(w.grad, 0.3 * torch.tensor([0.5, 1.0, -1.0]))


def test_mu_zero_adds_nothing_and_keeps_no_copy() -> None:
    w = nn.Parameter(torch.ones(3))
    term = ProximalTerm([w], mu=0.0)
    loss = (w * 2).sum()

    assert term() is None
    assert term.add_to(loss) is loss
    assert term.anchor == []


@pytest.mark.parametrize("mu", [-0.1, float("nan"), float("inf")])
def test_a_bad_mu_is_refused_naming_the_key(mu: float) -> None:
    with pytest.raises(ConfigError) as caught:
        ProximalTerm([nn.Parameter(torch.ones(1))], mu=mu)
    assert caught.value.field == keys.PROXIMAL_MU


def test_mu_is_read_from_the_train_config_as_flower_sends_it() -> None:
    with_mu = RecordDict({keys.CONFIG: ConfigRecord({keys.PROXIMAL_MU: 0.25})})
    assert proximal_mu(with_mu) == 0.25
    assert proximal_mu(RecordDict({keys.CONFIG: ConfigRecord({})})) == 0.0
    assert proximal_mu(RecordDict()) == 0.0
    with pytest.raises(ConfigError, match="must be a number"):
        proximal_mu(RecordDict({keys.CONFIG: ConfigRecord({keys.PROXIMAL_MU: "big"})}))


def _drift(mu: float) -> float:
    """How far local training moves a small dense net from its start, under ``mu``."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    start = [p.detach().clone() for p in model.parameters()]
    rng = np.random.default_rng(0)
    data = ImageSplit(
        rng.random((64, 1, 4, 4), dtype=np.float32), rng.integers(0, 3, 64).astype(np.int64)
    )
    result = train_local(
        model, data, epochs=3, lr=0.5, momentum=0.0, batch_size=8,
        generator=torch.Generator().manual_seed(1), proximal_mu=mu,
    )  # fmt: skip
    assert np.isfinite(result.loss)
    return float(sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True)))


def test_local_training_stays_nearer_the_global_model_the_larger_mu() -> None:
    drifts = [_drift(mu) for mu in (0.0, 0.1, 1.0)]
    assert drifts[0] > drifts[1] > drifts[2] > 0


def test_a_lora_client_drifts_less_under_mu_and_refuses_it_under_dp_sgd() -> None:
    from fedrank.lora_training import DpSgdConfig, train_lora
    from fedrank.models.lora import LoraSpec, build_lora_model, trainable_tensors

    spec = LoraSpec(base="tiny-bert", r=4, lora_alpha=8)
    rng = np.random.default_rng(0)
    ids = torch.as_tensor(rng.integers(3000, 5000, size=(48, 8)))
    data = TokenizedText(
        ids, torch.ones(48, 8, dtype=torch.int64), torch.as_tensor(rng.integers(0, 2, 48))
    )

    def drift(mu: float) -> float:
        model = build_lora_model(spec)
        start = trainable_tensors(model)
        result = train_lora(model, data, epochs=2, lr=5e-2, batch_size=16, seed=0, proximal_mu=mu)
        return sum(float(((result.tensors[n] - v) ** 2).sum()) for n, v in start.items())

    assert drift(0.0) > drift(50.0) > 0
    with pytest.raises(ConfigError) as caught:
        train_lora(
            build_lora_model(spec), data, epochs=1, lr=1e-2, batch_size=16, seed=0,
            dp=DpSgdConfig(noise_multiplier=1.0, max_grad_norm=1.0), proximal_mu=0.1,
        )  # fmt: skip
    assert caught.value.field == keys.PROXIMAL_MU
