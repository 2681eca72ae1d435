"""Export the global LoRA adapter as a standard PEFT adapter folder, and load it back.

The folder (``adapter_config.json`` + ``adapter_model.safetensors``, written by
PEFT's own ``save_pretrained``) loads with
``PeftModel.from_pretrained(base_model, folder)``, where ``base_model`` is the
same base classifier the adapter was trained on:
``fedrank.models.lora.load_base_model(spec)``. With ``pooling="cls"`` that is plain
``AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)``;
with ``pooling="mean"`` it is
:class:`fedrank.models.pooling.MeanPoolBertForSequenceClassification` (the same
weights and names, another forward), and the plain class would load the folder
without complaint but classify the wrong vector. :data:`BASE_FILE` in the folder
records which base it needs, and :func:`load_exported_adapter` reads it.
The head travels inside the folder (``modules_to_save``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from peft import PeftModel

from fedrank.errors import ConfigError
from fedrank.models.lora import (
    LoraSpec,
    build_lora_model,
    load_base_model,
    minilm_path,
    set_adapter_tensors,
)

BASE_FILE = "fedrank-base.json"
"""The base an exported folder needs: ``base``, ``pooling``, ``num_labels``, ``init_seed``."""


def export_adapter(spec: LoraSpec, tensors: Mapping[str, np.ndarray], folder: str | Path) -> Path:
    """Write the adapter ``tensors`` on the base of ``spec`` as a PEFT folder.

    Parameters
    ----------
    spec : LoraSpec
        The spec the adapter was trained under.
    tensors : mapping
        The global adapter by stable name (a subset is allowed: under FFA-LoRA the
        frozen A comes from ``spec.init_seed``).
    folder : str or Path
        Created if missing; files in it are overwritten.

    Returns
    -------
    Path
        ``folder``.
    """
    out = Path(folder)
    model = build_lora_model(spec)
    set_adapter_tensors(model, tensors)
    if spec.base == "minilm":
        # Record where the base weights come from, so the folder names its base.
        model.peft_config["default"].base_model_name_or_path = minilm_path()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    base = {
        "base": spec.base,
        "pooling": spec.pooling,
        "num_labels": spec.num_labels,
        # tiny-bert's random base weights come from it; MiniLM's do not depend on it.
        "init_seed": spec.init_seed,
    }
    (out / BASE_FILE).write_text(json.dumps(base, indent=2) + "\n", encoding="utf-8")
    return out


def load_exported_adapter(folder: str | Path) -> Any:
    """The classifier of an exported folder: its base (from :data:`BASE_FILE`) + the adapter.

    A folder without :data:`BASE_FILE` (exported before pooling was a choice) was
    trained on the ``[CLS]`` pooler of MiniLM.

    Returns
    -------
    peft.PeftModel
        In eval mode.

    Raises
    ------
    ConfigError
        ``folder`` when :data:`BASE_FILE` is not a valid base description.
    """
    path = Path(folder)
    meta_file = path / BASE_FILE
    if not meta_file.is_file():
        spec = LoraSpec(base="minilm", pooling="cls")
    else:
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            spec = LoraSpec(
                base=meta["base"],
                pooling=meta["pooling"],
                num_labels=int(meta.get("num_labels", 2)),
                init_seed=int(meta.get("init_seed", 0)),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigError("folder", f"{meta_file}: not a valid base: {err}") from err
    return PeftModel.from_pretrained(load_base_model(spec), str(path)).eval()
