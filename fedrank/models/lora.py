"""LoRA adapters on a pretrained text classifier (LoRA: Hu et al., arXiv 2106.09685).

The base is any model with a sequence-classification class in ``transformers``
(:mod:`fedrank.models.bases`: the packaged MiniLM by default, a local folder, a Hub
id from the local cache, or ``tiny-bert`` for tests). PEFT wraps it: each target
module ``W`` becomes ``W + (alpha / r) B A`` with ``A`` of shape ``(r, in)`` and
``B`` of shape ``(out, r)``. The targets are PEFT's own default for the
architecture (``peft.utils.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``:
``query, value`` for BERT, ``c_attn`` for GPT-2...) unless the spec names them;
:func:`resolved_target_modules` says which were used.

What the head reads is ``LoraSpec.pooling``: ``"cls"``, the architecture's own
classification head (BERT: the ``[CLS]`` pooler; GPT-2: the last non-padding token;
RoBERTa: ``<s>``); ``"mean"``, the masked mean of the last hidden states
(:class:`fedrank.models.pooling.MeanPooledClassifier`).

What travels between client and server is a ``dict[str, np.ndarray]`` with stable
names, the same in every process:

- ``"<module>.lora_A"`` and ``"<module>.lora_B"`` for each adapted module, e.g.
  ``"bert.encoder.layer.0.attention.self.query.lora_A"``;
- the head's parameters, e.g. ``"classifier.weight"`` and ``"classifier.bias"``
  (GPT-2's own head: ``"score.weight"``). The head is new (a pretrained encoder has
  none, and a saved classifier's is replaced), so it is trained and travels when
  ``LoraSpec.train_head`` (the default). It is tiny, and linear for BERT, GPT-2 and
  mean pooling, so averaging it there is exact.

FFA-LoRA (Sun et al., ICLR 2024, arXiv 2403.12313) freezes every ``A`` at its
seeded initialisation, identical in every process, and trains only ``B`` (and the
head): the product ``B A`` is then linear in the trained part, so plain averaging
of ``B`` is exact aggregation, and DP noise does not get multiplied by a second
noisy factor. Only ``B`` and the head travel (see :func:`trainable_tensors`).

Every adapter (``A`` from ``U(-1/sqrt(in), 1/sqrt(in))``, PEFT's own range; ``B = 0``)
and the head (weight matrices ``N(0, 0.02)``, norm scales 1, biases 0) are
initialised from ``LoraSpec.init_seed``, so all processes start from the same
global adapter.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    BertModel,
)

from fedrank.errors import ConfigError, InvalidUpdate
from fedrank.models.bases import base_config, resolve_base, tiny_bert_config
from fedrank.models.bases import load_tokenizer as load_tokenizer
from fedrank.models.bases import minilm_path as minilm_path
from fedrank.models.pooling import HEAD as MEAN_HEAD
from fedrank.models.pooling import MeanPooledClassifier

LoraMode = Literal["lora", "ffa"]
Pooling = Literal["cls", "mean"]

LORA_A_SUFFIX = ".lora_A"
LORA_B_SUFFIX = ".lora_B"
_ADAPTER = "default"
_PARAM_PREFIX = "base_model.model."
# Layer types PEFT's LoRA can adapt, named in the error for targets that match nothing.
_ADAPTABLE = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding")


@dataclass(frozen=True)
class LoraSpec:
    """Which base model and which LoRA adapter; equal specs give identical models.

    Parameters
    ----------
    base : str
        ``"minilm"`` (the packaged pretrained MiniLM-L6, 384 hidden, 22.7M
        parameters), ``"tiny-bert"`` (a random 2-layer BERT of hidden size 32, for
        tests), a local model folder, or a Hub id in the local cache
        (:mod:`fedrank.models.bases`). Checked when the model is built.
    r : int
        LoRA rank.
    lora_alpha : int
        Scaling numerator: the update is ``(lora_alpha / r) B A``.
    lora_dropout : float
        Dropout on the adapter's input, in [0, 1).
    target_modules : tuple of str or None
        Names (suffixes) of the modules to adapt; None: PEFT's default for the
        base's architecture (:func:`resolved_target_modules` tells which).
    mode : {"lora", "ffa"}
        ``"lora"`` trains A and B; ``"ffa"`` (FFA-LoRA) freezes A at its seeded value.
    train_head : bool
        Train the classification head and send it with the adapter.
    num_labels : int
        Classes of the head (from the data).
    init_seed : int
        Seed of the adapter's and the head's initial values (shared by all parties).
    pooling : {"cls", "mean"}
        What the head reads: ``"cls"``, the architecture's own head; ``"mean"``, the
        attention-masked mean of the last hidden states
        (:class:`fedrank.models.pooling.MeanPooledClassifier`; not for
        encoder-decoder models).
    """

    base: str = "minilm"
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    mode: LoraMode = "lora"
    train_head: bool = True
    num_labels: int = 2
    init_seed: int = 0
    pooling: Pooling = "cls"

    def __post_init__(self) -> None:
        if not isinstance(self.base, str) or not self.base.strip():
            raise ConfigError("base", f"must name a model, got {self.base!r}")
        if self.r < 1:
            raise ConfigError("r", f"must be a positive integer, got {self.r}")
        if not self.lora_alpha > 0:
            raise ConfigError("lora_alpha", f"must be positive, got {self.lora_alpha}")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError("lora_dropout", f"must lie in [0, 1), got {self.lora_dropout}")
        if self.target_modules is not None and (
            not isinstance(self.target_modules, tuple)
            or not self.target_modules
            or not all(isinstance(m, str) and m.strip() for m in self.target_modules)
        ):
            raise ConfigError(
                "target_modules",
                f"must be None (PEFT's default) or a non-empty tuple of names, "
                f"got {self.target_modules!r}",
            )
        if self.mode not in ("lora", "ffa"):
            raise ConfigError("mode", f"must be 'lora' or 'ffa', got {self.mode!r}")
        if self.pooling not in ("cls", "mean"):
            raise ConfigError("pooling", f"must be 'cls' or 'mean', got {self.pooling!r}")
        if self.num_labels < 2:
            raise ConfigError("num_labels", f"must be at least 2, got {self.num_labels}")


def load_base_model(spec: LoraSpec) -> Any:
    """A fresh base classifier (no adapter), float32, in eval mode; its head is not seeded.

    Parameters
    ----------
    spec : LoraSpec
        Only ``base``, ``num_labels``, ``pooling`` and ``init_seed`` matter here.

    Returns
    -------
    torch.nn.Module
        ``pooling="cls"``: the architecture's ``*ForSequenceClassification``, with
        ``config.pad_token_id`` set to the tokenizer's where the base had none (GPT-2:
        the end token), so the head finds each row's last real token.
        ``pooling="mean"``: :class:`fedrank.models.pooling.MeanPooledClassifier` on the
        bare model.

    Raises
    ------
    ConfigError
        See :func:`fedrank.models.bases.base_config`.
    """
    config = base_config(spec.base, pooling=spec.pooling)
    location = resolve_base(spec.base).location
    # Weights a checkpoint lacks are drawn from the global RNG: draw them from the
    # spec's seed instead, and leave the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.init_seed)
        if spec.pooling == "mean":
            encoder = (
                BertModel(tiny_bert_config())
                if location is None
                else AutoModel.from_pretrained(location, dtype=torch.float32, local_files_only=True)
            )
            model: Any = MeanPooledClassifier(encoder, spec.num_labels)
        elif location is None:
            model = BertForSequenceClassification(tiny_bert_config(spec.num_labels))
        else:
            extra = {}
            if config.pad_token_id is None:
                extra["pad_token_id"] = load_tokenizer(spec.base).pad_token_id
            model = AutoModelForSequenceClassification.from_pretrained(
                location,
                num_labels=spec.num_labels,
                dtype=torch.float32,
                local_files_only=True,
                # A saved classifier's head of another size is replaced (then seeded).
                ignore_mismatched_sizes=True,
                **extra,
            )
    model.eval()
    return model


def head_modules(model: Any) -> tuple[str, ...]:
    """Top-level modules of a classifier that are its head: every child with parameters
    outside the pretrained body (``base_model_prefix``). BERT: ``classifier``; GPT-2:
    ``score``; DistilBERT: ``pre_classifier`` and ``classifier``."""
    if isinstance(model, MeanPooledClassifier):
        return (MEAN_HEAD,)
    body = getattr(model, "base_model_prefix", "")
    return tuple(
        name
        for name, child in model.named_children()
        if name != body and any(True for _ in child.parameters())
    )


def _no_default_targets(model: Any, spec: LoraSpec, model_type: str) -> ConfigError:
    return ConfigError(
        "target_modules",
        f"PEFT has no default LoRA targets for model type {model_type!r} ({spec.base}); "
        f"set lora-targets to some of: {', '.join(_adaptable_names(model))}",
    )


def _adaptable_names(model: Any) -> list[str]:
    """Distinct last names of the modules LoRA could adapt (for error messages)."""
    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if type(module).__name__ in _ADAPTABLE and name
    }
    return sorted(names)[:16]


def _pristine_uncached(spec: LoraSpec) -> PeftModel:
    base = load_base_model(spec)
    model_type = str(base.config.model_type)
    if spec.target_modules is None and model_type not in (
        TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    ):
        raise _no_default_targets(base, spec, model_type)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=spec.r,
        lora_alpha=spec.lora_alpha,
        lora_dropout=spec.lora_dropout,
        # None: PEFT resolves its own default for the architecture.
        target_modules=None if spec.target_modules is None else list(spec.target_modules),
        modules_to_save=list(head_modules(base)),
    )
    names = _adaptable_names(base)
    try:
        with warnings.catch_warnings():
            # GPT-2's Conv1D: PEFT switches fan_in_fan_out on itself and says so.
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set to False")
            model = get_peft_model(base, config)
    except ValueError as err:  # PEFT's NoMatchingPeftModuleError among others
        raise ConfigError(
            "target_modules",
            f"{spec.target_modules!r} match no module of {spec.base} ({model_type}); "
            f"its adaptable layers: {', '.join(names)}",
        ) from err
    _seed_adapter(model, spec)
    model.eval()
    return model


@functools.lru_cache(maxsize=4)
def _pristine_model(spec: LoraSpec) -> PeftModel:
    return _pristine_uncached(spec)


def build_lora_model(spec: LoraSpec) -> PeftModel:
    """The base model wrapped with the spec's adapter at its seeded initial value.

    The base is loaded from disk once per process and spec (a worker serving many
    rounds pays for it once); each call returns an independent deep copy, so
    training or wrapping it (Opacus adds hooks) never leaks into the next round.

    Returns
    -------
    peft.PeftModel
        In eval mode; only the adapter (and the head if ``train_head``) requires grad.

    Raises
    ------
    ConfigError
        ``base`` / ``pooling`` (:func:`fedrank.models.bases.base_config`), or
        ``target_modules`` when they match no module, or when the spec names none and
        PEFT has no default for the architecture.
    """
    return copy.deepcopy(_pristine_model(spec))


def resolved_target_modules(model: PeftModel) -> tuple[str, ...] | str:
    """The target modules the adapter of ``model`` was built with (sorted names, or
    PEFT's regular expression where its default for the architecture is one)."""
    config: Any = model.peft_config[_ADAPTER]
    targets = config.target_modules
    if isinstance(targets, str):
        return targets
    return tuple(sorted(targets))


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
            elif name.endswith(".weight") and param.ndim > 1:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
                param.requires_grad_(spec.train_head)
            elif name.endswith(".weight"):  # a norm's scale (in heads that have one)
                param.fill_(1.0)
                param.requires_grad_(spec.train_head)
            else:
                param.zero_()
                param.requires_grad_(spec.train_head)


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
