"""``minilm-finetune``: MiniLM's top k encoder layers and a head, trained under DP.

The bottom layers stay frozen, so a site runs them once per utterance and caches their output
token states on its own disk (``encoder.token_states``); each round it trains only the top k
layers and the head on those states. The frozen embeddings never need per-example gradients,
which also sidesteps the ``position_ids`` trouble that trainable BERT position embeddings have
under Opacus: their per-example gradients fail on transformers' BERT unless the model is given
explicit, contiguous ``position_ids`` (docs/MODELS.md). Per-example gradients of the trained
layers go through Opacus' ghost clipping (``grad_sample_mode="ghost"``): the Linear layers'
norms are computed without materialising per-example gradients.

Exchanged each round: k BERT layers (1.78 M floats, 7.1 MB each for MiniLM) plus the head.
"""

import copy
from pathlib import Path

import torch
from torch import nn

from models.encoder import (
    ENCODE_ROWS,
    encoder_fingerprint,
    load_encoder,
    mean_pool,
    token_states,
)
from models.encoder_head import label_prior, prior_head
from models.feature_scale import FEATURE_SCALE
from models.feature_store import cached

TRAINED_LAYERS = 1
"""Top encoder layers trained and exchanged (of MiniLM's 6). Each layer adds 7.1 MB of upload
and about 10 s of DP-SGD per thousand utterances per round on 2 CPU cores."""
PHYSICAL_BATCH_SIZE = 8
"""Rows per forward pass on a DP path, all of one token count and the last pass of a count
filled with copies (``models.fixed_shape``): no utterance is padded. Over BANKING77's lengths
(16 tokens on average, 98 at most) a site's full batch of 850 rows computes 1.3 times the rows
it holds, a batch of 256 1.75 times."""
LAYER_LEARNING_RATE_SCALE = 0.01
"""The encoder layers' step size as a share of the head's. DP noise of the same standard
deviation lands on every parameter; a step that suits the head (logit scale 10) would bury the
pretrained layer weights (about 0.05 each) in noise."""


class TopLayersClassifier(nn.Module):
    """The top ``len(layers)`` encoder layers, mean pooling (scaled to FEATURE_SCALE) and a
    linear head.

    Input: token states after the frozen layers with the attention mask as the last channel,
    [batch, tokens, hidden + 1] (what ``featurize`` returns).
    """

    def __init__(self, layers: list[nn.Module], head: nn.Linear) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.head = head

    def param_groups(self, learning_rate: float) -> list[dict]:
        """SGD parameter groups: the layers at LAYER_LEARNING_RATE_SCALE of the head's rate.
        (The optimizer steps after Opacus has clipped and noised the gradient: post-processing,
        no effect on the guarantee.)"""
        return [{"params": list(self.layers.parameters()),
                 "lr": learning_rate * LAYER_LEARNING_RATE_SCALE},
                {"params": list(self.head.parameters()), "lr": learning_rate}]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if len(features):  # drop the padding every text in this batch has
            features = features[:, : max(int(features[..., -1].sum(1).max()), 1)]
        hidden, mask = features[..., :-1], features[..., -1]
        additive = (1.0 - mask[:, None, None, :]) * torch.finfo(hidden.dtype).min
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=additive)
        return self.head(FEATURE_SCALE * mean_pool(hidden, mask))


def featurize(texts: list[str], cache_dir: Path | None, folder: Path,
              trained_layers: int = TRAINED_LAYERS) -> torch.Tensor:
    """Token states after the frozen layers (plus the mask channel), cached at the site."""
    first_trained = _num_layers(folder) - trained_layers
    kind = (f"states:{first_trained}:{folder.name}:{encoder_fingerprint(folder)}"
            f":rows{ENCODE_ROWS}")
    return cached(kind, texts, cache_dir, lambda batch: token_states(batch, folder, first_trained))


def build_model(num_labels: int, folder: Path,
                trained_layers: int = TRAINED_LAYERS) -> TopLayersClassifier:
    """The trainable and exchanged part, with the encoder's pretrained top layers."""
    encoder = load_encoder(folder)[1]
    config = copy.deepcopy(encoder.config)
    config._attn_implementation = "eager"  # plain matmuls: the layers Opacus hooks understand
    top = [copy.deepcopy(layer) for layer in encoder.encoder.layer[-trained_layers:]]
    for layer in top:
        for module in layer.modules():
            if hasattr(module, "config"):
                module.config = config
        layer.requires_grad_(True)
    return TopLayersClassifier(top, nn.Linear(config.hidden_size, num_labels))


def initial_model(labels: list[str], folder: Path,
                  trained_layers: int = TRAINED_LAYERS) -> TopLayersClassifier:
    """The pretrained top layers and the label-name prior head (see ``encoder_head``)."""
    model = build_model(len(labels), folder, trained_layers)
    prior_head(model.head, label_prior(labels, folder))
    return model


def _num_layers(folder: Path) -> int:
    return int(load_encoder(folder)[1].config.num_hidden_layers)
