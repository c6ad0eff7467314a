"""What a crash or a mistake can do to a file fedintent writes: nothing half-written, nothing
overwritten that must not be, the permissions asked for, and strict JSON."""

import errno
import json
import math
import os
import shutil

import numpy as np
import pytest

from fl_protocol.durable_files import (
    FileExistsRefusal,
    append_line,
    create_exclusive,
    json_safe,
    remove_entry,
    sync_folder,
    write_bytes_atomic,
    write_json_atomic,
)
from fl_protocol.hash_chain import append_entry, verify_log


def test_a_failed_replace_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ledger.json"
    write_bytes_atomic(path, b"old", mode=0o600)

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(path, b"new", mode=0o600)
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]


def test_an_undone_line_is_flushed_and_only_a_folder_that_cannot_be_flushed_is_let_pass(
        tmp_path, monkeypatch):
    """Found in review: the cut-back of a torn line was never flushed (a power loss could bring
    the line back), and a folder's flush failing with an I/O error passed as if done."""
    path = tmp_path / "audit.jsonl"
    calls = []
    real_fsync, real_ftruncate = os.fsync, os.ftruncate
    monkeypatch.setattr(os, "ftruncate", lambda fd, n: calls.append("ftruncate")
                        or real_ftruncate(fd, n))

    def fsync_fails_once(fd):
        calls.append("fsync")
        if calls.count("fsync") == 1:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync_fails_once)
    with pytest.raises(OSError, match="Input/output"):
        append_line(path, "{}")
    assert calls == ["fsync", "ftruncate", "fsync"] and path.read_bytes() == b""
    for code, raised in ((errno.EIO, True), (errno.EINVAL, False), (errno.ENOTSUP, False)):
        def fails(fd, code=code):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(os, "fsync", fails)
        if raised:
            with pytest.raises(OSError, match=os.strerror(code)):
                sync_folder(tmp_path)
        else:
            sync_folder(tmp_path)


def test_files_get_the_mode_asked_for_and_folders_are_created(tmp_path):
    write_bytes_atomic(tmp_path / "out" / "metrics.json", b"{}")
    write_bytes_atomic(tmp_path / "state" / "ledger", b"x", mode=0o600)
    append_line(tmp_path / "state" / "egress.jsonl", "{}", mode=0o600)
    assert (tmp_path / "out" / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "state" / "ledger").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state" / "egress.jsonl").stat().st_mode & 0o777 == 0o600


def test_an_existing_file_is_never_replaced_by_create_exclusive(tmp_path):
    path = tmp_path / "keys" / "site-secret"
    create_exclusive(path, b"first", mode=0o600)
    with pytest.raises(FileExistsRefusal, match="refusing to overwrite"):
        create_exclusive(path, b"second", mode=0o600)
    assert path.read_bytes() == b"first" and path.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["site-secret"]


def test_lines_are_appended_whole(tmp_path):
    path = tmp_path / "audit.jsonl"
    for n in range(3):
        append_line(path, json.dumps({"n": n}))
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [0, 1, 2]


def test_a_line_the_disk_fills_part_way_through_is_undone_and_the_log_still_extends(
        tmp_path, monkeypatch):
    """Before the fix, half an audit entry stayed in the file: the chain then read as torn or
    edited, and the run could never be resumed or extended (found in review)."""
    path = tmp_path / "audit.jsonl"
    append_entry(path, "run-started", {"run_name": "r"})
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError, match="No space left"):
        append_entry(path, "round", {"run_name": "r", "round": 1})
    monkeypatch.undo()
    assert path.read_bytes() == before
    append_entry(path, "round", {"run_name": "r", "round": 1})  # space freed: it extends
    assert verify_log(path).ok and len(path.read_text().splitlines()) == 2


def test_json_has_no_infinity_and_no_nan(tmp_path):
    value = {1: [math.inf, -math.inf, math.nan, np.float32(0.5), (np.int64(3), "a", None)]}
    assert json_safe(value) == {"1": [None, None, None, 0.5, [3, "a", None]]}
    assert json.loads(json.dumps(json_safe(value), allow_nan=False))["1"][3] == 0.5
    assert json_safe(value, infinity="inf")["1"][0] == "inf"
    write_json_atomic(tmp_path / "r.json", {"epsilon": math.inf}, infinity="inf")
    assert json.loads((tmp_path / "r.json").read_text()) == {"epsilon": "inf"}


def test_remove_entry_takes_a_link_never_what_it_points_to(tmp_path):
    """A failed start removes what it made; a link it finds there (a data volume, an output
    folder given as a link) goes as a link, and what it points to stays whole."""
    kept = tmp_path / "kept"
    (kept / "inside").mkdir(parents=True)
    (kept / "inside" / "rows.jsonl").write_text("{}\n")
    made = tmp_path / "made"
    (made / "sub").mkdir(parents=True)
    (made / "sub" / "file").write_text("x")
    (tmp_path / "link").symlink_to(kept)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    for name in ("made", "link", "dangling", "file", "never-there"):
        remove_entry(tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert (kept / "inside" / "rows.jsonl").read_text() == "{}\n"


def test_remove_entry_reports_a_failed_removal_unless_told_to_pass_it_over(tmp_path,
                                                                           monkeypatch):
    (tmp_path / "made" / "sub").mkdir(parents=True)

    def refused(path, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(shutil, "rmtree", refused)
    with pytest.raises(PermissionError):
        remove_entry(tmp_path / "made")
    remove_entry(tmp_path / "made", ignore_errors=True)
    assert (tmp_path / "made" / "sub").is_dir()
