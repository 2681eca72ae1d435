"""DP-SGD step time against the plain step on the same batch, and bytes per round.

Run: ``PYTHONPATH=. python -m benchmarks.dp_step [--base minilm] [--batch 32] [--seq 64]``.
Both steps train the same LoRA adapter (r=8 on query/value + head) of the same
model on the same batch; the DP step is Opacus' (per-example gradients through
hooks, clipping, noise). Bytes: what a client sends per round (the trained
tensors, float32) against sending the whole model.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from opacus import PrivacyEngine
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from torch.utils.data import DataLoader, TensorDataset

from fedrank.data.text import load_rotten_tomatoes, tokenize
from fedrank.models.lora import LoraSpec, build_lora_model, load_tokenizer, trainable_tensors


def best_time(fn: Callable[[], object], *, repeats: int) -> float:
    """Fastest of ``repeats`` calls, in seconds (the least disturbed one)."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def _step(model: Any, opt: torch.optim.Optimizer, batch: tuple[torch.Tensor, ...]) -> None:
    ids, mask, labels = batch
    opt.zero_grad()
    loss = F.cross_entropy(model(input_ids=ids, attention_mask=mask).logits, labels)
    loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    opt.step()


def main(argv: list[str] | None = None) -> None:
    """Print the DP/plain step-time ratio and the adapter/full-model byte ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base", default="minilm", choices=["minilm", "tiny-bert"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    spec = LoraSpec(base=args.base, r=8)
    texts = load_rotten_tomatoes("train").subset(range(args.batch))
    data = tokenize(texts, load_tokenizer(), max_length=args.seq)
    batch = (data.input_ids, data.attention_mask, data.labels)

    plain = build_lora_model(spec).train()
    plain_opt = torch.optim.AdamW([p for p in plain.parameters() if p.requires_grad], lr=1e-4)
    _step(plain, plain_opt, batch)  # warm-up
    plain_s = best_time(lambda: _step(plain, plain_opt, batch), repeats=args.repeats)

    private = build_lora_model(spec).train()
    opt = torch.optim.AdamW([p for p in private.parameters() if p.requires_grad], lr=1e-4)
    loader = DataLoader(TensorDataset(*batch), batch_size=args.batch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Secure RNG turned off": a benchmark
        engine = PrivacyEngine(accountant="rdp")
    dp_model, dp_opt, _ = engine.make_private(
        module=private,
        optimizer=opt,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        poisson_sampling=False,  # the same fixed batch as the plain step
    )
    _step(dp_model, dp_opt, batch)
    dp_s = best_time(lambda: _step(dp_model, dp_opt, batch), repeats=args.repeats)

    sent = sum(v.nbytes for v in trainable_tensors(plain).values())
    # The whole model: every base parameter (the adapters and PEFT's head copy excluded).
    full = sum(
        p.numel() * p.element_size()
        for n, p in plain.get_base_model().named_parameters()
        if ".lora_" not in n and ".modules_to_save." not in n
    )
    print(f"\nDP-SGD step vs plain step ({args.base}, batch {args.batch}, seq {args.seq})")
    print(f"  plain step   {plain_s * 1e3:9.1f} ms    1.00x plain")
    print(f"  DP-SGD step  {dp_s * 1e3:9.1f} ms  {dp_s / plain_s:6.2f}x plain")
    print("\nBytes per round, one client")
    print(f"  full model   {full:12,d} B    1.0000x full")
    print(f"  adapter+head {sent:12,d} B  {sent / full:9.4f}x full")


if __name__ == "__main__":
    main()
