"""Scale: start-up, time per round and peak memory against the number of registered clients.

Each configuration (registered clients : clients per round) is one ``fedrank simulate``
in a process (and session) of its own: FRL, the MLP on ``synthetic-digits`` (250,000
8x8 images), on the local backend and on Ray. The default configurations are the
federations of issue 15 (1,000 clients with 10 a round, 10,000 with 100) and 10,000 with
10 a round: start-up and time per round must not depend on the registered clients, so
1,000:10 and 10,000:10 are the pair compared. Measured from outside, so nothing of the
measurement weighs on the run:

- peak memory of the whole process tree (the driver and every child: Ray's GCS, raylet,
  workers), as the sum of each process's proportional set size (PSS: shared pages such
  as Ray's object store counted once across the processes that map them), sampled every
  0.25 s;
- start-up: from launch to the round-0 row of ``metrics.jsonl`` (imports, data and
  partitions, Ray, discovery, the initial evaluation);
- time per round: the median ``seconds`` of the rounds after the first (the first one
  also pays for each Ray worker importing torch).

Ratios between the configurations with the same clients per round are printed per
backend (largest / smallest registered count).

Run: ``python -m benchmarks.scale`` (``--configs 1000:10,10000:10,10000:100 --backends
local,ray --rounds 4 --out results/scale``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent


def tree_memory_mb(root: psutil.Process) -> tuple[float, int]:
    """PSS (RSS where PSS is unreadable) of ``root`` and all its descendants, in MiB."""
    total, count = 0, 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0
    for process in processes:
        try:
            try:
                total += process.memory_full_info().pss
            except (psutil.AccessDenied, AttributeError):
                total += process.memory_info().rss
            count += 1
        except psutil.Error:  # it ended while we looked
            continue
    return total / 2**20, count


def _rows(results: Path) -> list[dict[str, Any]]:
    path = results / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _stop(process: subprocess.Popen[bytes], root: psutil.Process) -> None:
    """End the run's whole session: what it started and left behind (by PID, ours only)."""
    try:
        leftovers = root.children(recursive=True)
    except psutil.Error:
        leftovers = []
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    for child in leftovers:
        try:
            child.kill()
        except psutil.Error:
            continue


def measure(
    clients: int, per_round: int, backend: str, *, rounds: int, out: Path, limit: float = 3600.0
) -> dict[str, Any]:
    """Run one configuration; return its figures."""
    name = f"{backend}-{clients}-{per_round}"
    results = out / name
    command = [
        sys.executable, "-m", "fedrank.cli", "simulate", "--quiet", "--backend", backend,
        "--dataset", "synthetic-digits", "--model", "mlp", "--partitioner", "iid",
        "--num-clients", str(clients), "--clients-per-round", str(per_round),
        "--rounds", str(rounds), "--local-epochs", "1", "--results-dir", str(results),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    log = (out / f"{name}.log").open("wb")
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    root = psutil.Process(process.pid)
    peak, peak_processes, startup = 0.0, 0, None
    try:
        while process.poll() is None and time.monotonic() - started < limit:
            memory, count = tree_memory_mb(root)
            if memory > peak:
                peak, peak_processes = memory, count
            if startup is None and _rows(results):
                startup = time.monotonic() - started
            time.sleep(0.25)
    finally:
        _stop(process, root)
        log.close()
    rows = _rows(results)
    trained = [r for r in rows if int(r["round"]) > 0]
    if process.returncode != 0 or len(trained) < rounds:
        raise RuntimeError(
            f"{backend} with {clients} clients did not finish (exit {process.returncode}); "
            f"see {out / f'{name}.log'}"
        )
    later = [float(r["seconds"]) for r in trained[1:]] or [float(trained[0]["seconds"])]
    return {
        "backend": backend,
        "clients": clients,
        "per_round": per_round,
        "startup_s": startup,
        "first_round_s": float(trained[0]["seconds"]),
        "round_s": statistics.median(later),
        "wall_s": time.monotonic() - started,
        "peak_mb": peak,
        "processes": peak_processes,
    }


def table(figures: list[dict[str, Any]]) -> str:
    """Markdown: one line per configuration, then the ratios at equal clients per round."""
    lines = [
        "| backend | clients | per round | start-up (s) | first round (s) | later rounds (s) "
        "| peak memory, process tree (MiB) | processes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in figures:
        lines.append(
            f"| {f['backend']} | {f['clients']:,} | {f['per_round']} | {f['startup_s']:.1f} "
            f"| {f['first_round_s']:.1f} | {f['round_s']:.2f} | {f['peak_mb']:.0f} "
            f"| {f['processes']} |"
        )
    pairs = dict.fromkeys((f["backend"], f["per_round"]) for f in figures)
    for backend, per_round in pairs:
        mine = sorted(
            (f for f in figures if (f["backend"], f["per_round"]) == (backend, per_round)),
            key=lambda f: f["clients"],
        )
        if len(mine) >= 2:
            small, large = mine[0], mine[-1]
            lines.append(
                f"| {backend} ratio | {large['clients']:,} / {small['clients']:,} | {per_round} "
                f"| {large['startup_s'] / small['startup_s']:.2f}x "
                f"| {large['first_round_s'] / small['first_round_s']:.2f}x "
                f"| {large['round_s'] / small['round_s']:.2f}x "
                f"| {large['peak_mb'] / small['peak_mb']:.2f}x | |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", default="1000:10,10000:10,10000:100", help="clients:per-round list"
    )
    parser.add_argument("--backends", default="local,ray")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="results/scale")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs.split(",")]
    for backend in args.backends.split(","):
        for clients, per_round in configs:
            figures.append(measure(clients, per_round, backend, rounds=args.rounds, out=out))
            print(json.dumps(figures[-1]), flush=True)
    text = table(figures)
    (out / "scale.md").write_text(text, encoding="utf-8")
    print(text)
    return figures


if __name__ == "__main__":
    main()
