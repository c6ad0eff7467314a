"""The site's feature store: each utterance's features, computed once and kept per row, so that
a new day of data encodes only its new rows and an expired or forgotten row can be removed.

Layout: ``STORE/<kind id>/chunk-<id>.npz``, each chunk holding ``keys`` (the SHA-256 of each
row's redacted text, [n, 32] bytes) and ``features`` ([n, ...], as ``compute`` returned them for
those rows). ``kind`` names the featurizer and its settings (encoder id, layer), so a store of
one kind never serves another. A request is served from the chunks; only the texts not in them
are computed, and written as one new chunk. Sequence features from different chunks are
zero-padded to the longest, as ``compute`` pads within a batch.

Retention and erasure reach the features through ``prune``, which keeps only the rows whose
text the site still holds (``fl_client/retention.py``). Features never leave the site.
"""

import hashlib
import io
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fl_protocol.durable_files import write_bytes_atomic

MAX_CHUNKS = 64
"""More chunks than this in one kind are merged into one when the next chunk is written, so a
store fed a little every day stays quick to read."""


@dataclass(frozen=True)
class Pruned:
    """What ``prune`` removed: feature rows, and files (chunks emptied, or files the store does
    not know, such as an older version's whole-split caches or a torn write's leftovers)."""

    rows: int = 0
    files: int = 0


def cached(kind: str, texts: list[str], store: Path | None,
           compute: Callable[[list[str]], torch.Tensor]) -> torch.Tensor:
    """``compute(texts)``, with every row the store already holds for ``kind`` read from it."""
    if store is None or not texts:
        return compute(texts)
    folder = Path(store) / hashlib.sha256(kind.encode()).hexdigest()[:24]
    keys = [text_key(text) for text in texts]
    rows = _read_rows(folder)
    missing = {key: text for key, text in zip(keys, texts, strict=True) if key not in rows}
    if missing:
        features = compute(list(missing.values())).numpy()
        chunks = _chunks(folder)
        if len(chunks) >= MAX_CHUNKS:
            merged = list(rows)
            _write_chunk(folder, merged + list(missing),
                         _stack([rows[key] for key in merged] + list(features)))
            for chunk in chunks:
                chunk.unlink(missing_ok=True)
        else:
            _write_chunk(folder, list(missing), features)
        rows.update(zip(missing, features, strict=True))
    return torch.from_numpy(_stack([rows[key] for key in keys]))


def prune(store: Path, live_texts: Iterable[str]) -> Pruned:
    """Remove from every kind's chunks the rows whose text is not in ``live_texts``, and every
    file in the store that is not a readable chunk."""
    store = Path(store)
    if not store.is_dir():
        return Pruned()
    live = {text_key(text) for text in live_texts}
    rows = files = 0
    for path in sorted(store.rglob("*")):
        if path.is_dir():
            continue
        chunk = _read_chunk(path) if path.parent.parent == store else None
        if chunk is None:
            path.unlink()
            files += 1
            continue
        keys, features = chunk
        keep = [i for i, key in enumerate(keys) if key in live]
        if len(keep) == len(keys):
            continue
        rows += len(keys) - len(keep)
        if keep:
            _write_chunk(path.parent, [keys[i] for i in keep], features[keep])
        path.unlink()
        files += not keep
    return Pruned(rows=rows, files=files)


def text_key(text: str) -> bytes:
    """A row's key in the store: the SHA-256 of its (redacted) text."""
    return hashlib.sha256(text.encode("utf-8")).digest()


def _chunks(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk-*.npz")) if folder.is_dir() else []


def _read_rows(folder: Path) -> dict[bytes, np.ndarray]:
    rows: dict[bytes, np.ndarray] = {}
    for path in _chunks(folder):
        chunk = _read_chunk(path)
        if chunk is None:
            path.unlink(missing_ok=True)  # a damaged chunk: its rows are computed again
            continue
        keys, features = chunk
        rows.update(zip(keys, features, strict=True))
    return rows


def _read_chunk(path: Path) -> tuple[list[bytes], np.ndarray] | None:
    """(keys, features) of a chunk file, or None for anything else or a damaged one."""
    if not (path.name.startswith("chunk-") and path.suffix == ".npz"):
        return None
    try:
        with np.load(path, allow_pickle=False) as chunk:
            keys, features = chunk["keys"], chunk["features"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error):
        return None
    if keys.ndim != 2 or keys.shape[1] != 32 or len(keys) != len(features):
        return None
    if features.dtype.kind in "fc" and not np.isfinite(features).all():
        return None  # no encoder writes NaN or infinity: the file was damaged
    return [bytes(key) for key in keys], features


def _write_chunk(folder: Path, keys: list[bytes], features: np.ndarray) -> None:
    for level in reversed([p for p in (folder, *folder.parents) if not p.exists()]):
        level.mkdir(mode=0o700, exist_ok=True)  # each level: mkdir's mode is the last one's
    key_array = np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32)
    buffer = io.BytesIO()
    np.savez(buffer, keys=key_array, features=features)
    name = f"chunk-{hashlib.sha256(key_array.tobytes()).hexdigest()[:24]}.npz"
    write_bytes_atomic(folder / name, buffer.getvalue(), mode=0o600)  # derived from customer text


def _stack(rows: list[np.ndarray]) -> np.ndarray:
    """Rows as one array; sequence rows zero-padded to the longest."""
    if not rows:
        return np.zeros((0,), dtype=np.float32)
    if rows[0].ndim < 1 or all(row.shape == rows[0].shape for row in rows):
        return np.stack(rows)
    length = max(row.shape[0] for row in rows)
    out = np.zeros((len(rows), length, *rows[0].shape[1:]), dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[0]] = row
    return out
