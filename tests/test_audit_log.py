"""The audit log: hash-chained, append-only, and every kind of tampering is found."""

import json
import math
import subprocess
import sys
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


@pytest.fixture
def log(tmp_path):
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {"run_id": 7, "config": {"target-epsilon": math.inf}})
    for server_round in (1, 2, 3):
        append_entry(path, "round", {"round": server_round, "sites": {11: {"epsilon": 0.5}}})
    append_entry(path, "run-completed", {"model_sha256": "ab" * 32})
    return path


def audit_verify(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedintent.cli", "audit", "verify", str(path)],
                          capture_output=True, text=True, timeout=120)


def lines_of(path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_an_intact_log_verifies(log):
    assert verify_log(log).ok and verify_log(log).entries == 5
    entries = [json.loads(line) for line in lines_of(log)]
    assert [e["seq"] for e in entries] == [1, 2, 3, 4, 5]
    assert entries[0]["config"]["target-epsilon"] is None  # JSON has no infinity
    assert entries[1]["sites"] == {"11": {"epsilon": 0.5}}
    assert all(b["prev"] == a["hash"] for a, b in zip(entries, entries[1:], strict=False))
    result = audit_verify(log)
    assert result.returncode == 0 and result.stdout.startswith("OK: 5 entries"), result.stdout


def test_a_one_byte_edit_is_found_at_its_line(log):
    data = bytearray(log.read_bytes())
    position = data.index(b'"epsilon":0.5', len(lines_of(log)[0]) + len(lines_of(log)[1]))
    data[position + len('"epsilon":0.')] = ord("9")  # line 3: 0.5 -> 0.9
    log.write_bytes(bytes(data))
    assert verify_log(log).broken_line == 3
    result = audit_verify(log)
    assert result.returncode == 1
    assert result.stdout.startswith("BROKEN at line 3: hash does not match"), result.stdout


@pytest.mark.parametrize("edit,found", [
    (lambda log: log.write_bytes(log.read_bytes().replace(b'"epsilon":0.5', b'"epsilon":NaN', 1)),
     "BROKEN at line 2: not in canonical form"),
    (lambda log: head_path(log).write_text('{"entries": 1e400, "hash": "x"}'),
     "is unreadable"),
], ids=["NaN in an entry", "an infinite count in the head"])
def test_values_json_cannot_hold_are_found_not_raised(log, edit, found):
    """Found in review: a NaN in an entry and 1e400 in the head raised outside the checks, and
    `audit verify` (and a resume) printed a traceback."""
    edit(log)
    result = audit_verify(log)
    assert result.returncode == 1 and found in result.stdout, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_a_deleted_line_is_found(log):
    lines = lines_of(log)
    log.write_bytes(b"".join(lines[:1] + lines[2:]))
    result = audit_verify(log)
    assert result.returncode == 1 and result.stdout.startswith("BROKEN at line 2"), result.stdout


def test_a_swapped_pair_of_lines_is_found(log):
    lines = lines_of(log)
    lines[2], lines[3] = lines[3], lines[2]
    log.write_bytes(b"".join(lines))
    result = audit_verify(log)
    assert result.returncode == 1 and result.stdout.startswith("BROKEN at line 3"), result.stdout


def test_deleted_trailing_entries_are_found_against_the_head(log):
    log.write_bytes(b"".join(lines_of(log)[:3]))
    result = verify_log(log)
    assert not result.ok and result.broken_line == 4
    assert "trailing entries were deleted" in result.problem


def test_a_missing_head_is_reported(log):
    head_path(log).unlink()
    assert "head file" in verify_log(log).problem


def test_a_torn_last_line_is_found(log):
    log.write_bytes(log.read_bytes()[:-10])
    assert verify_log(log).broken_line == 5


def test_one_entry_beyond_the_head_is_an_interrupted_append(log):
    head = head_path(log).read_bytes()
    append_entry(log, "round", {"round": 4})
    head_path(log).write_bytes(head)  # as if the writer stopped before updating the head
    assert verify_log(log).ok


def test_a_broken_log_is_never_extended(log):
    """Every writer reads the log through ``read_entries`` before it appends (the server at a
    resume, the site's purge, forget and ClientApp); a torn last line stops ``append_entry``
    itself."""
    lines = lines_of(log)
    log.write_bytes(b"".join(lines[:1] + lines[2:]))
    with pytest.raises(ChainError, match="broken at line 2"):
        read_entries(log)
    log.write_bytes(log.read_bytes()[:-1])
    with pytest.raises(ChainError, match="does not end with a complete entry"):
        append_entry(log, "round", {})


@pytest.mark.parametrize("damage", ["emptied", "cut", "deleted"])
def test_a_log_its_head_is_past_is_never_extended(log, damage):
    """Extending it would write a head over the evidence that entries were deleted (found in
    review: an emptied log with its head kept became a valid one-entry log)."""
    kept = {"emptied": b"", "cut": b"".join(lines_of(log)[:2])}
    if damage == "deleted":
        log.unlink()
    else:
        log.write_bytes(kept[damage])
    with pytest.raises(ChainError, match="its head records 5: entries were deleted"):
        append_entry(log, "round", {"round": 4})
    assert json.loads(head_path(log).read_text())["entries"] == 5
    if damage != "deleted":
        assert "entries were deleted" in verify_log(log).problem


def test_an_unreadable_log_exits_2(tmp_path):
    result = audit_verify(tmp_path / "nope.jsonl")
    assert result.returncode == 2 and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("damage", [
    lambda data: data[:-10],  # a torn last line
    lambda data: data[:-1] + b"\xff\xfe\n",  # bytes that are not UTF-8
    lambda data: data + b"[" * 100_000 + b"\n",  # nested deeper than a parser recurses
])
def test_reading_a_damaged_log_names_the_file_and_line(log, damage):
    """``read_entries`` (``purge``, ``forget``, ``train --resume``) says what is wrong where,
    with a ``ChainError``, never a JSON or Unicode traceback."""
    log.write_bytes(damage(log.read_bytes()))
    with pytest.raises(ChainError, match=f"{log.name} is broken at line [56]"):
        read_entries(log)


def test_an_entry_whose_head_cannot_be_written_is_cut_off_again(log, tmp_path, monkeypatch):
    """A full disk between an entry and its head: the log is left as it was, so it still
    verifies and can be extended; a log whose first entry fails so is not left behind as an
    empty file without a head, which would read as broken."""
    before = log.read_bytes()
    write = hash_chain.write_bytes_atomic

    def disk_full(path, data, mode=0o644):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", disk_full)
    for path in (log, tmp_path / "new.jsonl"):
        with pytest.raises(OSError, match="No space"):
            append_entry(path, "round", {"round": 4})
    assert log.read_bytes() == before and not (tmp_path / "new.jsonl").exists()
    monkeypatch.setattr(hash_chain, "write_bytes_atomic", write)
    append_entry(log, "round", {"round": 4})
    assert verify_log(log).ok and verify_log(log).entries == 6


@pytest.mark.parametrize("key", [None, b"k" * 32], ids=["audit", "keyed"])
def test_a_process_killed_between_a_new_logs_first_line_and_its_head_leaves_a_log_that_reads(
        tmp_path, monkeypatch, key):
    """Found in review: a kill (SIGKILL, the OOM killer, docker stop) after a new log's first
    line and before its first head left a log without a head, refused for good: the deletion
    log would stop the site, the audit log any resume. A head naming no entries comes first."""
    path = tmp_path / "deletions.jsonl"
    append = hash_chain.append_line

    def killed_after(*args, **kwargs):
        append(*args, **kwargs)
        raise KeyboardInterrupt  # nothing after the line runs, as under SIGKILL

    monkeypatch.setattr(hash_chain, "append_line", killed_after)
    with pytest.raises(KeyboardInterrupt):
        append_entry(path, "purge", {"n": 1}, key=key)
    assert json.loads(head_path(path).read_text())["entries"] == 0
    assert [e["n"] for e in read_entries(path, key=key)] == [1]
    monkeypatch.setattr(hash_chain, "append_line", append)
    append_entry(path, "purge", {"n": 2}, key=key)
    assert verify_log(path, key).ok and [e["n"] for e in read_entries(path, key=key)] == [1, 2]


def test_a_head_naming_no_entries_verifies_only_as_a_new_log(tmp_path):
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {})
    head = head_path(path).read_bytes()
    path.unlink()
    with pytest.raises(ChainError, match="head records 1: trailing entries were deleted"):
        read_entries(path)
    head_path(path).write_text(json.dumps({"entries": 0, "hash": "0" * 64}))
    assert read_entries(path) == [] and verify_log(path).ok
    head_path(path).write_text(json.dumps({"entries": 0, "hash": "ab" * 32}))
    with pytest.raises(ChainError, match="hash in the head"):
        read_entries(path)
    head_path(path).write_bytes(head)
    path.write_bytes(b"")
    with pytest.raises(ChainError, match="trailing entries were deleted"):
        read_entries(path)


