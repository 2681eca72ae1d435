"""The ``device`` setting: resolution per process, Ray placement, and the CPU plumbing.

No GPU was lent to this project: these tests run on the CPU and check what can be
checked there (the decision table, the refusals, that models and batches sit on the
resolved device and come back to the CPU); ``tests/gpu/`` holds the CUDA runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrank.config import Scenario
from fedrank.devices import (
    check_ray_placement,
    choose_device,
    describe_device,
    model_device,
    ray_gpu_ids,
    resolve_device,
)
from fedrank.errors import ConfigError
from fedrank.tasks import load_task
from fedrank.training import evaluate, train_local


@pytest.mark.parametrize(
    ("requested", "cuda", "assigned", "expected"),
    [
        ("auto", True, None, "cuda"),  # a coordinator or a SuperNode with a GPU
        ("auto", False, None, "cpu"),  # no GPU
        ("auto", True, ["0"], "cuda"),  # a Ray client given a GPU
        ("auto", True, [], "cpu"),  # a Ray client given none: never a GPU Ray did not reserve
        ("cpu", True, None, "cpu"),
        ("cpu", True, ["0"], "cpu"),
        ("cuda", True, None, "cuda"),
        ("cuda", True, ["1"], "cuda"),
    ],
)
def test_device_choice(
    requested: str, cuda: bool, assigned: list[str] | None, expected: str
) -> None:
    assert choose_device(requested, cuda=cuda, assigned_gpus=assigned) == expected


def test_cuda_without_a_gpu_is_refused_naming_device() -> None:
    with pytest.raises(ConfigError, match=r"^device: 'cuda' asked for, but torch sees no CUDA"):
        choose_device("cuda", cuda=False, assigned_gpus=None)


def test_cuda_on_a_ray_client_given_no_gpu_is_refused() -> None:
    with pytest.raises(ConfigError, match="set num-gpus-per-client above 0"):
        choose_device("cuda", cuda=True, assigned_gpus=[])


def test_an_unknown_device_is_refused() -> None:
    with pytest.raises(ConfigError, match="device"):
        choose_device("tpu", cuda=True, assigned_gpus=None)


def test_the_setting_itself_refuses_unknown_values() -> None:
    with pytest.raises(ConfigError, match=r"^device: must be one of \['auto', 'cpu', 'cuda'\]"):
        Scenario.of(device="gpu")


def test_auto_is_this_machines_gpu_or_its_cpu() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    assert describe_device(torch.device("cpu")) == "cpu"


@pytest.fixture
def no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process sees no CUDA device (as every machine of this project so far)."""
    monkeypatch.setattr("fedrank.devices.cuda_available", lambda: False)


@pytest.mark.usefixtures("no_gpu")
def test_without_a_gpu_auto_is_the_cpu_and_cuda_is_refused() -> None:
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^device: 'cuda' asked for"):
        resolve_device("cuda")


def test_outside_ray_there_is_no_placement() -> None:
    assert ray_gpu_ids() is None


@pytest.mark.usefixtures("no_gpu")
@pytest.mark.parametrize("strategy", ["frl", "fedavg", "lora"])
def test_a_cuda_scenario_is_refused_before_anything_starts(strategy: str) -> None:
    """The task's check (run by the server and by `fedrank simulate` before Ray starts)."""
    extra = {"model": "tiny-bert", "train_records": 40} if strategy == "lora" else {}
    scenario = Scenario.of(
        strategy=strategy,
        dataset="digits" if strategy != "lora" else "",
        num_clients=2,
        clients_per_round=2,
        device="cuda",
        seed=7,  # a scenario of its own: load_task caches one task per scenario
        **extra,
    )
    with pytest.raises(ConfigError, match=r"^device: 'cuda' asked for"):
        load_task(scenario).check()


def test_ray_placement_rules() -> None:
    with pytest.raises(ConfigError, match=r"^device: 'cuda' in a Ray simulation"):
        check_ray_placement("cuda", num_gpus_per_client=0.0, local_gpus=4)
    with pytest.raises(ConfigError, match=r"^num-gpus-per-client: 0.5 GPUs per client, but"):
        check_ray_placement("auto", num_gpus_per_client=0.5, local_gpus=0)
    check_ray_placement("cuda", num_gpus_per_client=0.5, local_gpus=1)
    check_ray_placement("auto", num_gpus_per_client=1.0, local_gpus=None)  # a remote cluster
    check_ray_placement("auto", num_gpus_per_client=0.0, local_gpus=0)


def test_training_and_evaluation_follow_the_model_device() -> None:
    """Batches move to where the model is; the shuffling order is drawn on the CPU."""
    task = load_task(Scenario.of(dataset="digits", num_clients=2, clients_per_round=2))
    data = task.partition_data(0)
    model = task.model  # the task's working copy, on its device
    device = task.device
    assert model_device(model) == device
    result = train_local(
        model,
        data,
        epochs=1,
        lr=1.0,
        momentum=0.9,
        batch_size=16,
        generator=torch.Generator().manual_seed(0),
    )
    loss, accuracy = evaluate(model, task.dataset.test)
    assert all(p.device == device for p in model.parameters())
    assert result.steps == -(-len(data) // 16)
    assert np.isfinite(loss)
    assert 0.0 <= accuracy <= 1.0
    # what crosses the wire is CPU numpy
    assert all(isinstance(v, np.ndarray) for v in task.read_state(model).values())


def test_the_task_device_is_the_resolved_setting() -> None:
    scenario = Scenario.of(dataset="digits", num_clients=2, clients_per_round=2, device="cpu")
    task = load_task(scenario)
    assert task.device == torch.device("cpu")
