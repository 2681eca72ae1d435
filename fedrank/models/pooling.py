"""A BERT classifier whose head reads the mean of the token states, not the pooler.

Sentence-BERT (Reimers and Gurevych, arXiv 1908.10084) trains its encoders, the
packaged all-MiniLM-L6-v2 among them, with mean pooling: the sentence vector is the
attention-masked mean of the last hidden states. The ``[CLS]`` pooler that
``BertForSequenceClassification`` classifies was never trained for that model, so
its class signal is faint (docs/privacy.md: a linear probe on frozen features gets
68% on the pooler against 74% on the mean), which a new head under DP noise cannot
pick up. :class:`MeanPoolBertForSequenceClassification` keeps every name of
``BertForSequenceClassification`` (``bert.*``, ``classifier``), so PEFT's
``modules_to_save=["classifier"]``, the stable tensor names and the exported
folder work unchanged; the pooling has no parameters, so Opacus needs nothing more.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 (the usual alias)
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from fedrank.errors import ConfigError


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``(n, t, h)`` over the positions where ``mask`` ``(n, t)`` is 1.

    A row with no unmasked position gives zeros (its sum is 0 and its count is
    clamped to 1), never NaN.
    """
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    total = (hidden * weights).sum(dim=1)
    count = weights.sum(dim=1).clamp(min=1.0)
    return total / count


class MeanPoolBertForSequenceClassification(BertPreTrainedModel):  # type: ignore[no-untyped-call]  # transformers' __init_subclass__ is untyped
    """BERT + a linear head on the masked mean of the last hidden states.

    Mean pooling as in Sentence-BERT (arXiv 1908.10084, section 3); the encoder loads
    from any BERT checkpoint (``from_pretrained``), its unused pooler weights are
    skipped. Same attribute names as ``BertForSequenceClassification``.
    """

    def __init__(self, config: BertConfig) -> None:
        super().__init__(config)
        labels: int | None = config.num_labels
        if labels is None:
            raise ConfigError("num_labels", "a classifier needs a number of classes, got None")
        self.num_labels = labels
        self.config = config
        self.bert = BertModel(config, add_pooling_layer=False)
        dropout = config.classifier_dropout
        self.dropout = nn.Dropout(config.hidden_dropout_prob if dropout is None else dropout)
        self.classifier = nn.Linear(config.hidden_size, self.num_labels)
        self.post_init()  # type: ignore[no-untyped-call]  # transformers leaves it untyped

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutput:
        """Logits ``(n, num_labels)``; cross-entropy ``loss`` when ``labels`` are given.

        Other keyword arguments PEFT passes (``inputs_embeds``, ``return_dict``,
        ``output_attentions``...) go to the encoder when set.
        """
        passed = {k: v for k, v in kwargs.items() if v is not None and k != "return_dict"}
        out = self.bert(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            return_dict=True,
            **passed,
        )
        hidden = out.last_hidden_state
        mask = attention_mask if attention_mask is not None else hidden.new_ones(hidden.shape[:2])
        logits = self.classifier(self.dropout(masked_mean(hidden, mask)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