def test_an_entry_is_kept_when_its_head_cannot_be_read_after_a_failed_write(tmp_path,
                                                                            monkeypatch):
    """Found in review: a head that could not be read back (no file descriptors left) was taken
    for an old one, and the entry it named cut off. Only a head that names the entry before is
    grounds to cut."""
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {})
    write, read_text = hash_chain.write_bytes_atomic, Path.read_text

    def flush_fails(target, data, mode=0o644):
        write(target, data, mode)
        monkeypatch.setattr(Path, "read_text", no_descriptors)
        raise OSError(24, "Too many open files", str(target))

    def no_descriptors(self, *args, **kwargs):
        if self.name.endswith(".head"):
            raise OSError(24, "Too many open files", str(self))
        return read_text(self, *args, **kwargs)

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", flush_fails)
    with pytest.raises(OSError, match="Too many open files"):
        append_entry(path, "round", {"round": 1})
    monkeypatch.undo()
    assert verify_log(path).ok and verify_log(path).entries == 2


def test_an_entry_whose_head_was_replaced_before_the_write_failed_stays(log, tmp_path,
                                                                        monkeypatch):
    """Found in review: a head replaced, then its folder's flush failing, had the entry the
    head names cut off, leaving a log its head reads as truncated: the site refused it for
    good. The error is still raised (the entry may not be durable), and the log verifies."""
    write = hash_chain.write_bytes_atomic

    def flush_fails(path, data, mode=0o644):
        write(path, data, mode)
        raise OSError(5, "Input/output error", str(path.parent))

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", flush_fails)
    # a new log's first write is its head of no entries: the error comes before any line
    for path, entries in ((log, 6), (tmp_path / "new.jsonl", 0)):
        with pytest.raises(OSError, match="Input/output"):
            append_entry(path, "round", {"round": 4})
        assert verify_log(path).ok and verify_log(path).entries == entries


