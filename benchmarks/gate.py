"""What the reply gate costs beside the aggregation it protects: FRL and LoRA, 10 replies.

Three timings per kind, each for a round of 10 honest replies:

- ``read``: the least a server must do to use the replies at all, with no check: FRL,
  parse the protobuf and unpack every bit-packed rank vector; LoRA, Flower's
  ``Array.numpy()`` of every tensor (what an unchecked strategy does);
- ``gate``: :func:`fedrank.protos.gate.gate` with the run's codec: the whole message
  checked (records, metrics, example counts), canonical encoding, header, sizes and
  permutations (FRL), declared and actual shapes, dtypes and finiteness (LoRA);
- ``aggregate``: the aggregation of the decoded replies (the FRL Borda vote; the LoRA
  FedIT average), to the record the round releases.

The gate's own cost is ``gate - read`` (reading is needed with or without it); the
figure of issue 16 is that cost over a round without the gate, ``read + aggregate``.
FRL's gate is also timed with numpy's permutation check in place of the compiled one
(``protos/_permutation.c``; the fallback where it was not built), side by side.
It can be negative: the LoRA gate recognises numpy's own ``.npy`` headers, which
Flower's ``Array.numpy()`` parses with ``ast.literal_eval``.
Times are the best of 25 in CPU time of the (single) thread, taken in turns; on a
shared machine the load average printed before and after says how far to trust them.

FRL: 1.2M edges in three layers (an MLP of 784-1024-384-10). LoRA: the adapter and
head of the packaged MiniLM at rank 8 on query and value (about 75k parameters).

Run: ``PYTHONPATH=. nice python -m benchmarks.gate``
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from benchmarks.common import report
from fedrank.protos import keys, packing, update_pb2
from fedrank.protos.codecs import ArraysCodec, Codec, RankingCodec, Reply
from fedrank.protos.gate import gate
from fedrank.protos.packing import bits_for, unpack_ranks
from fedrank.protos.ranking_wire import RankingWire
from fedrank.protos.records import to_array_record
from fedrank.strategies.lora import aggregate_adapters
from fedrank.strategies.votes import rank_vote

REPLIES = 10
REPEATS = 25
FRL_LAYERS = {"fc1": 784 * 1024, "fc2": 1024 * 384, "fc3": 384 * 10}


def _replies(codec: Codec, states: list[dict[str, np.ndarray]]) -> list[Message]:
    out = []
    for i, state in enumerate(states):
        content = codec.encode_reply(1, Reply(state=state, num_examples=100 + i))
        out.append(Message(content=content, dst_node_id=1000 + i, message_type="train"))
    return out


def frl() -> dict[str, float]:
    """Times of one FRL round of 10 replies: read, gate, aggregate."""
    wire = RankingWire(run_id="1", layer_sizes=FRL_LAYERS, fingerprint="bench")
    codec = RankingCodec(wire)
    rng = np.random.default_rng(0)
    states = [{n: rng.permutation(size) for n, size in FRL_LAYERS.items()} for _ in range(REPLIES)]
    replies = _replies(codec, states)
    reference = states[0]
    vote = rank_vote("borda")

    def read() -> list[dict[str, np.ndarray]]:
        out = []
        for reply in replies:
            payload = reply.content.config_records[keys.UPDATE][keys.RANKING]
            update = update_pb2.Update.FromString(payload)  # type: ignore[arg-type]
            out.append(
                {
                    layer.name: unpack_ranks(
                        layer.packed, n=layer.length, bits=bits_for(layer.length)
                    )
                    for layer in update.ranking.layers
                }
            )
        return out

    decoded = [u.state for u in gate(1, replies, lambda r: codec.decode_reply(1, r))[0]]
    assert len(decoded) == REPLIES

    def aggregate() -> object:
        state, _ = vote(decoded, reference, 0.0)
        return to_array_record(state)

    def checked() -> object:
        return gate(1, replies, lambda r: codec.decode_reply(1, r))

    def numpy_checked() -> object:
        compiled = packing._is_permutation
        packing._is_permutation = packing._numpy_is_permutation
        try:
            return checked()
        finally:
            packing._is_permutation = compiled

    return _times(read, checked, aggregate, {"gate, numpy's check": numpy_checked})


def lora() -> dict[str, float]:
    """Times of one LoRA round of 10 replies (the MiniLM adapter): read, gate, aggregate."""
    from fedrank.config import Scenario
    from fedrank.tasks import load_task

    initial = load_task(Scenario.of(strategy="lora", lora_rank=8)).initial_state()
    codec = ArraysCodec.for_state(initial)
    rng = np.random.default_rng(0)
    states = [
        {n: (v + rng.normal(0, 0.01, v.shape)).astype(v.dtype) for n, v in initial.items()}
        for _ in range(REPLIES)
    ]
    replies = _replies(codec, states)
    weights = [float(100 + i) for i in range(REPLIES)]
    params = sum(v.size for v in initial.values())
    print(f"\nLoRA adapter: {len(initial)} tensors, {params:,} parameters")

    def read() -> list[dict[str, np.ndarray]]:
        return [
            {n: a.numpy() for n, a in r.content.array_records[keys.ARRAYS].items()} for r in replies
        ]

    def aggregate() -> object:
        return to_array_record(aggregate_adapters(states, weights, mode="fedit", rank=8))

    return _times(read, lambda: gate(1, replies, lambda r: codec.decode_reply(1, r)), aggregate)


def _times(
    read: Callable[[], object],
    checked: Callable[[], object],
    aggregate: Callable[[], object],
    extra: dict[str, Callable[[], object]] | None = None,
) -> dict[str, float]:
    """Best of :data:`REPEATS` each, taken in turns, in CPU time of this thread: on a
    shared machine wall time mostly measures the others (every step here is one thread:
    numpy's sorts, sums and copies, protobuf and the checks)."""
    steps = {"read": read, "gate": checked, "aggregate": aggregate, **(extra or {})}
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(REPEATS):
        for name, fn in steps.items():
            started = time.thread_time()
            fn()
            best[name] = min(best[name], time.thread_time() - started)
    return best


def main() -> dict[str, float]:
    TaskIdentity.task_id = 1  # Flower builds Messages only inside a task
    TaskIdentity.run_id = 1
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    print("load average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"compiled permutation check: {'yes' if packing.COMPILED_CHECK else 'NO (numpy)'}")
    ratios = {}
    for name, times in (("FRL, 1.2M edges", frl()), ("LoRA, MiniLM adapter", lora())):
        report(
            f"{name}, {REPLIES} replies",
            [
                ("read (no checks)", times["read"]),
                ("gate (read + every check)", times["gate"]),
                ("aggregate", times["aggregate"]),
                ("round without the gate", times["read"] + times["aggregate"]),
                *((name, t) for name, t in times.items() if name.startswith("gate, ")),
            ],
            baseline="round without the gate",
        )
        overhead = (times["gate"] - times["read"]) / (times["read"] + times["aggregate"])
        per_reply = (times["gate"] - times["read"]) / REPLIES
        # Below 1x (LoRA): the checked decoding is cheaper than the unchecked read.
        print(
            f"  the gated round costs {1 + overhead:.3f}x the unchecked one "
            f"({per_reply * 1e3:+.2f} ms a reply)"
        )
        ratios[name] = overhead
        if "gate, numpy's check" in times:
            numpy_overhead = (times["gate, numpy's check"] - times["read"]) / (
                times["read"] + times["aggregate"]
            )
            print(f"  with numpy's permutation check: {1 + numpy_overhead:.3f}x")
    print("\nload average (1, 5, 15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    return ratios


if __name__ == "__main__":
    main()
