"""Mean-pooled sequence classification on any encoder- or decoder-only transformer.

Sentence-BERT (Reimers and Gurevych, arXiv 1908.10084) trains its encoders, the
packaged all-MiniLM-L6-v2 among them, with mean pooling: the sentence vector is the
attention-masked mean of the last hidden states. The ``[CLS]`` pooler that
``BertForSequenceClassification`` classifies was never trained for that model, so
its class signal is faint (docs/privacy.md: a linear probe on frozen features gets
68% on the pooler against 74% on the mean), which a new head under DP noise cannot
pick up. :class:`MeanPooledClassifier` puts a linear head named ``classifier`` on
that mean, for any architecture whose bare model (``AutoModel``) returns
``last_hidden_state``: BERT, RoBERTa, DistilBERT... and GPT-2-style decoders, where
the mean runs over causal states (each token sees its left context). The encoder
keeps its own attribute name (``bert``, ``transformer``...), so LoRA tensors are
named as in the architecture's own classifier. Encoder-decoder models are refused.

This file is self-contained on purpose (torch, transformers, peft, safetensors and
the standard library only): fedrank copies it unchanged into every mean-pooled export
as ``modeling_fedrank.py`` and names :class:`FedrankMeanPooledLoader` in the folder's
``config.json`` ``auto_map``, so that
``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
builds the model with the very code fedrank trained and evaluated. The adapter files
of such a folder have non-standard names (:data:`ADAPTER_CONFIG_FILE`,
:data:`ADAPTER_WEIGHTS_FILE`): standard names would let
``PeftModel.from_pretrained(base, folder)`` put the adapter, without complaint, on the
base's own head, which reads another vector, and predict wrongly.
"""

from __future__ import annotations

import json
import os
from typing import Any, cast

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from transformers import AutoModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils.hub import cached_file

MODELING_FILE = "modeling_fedrank.py"
"""Name of this file inside a mean-pooled export."""
EXPORT_CONFIG_KEY = "fedrank_export"
"""Key of the export's facts in its ``config.json``: ``base``, ``revision``, ``num_labels``."""
ADAPTER_CONFIG_FILE = "pooled_adapter_config.json"
ADAPTER_WEIGHTS_FILE = "pooled_adapter_model.safetensors"
HEAD = "classifier"
"""Attribute name of the head of :class:`MeanPooledClassifier`."""


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(n, t, h)`` over the positions where ``mask`` ``(n, t)`` is 1.

    A row with no unmasked position gives zeros (its sum is 0 and its count is
    clamped to 1), never NaN.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


def poolable(config: Any) -> str | None:
    """Why mean pooling cannot be built on a model of ``config``; None when it can."""
    if getattr(config, "is_encoder_decoder", False):
        return (
            f"model type {config.model_type!r} is encoder-decoder; mean pooling needs an "
            "encoder-only or decoder-only model"
        )
    if not isinstance(getattr(config, "hidden_size", None), int):
        return f"model type {config.model_type!r} has no hidden_size to size the head"
    return None


def head_dropout(config: Any) -> float:
    """Dropout before the head: ``classifier_dropout``, else ``hidden_dropout_prob``, else 0.

    BERT-style configs name one of the first two (MiniLM: 0.1, as its own head would
    use); GPT-2's own classification head has no dropout, nor has this one there.
    """
    for name in ("classifier_dropout", "hidden_dropout_prob"):
        value = getattr(config, name, None)
        if isinstance(value, int | float):
            return float(value)
    return 0.0


