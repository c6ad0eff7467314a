"""The hash-chained logs' edges that stop 65's mutation pass found no test holding.

The deletion log (keyed with the site's secret) and the audit log are what show that an erasure
happened and that a run's history is whole; each test here is the behaviour a site, an operator
or someone editing a log would see, and fails with the mutant of ``fl_protocol/hash_chain.py``
named in its docstring (docs/TESTING.md, stop 65).
"""

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_protocol import hash_chain
from fl_protocol.hash_chain import (
    ChainError,
    append_entry,
    head_path,
    read_entries,
    verify_log,
)

KEY = b"k" * 32


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The usual umask, so that the modes asked for are the modes on disk."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def full_disk_at_the_head_of(monkeypatch: pytest.MonkeyPatch, entries: int) -> None:
    """The head written for ``entries`` entries fails as on a full disk; every other head is
    written."""
    write = hash_chain.write_bytes_atomic

    def write_or_fail(target: Path, data: bytes, mode: int = 0o644) -> None:
        if json.loads(data)["entries"] == entries:
            raise OSError(28, "No space left on device", str(target))
        write(target, data, mode)

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", write_or_fail)


@pytest.mark.usefixtures("umask_022")
def test_a_sites_keyed_log_is_its_own_and_the_servers_audit_log_is_readable(tmp_path):
    """A deletion log (keyed) and its head are the site account's alone, 0600: they record
    which customers were erased. The server's audit log and head are 0644, for whoever reviews
    the run. (Mutants: the log's or the head's mode swapped between the two, or 0.)"""
    site_log, audit_log = tmp_path / "deletions.jsonl", tmp_path / "audit.jsonl"
    append_entry(site_log, "erasure", {"forms": 1}, key=KEY)
    append_entry(audit_log, "run-started", {"run_id": 1})
    assert mode_of(site_log) == mode_of(head_path(site_log)) == 0o600
    assert mode_of(audit_log) == mode_of(head_path(audit_log)) == 0o644


@pytest.mark.parametrize("key", [None, KEY], ids=["audit", "keyed"])
def test_a_new_logs_first_entry_whose_head_cannot_be_written_is_taken_back(tmp_path,
                                                                           monkeypatch, key):
    """The head of no entries is written, the first line appended, then its head fails (a full
    disk): the caller is told the entry failed, so it must not be there to read afterwards (a
    log one past its head reads as an interrupted append, which would keep it). The log is
    started again by the next append. (Mutants: ``_cut_back``'s unlink of the new log removed.)"""
    path = tmp_path / "deletions.jsonl"
    full_disk_at_the_head_of(monkeypatch, entries=1)  # the second head: of no entries, then one
    with pytest.raises(OSError, match="No space"):
        append_entry(path, "erasure", {"n": 1}, key=key)
    monkeypatch.undo()
    assert read_entries(path, key=key) == [] and verify_log(path, key).ok
    append_entry(path, "erasure", {"n": 2}, key=key)
    assert [e["n"] for e in read_entries(path, key=key)] == [2]
    assert json.loads(head_path(path).read_text())["entries"] == 1



def test_a_torn_last_line_is_reported_with_the_entries_before_it(tmp_path, capsys):
    """``audit verify`` tells the operator how many entries stand before a torn last line (the
    ones a restore would keep). (Mutants: that count one off or two off.)"""
    from fedintent.cli import main

    path = tmp_path / "audit.jsonl"
    for server_round in (1, 2, 3):
        append_entry(path, "round", {"round": server_round})
    path.write_bytes(path.read_bytes()[:-10])
    result = verify_log(path)
    assert (result.ok, result.broken_line, result.entries) == (False, 3, 2)
    capsys.readouterr()
    assert main(["audit", "verify", str(path)]) == 1
    assert "BROKEN at line 3: last line is incomplete (torn or edited) (2 entries verify" in \
        capsys.readouterr().out


