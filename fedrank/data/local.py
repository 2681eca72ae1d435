"""A site's own training examples from a local file (``data-path`` in the node config).

In a deployment a site trains on data that never leaves it instead of a
partition of a packaged dataset. The file is an ``.npz`` with two arrays:

- ``images``: ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel), float values
  in [0, 1], the shape of the scenario's dataset (MNIST: 1x28x28; digits: 1x8x8),
  because the server builds the model and evaluates it on that shape;
- ``labels``: ``(N,)`` integers in ``[0, num_classes)``.

Every problem is a :class:`~fedrank.errors.ConfigError` on ``data-path`` that
says what is wrong, before any training starts.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fedrank.data.digits import ImageSplit
from fedrank.errors import ConfigError

FIELD = "data-path"


def _fail(path: Path, message: str) -> ConfigError:
    return ConfigError(FIELD, f"{path}: {message}")


def load_local_examples(
    path: str | Path, *, image_shape: tuple[int, int, int], num_classes: int
) -> ImageSplit:
    """Load and validate a site's examples.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file (``images``, ``labels``).
    image_shape : tuple[int, int, int]
        ``(channels, height, width)`` the scenario's model expects.
    num_classes : int
        Number of classes of the scenario's dataset.
    """
    path = Path(path)
    if not path.is_file():
        raise _fail(path, "no such file (data-path must name an .npz file on this site)")
    if not zipfile.is_zipfile(path):
        with path.open("rb") as head:
            single = head.read(6) == b"\x93NUMPY"
        what = "holds one .npy array" if single else "is not an .npz archive"
        raise _fail(path, f"{what}; save images and labels with numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: np.asarray(archive[name]) for name in archive.files}
    except (OSError, zipfile.BadZipFile) as err:
        raise _fail(path, f"not a readable .npz file: {err}") from err
    except ValueError as err:
        raise _fail(path, f"holds object arrays, which are refused (pickles): {err}") from err
    missing = sorted({"images", "labels"} - set(arrays))
    if missing:
        raise _fail(path, f"lacks array(s) {missing}; it has {sorted(arrays)}")
    images, labels = arrays["images"], arrays["labels"]
    if images.ndim == 0 or labels.ndim == 0 or len(images) != len(labels):
        raise _fail(path, f"images {images.shape} and labels {labels.shape} must pair up (N, ...)")
    return ImageSplit(
        _checked_images(path, images, image_shape), _checked_labels(path, labels, num_classes)
    )


def _checked_images(path: Path, images: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    if images.ndim == 3 and shape[0] == 1:
        images = images[:, None, :, :]
    if images.ndim != 4 or tuple(images.shape[1:]) != shape:
        raise _fail(
            path,
            f"images must have shape (N, {', '.join(map(str, shape))}), got {images.shape}",
        )
    if len(images) == 0:
        raise _fail(path, "holds no examples")
    if not np.issubdtype(images.dtype, np.floating):
        raise _fail(path, f"images must be floats in [0, 1], got dtype {images.dtype}")
    if not np.isfinite(images).all():
        raise _fail(path, "images contain NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < 0.0 or high > 1.0:
        raise _fail(
            path, f"images must lie in [0, 1] (scale pixels to it), got [{low:g}, {high:g}]"
        )
    return images.astype(np.float32, copy=False)


def _checked_labels(path: Path, labels: np.ndarray, num_classes: int) -> np.ndarray:
    if labels.ndim != 1:
        raise _fail(path, f"labels must have shape (N,), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise _fail(path, f"labels must be integers, got dtype {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise _fail(
            path,
            f"labels must lie in [0, {num_classes - 1}], got [{labels.min()}, {labels.max()}]",
        )
    return labels.astype(np.int64, copy=False)