class MeanPooledClassifier(nn.Module):
    """A bare transformer + a linear head on the masked mean of its last hidden states.

    Mean pooling as in Sentence-BERT (arXiv 1908.10084, section 3).

    Parameters
    ----------
    encoder : transformers.PreTrainedModel
        The bare model (``AutoModel``); it becomes a submodule under its own
        ``base_model_prefix`` (``bert``, ``transformer``...). The caller hands it over.
    num_labels : int
        Classes of the head.
    """

    def __init__(self, encoder: Any, num_labels: int) -> None:
        super().__init__()
        reason = poolable(encoder.config)
        if reason is not None:
            raise ValueError(reason)
        if num_labels < 2:
            raise ValueError(f"num_labels must be at least 2, got {num_labels}")
        self.encoder_name: str = encoder.base_model_prefix or "encoder"
        self.add_module(self.encoder_name, encoder)
        # PEFT reads the model type (default target modules) from ``config``, and
        # the base an adapter was made for from ``name_or_path``.
        self.config = encoder.config
        self.name_or_path: str = getattr(encoder, "name_or_path", "")
        self.num_labels = num_labels
        self.dropout = nn.Dropout(head_dropout(encoder.config))
        self.add_module(HEAD, nn.Linear(encoder.config.hidden_size, num_labels))

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits ``(n, num_labels)``; cross-entropy ``loss`` when ``labels`` are given.

        Other keyword arguments PEFT or a tokenizer pass (``token_type_ids``,
        ``inputs_embeds``, ``output_attentions``...) go to the encoder when set.
        """
        passed = {k: v for k, v in kwargs.items() if v is not None and k != "return_dict"}
        encoder = getattr(self, self.encoder_name)
        out = encoder(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **passed
        )
        hidden = out.last_hidden_state
        mask = attention_mask if attention_mask is not None else hidden.new_ones(hidden.shape[:2])
        logits = getattr(self, HEAD)(self.dropout(masked_mean(hidden, mask)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )


def load_pooled_adapter(
    classifier: MeanPooledClassifier, folder: str | os.PathLike[str], **hub_kwargs: Any
) -> PeftModel:
    """``classifier`` wrapped with the adapter of a mean-pooled export, in eval mode.

    Parameters
    ----------
    classifier : MeanPooledClassifier
        On the export's base; taken over (PEFT wraps it in place).
    folder : str or path
        The export (a local folder, or a Hub repository it was uploaded to).
    **hub_kwargs
        ``cache_dir``, ``local_files_only``, ``token``, ``revision`` for a Hub copy.

    Raises
    ------
    ValueError
        When the adapter's tensors do not fit ``classifier`` (another base or head).
    """
    config_file = _export_file(folder, ADAPTER_CONFIG_FILE, hub_kwargs)
    weights_file = _export_file(folder, ADAPTER_WEIGHTS_FILE, hub_kwargs)
    with open(config_file, encoding="utf-8") as handle:
        config = PeftConfig.from_peft_type(**json.load(handle))  # type: ignore[no-untyped-call]  # peft leaves it untyped
    config.inference_mode = True
    # The caller chose the base; PEFT would otherwise warn that it differs by name.
    config.base_model_name_or_path = classifier.name_or_path
    # PEFT draws the initial A from the global RNG; keep the caller's stream untouched.
    with torch.random.fork_rng(devices=[]):
        model: Any = get_peft_model(classifier, config)
    result: Any = set_peft_model_state_dict(model, load_file(weights_file))
    missing = [k for k in result.missing_keys if ".lora_" in k or ".modules_to_save." in k]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{folder}: the adapter does not fit this base: missing {missing[:3]}, "
            f"unexpected {list(result.unexpected_keys)[:3]}"
        )
    return cast(PeftModel, model.eval())


def _export_file(folder: str | os.PathLike[str], name: str, hub_kwargs: dict[str, Any]) -> str:
    """Path of file ``name`` of an export (downloaded first when ``folder`` is a Hub id)."""
    path = cached_file(str(folder), name, **hub_kwargs)
    if path is None:
        raise ValueError(f"{folder}: no {name}; not a mean-pooled fedrank export")
    return path


class FedrankMeanPooledLoader:
    """What ``auto_map`` names: builds a mean-pooled export as a ready PEFT model.

    ``AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)``
    calls :meth:`from_pretrained` with the folder's config; it loads the base named
    there (``fedrank_export.base``: a Hub id, resolved as transformers resolves any, or
    a path), puts :class:`MeanPooledClassifier` on it and the folder's adapter on that.
    """

    @classmethod
    def register_for_auto_class(cls, auto_class: Any = "AutoModel") -> None:
        """Nothing to register: this loader is found through ``auto_map`` alone."""

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str, *model_args: Any, config: Any = None, **kwargs: Any
    ) -> PeftModel:
        """The export at ``pretrained_model_name_or_path`` as a ``PeftModel`` in eval mode.

        ``dtype`` (default float32, the dtype fedrank evaluates in), ``cache_dir``,
        ``local_files_only`` and ``token`` are honoured; other arguments are ignored.
        """
        facts = getattr(config, EXPORT_CONFIG_KEY, None)
        if not isinstance(facts, dict):
            raise ValueError(
                f"{pretrained_model_name_or_path}: config.json has no {EXPORT_CONFIG_KEY!r}"
            )
        hub: dict[str, Any] = {
            k: kwargs[k] for k in ("cache_dir", "local_files_only", "token") if k in kwargs
        }
        with torch.random.fork_rng(devices=[]):
            encoder = AutoModel.from_pretrained(
                facts["base"],
                revision=facts.get("revision"),
                dtype=kwargs.get("dtype") or torch.float32,
                **hub,
            )
        classifier = MeanPooledClassifier(encoder, int(facts["num_labels"]))
        revision = kwargs.get("revision")
        if revision is not None:
            hub["revision"] = revision
        return load_pooled_adapter(classifier, pretrained_model_name_or_path, **hub)
