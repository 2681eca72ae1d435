"""RQM against the Gaussian mechanism at equal epsilon and equal bits per coordinate.

Both as local randomizers (the server sees each client's message), on the task they
serve in federated learning: estimating the mean of n clients' values clipped to
[-c, c]. For each budget and bit width:

- **RQM** (Youn et al. 2023, arXiv 2306.11913): m = 2^b levels, each interior level
  kept with probability 1/2, the extension Delta calibrated so that a client spends the
  budget (:func:`fedrank.privacy.rqm_accounting.rqm_extension_for_epsilon`);
- **Gaussian, b bits**: the clipped value plus N(0, (sigma c)^2), rounded at random to
  2^b levels (:mod:`fedrank.privacy.quantized_gaussian`), sigma calibrated to the same
  budget under the same relation;
- **Gaussian, 32 bits**: the same without rounding (what b bits cost it).

The figure is the root-mean-square error of the estimated mean over trials, relative
to c. Clients' values are drawn uniformly in [-c, c]; every draw of a mechanism comes
from a secure source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedrank.privacy.quantized_gaussian import (
    local_gaussian_encode,
    local_gaussian_epsilon,
    local_gaussian_noise_for_epsilon,
)
from fedrank.privacy.randomness import RandomSource
from fedrank.privacy.rqm import RqmParams, rqm_decode, rqm_quantize
from fedrank.privacy.rqm_accounting import rqm_epsilon, rqm_extension_for_epsilon

KEEP_PROBABILITY = 0.5


def _rmse(estimates: Sequence[float], truths: Sequence[float]) -> float:
    return float(np.sqrt(np.mean((np.asarray(estimates) - np.asarray(truths)) ** 2)))


def compare(
    epsilons: Sequence[float],
    bits: Sequence[int],
    *,
    clients: int = 1000,
    trials: int = 20,
    delta: float = 1e-5,
    clip: float = 1.0,
) -> list[dict[str, Any]]:
    """One row per (epsilon, bits, mechanism): its noise parameter, spent epsilon, RMSE."""
    rows: list[dict[str, Any]] = []
    data = RandomSource.secure()
    for eps in epsilons:
        sigma = local_gaussian_noise_for_epsilon(target_epsilon=eps, rounds=1, delta=delta)
        for b in [*bits, 32]:
            truths, estimates = [], []
            for _ in range(trials):
                x = (data.uniform(clients) * 2 - 1) * clip
                truths.append(float(x.mean()))
                source = RandomSource.secure()
                if b < 32:
                    sent = local_gaussian_encode(
                        {"x": x}, clip_norm=clip, noise_multiplier=sigma, bits=b, source=source
                    )["x"]
                else:
                    sent = x + source.normal(clients, std=sigma * clip)
                estimates.append(float(sent.mean()))
            rows.append(
                {
                    "mechanism": "gaussian", "bits": b, "target_epsilon": eps,
                    "epsilon": local_gaussian_epsilon(
                        noise_multiplier=sigma, rounds=1, delta=delta
                    ),
                    "noise": sigma, "rmse": _rmse(estimates, truths) / clip,
                }
            )  # fmt: skip
        for b in bits:
            levels = 1 << b
            extension = rqm_extension_for_epsilon(
                target_epsilon=eps, clip=clip, levels=levels, keep_probability=KEEP_PROBABILITY,
                dimension=1, rounds=1, delta=delta,
            )  # fmt: skip
            params = RqmParams(clip, extension, levels, KEEP_PROBABILITY)
            truths, estimates = [], []
            for _ in range(trials):
                x = (data.uniform(clients) * 2 - 1) * clip
                truths.append(float(x.mean()))
                sent = rqm_decode(rqm_quantize(x, params, RandomSource.secure()), params)
                estimates.append(float(sent.mean()))
            rows.append(
                {
                    "mechanism": "rqm", "bits": b, "target_epsilon": eps,
                    "epsilon": rqm_epsilon(params=params, dimension=1, rounds=1, delta=delta),
                    "noise": extension, "rmse": _rmse(estimates, truths) / clip,
                }
            )  # fmt: skip
    return rows


def comparison_markdown(rows: Sequence[dict[str, Any]], *, clients: int) -> str:
    """RMSE (relative to c) by mechanism and bits (rows) and epsilon (columns)."""
    epsilons = sorted({r["target_epsilon"] for r in rows})
    series = sorted({(r["bits"], r["mechanism"]) for r in rows})
    lines = [
        "| bits | mechanism | " + " | ".join(f"eps {e:g}" for e in epsilons) + " |",
        "|" + "---|" * (len(epsilons) + 2),
    ]
    for b, mechanism in series:
        cells = [
            next(
                f"{r['rmse']:.4f}" for r in rows
                if (r["bits"], r["mechanism"], r["target_epsilon"]) == (b, mechanism, e)
            )
            for e in epsilons
        ]  # fmt: skip
        lines.append(f"| {b} | {mechanism} | " + " | ".join(cells) + " |")
    lines.append(f"\nRMSE of the mean of {clients} clients' values in [-1, 1] (relative to c).")
    return "\n".join(lines)
