"""Export the global LoRA adapter as a standard PEFT adapter folder.

The folder (``adapter_config.json`` + ``adapter_model.safetensors``, written by
PEFT's own ``save_pretrained``) loads anywhere with
``PeftModel.from_pretrained(base_model, folder)``, where ``base_model`` is the
same base classifier (``fedrank.models.lora.load_base_model(spec)``, or
``AutoModelForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)``).
The head travels inside the folder (``modules_to_save``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from fedrank.models.lora import LoraSpec, build_lora_model, minilm_path, set_adapter_tensors


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
    return out
