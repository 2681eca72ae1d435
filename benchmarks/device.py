"""One client's round on the CPU against the same round on the GPU, per task.

Run: ``PYTHONPATH=. python -m benchmarks.device [--repeats 3]``. For FRL and FedAvg
(MLP and CNN on MNIST-5k) and LoRA / DP-LoRA (MiniLM on rotten tomatoes): the best
of ``repeats`` times of one client's local round (the task's ``train``: the model and
batches moved to the device, the reply read back to the CPU) and of one evaluation
of the global state on the server's test split, each printed with its ratio to the
CPU's. Without a CUDA device it says so and prints the CPU times alone.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from flwr.app import RecordDict

from benchmarks.common import best_time, report
from fedrank.config import Scenario
from fedrank.tasks import load_task

CASES: dict[str, dict[str, Any]] = {
    "frl mlp": {"strategy": "frl", "model": "mlp"},
    "frl cnn": {"strategy": "frl", "model": "cnn"},
    "fedavg cnn": {"strategy": "fedavg", "model": "cnn"},
    "lora minilm": {
        "strategy": "lora",
        "train_records": 800,
        "test_records": 400,
        "max_length": 32,
        "batch_size": 32,
    },
    "dp-lora minilm": {
        "strategy": "lora",
        "train_records": 800,
        "test_records": 400,
        "max_length": 32,
        "batch_size": 32,
        "dp": "sample",
        "dp_target_epsilon": 8.0,
    },
}
COMMON = {"num_clients": 4, "clients_per_round": 4, "local_epochs": 1, "rounds": 1}


def _costs(device: str, values: dict[str, Any], repeats: int) -> tuple[float, float]:
    task = load_task(Scenario.of(device=device, **COMMON, **values))
    state = task.initial_state()
    data = task.partition_data(0)

    def train() -> object:
        return task.train(
            state,
            data,
            server_round=1,
            partition_id=0,
            message=RecordDict(),
            node_state=RecordDict(),
        )

    def evaluate() -> object:
        result = task.evaluate(state)
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    train()  # warm-up: loads data and the base model, starts CUDA
    evaluate()
    return best_time(train, repeats=repeats), best_time(evaluate, repeats=repeats)


def main(argv: list[str] | None = None) -> None:
    """Print the CPU and GPU cost of a client round and of a server evaluation per task."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    args = parser.parse_args(argv)
    gpu = torch.cuda.is_available()
    if not gpu:
        print("no GPU present (torch.cuda.is_available() is False): CPU figures only")
    else:
        print(f"GPU: {torch.cuda.get_device_name(0)}")
    for name in args.cases.split(","):
        values = CASES[name]
        rows: list[tuple[str, float]] = []
        train_cpu, eval_cpu = _costs("cpu", values, args.repeats)
        rows += [("round, cpu", train_cpu), ("evaluation, cpu", eval_cpu)]
        if gpu:
            train_gpu, eval_gpu = _costs("cuda", values, args.repeats)
            rows += [("round, cuda", train_gpu), ("evaluation, cuda", eval_gpu)]
        title = f"{name}: one client's local round and one server evaluation"
        report(title, rows, baseline="round, cpu")


if __name__ == "__main__":
    main()
