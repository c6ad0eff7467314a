"""Frozen encoder, trainable head: the fast families (``minilm-head``, local checkpoints, and,
through ``prior_head``, ``use-multilingual``).

The encoder is frozen, so a site embeds each utterance once, caches the embeddings on its own
disk, and trains and exchanges only the head: hidden x labels weights plus biases (384 x 77
floats, 116 kB, for MiniLM on BANKING77).
"""

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from models.encoder import ENCODE_ROWS, embed, encoder_fingerprint, hidden_size
from models.feature_scale import FEATURE_SCALE
from models.feature_store import cached

LABEL_PRIOR_SCALE = 10.0
"""The zero-shot prior's logit scale: an intent's initial logit is this times the cosine between
the utterance's embedding and the embedding of the intent's name."""


def featurize(texts: list[str], cache_dir: Path | None, folder: Path) -> torch.Tensor:
    """Sentence embeddings of ``texts`` by the encoder in ``folder`` (cached at the site, unit
    length), times FEATURE_SCALE."""
    kind = f"embed:{folder.name}:{encoder_fingerprint(folder)}:rows{ENCODE_ROWS}"
    return FEATURE_SCALE * cached(kind, texts, cache_dir, lambda batch: embed(batch, folder))


def build_head(num_labels: int, folder: Path) -> nn.Module:
    """The trainable and exchanged part: one linear layer over the sentence embedding."""
    return nn.Linear(hidden_size(folder), num_labels)


def label_phrase(label: str) -> str:
    """An intent label as words: ``card_arrival`` -> ``card arrival``, ``banking.card_lost`` ->
    ``banking card lost``."""
    return " ".join(re.split(r"[\s_.\-/:]+", label)).strip()


def label_prior(labels: list[str], folder: Path) -> torch.Tensor:
    """Intent k's row: the embedding of label k's name, scaled to LABEL_PRIOR_SCALE.

    That is a zero-shot classifier built only from the taxonomy, which is public to the run (the
    server owns it), so it costs no privacy budget. DP-SGD then learns corrections to it instead
    of everything from zero, which matters most at small epsilon: on BANKING77 the prior alone
    scores 62%, and at epsilon 1 it lifts the federated result from about 40% to about 65%
    (docs/BENCHMARKS.md).
    """
    return scaled_label_embeddings(labels, partial(embed, folder=folder))


def initial_head(labels: list[str], folder: Path) -> nn.Module:
    """The head every run starts from: the label-name prior, zero biases."""
    return prior_head(build_head(len(labels), folder), label_prior(labels, folder))


def scaled_label_embeddings(labels: list[str],
                            embed_texts: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """``label_prior`` for any sentence encoder (``embed_texts``: texts -> [n, hidden], rows of
    unit length), so every frozen-encoder family starts from the same kind of prior."""
    return LABEL_PRIOR_SCALE * embed_texts([label_phrase(label) for label in labels])


def prior_head(head: nn.Linear, prior: torch.Tensor) -> nn.Linear:
    """``head`` with the label-name prior as its weights (over features FEATURE_SCALE long, so
    divided by it) and zero biases."""
    with torch.no_grad():
        head.weight.copy_(prior / FEATURE_SCALE)
        head.bias.zero_()
    return head
