"""The model registry.

A model family splits the classifier into two parts:

* ``featurize``: a fixed function of the text, computed once at the site and cached on its disk.
  It is never fitted on site text, so it carries no information about any site's data.
* ``build_model``: the trainable module on top of the features. Its full ``state_dict`` is what
  is trained under DP-SGD and exchanged with the server; nothing else leaves a site.
* ``initial_model``: the module the server starts a run from, built from public information
  only (the label names), never from site data.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from models import minilm_head


@dataclass(frozen=True)
class ModelFamily:
    name: str
    description: str
    featurize: Callable[[list[str], Path | None], torch.Tensor]
    build_model: Callable[[int], nn.Module]
    initial_model: Callable[[list[str]], nn.Module]


_FAMILIES = {
    "minilm-head": ModelFamily(
        name="minilm-head",
        description="frozen packaged all-MiniLM-L6-v2 sentence embeddings + trainable linear head",
        featurize=minilm_head.featurize,
        build_model=minilm_head.build_head,
        initial_model=minilm_head.initial_head,
    ),
}


def model_family_names() -> list[str]:
    return sorted(_FAMILIES)


def get_model_family(name: str) -> ModelFamily:
    """Look a family up by name; the error lists the known ones."""
    try:
        return _FAMILIES[name]
    except KeyError:
        known = ", ".join(model_family_names())
        raise ValueError(f"unknown model {name!r}; known models: {known}") from None
