"""Helpers that write small datasets in each format (tests import them)."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
from PIL import Image


def gray_images(n: int, *, size: int = 8, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 gray images ``(n, size, size)``."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def pil_dataset(pixels: np.ndarray, labels: np.ndarray, names: list[str]) -> datasets.Dataset:
    """A Dataset with an ``Image`` column (PIL values) and a ``ClassLabel`` column."""
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {"image": [Image.fromarray(p) for p in pixels], "label": labels.tolist()},
        features=features,
    )


def write_image_folder(root: Path, pixels: dict[str, dict[str, np.ndarray]]) -> Path:
    """``root/<split>/<class>/<i>.png`` for ``pixels[split][class]`` (a stack of images)."""
    for split, by_class in pixels.items():
        for name, stack in by_class.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(stack):
                Image.fromarray(image).save(folder / f"{i}.png")
    return root