@pytest.mark.parametrize("damage", ["none", "head MAC removed", "emptied"])
def test_a_copy_of_a_sites_keyed_log_is_never_verified_without_the_sites_secret(tmp_path,
                                                                                capsys, damage):
    """A deletion log copied away from its state folder (no secret beside it) is a site's log
    as long as its first entry or its head carries a MAC: ``audit verify`` asks for the
    secret rather than call it intact by its hashes alone, which anyone can recompute. Found by
    stop 65's mutation pass: a head stripped of its MAC beside entries that keep theirs was
    verified as an unkeyed log (``or`` as ``and``), and so would every keyed log be if it were
    never called keyed."""
    from fedintent.cli import main

    path = tmp_path / "copy" / "deletions.jsonl"
    for n in (1, 2):
        append_entry(path, "erasure", {"n": n}, key=KEY)
    head = json.loads(head_path(path).read_text())
    if damage == "head MAC removed":
        head_path(path).write_text(json.dumps({"entries": head["entries"], "hash": head["hash"]}))
    elif damage == "emptied":
        path.write_bytes(b"")
    capsys.readouterr()
    code = main(["audit", "verify", str(path)])
    captured = capsys.readouterr()
    assert code == 2 and not captured.out.startswith("OK"), captured.out
    assert "MACs need the site secret" in captured.err


def test_a_log_that_cannot_be_read_is_a_chain_error_naming_it(tmp_path, monkeypatch):
    """The site's purge and erasures and the server's resume read their log with
    ``read_entries``: a log that is a folder, or one this account may not open, is a
    ``ChainError`` naming the file (and, when not permitted, whose it is), which the commands
    report, not an ``OSError`` traceback. (Mutants: either conversion's ``raise`` removed.)"""
    folder = tmp_path / "deletions.jsonl"
    folder.mkdir()
    with pytest.raises(ChainError, match=f"{folder} is missing or unreadable"):
        read_entries(folder)
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {})
    read_bytes = Path.read_bytes

    def forbidden(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", forbidden)
    with pytest.raises(ChainError, match=r"this account \(uid"):
        read_entries(path)


def test_an_auditor_recomputes_every_line_and_hash_from_the_documented_format(tmp_path):
    """The format is documented for auditors with their own tools: each line is the entry's
    JSON with sorted keys, no spaces, UTF-8 (not ``\\u`` escapes), and ``hash`` the SHA-256 of
    that JSON without ``hash`` and ``mac``, ``prev`` the hash before. A log whose lines or
    hashes follow another order or escaping verifies only with this code. Found by stop 65's
    mutation pass: ``sort_keys`` and ``ensure_ascii`` flipped both survived, since the code
    checks its own output against itself."""
    import hashlib

    path = tmp_path / "deletions.jsonl"
    append_entry(path, "erasure", {"zeta": 1, "alpha": "José", "middle": {"b": 2, "a": 1}},
                 key=KEY)
    append_entry(path, "purge", {"expired": 3}, key=KEY)
    previous = "0" * 64
    for line in path.read_bytes().splitlines():
        entry = json.loads(line)
        assert line == json.dumps(entry, sort_keys=True, separators=(",", ":"),
                                  ensure_ascii=False).encode("utf-8")
        body = {k: v for k, v in entry.items() if k not in ("hash", "mac")}
        digest = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                           ensure_ascii=False).encode("utf-8")).hexdigest()
        assert entry["prev"] == previous and entry["hash"] == digest
        previous = digest
    assert "José".encode() in path.read_bytes()


def five_entries(path: Path, key: bytes | None = None) -> list[bytes]:
    """A log of five entries at ``path``; its lines."""
    append_entry(path, "run-started", {"run_id": 7}, key=key)
    for server_round in (1, 2, 3):
        append_entry(path, "round", {"round": server_round, "epsilon": 0.5}, key=key)
    append_entry(path, "run-completed", {"model_sha256": "ab" * 32}, key=key)
    return path.read_bytes().splitlines(keepends=True)


def replace_line(path: Path, number: int, line: bytes) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    lines[number - 1] = line
    path.write_bytes(b"".join(lines))


