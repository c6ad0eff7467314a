"""``ngram``: a linear classifier over hashed word and character n-grams, trained from scratch.

It reads any language, Chinese included (the packaged MiniLM encoder maps most Chinese
characters to ``[UNK]``). Text is split into tokens: each CJK character is a token of its own
(Chinese and Japanese are not space-separated; one character is roughly one morpheme), any other
run of letters and digits is a word. No vocabulary is learned: each n-gram is hashed (CRC-32,
the same on every machine) into one of ``dim`` buckets with a hashed sign, counts are
log-scaled and each text's vector L2-normalised (then scaled to ``FEATURE_SCALE``, as every
family's features are). The featurizer is therefore a fixed function
of the text alone and carries nothing about any site's data; only the linear layer is trained
and exchanged (``dim`` x labels weights: 8192 x 77 floats, 2.5 MB, on BANKING77).

Features: token unigrams (a Chinese character, an English word) and character trigrams inside
each word (English morphology and typos; for a CJK token the same as its unigram). Choices made
for DP-SGD (docs/MODELS.md has the measurements): no IDF weighting, since IDF is a statistic of
the training text that a site would have to release; few, widely shared features (token bigrams
and a whole Chinese sentence as one "word" both cost accuracy), because under per-site noise what
counts is how much utterances of one intent share; and no bias, whose noise would add to every
logit.
"""

import math
import re
import unicodedata
import zlib
from pathlib import Path

import torch
from torch import nn

from models.feature_scale import FEATURE_SCALE

_CJK = r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W{_CJK}]+")

SETTINGS: dict = {
    "dim": 8192,
    "token_ngrams": [1, 1],
    "char_ngrams": [3, 3],
    "lowercase": True,
    "normalization": "NFKC",
}
"""The featurizer's settings; exported with the model so inference computes the same features.
``token_ngrams``/``char_ngrams``: inclusive [min, max] n; [0, 0] turns a kind off."""


def tokens(text: str, settings: dict) -> list[str]:
    """CJK characters one by one, other letter-and-digit runs as words."""
    text = unicodedata.normalize(settings["normalization"], text)
    if settings["lowercase"]:
        text = text.lower()
    return _TOKEN.findall(text)


def _ngrams(text: str, settings: dict) -> list[str]:
    words = tokens(text, settings)
    grams = []
    low, high = settings["token_ngrams"]
    for n in range(max(low, 1), high + 1):
        grams += ["w" + " ".join(words[i : i + n]) for i in range(len(words) - n + 1)]
    low, high = settings["char_ngrams"]
    for word in words:
        padded = f"<{word}>"
        for n in range(max(low, 1), high + 1):
            grams += ["c" + padded[i : i + n] for i in range(len(padded) - n + 1)]
    return grams


def featurize_with(texts: list[str], settings: dict) -> torch.Tensor:
    """[n, dim] signed, log-scaled, L2-normalised hashed n-gram counts."""
    dim = int(settings["dim"])
    out = torch.zeros(len(texts), dim)
    for row, text in enumerate(texts):
        counts: dict[int, float] = {}
        for gram in _ngrams(text, settings):
            code = zlib.crc32(gram.encode("utf-8"))
            sign = 1.0 if code & 0x80000000 else -1.0
            bucket = (code & 0x7FFFFFFF) % dim
            counts[bucket] = counts.get(bucket, 0.0) + sign
        for bucket, count in counts.items():
            out[row, bucket] = math.copysign(math.log1p(abs(count)), count)
    return nn.functional.normalize(out, dim=-1)


def featurize(texts: list[str], cache_dir: Path | None) -> torch.Tensor:
    """Features of ``texts``, FEATURE_SCALE long; cheap enough to recompute, so nothing is
    cached."""
    return FEATURE_SCALE * featurize_with(texts, SETTINGS)


def build_model(num_labels: int) -> nn.Module:
    """The trainable and exchanged part: one linear layer (no bias) over the hashed features."""
    return nn.Linear(int(SETTINGS["dim"]), num_labels, bias=False)


def initial_model(labels: list[str]) -> nn.Module:
    """All zeros: every intent equally likely. Label names say little in n-gram space (and
    nothing when the site text is in another language than the taxonomy)."""
    model = build_model(len(labels))
    with torch.no_grad():
        model.weight.zero_()
    return model