def verify_in_process(path, capsys, *options: str) -> tuple[int, str, str]:
    from fedintent.cli import main

    code = main(["audit", "verify", str(path), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def trained_ledger(state, deletion_log: dict) -> None:
    """A ledger of one release in ``state``, recording ``deletion_log`` as the log's length."""
    from fl_client.privacy_ledger import Ledger, Release, now, write_ledger
    from fl_client.site_secret import site_secret

    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5, deletion_log=deletion_log)
    ledger.releases.append(Release(
        run="r", server_round=1, num_rounds=1, noise_multiplier=2.0, sample_rate=1.0, steps=1,
        clip_norm=1.0, delta=1e-5, accountant="rdp", units=1, rdp=0.5, time=now()))
    write_ledger(state, ledger, site_secret(state))


def test_a_missing_deletion_log_is_fine_only_where_the_ledger_shows_none_was_written(
        tmp_path, capsys):
    """What the site guide checks right after ``init-site`` (found in review: "cannot read").
    Without a ledger nothing tells a site that never purged from one whose log was deleted
    (found in review: a site that erased before its first run read as fine), so that says so,
    exit 2; a trained site whose ledger records no log has none yet, exit 0."""
    from fl_client.site_secret import create_site_secret

    state = tmp_path / "st0"
    create_site_secret(state)
    code, _, err = verify_in_process(state / "deletions.jsonl", capsys)
    assert code == 2 and "nothing here can tell whether it should" in err
    trained_ledger(state, {})
    code, out, _ = verify_in_process(state / "deletions.jsonl", capsys)
    assert code == 0 and "no deletion log yet (no purge or erasure has run" in out
    code, _, err = verify_in_process(tmp_path / "deletions.jsonl", capsys)  # no site secret
    assert code == 2 and "cannot read" in err
    code, _, err = verify_in_process(state / "deletion.jsonl", capsys)  # not its deletion log
    assert code == 2 and "cannot read" in err


def test_a_deletion_log_restored_from_an_older_copy_is_broken(tmp_path, capsys):
    """Found in review: the log and its head restored from a copy taken before an erasure
    verified OK, while the site itself refuses them (its ledger recorded the newer length)."""
    import shutil

    from fedintent.cli import main

    state, site = tmp_path / "st0", tmp_path / "site"
    site.mkdir()
    (site / "train.jsonl").write_text('{"text": "hello", "label": "a"}\n')
    assert main(["init-site", "--state-dir", str(state)]) == 0
    log = state / "deletions.jsonl"
    assert main(["purge", str(site), "--state-dir", str(state), "--retention-days", "30"]) == 0
    shutil.copy(log, tmp_path / "old.jsonl")
    shutil.copy(head_path(log), tmp_path / "old.head")
    assert main(["purge", str(site), "--state-dir", str(state), "--retention-days", "30"]) == 0
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    trained_ledger(state, {"entries": 2, "hash": entries[1]["hash"]})
    capsys.readouterr()
    assert verify_in_process(log, capsys)[0] == 0
    shutil.copy(tmp_path / "old.jsonl", log)
    shutil.copy(tmp_path / "old.head", head_path(log))
    code, out, _ = verify_in_process(log, capsys)
    assert code == 1 and out.startswith("BROKEN") and "recorded 2" in out


def test_a_deletion_log_the_ledger_recorded_is_broken_when_deleted(tmp_path, capsys):
    """Deleted with its head, the log is gone without a trace but for the ledger's record of
    its length: never a site that has not purged yet."""
    from fl_client.site_secret import create_site_secret

    state = tmp_path / "st0"
    create_site_secret(state)
    trained_ledger(state, {"entries": 2, "hash": "ab" * 32})
    code, out, _ = verify_in_process(state / "deletions.jsonl", capsys)
    assert code == 1 and out.startswith("BROKEN") and "recorded 2" in out


@pytest.mark.parametrize("content", [b'{\n "accuracy": 0.5\n}\n', b'{"accuracy": 0.5}\n',
                                     b"run,round\n1,2\n"])
def test_a_file_that_is_no_log_at_all_exits_2(tmp_path, content, capsys):
    """Found in review: ``audit verify run1/metrics.json`` said BROKEN at line 1, exit 1."""
    path = tmp_path / "metrics.json"
    path.write_bytes(content)
    code, out, err = verify_in_process(path, capsys)
    assert code == 2 and "not an audit log" in err and "BROKEN" not in out


@pytest.mark.parametrize("damage", [
    lambda data: b"{not json" + data[data.index(b"\n"):],  # the first line edited
    lambda data: data[:30],  # a one-entry log torn
])
def test_a_real_log_with_a_damaged_first_line_is_still_broken(log, damage, capsys):
    """Its head tells it from a file that is no log."""
    log.write_bytes(damage(log.read_bytes()))
    code, out, _ = verify_in_process(log, capsys)
    assert code == 1 and out.startswith("BROKEN at line 1")


def test_counts_of_one_entry_are_singular(tmp_path, capsys):
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {"run_id": 1})
    code, out, _ = verify_in_process(path, capsys)
    assert code == 0 and out.startswith("OK: 1 entry, hash chain and head intact")
    append_entry(path, "round", {"round": 1})
    path.write_bytes(path.read_bytes().replace(b'"round":1', b'"round":2'))
    code, out, _ = verify_in_process(path, capsys)
    assert code == 1 and "(1 entry verifies before it;" in out


