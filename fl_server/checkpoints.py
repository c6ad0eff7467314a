"""Checkpoints: the server's state after each completed round, so a run can be resumed.

``OUT/checkpoints/round-NNNNN.safetensors`` holds the global model (``model/<name>``), the
strategy's state between rounds (``state/<attribute>/<name>``, e.g. FedAdam's moments) and, as
metadata, the round, strategy and run name, with a SHA-256 over all of it (tensors by
``tensor_digest.py``), so a damaged file is detected rather than loaded. That digest is no
defence against an edit (it can be recomputed), nor is the file name: a resumed run loads only
a checkpoint whose round and model SHA-256 the hash-chained audit log records. Each file is written
atomically and fsync'd. The newest ``KEEP`` checkpoints are kept: when the newest is damaged,
resuming falls back to the one before it and says so (the lost round is trained again).
"""

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save

from fl_protocol.durable_files import write_bytes_atomic
from fl_server.tensor_digest import arrays_sha256

FORMAT = "fedintent-checkpoint/1"
KEEP = 2
MODEL_PREFIX = "model/"
STATE_PREFIX = "state/"
FILE_PATTERN = re.compile(r"round-(\d+)\.safetensors")


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message names the file(s) and what is wrong."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    server_round: int
    strategy: str
    run_name: str
    arrays: dict[str, np.ndarray]
    state: dict[str, dict[str, np.ndarray]]


def save_checkpoint(
    folder: Path,
    server_round: int,
    strategy: str,
    run_name: str,
    arrays: dict[str, np.ndarray],
    state: dict[str, dict[str, np.ndarray]],
) -> Path:
    """Write the checkpoint of ``server_round`` and drop all but the newest ``KEEP``, and the
    temporary files of writes a crash cut short (one run writes here, one checkpoint at a
    time: found in review, each crash left up to hundreds of MB behind for good)."""
    for leftover in Path(folder).glob(".round-*.safetensors.*.tmp"):
        leftover.unlink(missing_ok=True)
    tensors = {MODEL_PREFIX + key: np.ascontiguousarray(a) for key, a in arrays.items()}
    for attribute, values in state.items():
        for key, array in values.items():
            tensors[f"{STATE_PREFIX}{attribute}/{key}"] = np.ascontiguousarray(array)
    fields = {"round": str(server_round), "strategy": strategy, "run-name": run_name}
    metadata = {"format": FORMAT, **fields, "sha256": checkpoint_sha256(tensors, fields)}
    path = Path(folder) / f"round-{server_round:05d}.safetensors"
    write_bytes_atomic(path, save(tensors, metadata=metadata))
    for old in checkpoint_files(folder)[KEEP:]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint in ``path``, verified, or ``CheckpointError`` naming the file."""
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            names = f.keys()
            tensors = {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, TypeError) as err:  # TypeError: bf16
        raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from err
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file")
    fields = {key: metadata.get(key, "") for key in ("round", "strategy", "run-name")}
    if metadata.get("sha256") != checkpoint_sha256(tensors, fields):
        raise CheckpointError(f"checkpoint {path} is corrupt: its content does not match the "
                              "SHA-256 recorded in it")
    if not re.fullmatch(r"[0-9]{1,9}", fields["round"]) or any(
            "/" not in key[len(STATE_PREFIX):] for key in tensors if key.startswith(STATE_PREFIX)):
        raise CheckpointError(f"checkpoint {path} has a round or state names no fedintent "
                              "version writes (forged)")
    named = FILE_PATTERN.fullmatch(Path(path).name)
    if named and int(named.group(1)) != int(fields["round"]):
        raise CheckpointError(f"checkpoint {path} holds round {fields['round']}, not the round "
                              "its name says (renamed)")
    state: dict[str, dict[str, np.ndarray]] = {}
    for key, array in tensors.items():
        if key.startswith(STATE_PREFIX):
            attribute, name = key[len(STATE_PREFIX):].split("/", 1)
            state.setdefault(attribute, {})[name] = array
    return Checkpoint(
        path=Path(path),
        server_round=int(metadata["round"]),
        strategy=metadata["strategy"],
        run_name=metadata["run-name"],
        arrays={k[len(MODEL_PREFIX):]: a for k, a in tensors.items()
                if k.startswith(MODEL_PREFIX)},
        state=state,
    )


def state_sha256(state: dict[str, dict[str, np.ndarray]]) -> str:
    """One SHA-256 over a strategy's state between rounds (``tensor_digest.arrays_sha256`` of
    its tensors named ``attribute/name``); the audit log records it beside the model's."""
    return arrays_sha256({f"{attribute}/{key}": array for attribute, values in state.items()
                          for key, array in values.items()})


def latest_checkpoint(
    folder: Path, vouched: dict[int, tuple[str, str | None]]
) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies and that ``vouched`` (round -> the SHA-256 of its
    model and of its strategy state, from the audit log: ``audit_log.vouched_models``) records,
    and a warning for every newer one that did not.

    ``None`` when the run has no checkpoint at all (it stopped during round 1); raises
    ``CheckpointError`` when there are checkpoints but none is usable.
    """
    problems = []
    for path in checkpoint_files(folder):
        try:
            checkpoint = load_checkpoint(path)
            _check_vouched(checkpoint, vouched)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        warnings = [f"{problem}; falling back to {path.name} (round "
                    f"{checkpoint.server_round}), the rounds after it are trained again"
                    for problem in problems]
        return checkpoint, warnings
    if problems:
        raise CheckpointError("no usable checkpoint: " + "; ".join(problems))
    return None, []


def _check_vouched(checkpoint: Checkpoint, vouched: dict[int, tuple[str, str | None]]) -> None:
    """A checkpoint's own digest only detects damage (whoever edits it can recompute it): its
    model and strategy state (momentum, FedAdam's moments) must be the ones the audit log
    records for its round. A log written before state digests were recorded has none."""
    model, state = vouched.get(checkpoint.server_round, (None, None))
    if model != arrays_sha256(checkpoint.arrays):
        part = "model"
    elif state is not None and state != state_sha256(checkpoint.state):
        part = "strategy state"
    else:
        return
    raise CheckpointError(f"checkpoint {checkpoint.path} is not vouched for by the audit log: "
                          f"its {part} is not the one the log records for round "
                          f"{checkpoint.server_round} (forged, or from another run)")


def checkpoint_files(folder: Path) -> list[Path]:
    """Checkpoint files in ``folder``, newest round first."""
    found = []
    for path in Path(folder).glob("round-*.safetensors"):
        match = FILE_PATTERN.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found, reverse=True)]


def checkpoint_sha256(tensors: dict[str, np.ndarray], fields: dict[str, str]) -> str:
    """The SHA-256 a checkpoint file records over its tensors and metadata ``fields``: it
    detects damage, not a forger, who can recompute it (the audit log vouches instead)."""
    text = arrays_sha256(tensors) + "\n" + json.dumps(fields, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()
