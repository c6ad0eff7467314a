"""The server's audit log: an append-only, hash-chained JSONL file (``OUT/audit.jsonl``).

One entry per run event (started with its config, resumed, stopped, completed, failed) and per
round (the sites that trained, declined, failed or were rejected, with reasons; each site's
epsilon and update norm; the aggregated metrics; the SHA-256 of the resulting model). Each line
is the canonical JSON of one entry (sorted keys, no spaces, UTF-8) holding ``seq`` (its line
number), ``prev`` (the previous entry's hash; 64 zeros for the first) and ``hash``, the SHA-256
of the entry's canonical JSON without ``hash``. A head file next to it (``audit.jsonl.head``)
holds the entry count and the last hash, replaced atomically after every append.

The chain itself (canonical entries, hashes, the head file, ``verify_log``) is
``fl_protocol/hash_chain.py``, shared with the sites' deletion logs. The server's log is not
keyed: it detects an edited byte, a deleted, inserted or reordered entry, and deleted trailing
entries, but not a log rewritten from some entry on with freshly computed hashes and a matching
head. Copy the head's hash somewhere the server cannot write (a ticket, a signed message) to
anchor it.
"""

from pathlib import Path

from fl_protocol.hash_chain import ChainError, append_entry, read_entries
from fl_server.run_record import AUDIT_LOG


def append_audit(out_dir: Path, run_id: int, run_name: str, event: str, **fields) -> None:
    """One ``event`` of the run in ``out_dir`` appended to its audit log, named by the Flower
    run that wrote it (``run_id``) and the run it belongs to (``run_name``, kept on resume)."""
    append_entry(out_dir / AUDIT_LOG, event, {"run_id": run_id, "run_name": run_name} | fields)


def started_run(log_path: Path, run_name: str) -> dict:
    """The verified ``run-started`` entry of ``run_name`` (its ``config`` and ``labels``), the
    first of its audit log; ``ChainError`` as ``vouched_models``."""
    return _run_entries(log_path, run_name)[0]


def _run_entries(log_path: Path, run_name: str) -> list[dict]:
    """The verified entries of ``run_name``'s audit log, which starts with its ``run-started``
    entry; ``ChainError`` otherwise."""
    if not Path(log_path).exists():
        raise ChainError(f"audit log {log_path} is missing or unreadable; a run can be resumed "
                         "only from checkpoints its audit log records")
    entries = read_entries(log_path)
    first = entries[0] if entries else {}
    if first.get("event") != "run-started" or first.get("run_name") != run_name:
        raise ChainError(f"audit log {log_path} does not start with the run-started entry "
                         f"of run {run_name!r}")
    return entries


def vouched_models(log_path: Path, run_name: str) -> dict[int, tuple[str, str | None]]:
    """Round -> the SHA-256 of the global model and of the strategy state the log records for
    it (``None`` if it records none), as the run stands now.

    The log must exist, verify, and start with the ``run-started`` entry of ``run_name``. A
    round's last ``round`` entry counts; a ``run-resumed`` entry drops the rounds after its
    ``after_round``, since they were trained again. A resumed run loads only a checkpoint whose
    round and model digest are in this map: a checkpoint file alone is not evidence, since its
    own digest can be recomputed by whoever edits it. ``ChainError`` otherwise.
    """
    rounds: dict[int, tuple[str, str | None]] = {}
    for entry in _run_entries(log_path, run_name):
        if entry.get("event") == "round" and isinstance(entry.get("round"), int):
            state = entry.get("state_sha256")
            rounds[entry["round"]] = (str(entry.get("model_sha256")),
                                      None if state is None else str(state))
        elif entry.get("event") == "run-resumed" and isinstance(entry.get("after_round"), int):
            rounds = {number: digest for number, digest in rounds.items()
                      if number <= entry["after_round"]}
    return rounds