def a_purged_site(tmp_path) -> tuple[Path, Path]:
    """(site folder, state folder) of a site that has purged once and trained since (its
    ledger records the deletion log's length from then on)."""
    from fedintent.cli import main

    state, site = tmp_path / "st0", tmp_path / "site"
    site.mkdir()
    (site / "train.jsonl").write_text('{"text": "hello", "label": "a"}\n')
    assert main(["init-site", "--state-dir", str(state)]) == 0
    assert main(["purge", str(site), "--state-dir", str(state), "--retention-days", "30"]) == 0
    trained_ledger(state, {})
    return site, state


def copied(log: Path, to: Path) -> Path:
    """A backup copy of ``log`` and its head at ``to``."""
    to.write_bytes(log.read_bytes())
    head_path(to).write_bytes(head_path(log).read_bytes())
    return to


def test_a_purge_between_verifys_reads_of_a_live_deletion_log_is_no_damage(
        tmp_path, capsys, monkeypatch):
    """Found in review: the site's scheduled purge appending between verify's read of the log
    and of its head read as deleted trailing entries (exit 1), and between that and a second
    read of the log for the ledger comparison as a log to restore from a backup (exit 2), on an
    intact log. Verify reads the log once per attempt and reads again when the site wrote to
    its state folder meanwhile: it reports the log as it is after the purge."""
    from fl_client.retention import purge

    site, state = a_purged_site(tmp_path)
    log, read_bytes = state / "deletions.jsonl", Path.read_bytes
    reads, purged, purging = [], [], []
    capsys.readouterr()

    def the_site_purges_after_a_read(self):
        data = read_bytes(self)
        if self == log and not purging:
            reads.append(self)
            if not purged:
                purging.append(True)  # the purge reads the log too
                purged.append(purge(site, state, 30, "scheduled purge"))
                purging.clear()
        return data

    monkeypatch.setattr(Path, "read_bytes", the_site_purges_after_a_read)
    code, out, err = verify_in_process(log, capsys)
    monkeypatch.undo()
    assert purged, "the purge ran between verify's reads"
    assert (code, out) == (0, f"OK: 2 entries, hash chain, head and MACs intact ({log})\n"), (
        out + err)
    assert reads == [log, log], "verify reads the log once per attempt, twice in all"


