"""Export the global LoRA adapter as a folder that plain ``transformers`` + ``peft`` load.

Every export holds the adapter, the base's tokenizer (its ``model_max_length`` is the
run's max length; padding made explicit, see
:func:`fedrank.models.bases.load_tokenizer`), a model card (``README.md``: base,
data, federation, accuracy, privacy, and the loading code,
:func:`fedrank.models.model_card.loading_snippet`) and :data:`BASE_FILE`, from which
:func:`load_exported_adapter` rebuilds the model inside fedrank. The adapter names its
base as the user did (a Hub id, their path as written; the packaged MiniLM by its Hub
id and revision, whose weights are the packaged ones).

- ``pooling="cls"``: a standard PEFT adapter folder (``adapter_config.json`` +
  ``adapter_model.safetensors``, the head in ``modules_to_save``) on the
  architecture's own head. ``AutoPeftModelForSequenceClassification.from_pretrained``
  (and ``PeftModel.from_pretrained`` on the base, and transformers' own
  ``AutoModelForSequenceClassification.from_pretrained(folder)``) build the model
  fedrank evaluated.
- ``pooling="mean"``: no transformers class pools that way, so the folder ships its
  modeling code (:mod:`fedrank.models.pooling`, copied as ``modeling_fedrank.py``) and
  a ``config.json`` whose ``auto_map`` names it:
  ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``.
  The adapter files carry non-standard names, so that PEFT's loaders fail loudly
  (no ``adapter_config.json``) instead of putting the adapter on the wrong head.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel

from fedrank.errors import ConfigError
from fedrank.models import pooling
from fedrank.models.bases import base_config, load_tokenizer, resolve_base
from fedrank.models.lora import (
    LoraSpec,
    build_lora_model,
    head_modules,
    load_base_model,
    resolved_target_modules,
    set_adapter_tensors,
)
from fedrank.models.model_card import ModelCard, ModelFacts, render_card

BASE_FILE = "fedrank-base.json"
"""fedrank's own record of the export: the spec's base (as named), pooling, classes,
seed, adapter settings and max length."""
_PEFT_CONFIG = "adapter_config.json"
_PEFT_WEIGHTS = "adapter_model.safetensors"


def export_adapter(
    spec: LoraSpec,
    tensors: Mapping[str, np.ndarray],
    folder: str | Path,
    *,
    card: ModelCard,
    max_length: int,
) -> Path:
    """Write the adapter ``tensors`` on the base of ``spec`` as a folder anyone can load.

    Parameters
    ----------
    spec : LoraSpec
        The spec the adapter was trained under.
    tensors : mapping
        The global adapter by stable name (a subset is allowed: under FFA-LoRA the
        frozen A comes from ``spec.init_seed``).
    folder : str or Path
        Where the export goes. It is written beside it first and then moved into
        place; an earlier fedrank export there is replaced.
    card : ModelCard
        The run's facts for the model card.
    max_length : int
        The token length the run tokenised to (saved as the tokenizer's
        ``model_max_length``).

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    ConfigError
        ``folder`` when it exists, is not empty and is not a fedrank export;
        ``max_length`` below 2; ``label_names`` of the wrong count.
    """
    out = Path(folder)
    if max_length < 2:
        raise ConfigError("max_length", f"must be at least 2, got {max_length}")
    if card.label_names and len(card.label_names) != spec.num_labels:
        raise ConfigError(
            "label_names",
            f"{len(card.label_names)} names for {spec.num_labels} classes: {card.label_names}",
        )
    if out.exists() and any(out.iterdir()) and not (out / BASE_FILE).is_file():
        raise ConfigError("folder", f"{out} exists and is not a fedrank export; not touching it")
    model = build_lora_model(spec)
    set_adapter_tensors(model, tensors)
    ref = resolve_base(spec.base)
    adapter_config = model.peft_config["default"]
    adapter_config.base_model_name_or_path = ref.public_name
    adapter_config.revision = ref.revision
    tokenizer = _tokenizer_for_export(spec.base, max_length)
    base: Any = model.get_base_model()
    facts = ModelFacts(
        base=ref.public_name,
        revision=ref.revision,
        model_type=str(base.config.model_type),
        pooling=spec.pooling,
        num_labels=spec.num_labels,
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        target_modules=resolved_target_modules(model),
        default_targets=spec.target_modules is None,
        mode=spec.mode,
        head=head_modules(base),
        max_length=max_length,
        pad_token_id=_added_pad_token(spec, base),
        replaces_saved_head=_replaces_saved_head(spec),
        plain_loadable=ref.location is not None,
    )
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(str(staging))
    if spec.pooling == "mean":
        _make_self_describing(staging, base, ref.public_name, ref.revision, card, spec)
    tokenizer.save_pretrained(str(staging))
    (staging / "README.md").write_text(render_card(facts, card), encoding="utf-8")
    record = {
        "base": spec.base,
        "public_base": ref.public_name,
        "pooling": spec.pooling,
        "num_labels": spec.num_labels,
        # tiny-bert's random base weights come from it; a pretrained base's do not.
        "init_seed": spec.init_seed,
        "r": spec.r,
        "lora_alpha": spec.lora_alpha,
        "target_modules": facts.target_modules,
        "mode": spec.mode,
        "max_length": max_length,
    }
    (staging / BASE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    _move_into_place(staging, out)
    return out


def _tokenizer_for_export(base: str, max_length: int) -> Any:
    """A copy of the run's tokenizer that saves everything it tokenised with.

    transformers writes back only the keys a tokenizer was created with, so the
    settings fedrank made (padding, inputs, length) go there too, and the loading
    flags of this machine do not.
    """
    tokenizer = copy.deepcopy(load_tokenizer(base))
    tokenizer.model_max_length = max_length
    for key in ("local_files_only", "is_local"):
        tokenizer.init_kwargs.pop(key, None)
    tokenizer.init_kwargs.update(
        model_max_length=max_length,
        padding_side=tokenizer.padding_side,
        truncation_side=tokenizer.truncation_side,
        model_input_names=list(tokenizer.model_input_names),
    )
    if "max_length" in tokenizer.init_kwargs:  # a truncation length read from tokenizer.json
        tokenizer.init_kwargs["max_length"] = max_length
    return tokenizer


def _added_pad_token(spec: LoraSpec, base: Any) -> int | None:
    """The pad token id a plain loader must be given: the one fedrank added to a base
    whose own config has none (GPT-2 style, ``cls`` pooling only)."""
    if spec.pooling == "mean" or base_config(spec.base).pad_token_id is not None:
        return None
    value = base.config.pad_token_id
    return None if value is None else int(value)


def _replaces_saved_head(spec: LoraSpec) -> bool:
    """Whether the base checkpoint holds a classification head of another size."""
    if spec.pooling == "mean":
        return False
    config = base_config(spec.base)
    saved = any("ForSequenceClassification" in a for a in config.architectures or ())
    return saved and config.num_labels != spec.num_labels


def _make_self_describing(
    folder: Path, base: Any, public_name: str, revision: str | None, card: ModelCard, spec: LoraSpec
) -> None:
    """Mean pooling: rename the adapter files, add config.json + auto_map + modeling code."""
    os.replace(folder / _PEFT_CONFIG, folder / pooling.ADAPTER_CONFIG_FILE)
    os.replace(folder / _PEFT_WEIGHTS, folder / pooling.ADAPTER_WEIGHTS_FILE)
    shutil.copyfile(pooling.__file__, folder / pooling.MODELING_FILE)
    config = base.config.to_dict()
    config["_name_or_path"] = public_name  # never where the base lay on this machine
    config["auto_map"] = {
        "AutoModelForSequenceClassification": (
            f"{Path(pooling.MODELING_FILE).stem}.{pooling.FedrankMeanPooledLoader.__name__}"
        )
    }
    config[pooling.EXPORT_CONFIG_KEY] = {
        "base": public_name,
        "revision": revision,
        "num_labels": spec.num_labels,
        "pooling": "mean",
    }
    if card.label_names:
        config["id2label"] = dict(enumerate(card.label_names))
        config["label2id"] = {name: i for i, name in enumerate(card.label_names)}
    (folder / "config.json").write_text(
        json.dumps(config, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8"
    )


def _move_into_place(staging: Path, out: Path) -> None:
    """Replace ``out`` (absent, empty, or an earlier export) by ``staging``."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)


def load_exported_adapter(folder: str | Path) -> Any:
    """The classifier of an exported folder, rebuilt by fedrank (aliases included).

    The base comes from :data:`BASE_FILE` as the run named it (``"minilm"``, a folder,
    a Hub id in the cache); a folder without that file (exported before pooling was
    a choice) holds a ``[CLS]``-pooled MiniLM adapter.

    Returns
    -------
    peft.PeftModel
        In eval mode.

    Raises
    ------
    ConfigError
        ``folder`` when :data:`BASE_FILE` is not a valid description; ``base`` when
        its base cannot be found.
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
    base = load_base_model(spec)
    if (path / pooling.ADAPTER_CONFIG_FILE).is_file():
        return pooling.load_pooled_adapter(base, path)
    # Draws of PEFT's initial A go to a forked RNG: the caller's stream is untouched.
    with torch.random.fork_rng(devices=[]):
        return PeftModel.from_pretrained(base, str(path)).eval()
