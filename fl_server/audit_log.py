"""The server's audit log: an append-only, hash-chained JSONL file (``OUT/audit.jsonl``).

One entry per run event (started with its config, resumed, stopped, completed, failed) and per
round (the sites that trained, declined, failed or were rejected, with reasons; each site's
epsilon and update norm; the aggregated metrics; the SHA-256 of the resulting model). Each line
is the canonical JSON of one entry (sorted keys, no spaces, UTF-8) holding ``seq`` (its line
number), ``prev`` (the previous entry's hash; 64 zeros for the first) and ``hash``, the SHA-256
of the entry's canonical JSON without ``hash``. A head file next to it (``audit.jsonl.head``)
holds the entry count and the last hash, replaced atomically after every append.

``verify_log`` detects an edited byte, a deleted, inserted or reordered entry, and deleted
trailing entries (against the head). It cannot detect a log rewritten from some entry on with
freshly computed hashes and a matching head: the chain is not keyed. Copy the head's hash
somewhere the server cannot write (a ticket, a signed message) to anchor it.
"""

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fl_protocol.durable_files import append_line, json_safe, write_bytes_atomic

GENESIS = "0" * 64


class AuditLogError(RuntimeError):
    """The log cannot be extended safely; the message names the file."""


@dataclass(frozen=True)
class Verification:
    entries: int
    broken_line: int | None = None
    problem: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_line is None


def head_path(log_path: Path) -> Path:
    return Path(log_path).with_name(Path(log_path).name + ".head")


def append_entry(log_path: Path, event: str, fields: dict) -> dict:
    """Append one entry, chained to the last one, durably; return it."""
    log_path = Path(log_path)
    seq, previous = _last_entry(log_path)
    entry = {"seq": seq + 1, "time": datetime.now(UTC).isoformat(timespec="seconds"),
             "event": event, **json_safe(fields), "prev": previous}
    entry["hash"] = entry_hash(entry)
    append_line(log_path, canonical_json(entry))
    head = {"entries": entry["seq"], "hash": entry["hash"]}
    write_bytes_atomic(head_path(log_path), (canonical_json(head) + "\n").encode("utf-8"))
    return entry


def verify_log(log_path: Path) -> Verification:
    """Check the whole chain and the head; ``OSError`` when the log cannot be read at all."""
    lines = Path(log_path).read_bytes().split(b"\n")
    if lines[-1]:
        return Verification(len(lines) - 1, len(lines), "last line is incomplete (torn or edited)")
    lines.pop()
    previous = GENESIS
    for number, raw in enumerate(lines, start=1):
        problem = _entry_problem(raw, number, previous)
        if problem:
            return Verification(number - 1, number, problem)
        previous = json.loads(raw)["hash"]
    return _check_head(log_path, lines)


def check_extendable(log_path: Path) -> None:
    """Raise ``AuditLogError`` unless the log is absent or verifies: never extend a broken chain."""
    if not Path(log_path).exists():
        return
    result = verify_log(log_path)
    if not result.ok:
        raise AuditLogError(f"audit log {log_path} is broken at line {result.broken_line}: "
                            f"{result.problem}; refusing to extend it (move it aside, with its "
                            "head file, to start a new one)")


def vouched_models(log_path: Path, run_name: str) -> dict[int, tuple[str, str | None]]:
    """Round -> the SHA-256 of the global model and of the strategy state the log records for
    it (``None`` if it records none), as the run stands now.

    The log must exist, verify, and start with the ``run-started`` entry of ``run_name``. A
    round's last ``round`` entry counts; a ``run-resumed`` entry drops the rounds after its
    ``after_round``, since they were trained again. A resumed run loads only a checkpoint whose
    round and model digest are in this map: a checkpoint file alone is not evidence, since its
    own digest can be recomputed by whoever edits it. ``AuditLogError`` otherwise.
    """
    try:
        result = verify_log(log_path)
        entries = [json.loads(line) for line in Path(log_path).read_bytes().splitlines()]
    except OSError as err:
        raise AuditLogError(f"audit log {log_path} is missing or unreadable ({err.strerror}); "
                            "a run can be resumed only from checkpoints its audit log records"
                            ) from err
    if not result.ok:
        raise AuditLogError(f"audit log {log_path} is broken at line {result.broken_line}: "
                            f"{result.problem}")
    first = entries[0] if entries else {}
    if first.get("event") != "run-started" or first.get("run_name") != run_name:
        raise AuditLogError(f"audit log {log_path} does not start with the run-started entry "
                            f"of run {run_name!r}")
    rounds: dict[int, tuple[str, str | None]] = {}
    for entry in entries:
        if entry.get("event") == "round" and isinstance(entry.get("round"), int):
            state = entry.get("state_sha256")
            rounds[entry["round"]] = (str(entry.get("model_sha256")),
                                      None if state is None else str(state))
        elif entry.get("event") == "run-resumed" and isinstance(entry.get("after_round"), int):
            rounds = {number: digest for number, digest in rounds.items()
                      if number <= entry["after_round"]}
    return rounds


def entry_hash(entry: dict) -> str:
    body = {key: value for key, value in entry.items() if key != "hash"}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _last_entry(log_path: Path) -> tuple[int, str]:
    """(seq, hash) of the last entry; (0, GENESIS) for a new log."""
    if not log_path.exists():
        return 0, GENESIS
    lines = log_path.read_bytes().split(b"\n")
    if lines[-1] or len(lines) < 2:
        raise AuditLogError(f"audit log {log_path} does not end with a complete entry; "
                            "refusing to extend it (check it with `fedintent audit verify`)")
    try:
        last = json.loads(lines[-2])
        return int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, TypeError) as err:
        raise AuditLogError(f"audit log {log_path}: last entry is unreadable ({err}); "
                            "refusing to extend it") from err


def _entry_problem(raw: bytes, number: int, previous: str) -> str:
    try:
        text = raw.decode("utf-8")
        entry = json.loads(text)
    except ValueError:
        return "not a valid JSON entry (edited or torn)"
    if not isinstance(entry, dict):
        return "not a JSON object"
    if canonical_json(entry) != text:
        return "not in canonical form (edited)"
    if entry.get("seq") != number:
        return (f"sequence number {entry.get('seq')!r} on line {number} "
                "(entries deleted, inserted or reordered)")
    if entry.get("prev") != previous:
        return "does not chain to the entry before it (entries deleted, inserted or reordered)"
    if entry.get("hash") != entry_hash(entry):
        return "hash does not match the entry's content (edited)"
    return ""


def _check_head(log_path: Path, lines: list[bytes]) -> Verification:
    """Deleted trailing entries leave an intact chain: the head still names the last one.

    One entry more than the head records is accepted: the writer stopped between appending an
    entry and updating the head.
    """
    count = len(lines)
    path = head_path(log_path)
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        recorded, last_hash = int(head["entries"]), str(head["hash"])
    except FileNotFoundError:
        return Verification(count, count + 1, f"head file {path} is missing, so deleted "
                            "trailing entries could not be detected")
    except (OSError, ValueError, KeyError, TypeError) as err:
        return Verification(count, count + 1, f"head file {path} is unreadable ({err})")
    if recorded > count:
        return Verification(count, count + 1, f"the log ends after {count} entries but its head "
                            f"records {recorded}: trailing entries were deleted")
    if recorded not in (count, count - 1) or recorded < 1:
        return Verification(count, count, f"{count} entries but the head records {recorded}")
    if json.loads(lines[recorded - 1])["hash"] != last_hash:
        return Verification(count, recorded, "entry does not match the hash in the head file")
    return Verification(count)