def test_a_site_writing_during_every_read_is_told_to_try_again(tmp_path, capsys, monkeypatch):
    """A site that purges during each of verify's reads: verify gives up after
    ``READ_ATTEMPTS``, exits 2 and asks to try again, never saying anything of the log."""
    from fedintent.commands import audit
    from fl_client.retention import purge

    site, state = a_purged_site(tmp_path)
    capsys.readouterr()
    monkeypatch.setattr(audit.time, "sleep", lambda seconds: None)
    copy = copied(state / "deletions.jsonl", tmp_path / "deletions.jsonl")
    read_bytes = Path.read_bytes
    for log, options in ((state / "deletions.jsonl", ()), (copy, ("--state-dir", str(state)))):

        def the_site_purges(self, log=log, purging=[]):  # noqa: B006 (one flag per log)
            data = read_bytes(self)
            if self == log and not purging:
                purging.append(True)  # the purge reads the log too
                purge(site, state, 30, "scheduled purge")
                purging.clear()
            return data

        monkeypatch.setattr(Path, "read_bytes", the_site_purges)
        code, out, err = verify_in_process(log, capsys, *options)
        monkeypatch.undo()
        monkeypatch.setattr(audit.time, "sleep", lambda seconds: None)
        assert code == 2 and not out and "try again" in err, out + err


