"""The user's own model and data: nothing here knows about fedrank."""

import numpy as np
from sklearn.datasets import load_digits
from torch import nn

NUM_SITES = 4


def make_model() -> nn.Module:
    """An MLP for scikit-learn's 8x8 digits."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def site_data(site: int) -> tuple[np.ndarray, np.ndarray]:
    """Site ``site``'s share of the digits: images (N, 1, 8, 8) in [0, 1], labels (N,)."""
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[:-300]
    mine = order[site::NUM_SITES]
    images = (digits.images[mine] / 16.0).astype(np.float32)[:, None]
    return images, digits.target[mine].astype(np.int64)


def test_data() -> tuple[np.ndarray, np.ndarray]:
    """The 300 digits no site holds."""
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))[-300:]
    return (digits.images[order] / 16.0).astype(np.float32)[:, None], digits.target[order]
