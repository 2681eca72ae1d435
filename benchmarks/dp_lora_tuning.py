"""Centralised LoRA on the real MiniLM: non-private against Opacus DP-SGD at target epsilons.

Run (CPU-heavy; bound it with --train / --seq / --epochs)::

    OMP_NUM_THREADS=1 PYTHONPATH=. nice python -m benchmarks.dp_lora_tuning --train 4000 \
        --seq 32 --eps 0 8 3 --dp-batch 64 --dp-lr 1e-4 --dp-head-lr 0.1 --dp-epochs 4

``--eps 0`` is the non-private run (``--plain-*`` settings). For each target
epsilon the noise multiplier is the smallest that spends it over the whole run
(``noise_multiplier_for_budget`` with every planned step); the epsilon printed is
the accountant's, after training. Accuracy is on the fixed held-out test split
(or its first ``--test`` records). Each line also gives the run's wall time.

The federated privacy-utility table (docs/privacy.md) is run with ``fedrank
simulate``; this script is the centralised probe used to tune it.
"""

from __future__ import annotations

import argparse
import time

from fedrank.data.text import load_rotten_tomatoes, tokenize
from fedrank.lora_training import (
    DpSgdConfig,
    evaluate_lora,
    noise_multiplier_for_budget,
    train_lora,
)
from fedrank.models.lora import LoraSpec, build_lora_model, load_tokenizer
from fedrank.privacy.plan import steps_per_epoch


def main(argv: list[str] | None = None) -> None:
    """Train once per target epsilon and print held-out accuracy for each."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=int, default=10_000, help="training records used")
    parser.add_argument("--test", type=int, default=0, help="test records used (0: all)")
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0, 8.0, 3.0])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--plain-batch", type=int, default=32)
    parser.add_argument("--plain-lr", type=float, default=1e-3)
    parser.add_argument("--plain-head-lr", type=float, default=1e-2)
    parser.add_argument("--plain-epochs", type=int, default=1)
    parser.add_argument("--dp-batch", type=int, default=64, help="logical (expected) batch")
    parser.add_argument("--physical", type=int, default=64, help="physical batch under DP")
    parser.add_argument("--dp-lr", type=float, default=1e-4)
    parser.add_argument("--dp-head-lr", type=float, default=0.1)
    parser.add_argument("--dp-epochs", type=int, default=4)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer()
    train_texts = load_rotten_tomatoes("train")
    train = tokenize(
        train_texts.subset(range(min(args.train, len(train_texts)))), tokenizer, max_length=args.seq
    )
    test_texts = load_rotten_tomatoes("test")
    if args.test:
        test_texts = test_texts.subset(range(min(args.test, len(test_texts))))
    test = tokenize(test_texts, tokenizer, max_length=args.seq)
    spec = LoraSpec(base="minilm", r=args.r, lora_alpha=2 * args.r)
    print(f"train {len(train)}, test {len(test)}, seq {args.seq}, r {args.r}", flush=True)

    for eps in args.eps:
        model = build_lora_model(spec)
        started = time.perf_counter()
        if eps <= 0:
            result = train_lora(
                model,
                train,
                epochs=args.plain_epochs,
                lr=args.plain_lr,
                head_lr=args.plain_head_lr,
                batch_size=args.plain_batch,
                seed=args.seed,
            )
            label = (
                f"non-private (batch {args.plain_batch}, lr {args.plain_lr}, "
                f"{args.plain_epochs} ep)"
            )
            spent = "-"
        else:
            per_epoch = steps_per_epoch(num_examples=len(train), batch_size=args.dp_batch)
            sigma = noise_multiplier_for_budget(
                target_epsilon=eps,
                delta=args.delta,
                sample_rate=1.0 / per_epoch,
                steps=args.dp_epochs * per_epoch,
            )
            dp = DpSgdConfig(
                noise_multiplier=sigma,
                max_grad_norm=args.clip,
                delta=args.delta,
                physical_batch_size=args.physical,
            )
            result = train_lora(
                model,
                train,
                epochs=args.dp_epochs,
                lr=args.dp_lr,
                head_lr=args.dp_head_lr,
                batch_size=args.dp_batch,
                seed=args.seed,
                dp=dp,
            )
            label = (
                f"DP eps {eps:g} (sigma {sigma:.3f}, batch {args.dp_batch}, lr {args.dp_lr}, "
                f"clip {args.clip}, {args.dp_epochs} ep)"
            )
            spent = f"{result.privacy['epsilon']:.2f}" if result.privacy else "?"
        accuracy, loss = evaluate_lora(model, test)
        seconds = time.perf_counter() - started
        print(
            f"{label}: accuracy {accuracy:.4f}, loss {loss:.4f}, epsilon spent {spent}, "
            f"steps {result.metrics['steps']:.0f}, {seconds:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