@pytest.mark.parametrize(("edit", "problem"), [
    (lambda line: line.replace(b'"epsilon":0.5', b'"epsilon":NaN'), "not in canonical form"),
    (lambda line: line.replace(b'"epsilon":0.5', b'"epsilon": 0.9'), "not in canonical form"),
    (lambda line: line.replace(b'"epsilon":0.5', b'"epsilon":0.50'), "not in canonical form"),
    (lambda line: b'["a list", "not an entry"]\n', "not a JSON object"),
], ids=["NaN", "a space and a new value", "the same value spelled otherwise", "a list"])
def test_an_edited_line_the_hash_alone_might_miss_is_found_in_process(tmp_path, edit, problem):
    """Edits that leave the stored hash in place but change the line outside its canonical form
    are found at their line, by every reader in the process (the site's purge and erasures, a
    resume), not only by ``audit verify``. Found by stop 65's mutation pass: these were tested
    only through a subprocess, and with those checks' refusals made empty an epsilon of 0.5
    edited to 0.9 (with a space) or NaN verified as intact."""
    path = tmp_path / "audit.jsonl"
    lines = five_entries(path)
    replace_line(path, 3, edit(lines[2]))
    result = verify_log(path)
    assert (result.ok, result.broken_line, result.entries) == (False, 3, 2)
    assert problem in result.problem
    with pytest.raises(ChainError, match=f"broken at line 3: {problem}"):
        read_entries(path)


def test_a_line_from_another_log_at_the_same_place_is_found(tmp_path):
    """An entry spliced in from another log (its own sequence number and a correct hash, but
    chained to that log's history) does not chain to the entry before it. (Mutant: that
    refusal made empty.)"""
    path, other = tmp_path / "audit.jsonl", tmp_path / "other.jsonl"
    five_entries(path)
    append_entry(other, "run-started", {"run_id": 8})
    append_entry(other, "round", {"round": 1, "epsilon": 0.1})
    append_entry(other, "round", {"round": 2, "epsilon": 0.1})
    replace_line(path, 3, other.read_bytes().splitlines(keepends=True)[2])
    result = verify_log(path)
    assert (result.ok, result.broken_line) == (False, 3)
    assert "does not chain to the entry before it" in result.problem


@pytest.mark.parametrize("last", [b"not json at all\n", b'{"seq": 5}\n', b'["a list"]\n'],
                         ids=["junk", "no hash", "a list"])
def test_a_log_whose_last_line_is_no_entry_is_never_extended(tmp_path, last):
    """A log whose last complete line was replaced by something that is no entry is refused by
    the writer itself, with a ``ChainError`` naming it, before anything is appended. (Mutant:
    that refusal's ``raise`` removed.)"""
    path = tmp_path / "audit.jsonl"
    five_entries(path)
    replace_line(path, 5, last)
    before = path.read_bytes()
    with pytest.raises(ChainError, match="last entry is unreadable"):
        append_entry(path, "round", {"round": 4})
    assert path.read_bytes() == before


@pytest.mark.parametrize("head", [None, b"not json\n", b'{"entries": 5}\n', b"[5]\n"],
                         ids=["missing", "junk", "no hash", "a list"])
def test_a_head_that_is_missing_or_unreadable_is_reported_after_the_last_entry(tmp_path, head):
    """A head that is gone or unreadable makes deleted trailing entries undetectable: the log
    is broken, reported one line after its last entry, with every entry verified before it.
    (Mutants: that line or count moved, the unreadable head's verdict made empty.)"""
    path = tmp_path / "audit.jsonl"
    five_entries(path)
    if head is None:
        head_path(path).unlink()
    else:
        head_path(path).write_bytes(head)
    result = verify_log(path)
    assert (result.ok, result.broken_line, result.entries) == (False, 6, 5)
    assert "head file" in result.problem
    assert ("is missing" if head is None else "is unreadable") in result.problem


