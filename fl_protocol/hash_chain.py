"""Append-only, hash-chained JSONL logs: the server's audit log and the site's deletion log.

Each line is the canonical JSON of one entry (sorted keys, no spaces, UTF-8) holding ``seq`` (its
line number), ``time``, ``event``, ``prev`` (the previous entry's hash; 64 zeros for the first)
and ``hash``, the SHA-256 of the entry's canonical JSON without ``hash`` (and ``mac``). A head
file next to it (``LOG.head``) holds the entry count and the last hash, replaced atomically after
every append.

``verify_log`` detects an edited byte, a deleted, inserted or reordered entry, and deleted
trailing entries (against the head). An unkeyed chain cannot detect a log rewritten from some
entry on with freshly computed hashes and a matching head. A keyed log (``key``: the site's
secret) adds ``mac``, an HMAC-SHA256 of each entry's hash, and one of the head: then rewriting
history takes the key, not just a SHA-256 implementation.
"""

import fcntl
import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from fl_protocol.durable_files import append_line, json_safe, sync_folder, write_bytes_atomic
from fl_protocol.file_owner import permission_denied

GENESIS = "0" * 64


class ChainError(RuntimeError):
    """The log cannot be read or extended safely; the message names the file."""


class NotALogError(ChainError):
    """The file is no hash-chained log at all (another file named by mistake), rather than a
    log that is broken; the message names the file."""


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


def append_entry(log_path: Path, event: str, fields: dict, key: bytes | None = None) -> dict:
    """Append one entry, chained to the last one (and MACed with ``key``), durably; return it.

    The log is never left more than one entry past its head: a head one behind (a crash between
    the two writes) is brought up to date first, once the log verifies, and an entry whose head
    cannot be written (a full disk) is cut off again, durably, before the error is raised (found
    in review: two failed head writes left a log two past its head, which reads as deleted
    entries, so the site stopped using its data for good). An entry the head already names (the
    head replaced, then its folder's flush failed) stays: cutting it would leave a head past the
    log, which reads as deleted entries too: the line is cut only while the head still names
    the entry before it. A new log gets a head naming no entries before its first line, so a
    process killed between the two leaves a log one past its head, not one without a head
    (found in review: that read as broken for good, and no backup could hold the first entry)."""
    log_path = Path(log_path)
    seq, previous = _last_entry(log_path)
    recorded = _read_head(log_path).get("entries")
    _refuse_a_head_past_the_log(log_path, seq, recorded)
    if seq == 0 and not head_path(log_path).exists():
        _write_head(log_path, 0, GENESIS, key)
    _catch_up_head(log_path, seq, recorded, previous, key)
    entry = {"seq": seq + 1, "time": datetime.now(UTC).isoformat(timespec="seconds"),
             "event": event, **json_safe(fields), "prev": previous}
    entry["hash"] = entry_hash(entry)
    if key is not None:
        entry["mac"] = _mac(key, "entry", entry["hash"])
    start = append_line(log_path, canonical_json(entry), mode=0o600 if key is not None else 0o644)
    try:
        _write_head(log_path, entry["seq"], entry["hash"], key)
    except BaseException:
        if _head_names(log_path, seq, previous):
            _cut_back(log_path, start)
        raise
    return entry


def _refuse_a_head_past_the_log(log_path: Path, seq: int, recorded: object) -> None:
    """A head recording (``recorded``) more entries than the log holds (``seq``) means entries,
    or the whole log, were deleted: a new entry and head written over that would hide it (found
    in review: an emptied deletion log became a valid one-entry log on its next append)."""
    if isinstance(recorded, int) and recorded > seq:
        raise ChainError(f"{log_path} holds {seq} entries but its head records {recorded}: "
                         "entries were deleted; refusing to extend it")


def _head_names(log_path: Path, entries: int, last_hash: str) -> bool:
    """Whether the head can be read and names exactly this entry; a head that cannot be read
    says nothing, and a log one past its head is a state every reader accepts."""
    head = _read_head(log_path)
    return head.get("entries") == entries and head.get("hash") == last_hash


