"""A fedintent intent classifier as a Hugging Face transformers model.

The classifier is a BERT encoder, the mean of its last layer's token states over the attention
mask, L2-normalised (the all-MiniLM-L6-v2 sentence-embedding recipe), times the config's
``feature_scale`` (the length the head was trained to read; 1 when absent), then one linear
layer.
No standard transformers architecture pools that way over a BERT encoder (BERT's own
classification head uses the [CLS] pooler), so this is custom model code.

This file imports only torch and transformers: it is copied verbatim into every exported model
folder as ``modeling_fedintent.py`` and named in that folder's ``config.json`` ``auto_map``,
so ``pipeline("text-classification", model=FOLDER, trust_remote_code=True)`` loads the model
in any environment with transformers installed, without fedintent.
"""

import torch
from torch import nn
from transformers import BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class FedintentBertConfig(BertConfig):
    """A BERT configuration under its own model type, so the Auto classes pick the class below."""

    model_type = "fedintent-bert"


class FedintentBertForSequenceClassification(BertPreTrainedModel):
    """BERT encoder, masked mean pooling, L2 normalisation and scale, linear classifier."""

    config_class = FedintentBertConfig

    def __init__(self, config: FedintentBertConfig) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = BertModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        hidden = self.bert(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            return_dict=True,
            **kwargs,
        ).last_hidden_state
        if attention_mask is None:
            attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        scale = getattr(self.config, "feature_scale", 1.0)
        logits = self.classifier(scale * nn.functional.normalize(pooled, dim=-1))
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.num_labels), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits)
