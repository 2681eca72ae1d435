"""FedProx's proximal term on a client (Li et al., arXiv 1812.06127, Sec. 3).

Each client minimises ``F_k(w) + (mu / 2) ||w - w_t||^2`` instead of its loss alone,
where ``w_t`` is the global model it received: the term keeps local training near the
global model when the clients' data differ. Only the trained parameters count (a
LoRA client's adapter and head, an image client's dense weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fedrank.errors import ConfigError

__all__ = ["ProximalTerm"]


class ProximalTerm:
    """``(mu / 2) sum_p ||p - p_0||^2``, anchored at the parameters' values when built.

    Parameters
    ----------
    params : sequence of torch.Tensor
        The trained parameters, holding the global model's values now.
    mu : float
        The weight, finite and ``>= 0``; 0 adds nothing (FedAvg) and keeps no copy.
    """

    def __init__(self, params: Sequence[torch.Tensor], mu: float) -> None:
        if isinstance(mu, bool) or not math.isfinite(mu) or mu < 0:
            raise ConfigError("proximal-mu", f"must be a finite number >= 0, got {mu!r}")
        self.mu = float(mu)
        self.params = list(params)
        self.anchor = [p.detach().clone() for p in self.params] if self.mu else []

    def __call__(self) -> torch.Tensor | None:
        """The term for the parameters' current values (None when ``mu`` is 0)."""
        if not self.mu:
            return None
        total = sum(((p - a) ** 2).sum() for p, a in zip(self.params, self.anchor, strict=True))
        return torch.as_tensor(total) * (self.mu / 2)

    def add_to(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss`` plus the term (``loss`` itself when ``mu`` is 0)."""
        term = self()
        return loss if term is None else loss + term
