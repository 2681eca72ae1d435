"""A site's own training images from a local file (``data-path`` in the node config).

Kept for its callers; :func:`fedrank.data.site.load_site_data` reads every format and
text too, and this calls it. The classic file is an ``.npz`` with two arrays:

- ``images``: ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel), float values in
  [0, 1] (or uint8 pixels 0-255), the shape of the scenario's dataset, because the
  server builds the model and evaluates it on that shape;
- ``labels``: ``(N,)`` integers in ``[0, num_classes)``.

Every problem is a :class:`~fedrank.errors.ConfigError` on ``data-path`` that
says what is wrong, before any training starts.
"""

from __future__ import annotations

from pathlib import Path

from fedrank.data.site import FIELD, load_site_data
from fedrank.data.splits import ImageSplit

__all__ = ["FIELD", "load_local_examples"]


def load_local_examples(
    path: str | Path, *, image_shape: tuple[int, int, int], num_classes: int
) -> ImageSplit:
    """Load and validate a site's images.

    Parameters
    ----------
    path : str or Path
        The site's file or folder (``.npz`` with ``images`` and ``labels``, or any
        format of :mod:`fedrank.data.files` with ``image`` and ``label`` columns).
    image_shape : tuple[int, int, int]
        ``(channels, height, width)`` the scenario's model expects.
    num_classes : int
        Number of classes of the scenario's dataset.
    """
    return load_site_data(path, kind="image", input_shape=image_shape, num_classes=num_classes)