def _read_head(log_path: Path) -> dict:
    """The head as written, or empty when it cannot be read: what the writer checks before it
    acts on the head (``verify_log`` is what reports a bad one)."""
    try:
        head = json.loads(head_path(log_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return head if isinstance(head, dict) else {}


def _cut_back(log_path: Path, start: int) -> None:
    """Durably remove what was appended from byte ``start`` on: a cut lost to a power failure
    would bring back an entry its caller was told had failed. Nothing was appended after it:
    each log's appenders are serialised above ``append_line``'s lock (the state lock for the
    deletion log, the one server process for the audit log)."""
    if start:
        with open(log_path, "r+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            f.truncate(start)
            os.fsync(f.fileno())
    else:  # the log this entry began: its head names no entries
        log_path.unlink()
        sync_folder(log_path.parent)


def _write_head(log_path: Path, entries: int, last_hash: str, key: bytes | None) -> None:
    head: dict = {"entries": entries, "hash": last_hash}
    if key is not None:
        head["mac"] = _mac(key, "head", f"{entries}:{last_hash}")
    write_bytes_atomic(head_path(log_path), (canonical_json(head) + "\n").encode("utf-8"),
                       mode=0o600 if key is not None else 0o644)


def _catch_up_head(log_path: Path, seq: int, recorded: object, last_hash: str,
                   key: bytes | None) -> None:
    """Point a head that records (``recorded``) one entry fewer than the log holds at its last
    entry, if the log verifies. Any other head is left for ``verify_log`` to report."""
    if seq == 0 or recorded != seq - 1:
        return
    result = verify_log(log_path, key)
    if not result.ok:
        raise ChainError(f"{log_path} is broken at line {result.broken_line}: "
                         f"{result.problem}; refusing to extend it")
    _write_head(log_path, seq, last_hash, key)


def verify_log(log_path: Path, key: bytes | None = None) -> Verification:
    """Check the whole chain and the head, and every MAC when ``key`` is given; ``OSError``
    when the log cannot be read at all, ``NotALogError`` for a file that has no head and
    whose first line is not a log entry (found in review: ``metrics.json`` was reported as a
    log broken at line 1). A log always has its head, so a real one whose first line was
    edited or torn still verifies as broken."""
    return verify_log_entries(log_path, key)[0]


def verify_log_entries(log_path: Path,
                       key: bytes | None = None) -> tuple[Verification, list[dict]]:
    """``verify_log``, with the entries it verified (none when the log is broken): what a
    caller compares with a record of the log, rather than a second read of a log that may have
    grown in between."""
    log_path = Path(log_path)
    data = _log_bytes(log_path)
    first_line = data.split(b"\n", 1)[0]
    if first_line and not head_path(log_path).exists() and not _is_entry(first_line):
        raise NotALogError(f"{log_path} is not an audit log (its first line is no log entry, "
                           f"and no head file {head_path(log_path).name} is beside it), or one "
                           "whose first line was replaced and head deleted")
    result = _verified(log_path, data, key)
    return result, [json.loads(line) for line in data.splitlines()] if result.ok else []


def extends(entries: list[dict], recorded: dict) -> bool:
    """Whether a verified log's ``entries`` begin with those a record of it named
    (``{"entries", "hash"}`` of its last one, empty for none): the chain makes that hash stand
    for every entry before it. A log restored from an older copy, or one rewritten and grown
    again, does not."""
    count = int(recorded.get("entries", 0))
    return not count or (len(entries) >= count and entries[count - 1]["hash"] == recorded["hash"])


def _is_entry(line: bytes) -> bool:
    """Whether a line is a JSON object with the fields every log entry has."""
    try:
        entry = json.loads(line)
    except (ValueError, RecursionError):
        return False
    return isinstance(entry, dict) and {"seq", "prev", "hash"} <= entry.keys()


def _log_bytes(log_path: Path) -> bytes:
    """The log's content; none for a log whose head exists without it (a head is written
    before a log's first line, so the head then has to name no entries to verify)."""
    if not log_path.exists() and head_path(log_path).exists():
        return b""
    return log_path.read_bytes()


def _verified(log_path: Path, data: bytes, key: bytes | None) -> Verification:
    """``verify_log`` of the log's content ``data``."""
    lines = data.split(b"\n")
    if lines[-1]:
        return Verification(len(lines) - 1, len(lines), "last line is incomplete (torn or edited)")
    lines.pop()
    previous = GENESIS
    for number, raw in enumerate(lines, start=1):
        problem = _entry_problem(raw, number, previous, key)
        if problem:
            return Verification(number - 1, number, problem)
        previous = json.loads(raw)["hash"]
    return _check_head(log_path, lines, key)


def read_entries(log_path: Path, key: bytes | None = None) -> list[dict]:
    """The entries of a log that verifies (none if there is no log); ``ChainError`` otherwise."""
    log_path = Path(log_path)
    if not log_path.exists() and not head_path(log_path).exists():
        return []
    try:
        data = _log_bytes(log_path)
        result = _verified(log_path, data, key)
    except PermissionError as err:
        raise ChainError(permission_denied(err.filename)) from err
    except OSError as err:
        raise ChainError(f"{log_path} is missing or unreadable ({err.strerror or err})") from err
    if not result.ok:
        raise ChainError(f"{log_path} is broken at line {result.broken_line}: {result.problem}")
    return [json.loads(line) for line in data.splitlines()]  # the lines just verified


def is_keyed(log_path: Path) -> bool:
    """Whether the log's first entry or its head carries a MAC (a site's log, checked with its
    secret): an emptied keyed log still has a MACed head."""
    with open(log_path, "rb") as f:
        first = f.readline()
    try:
        first_entry = json.loads(first)
    except ValueError:
        first_entry = None
    return (isinstance(first_entry, dict) and "mac" in first_entry) or "mac" in _read_head(log_path)


def entry_hash(entry: dict) -> str:
    body = {key: value for key, value in entry.items() if key not in ("hash", "mac")}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()


def canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def _mac(key: bytes, kind: str, message: str) -> str:
    return hmac.new(key, f"{kind}\0{message}".encode(), hashlib.sha256).hexdigest()


def _last_entry(log_path: Path) -> tuple[int, str]:
    """(seq, hash) of the last entry; (0, GENESIS) for a new log."""
    data = log_path.read_bytes() if log_path.exists() else b""
    if not data:  # none yet, or only its head
        return 0, GENESIS
    lines = data.split(b"\n")
    if lines[-1] or len(lines) < 2:
        raise ChainError(f"{log_path} does not end with a complete entry; refusing to extend "
                         "it (check it with `fedintent audit verify`)")
    try:
        last = json.loads(lines[-2])
        return int(last["seq"]), str(last["hash"])
    except (ValueError, KeyError, TypeError) as err:
        raise ChainError(f"{log_path}: last entry is unreadable ({err}); refusing to extend "
                         "it") from err


def _entry_problem(raw: bytes, number: int, previous: str, key: bytes | None) -> str:
    try:
        text = raw.decode("utf-8")
        entry = json.loads(text)
    except (ValueError, RecursionError):
        return "not a valid JSON entry (edited or torn)"
    if not isinstance(entry, dict):
        return "not a JSON object"
    try:
        canonical = canonical_json(entry)
    except ValueError:  # NaN or Infinity, which no writer puts there
        return "not in canonical form (edited)"
    if canonical != text:
        return "not in canonical form (edited)"
    if entry.get("seq") != number:
        return (f"sequence number {entry.get('seq')!r} on line {number} "
                "(entries deleted, inserted or reordered)")
    if entry.get("prev") != previous:
        return "does not chain to the entry before it (entries deleted, inserted or reordered)"
    if entry.get("hash") != entry_hash(entry):
        return "hash does not match the entry's content (edited)"
    if key is not None and not hmac.compare_digest(str(entry.get("mac", "")),
                                                   _mac(key, "entry", entry["hash"])):
        return "MAC does not match (rewritten without the site's secret, or another site's log)"
    return ""


def _check_head(log_path: Path, lines: list[bytes], key: bytes | None) -> Verification:
    """Deleted trailing entries leave an intact chain: the head still names the last one.

    One entry more than the head records is accepted: the writer stopped between appending an
    entry and updating the head. A head of no entries (written before a log's first line) names
    the genesis hash.
    """
    count = len(lines)
    path = head_path(log_path)
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        recorded, last_hash = int(head["entries"]), str(head["hash"])
    except FileNotFoundError:
        return Verification(count, count + 1, f"head file {path} is missing, so deleted "
                            "trailing entries could not be detected")
    except PermissionError:
        raise  # not damage: the caller says whose the file is
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as err:
        return Verification(count, count + 1, f"head file {path} is unreadable ({err})")
    if recorded > count:
        return Verification(count, count + 1, f"the log ends after {count} entries but its head "
                            f"records {recorded}: trailing entries were deleted")
    if recorded not in (count, count - 1) or recorded < 0:
        return Verification(count, count, f"{count} entries but the head records {recorded}")
    if (json.loads(lines[recorded - 1])["hash"] if recorded else GENESIS) != last_hash:
        return Verification(count, recorded, "entry does not match the hash in the head file")
    if key is not None and not hmac.compare_digest(
            str(head.get("mac", "")), _mac(key, "head", f"{recorded}:{last_hash}")):
        return Verification(count, count + 1, f"head file {path}: MAC does not match "
                            "(rewritten without the site's secret)")
    return Verification(count)
