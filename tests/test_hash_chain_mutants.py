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
    write = hash_chain.write_bytes_atomic
    writes: list[Path] = []

    def second_head_write_fails(target: Path, data: bytes, mode: int = 0o644) -> None:
        writes.append(target)
        if len(writes) == 2:
            raise OSError(28, "No space left on device", str(target))
        write(target, data, mode)

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", second_head_write_fails)
    with pytest.raises(OSError, match="No space"):
        append_entry(path, "erasure", {"n": 1}, key=key)
    monkeypatch.undo()
    assert read_entries(path, key=key) == [] and verify_log(path, key).ok
    append_entry(path, "erasure", {"n": 2}, key=key)
    assert [e["n"] for e in read_entries(path, key=key)] == [2]
    assert json.loads(head_path(path).read_text())["entries"] == 1