def test_a_log_more_than_one_entry_past_its_head_is_broken(tmp_path):
    """One entry past the head is an append interrupted before its head; two or more are not
    something the writer leaves (it brings a head one behind up to date first), so the log is
    broken at its last line. (Mutants: ``or`` as ``and`` in that check, its verdict made
    empty: a head two behind then verified.)"""
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {})
    append_entry(path, "round", {"round": 1})
    append_entry(path, "round", {"round": 2})
    head = head_path(path).read_bytes()  # names 3 entries
    append_entry(path, "round", {"round": 3})
    append_entry(path, "round", {"round": 4})
    head_path(path).write_bytes(head)
    result = verify_log(path)
    assert (result.ok, result.broken_line, result.entries) == (False, 5, 5)
    assert "5 entries but the head records 3" in result.problem


def test_a_head_recording_a_negative_count_is_broken_not_a_crash(tmp_path):
    """A head edited to a negative count, beside an empty log, is reported as broken, not
    raised as an error from inside the check (``-1`` is "one past" a log of none)."""
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    head_path(path).write_text(json.dumps({"entries": -1, "hash": "0" * 64}))
    result = verify_log(path)
    assert not result.ok and "the head records -1" in result.problem


def test_a_keyed_head_whose_mac_does_not_match_is_reported_after_the_last_entry(tmp_path):
    """A site's head rewritten without its secret (a MAC made up) breaks the log one line
    after its last entry, every entry verified before it. (Mutants: that line moved.)"""
    path = tmp_path / "deletions.jsonl"
    five_entries(path, key=KEY)
    head = json.loads(head_path(path).read_text())
    head_path(path).write_text(json.dumps({**head, "mac": "ab" * 32}))
    result = verify_log(path, KEY)
    assert (result.ok, result.broken_line, result.entries) == (False, 6, 5)
    assert "MAC does not match" in result.problem


def test_a_log_left_one_past_its_first_head_is_caught_up_before_the_next_entry(tmp_path,
                                                                               monkeypatch):
    """A process killed between a new log's first line and its head leaves a head of no
    entries; the next append first brings that head up to the first entry, so that a failure
    of its own head cuts its entry off again and leaves a log that verifies, not one two past
    its head, which reads as deleted entries for good. (Mutant: the catch-up skipped for a
    log of one entry, ``seq == 0`` as ``seq == 1``.)"""
    path = tmp_path / "deletions.jsonl"
    append = hash_chain.append_line

    def killed_after(*args: object, **kwargs: object) -> int:
        append(*args, **kwargs)
        raise KeyboardInterrupt  # nothing after the line runs, as under SIGKILL

    monkeypatch.setattr(hash_chain, "append_line", killed_after)
    with pytest.raises(KeyboardInterrupt):
        append_entry(path, "purge", {"n": 1}, key=KEY)
    monkeypatch.setattr(hash_chain, "append_line", append)
    full_disk_at_the_head_of(monkeypatch, entries=2)
    with pytest.raises(OSError, match="No space"):
        append_entry(path, "purge", {"n": 2}, key=KEY)
    monkeypatch.undo()
    assert verify_log(path, KEY).ok
    assert [e["n"] for e in read_entries(path, key=KEY)] == [1]


def test_a_broken_log_one_past_its_head_is_not_caught_up_nor_extended(tmp_path):
    """The head is brought up to the last entry only if the log verifies: a log edited and
    left one past its head is refused by the writer, head and log unchanged, rather than
    given a head that makes the edit look written by the site. (Mutant: that refusal's
    ``raise`` removed.)"""
    path = tmp_path / "audit.jsonl"
    lines = five_entries(path)
    head = head_path(path).read_bytes()
    append_entry(path, "round", {"round": 4})
    head_path(path).write_bytes(head)  # one behind, as after a crash
    replace_line(path, 3, lines[2].replace(b'"epsilon":0.5', b'"epsilon":0.1'))
    before = path.read_bytes()
    with pytest.raises(ChainError, match="is broken at line 3: hash does not match"):
        append_entry(path, "round", {"round": 5})
    assert path.read_bytes() == before and head_path(path).read_bytes() == head
