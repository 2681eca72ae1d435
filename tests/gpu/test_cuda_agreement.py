"""Every task on CUDA agrees with the CPU (marked ``gpu``; needs a CUDA device).

Not run by default (``-m 'not gpu'``); run with ``pytest -m gpu tests/gpu``. No GPU
was lent to this project so far, so these have not run yet.

Tolerances (one round of local training from the same state on the same examples;
float sums are ordered differently on the GPU, so results agree to rounding, not
bit for bit):

- evaluation of one state: loss within 1e-4 relative, accuracy within 0.5 points;
- FedAvg (dense MLP, SGD): trained weights within 1e-3 absolute (TF32 is off for
  matmuls by default in torch, so float32 rounding is what differs);
- FRL (supermask MLP): at least 99 % of the kept edges (the top-k mask) shared, since
  scores that differ by rounding can swap ranks at the threshold;
- LoRA without DP (no dropout): adapter tensors within 1e-3 absolute;
- DP-LoRA: the noise is drawn by a CUDA generator on the GPU and a CPU one on the
  CPU, so tensors differ; the privacy accounting (epsilon, steps, sample rate,
  noise multiplier) must be identical and the update finite.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from flwr.app import RecordDict

from fedrank.artifacts import top_k_mask
from fedrank.config import Scenario
from fedrank.devices import check_ray_placement, choose_device, ray_gpu_ids, resolve_device
from fedrank.tasks import load_task

pytestmark = pytest.mark.gpu

IMAGE = {"dataset": "digits", "num_clients": 4, "clients_per_round": 2, "local_epochs": 1}
TEXT = {
    "strategy": "lora",
    "model": "tiny-bert",
    "num_clients": 2,
    "clients_per_round": 2,
    "train_records": 64,
    "test_records": 64,
    "max_length": 32,
    "batch_size": 8,
    "local_epochs": 1,
}


@pytest.fixture(autouse=True, scope="module")
def cuda_present() -> None:
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device (run them with -m gpu)"


def on(device: str, **values: Any) -> Any:
    return load_task(Scenario.of(device=device, **values))


def one_round(task: Any) -> Any:
    state = task.initial_state()
    return task.train(
        state,
        task.partition_data(0),
        server_round=1,
        partition_id=0,
        message=RecordDict(),
        node_state=RecordDict(),
    )


def test_cuda_is_resolved_and_used() -> None:
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cuda").type == "cuda"
    task = on("cuda", **IMAGE)
    assert task.device.type == "cuda"


@pytest.mark.parametrize("strategy", ["frl", "fedavg"])
def test_image_evaluation_agrees(strategy: str) -> None:
    cpu, gpu = on("cpu", strategy=strategy, **IMAGE), on("cuda", strategy=strategy, **IMAGE)
    state = cpu.initial_state()
    (cpu_loss, cpu_acc), (gpu_loss, gpu_acc) = cpu.evaluate(state), gpu.evaluate(state)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)
    assert abs(gpu_acc - cpu_acc) <= 0.005


def test_fedavg_training_agrees() -> None:
    cpu = one_round(on("cpu", strategy="fedavg", **IMAGE))
    gpu = one_round(on("cuda", strategy="fedavg", **IMAGE))
    assert cpu.num_examples == gpu.num_examples
    for name, value in cpu.state.items():
        np.testing.assert_allclose(gpu.state[name], value, atol=1e-3, rtol=0)


def test_frl_training_agrees() -> None:
    k = Scenario.of(**IMAGE).frl.k
    cpu = one_round(on("cpu", strategy="frl", **IMAGE))
    gpu = one_round(on("cuda", strategy="frl", **IMAGE))
    for name, ranks in cpu.state.items():
        assert sorted(gpu.state[name].tolist()) == list(range(ranks.size))  # a permutation
        kept_cpu, kept_gpu = top_k_mask(ranks, k), top_k_mask(gpu.state[name], k)
        shared = np.logical_and(kept_cpu, kept_gpu).sum() / kept_cpu.sum()
        assert shared >= 0.99, f"{name}: {shared:.4f} of the kept edges shared"


def test_lora_training_and_evaluation_agree() -> None:
    cpu_task, gpu_task = on("cpu", **TEXT), on("cuda", **TEXT)
    cpu, gpu = one_round(cpu_task), one_round(gpu_task)
    for name, value in cpu.state.items():
        np.testing.assert_allclose(gpu.state[name], value, atol=1e-3, rtol=0)
    (cpu_loss, _), (gpu_loss, _) = cpu_task.evaluate(cpu.state), gpu_task.evaluate(cpu.state)
    assert gpu_loss == pytest.approx(cpu_loss, rel=1e-4)


def test_dp_lora_accounts_identically() -> None:
    dp = {**TEXT, "dp": "sample", "dp_target_epsilon": 8.0}
    cpu, gpu = one_round(on("cpu", **dp)), one_round(on("cuda", **dp))
    assert gpu.privacy is not None
    assert cpu.privacy is not None
    assert gpu.privacy == cpu.privacy  # epsilon, steps, sample rate, sigma, clip, delta
    assert all(np.all(np.isfinite(v)) for v in gpu.state.values())


def test_ray_places_clients_on_the_gpus_it_reserves() -> None:
    """A Ray task given half a GPU resolves ``auto`` to CUDA; one given none, to the CPU."""
    import ray

    check_ray_placement("cuda", num_gpus_per_client=0.5, local_gpus=torch.cuda.device_count())
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    try:

        @ray.remote
        def where() -> tuple[list[str] | None, str]:
            gpus = ray_gpu_ids()
            return gpus, choose_device("auto", cuda=torch.cuda.is_available(), assigned_gpus=gpus)

        with_gpu = ray.get(where.options(num_gpus=0.5).remote())
        without = ray.get(where.options(num_gpus=0).remote())
    finally:
        ray.shutdown()
    assert with_gpu[1] == "cuda"
    assert len(with_gpu[0] or []) == 1
    assert without == ([], "cpu")
