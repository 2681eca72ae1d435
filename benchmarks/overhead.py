"""Federation overhead: warm-round wall time of a 10-client Ray simulation
against the same ServerApp, strategy and ClientApp handlers in one process.

Both runs use the same scenario (MNIST-5k MLP, 10 clients, all 10 each round,
2 local epochs) and the same seeds; the first round (workers importing torch)
is excluded, the median of the warm rounds compared. The one-process run
(``simulations/inprocess.py``, the ``local`` backend) calls the clients one after
the other with Flower messages and no Ray, so the ratio is what Ray's actors and
the SuperLink's message store cost on top of the same training, vote and evaluation.

Run: ``python -m benchmarks.overhead``
"""

from __future__ import annotations

import statistics
import tempfile
from typing import Any

from fedrank.config import Scenario
from fedrank.simulations.inprocess import run_in_process
from fedrank.simulations.run import simulate

ROUNDS = 5


def main() -> dict[str, float]:
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Scenario.of(num_clients=10, clients_per_round=10, rounds=ROUNDS, results_dir=tmp)
        ray_rows: list[dict[str, Any]] = []
        simulate(scenario, on_round=ray_rows.append)
        local_rows: list[dict[str, Any]] = []
        run_in_process(scenario, on_round=local_rows.append)
    ray_warm = statistics.median(r["seconds"] for r in ray_rows if r["round"] >= 2)
    local_warm = statistics.median(r["seconds"] for r in local_rows if r["round"] >= 2)
    print(f"\nWarm round, 10 clients x 2 local epochs (median of rounds 2..{ROUNDS}):")
    print(f"  one process (local backend)      : {local_warm:6.2f} s   1.00x")
    print(f"  Flower + Ray simulation           : {ray_warm:6.2f} s   {ray_warm / local_warm:.2f}x")
    print(f"  first Ray round (cold workers)    : {ray_rows[1]['seconds']:6.2f} s")
    return {"ray_over_local": ray_warm / local_warm}


if __name__ == "__main__":
    main()