def test_a_round_writing_its_feature_cache_during_every_read_is_no_reason_to_retry(
        tmp_path, capsys, monkeypatch):
    """Found in review: a round embedding utterances writes the feature cache, a subfolder of
    the state folder, all the time; verify, which reads nothing there, read again each time
    and gave up within a second asking to try again. Its first read stands."""
    from fedintent.commands import audit

    _, state = a_purged_site(tmp_path)
    log, read_bytes = state / "deletions.jsonl", Path.read_bytes
    (state / "features").mkdir()
    reads = []

    def the_round_embeds(self):
        if self == log:
            reads.append(self)
            (state / "features" / f"batch-{len(reads)}.npy").write_bytes(b"x")
        return read_bytes(self)

    capsys.readouterr()
    monkeypatch.setattr(audit.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(Path, "read_bytes", the_round_embeds)
    code, out, err = verify_in_process(log, capsys)
    monkeypatch.undo()
    assert (code, out) == (0, f"OK: 1 entry, hash chain, head and MACs intact ({log})\n"), (
        out + err)
    assert reads == [log], "one read, nothing verify reads changed"


@pytest.mark.parametrize("where", ["state folder", "copy"])
def test_a_head_file_verify_may_not_open_is_exit_2_not_a_broken_log(tmp_path, capsys,
                                                                    monkeypatch, where):
    """Found in review: a head file the auditor's account could not open read as BROKEN,
    exit 1, with the advice to restore a backup; like an unreadable log, it is exit 2 naming
    the file."""
    _, state = a_purged_site(tmp_path)
    log = state / "deletions.jsonl"
    options: tuple[str, ...] = ()
    if where == "copy":
        log, options = copied(log, tmp_path / "deletions.jsonl"), ("--state-dir", str(state))
    head = head_path(log)

    def forbidden(method):
        def read(self, *args, **kwargs):
            if self == head:
                raise PermissionError(13, "Permission denied", str(self))
            return method(self, *args, **kwargs)
        return read

    monkeypatch.setattr(Path, "open", forbidden(Path.open))
    monkeypatch.setattr(Path, "read_text", forbidden(Path.read_text))
    capsys.readouterr()
    code, out, err = verify_in_process(log, capsys, *options)
    monkeypatch.undo()
    assert (code, out) == (2, ""), out + err
    assert f"cannot read {head}: Permission denied" in err, err


def test_verify_never_waits_for_nor_makes_the_sites_lock(tmp_path, capsys):
    """Found in review: verify held the state folder's lock while it read, so a verify paused
    (Ctrl-Z, a hung disk) stalled the site's purges, erasures and rounds for good; and run as
    root on a folder without the lock file it made one the site's user could not open. Verify
    reads while the site holds its lock, and leaves no lock file behind."""
    from fl_client.site_folders import LOCK_FILE, state_lock

    _, state = a_purged_site(tmp_path)
    (state / LOCK_FILE).unlink(missing_ok=True)
    capsys.readouterr()
    log = state / "deletions.jsonl"
    assert verify_in_process(log, capsys)[0] == 0
    assert not (state / LOCK_FILE).exists()
    with state_lock(state):
        code, out, err = verify_in_process(log, capsys)
    assert code == 0 and out.startswith("OK: 1 entry"), out + err


def test_a_state_folder_verify_cannot_read_is_an_unreadable_log_not_a_broken_one(tmp_path,
                                                                                 capsys,
                                                                                 monkeypatch):
    """Found in review: a state folder the auditor's account cannot search (0700, the site's)
    raised a traceback and exit 1, the code for a broken log; it is exit 2, naming the path."""
    from fl_client.site_secret import SECRET_FILE

    _, state = a_purged_site(tmp_path)
    capsys.readouterr()
    copy = copied(state / "deletions.jsonl", tmp_path / "deletions.jsonl")
    exists = Path.exists

    def unsearchable(self, *args, **kwargs):
        if self.parent == state:
            raise PermissionError(13, "Permission denied", str(self))
        return exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", unsearchable)
    code, out, err = verify_in_process(copy, capsys, "--state-dir", str(state))
    monkeypatch.undo()
    assert code == 2 and not out and f"cannot read {state / SECRET_FILE}" in err, out + err


def test_a_backup_copy_older_than_the_ledger_recorded_is_refused_as_the_site_would(
        tmp_path, capsys):
    """Found in review: ``audit verify BACKUP/deletions.jsonl --state-dir STATE`` said OK for
    a copy taken before the site's last purge or erasure, which the site refuses once restored
    (its ledger recorded the newer length). Verify compares a copy with the ledger as the site
    compares the log it finds, and says whether the site would accept it."""
    from fl_client.privacy_ledger import read_ledger, write_ledger
    from fl_client.retention import purge
    from fl_client.site_secret import site_secret

    site, state = a_purged_site(tmp_path)
    log, copy = state / "deletions.jsonl", tmp_path / "deletions.jsonl"
    copied(log, copy)
    purge(site, state, 30, "scheduled purge")  # the ledger records 2 entries
    capsys.readouterr()
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 1 and out == (
        f"BROKEN: this copy holds 1 entry, but the privacy ledger in {state} recorded 2 when "
        "the site's deletion log last grew: it lacks the purges and erasures made since "
        "(customers erased since would be used again), and the site would refuse it restored; "
        f"restore a copy that holds those 2 ({copy})\n"), out
    copied(log, copy)
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 0 and out == ("OK: 2 entries, hash chain, head and MACs intact; the site "
                                 "would accept it restored: it begins with the 2 entries the "
                                 f"privacy ledger in {state} recorded ({copy})\n"), out
    ledger = read_ledger(state, site_secret(state))
    first = json.loads(log.read_text().splitlines()[0])
    ledger.deletion_log = {"entries": 1, "hash": first["hash"]}
    write_ledger(state, ledger, site_secret(state))  # a copy newer than recorded works too
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 0 and "would accept it restored: it begins with the 1 entry" in out, out


def test_a_backup_copy_of_another_history_is_refused_as_the_site_would(tmp_path, capsys):
    """As long as the ledger recorded, but with another entry where the ledger's record ends
    (a log restored and grown again since): the site checks that entry, not only the count."""
    from fl_client.privacy_ledger import read_ledger, write_ledger
    from fl_client.retention import purge
    from fl_client.site_secret import site_secret

    site, state = a_purged_site(tmp_path)
    purge(site, state, 30, "scheduled purge")
    ledger = read_ledger(state, site_secret(state))
    ledger.deletion_log = {"entries": 2, "hash": "ab" * 32}
    write_ledger(state, ledger, site_secret(state))
    copy = copied(state / "deletions.jsonl", tmp_path / "copy.jsonl")
    capsys.readouterr()
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 1 and out.startswith("BROKEN: this copy holds 2 entries, but the privacy "
                                        f"ledger in {state} recorded 2"), out
    assert "its entry 2 is not the one recorded" in out and "would refuse it restored" in out


def test_a_backup_copy_for_a_site_without_a_ledger_says_nothing_tells(tmp_path, capsys):
    """Before its first training the site records no length: it accepts any copy that
    verifies, and verify says so, and that nothing tells whether it lacks entries."""
    from fl_client.privacy_ledger import HEAD_FILE, LEDGER_FILE

    _, state = a_purged_site(tmp_path)
    for name in (LEDGER_FILE, HEAD_FILE):
        (state / name).unlink()
    copy = copied(state / "deletions.jsonl", tmp_path / "copy.jsonl")
    capsys.readouterr()
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 0 and out == ("OK: 1 entry, hash chain, head and MACs intact; the site would "
                                 f"accept it restored: {state} has no privacy ledger yet to tell "
                                 f"whether it lacks later entries ({copy})\n"), out


def test_a_backup_copy_without_an_erasure_the_sites_log_holds_is_broken(tmp_path, capsys):
    """Found in review: where the ledger recorded no deletion log yet (or was itself restored),
    a copy taken before the site's last purge or erasure was OK to restore, and restored, it
    un-erased that customer. The site's own log in --state-dir, verified, says what the copy
    lacks."""
    from fedintent.cli import main
    from fl_client.privacy_ledger import LEDGER_FILE
    from fl_client.retention import purge

    state, site = tmp_path / "st0", tmp_path / "site"
    site.mkdir()
    (site / "train.jsonl").write_text('{"text": "hello", "label": "a"}\n')
    assert main(["init-site", "--state-dir", str(state)]) == 0
    purge(site, state, 30, "scheduled purge")  # a site that has not trained: no ledger
    copy = copied(state / "deletions.jsonl", tmp_path / "deletions.jsonl")
    capsys.readouterr()
    assert verify_in_process(copy, capsys, "--state-dir", str(state))[0] == 0
    purge(site, state, 30, "scheduled purge")
    assert not (state / LEDGER_FILE).exists()
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 1 and out.startswith("BROKEN: this copy holds 1 entry, and it lacks the 2 "
                                        "entries of the site's deletion log"), out
    assert verify_in_process(copied(state / "deletions.jsonl", copy), capsys, "--state-dir",
                             str(state))[0] == 0


def test_a_log_of_another_history_is_not_called_shorter_than_recorded():
    """Found in review: a log rewritten and grown back to the recorded length read "holds 2
    entries, but the privacy ledger recorded 2 ... restored from an older copy"."""
    from fl_client.deletion_log import deletion_log_problem

    entries = [{"hash": "a"}, {"hash": "b"}]
    assert deletion_log_problem(entries, {"entries": 2, "hash": "b"}) is None
    rewritten = deletion_log_problem(entries, {"entries": 2, "hash": "x"})
    assert rewritten.startswith("the deletion log's entry 2 is not the one the privacy ledger "
                                "recorded") and "(it holds 2 entries)" in rewritten
    assert deletion_log_problem(entries, {"entries": 3, "hash": "c"}).startswith(
        "the deletion log holds 2 entries, but the privacy ledger recorded 3")


def test_a_copy_is_not_called_safe_to_restore_where_the_sites_own_log_cannot_tell(tmp_path,
                                                                                    capsys):
    """Found in review: with the site's own log damaged (a torn last line) the copy was OK to
    restore with nothing said, though the site's log could no longer tell what it lacks."""
    from fedintent.cli import main
    from fl_client.retention import purge

    state, site = tmp_path / "st0", tmp_path / "site"
    site.mkdir()
    (site / "train.jsonl").write_text('{"text": "hello", "label": "a"}\n')
    assert main(["init-site", "--state-dir", str(state)]) == 0
    purge(site, state, 30, "scheduled purge")
    copy = copied(state / "deletions.jsonl", tmp_path / "deletions.jsonl")
    purge(site, state, 30, "scheduled purge")
    with open(state / "deletions.jsonl", "ab") as log:
        log.write(b'{"seq": 3, "pr')
    capsys.readouterr()
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 0, out
    assert "the site's own deletion log there does not verify, so it cannot tell either" in out


def test_a_copy_is_compared_only_with_a_site_log_its_ledger_recorded(tmp_path, capsys):
    """Found in review: a site log that went its own way after a rollback (not the one the
    ledger recorded) made the backup that matches the ledger BROKEN, asking for a copy that
    cannot exist."""
    from fedintent.cli import main
    from fl_client.retention import purge
    from fl_client.site_secret import site_secret
    from fl_protocol.hash_chain import verify_log_entries

    site, state = a_purged_site(tmp_path)
    log = state / "deletions.jsonl"
    copy = copied(log, tmp_path / "deletions.jsonl")
    entries = verify_log_entries(copy, site_secret(state))[1]
    trained_ledger(state, {"entries": 1, "hash": entries[0]["hash"]})
    other = tmp_path / "other"
    assert main(["init-site", "--state-dir", str(other)]) == 0
    (other / "site-secret").write_bytes((state / "site-secret").read_bytes())
    purge(site, other, 30, "another history")
    purge(site, other, 30, "another history")
    log.write_bytes((other / "deletions.jsonl").read_bytes())
    head_path(log).write_bytes(head_path(other / "deletions.jsonl").read_bytes())
    capsys.readouterr()
    code, out, _ = verify_in_process(copy, capsys, "--state-dir", str(state))
    assert code == 0 and "the site's own deletion log there is not the one its ledger " in out, out
