"""Seconds-per-trial DP tuning: Opacus DP-SGD on the head alone over frozen MiniLM features.

Run (the features are computed once, about a minute on one thread, then cached)::

    OMP_NUM_THREADS=1 PYTHONPATH=. nice python -m benchmarks.dp_head_probe \
        --scenario dp-lora-sentiment --pooling mean cls --eps 0 8 3 --head-lr 0.01 0.03

It federates like the scenario (its clients, records, rounds, local epochs, batch,
clip, delta and accountant; every client in every round, the head averaged), but
trains only a linear head on the frozen base's pooled features (``mean``: the masked
mean of the token states; ``cls``: BERT's pooler), with the same Opacus DP-SGD and
the same per-client noise multiplier as a real run
(:func:`fedrank.client.lora_app.sample_noise_multiplier`). ``--eps 0`` is the
non-private twin. Accuracy is on the scenario's held-out test records; each line is
the mean over ``--seeds`` seeds and each seed's figure. It is a probe for choosing
batch, rates and epochs: the real run also trains the adapter (docs/privacy.md).
"""

from __future__ import annotations

import argparse
import itertools
import warnings
from pathlib import Path

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from torch.utils.data import DataLoader, TensorDataset

from fedrank.config import Scenario
from fedrank.data.text import TokenizedText
from fedrank.models.lora import load_base_model
from fedrank.models.pooling import masked_mean
from fedrank.privacy.plan import sample_noise_multiplier
from fedrank.simulations.run import scenario_path
from fedrank.tasks import load_task
from fedrank.tasks.text_lora import TextLoraTask


def lora_task(scenario: Scenario) -> TextLoraTask:
    """The scenario's text LoRA task."""
    task = load_task(scenario)
    assert isinstance(task, TextLoraTask)
    return task


@torch.no_grad()
def pooled_features(base: torch.nn.Module, data: TokenizedText, pooling: str) -> np.ndarray:
    """Frozen features of ``data``: masked mean of the last hidden states, or the pooler."""
    encoder = base.bert  # type: ignore[union-attr]  # both base classes keep BERT here
    parts = []
    for start in range(0, len(data), 256):
        ids = data.input_ids[start : start + 256]
        mask = data.attention_mask[start : start + 256]
        if pooling == "mean":
            parts.append(masked_mean(encoder(input_ids=ids, attention_mask=mask)[0], mask))
        else:
            parts.append(encoder(input_ids=ids, attention_mask=mask).pooler_output)
    return torch.cat(parts).numpy()


def load_features(scenario: Scenario, pooling: str, cache: Path) -> dict[str, np.ndarray]:
    """Features and labels of every client and of the test records, cached in ``cache``."""
    data, length = scenario.data.train_records, scenario.model.max_length
    file = cache / f"features-{pooling}-{data}-{length}.npz"
    if file.is_file():
        with np.load(file) as saved:
            return {k: saved[k] for k in saved.files}
    task = lora_task(scenario.replace(lora_pooling="mean" if pooling == "mean" else "cls"))
    base = load_base_model(task.spec)
    out: dict[str, np.ndarray] = {}
    parts = {f"c{c}": task.partition_data(c) for c in range(scenario.run.num_clients)}
    for name, data in (parts | {"test": task.heldout()}).items():
        out[f"x-{name}"] = pooled_features(base, data, pooling)
        out[f"y-{name}"] = data.labels.numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, **out)  # type: ignore[arg-type]  # numpy's stub wants positional arrays
    return out


def federated_head(
    scenario: Scenario, feats: dict[str, np.ndarray], *, head_lr: float, seed: int
) -> float:
    """Held-out accuracy of the head after the scenario's rounds, DP as the scenario says."""
    gen = torch.Generator().manual_seed(seed)
    dim = feats["x-test"].shape[1]
    weight, bias = torch.randn(2, dim, generator=gen) * 0.02, torch.zeros(2)
    private = scenario.dp.sample
    for _ in range(scenario.run.rounds):
        trained = []
        for c in range(scenario.run.num_clients):
            x = torch.as_tensor(feats[f"x-c{c}"])
            y = torch.as_tensor(feats[f"y-c{c}"]).long()
            head = torch.nn.Linear(dim, 2)
            with torch.no_grad():
                head.weight.copy_(weight)
                head.bias.copy_(bias)
            opt = torch.optim.AdamW(head.parameters(), lr=head_lr, weight_decay=0.0)
            shuffle = torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=gen)))
            loader = DataLoader(
                TensorDataset(x, y),
                batch_size=scenario.train.batch_size,
                shuffle=True,
                generator=shuffle,
            )
            model: torch.nn.Module = head
            if private:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    engine = PrivacyEngine(accountant=scenario.dp.accountant)
                model, opt, loader = engine.make_private(
                    module=head,
                    optimizer=opt,
                    data_loader=loader,
                    noise_multiplier=sample_noise_multiplier(scenario, len(y)),
                    max_grad_norm=scenario.dp.clip_norm,
                    poisson_sampling=True,
                    noise_generator=torch.Generator().manual_seed(seed * 1000 + c),
                )
            for _ in range(scenario.train.local_epochs):
                for xb, yb in loader:
                    if len(yb) == 0:
                        continue  # an empty Poisson batch: the probe skips it (a real run steps)
                    opt.zero_grad()
                    F.cross_entropy(model(xb), yb).backward()  # type: ignore[no-untyped-call]
                    opt.step()
            trained.append((head.weight.detach().clone(), head.bias.detach().clone()))
        weight = torch.stack([w for w, _ in trained]).mean(dim=0)
        bias = torch.stack([b for _, b in trained]).mean(dim=0)
    x_test = torch.as_tensor(feats["x-test"])
    logits = x_test @ weight.T + bias
    return float((logits.argmax(dim=-1) == torch.as_tensor(feats["y-test"])).float().mean())


def main(argv: list[str] | None = None) -> None:
    """Print the probe's held-out accuracy for every combination asked for."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scenario", default="dp-lora-sentiment")
    parser.add_argument("--pooling", nargs="+", default=["mean"], choices=["mean", "cls"])
    parser.add_argument("--eps", type=float, nargs="+", default=[0.0, 8.0, 3.0])
    parser.add_argument("--head-lr", type=float, nargs="+", default=[0.03])
    parser.add_argument("--batch", type=int, nargs="+", default=[0], help="0: the scenario's")
    parser.add_argument("--epochs", type=int, nargs="+", default=[0], help="0: the scenario's")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", type=Path, default=Path("build/dp-head-probe"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Opacus' hooks warn on every step that the features do not require grad: by design.
    warnings.filterwarnings("ignore", message="Full backward hook")
    base = Scenario.from_toml(scenario_path(args.scenario))
    for pooling in args.pooling:
        feats = load_features(base, pooling, args.cache)
        for eps, lr, batch, epochs in itertools.product(
            args.eps, args.head_lr, args.batch, args.epochs
        ):
            scenario = base.replace(
                dp="sample" if eps else "none",
                dp_target_epsilon=eps,
                dp_noise_multiplier=0.0,
                batch_size=batch or base.train.batch_size,
                local_epochs=epochs or base.train.local_epochs,
            )
            accs = [federated_head(scenario, feats, head_lr=lr, seed=s) for s in range(args.seeds)]
            print(
                f"pooling {pooling} eps {eps or 'none'} head-lr {lr} "
                f"batch {scenario.train.batch_size} "
                f"epochs {scenario.train.local_epochs}: {np.mean(accs):.3f} "
                f"({' '.join(f'{a:.3f}' for a in accs)})",
                flush=True,
            )


if __name__ == "__main__":
    main()
