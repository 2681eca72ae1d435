"""Wire cost of FRL ranking replies: bits per parameter and codec time.

Run from the repository root::

    PYTHONPATH=. python -m benchmarks.wire [--n 1600000] [--repeats 15]

(a) Bits per parameter of a whole ``fedrank.v1.Update`` ranking payload for
the FRL MLP (784-256-128-10, bias-free) and a small CNN, against fp32
weights (32 bits) and the int64 rankings the FRL authors' code sends.
(b) Encode+decode time of one n-entry ranking, bit-packed (codec alone, and
through the full envelope with validation), against ``astype(int32).tobytes()``
plus ``np.frombuffer`` measured in the same process. Times are the best of
``--repeats`` round-robin runs (the least disturbed by other load).
(c) The optional entropy coding of issue 3, measured on a real FRL run
(MNIST-5k MLP, ``--rounds`` rounds in one process): a client's reply coded as
its displacement from the global ranking it started from, compressed by
general-purpose coders, against the bit-packed ranking.
"""

from __future__ import annotations

import argparse
import lzma
import tempfile
import time
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from fedrank.config import Scenario
from fedrank.protos import (
    RankingExpectation,
    UpdateHeader,
    decode_ranking_update,
    encode_ranking_update,
    model_fingerprint,
    pack_ranks,
    ranking_size_limit,
    unpack_ranks,
)
from fedrank.tasks import load_task
from fedrank.tasks.image import ImageTask

BASELINE = "int32 tobytes + frombuffer (baseline)"


def _header(name: str) -> UpdateHeader:
    fingerprint = model_fingerprint(architecture=name, seed=0, k=0.5)
    return UpdateHeader(run_id="benchmark-run", round=1, model_fingerprint=fingerprint)


def _best_seconds(actions: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each action, run round-robin so that load from other
    processes falls on the baseline and the codec alike."""
    for action in actions.values():
        action()  # warm-up: first-touch allocations, caches
    best = dict.fromkeys(actions, float("inf"))
    for _ in range(repeats):
        for name, action in actions.items():
            start = time.perf_counter()
            action()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def bits_per_parameter(rng: np.random.Generator) -> list[tuple[str, int, int, float]]:
    """(model, parameters, payload bytes, bits per parameter) for each model."""
    rows = []
    for model in ("mlp", "cnn"):
        sizes = image_task(Scenario.of(model=model)).layer_sizes()
        layers = {name: rng.permutation(n) for name, n in sizes.items()}
        payload = encode_ranking_update(_header(model), layers)
        parameters = sum(sizes.values())
        rows.append((model, parameters, len(payload), 8 * len(payload) / parameters))
    return rows


def codec_times(n: int, repeats: int, rng: np.random.Generator) -> Mapping[str, float]:
    """Seconds (best of ``repeats``) for each way of sending one n-entry ranking."""
    ranks = rng.permutation(n)
    sizes = {"layer": n}
    header = _header("timing")
    expect = RankingExpectation(
        run_id=header.run_id,
        round=header.round,
        model_fingerprint=header.model_fingerprint,
        layer_sizes=sizes,
        max_bytes=ranking_size_limit(sizes),
    )
    packed, bits = pack_ranks(ranks)
    payload = encode_ranking_update(header, {"layer": ranks})
    actions: dict[str, Callable[[], object]] = {
        BASELINE: lambda: np.frombuffer(ranks.astype(np.int32).tobytes(), dtype=np.int32),
        "pack_ranks": lambda: pack_ranks(ranks),
        "unpack_ranks": lambda: unpack_ranks(packed, n=n, bits=bits),
        "pack + unpack (codec)": lambda: unpack_ranks(pack_ranks(ranks)[0], n=n, bits=bits),
        "encode_ranking_update": lambda: encode_ranking_update(header, {"layer": ranks}),
        "decode_ranking_update (validated)": lambda: decode_ranking_update(payload, expect=expect),
        "encode + decode (full envelope)": lambda: decode_ranking_update(
            encode_ranking_update(header, {"layer": ranks}), expect=expect
        ),
    }
    return _best_seconds(actions, repeats)


def image_task(scenario: Scenario) -> ImageTask:
    """The scenario's image task."""
    task = load_task(scenario)
    assert isinstance(task, ImageTask)
    return task


def delta_coding(rounds: int) -> list[tuple[str, float, float]]:
    """(coder, bits per parameter, seconds to encode) of one real client reply."""
    from flwr.app import RecordDict

    from fedrank.simulations.inprocess import run_in_process

    with tempfile.TemporaryDirectory() as results:
        scenario = Scenario.of(model="mlp", rounds=rounds, results_dir=results)
        start = run_in_process(scenario)
    task = image_task(scenario)
    reply = task.train(
        start,
        task.partition_data(0),
        server_round=rounds + 1,
        partition_id=0,
        message=RecordDict(),
        node_state=RecordDict(),
    ).state
    n = sum(r.size for r in reply.values())
    coders: dict[str, Callable[[dict[str, np.ndarray]], int]] = {
        "bit-packed ranking (fedrank)": lambda r: sum(len(pack_ranks(v)[0]) for v in r.values()),
        "zlib-6 of the displacement": lambda r: _delta_bytes(r, start, lambda b: zlib.compress(b)),
        "lzma-0 of the displacement": lambda r: _delta_bytes(r, start, _lzma(0)),
        "lzma-6 of the displacement": lambda r: _delta_bytes(r, start, _lzma(6)),
    }
    rows = []
    for coder, size_of in coders.items():
        began = time.perf_counter()
        size = size_of(reply)
        rows.append((coder, 8 * size / n, time.perf_counter() - began))
    return rows


def _lzma(preset: int) -> Callable[[bytes], bytes]:
    return lambda data: lzma.compress(data, preset=preset)


def _delta_bytes(
    reply: Mapping[str, np.ndarray],
    start: Mapping[str, np.ndarray],
    compress: Callable[[bytes], bytes],
) -> int:
    return sum(
        len(compress((reply[name] - start[name]).astype(np.int32).tobytes())) for name in reply
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_600_000, help="entries of the timed ranking")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=10, help="FRL rounds before (c)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    print("(a) bits per parameter of a whole RankingUpdate payload")
    columns = ("params", "bytes", "bits/param", "vs fp32", "vs int64")
    print(f"{'model':32s} " + " ".join(f"{column:>10s}" for column in columns))
    for model, parameters, size, bits in bits_per_parameter(rng):
        print(
            f"{model:32s} {parameters:9d} {size:9d} {bits:10.2f} {bits / 32:8.3f} {bits / 64:8.3f}"
        )

    print(f"\n(b) encode + decode of one {args.n}-entry ranking, best of {args.repeats}")
    times = codec_times(args.n, args.repeats, rng)
    baseline = times[BASELINE]
    print(f"{'path':40s} {'ms':>8s} {'x baseline':>10s}")
    for path, seconds in times.items():
        print(f"{path:40s} {seconds * 1e3:8.2f} {seconds / baseline:10.2f}")

    print(f"\n(c) one client's reply after {args.rounds} FRL rounds (MNIST-5k MLP)")
    rows = delta_coding(args.rounds)
    packed_bits, packed_seconds = rows[0][1], rows[0][2]
    print(f"{'coder':32s} {'bits/param':>10s} {'x packed':>9s} {'encode x packed':>16s}")
    for coder, bits, seconds in rows:
        print(
            f"{coder:32s} {bits:10.2f} {bits / packed_bits:9.3f} {seconds / packed_seconds:16.0f}"
        )


if __name__ == "__main__":
    main()
