"""What a run leaves behind for its model: arrays on disk, and the FRL mask they define.

Arrays are saved as safetensors (no pickle, readable from any language):
``state.safetensors`` is the final global state of every run (rank vectors, dense
weights or adapter tensors), written by the ServerApp; tasks add their own exports
beside it (``mask.safetensors`` for FRL, the PEFT ``adapter/`` folder for LoRA).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

FINAL_STATE = "state.safetensors"
"""The final global state of a run, in its results folder."""


def top_k_mask(ranks: np.ndarray, k: float) -> np.ndarray:
    """Boolean mask of the top-``k`` fraction of a rank vector (the model's edges)."""
    n = ranks.shape[0]
    mask: np.ndarray = ranks >= n - max(1, round(k * n))
    return mask


def write_arrays(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Save named arrays at ``path`` (safetensors), atomically."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
    os.replace(tmp, path)
    return path


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The named arrays of a file written by :func:`write_arrays`, in their saved order."""
    return dict(load_file(str(path)))
