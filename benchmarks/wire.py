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
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Mapping

import numpy as np

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

BASELINE = "int32 tobytes + frombuffer (baseline)"
MODELS: dict[str, dict[str, tuple[int, ...]]] = {
    "FRL MLP 784-256-128-10": {
        "fc1.weight": (256, 784),
        "fc2.weight": (128, 256),
        "fc3.weight": (10, 128),
    },
    "CNN conv32-conv64-fc128-fc10": {
        "conv1.weight": (32, 1, 3, 3),
        "conv2.weight": (64, 32, 3, 3),
        "fc1.weight": (128, 1600),
        "fc2.weight": (10, 128),
    },
}


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
    for model, shapes in MODELS.items():
        sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--n", type=int, default=1_600_000, help="entries of the timed ranking")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per figure")
    parser.add_argument("--seed", type=int, default=0)
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


if __name__ == "__main__":
    main()
