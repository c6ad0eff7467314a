"""Provenance: which code made a ``metrics.json`` or a benchmark, and on which data; reading it
never fails a run."""

import hashlib
import json
import re
import subprocess

import pytest

from fedintent.bench.sweep import BenchSpec, claim_sweep_folder
from fl_server.provenance import (
    PACKAGES,
    commit_text,
    file_sha256,
    git_commit,
    git_dirty,
    provenance_changes,
    software_provenance,
)
from fl_server.run_record import RunRecord


def test_software_provenance_names_every_package_and_the_checkouts_commit():
    record = software_provenance()
    assert set(record["versions"]) == set(PACKAGES)
    assert record["versions"]["flwr"] == "1.41.0"
    if "git_commit" in record:  # absent when the tests run from an installed copy
        assert re.fullmatch(r"[0-9a-f]{40}", record["git_commit"])


def test_no_commit_outside_a_checkout_or_without_git(tmp_path, monkeypatch):
    assert git_commit(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # no git to run
    assert git_commit(tmp_path) is None
    assert "versions" in software_provenance()


def test_metrics_json_records_the_software(tmp_path):
    RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    doc = json.loads((tmp_path / "metrics.json").read_text())
    assert doc["provenance"] == software_provenance()


def test_bench_json_records_the_datasets_hashes_and_each_invocation(tmp_path):
    data = tmp_path / "csv"
    data.mkdir()
    (data / "train.csv").write_text("text,label\nhi,greet\n", encoding="utf-8")
    (data / "test.csv").write_text("text,label\nhello,greet\n", encoding="utf-8")
    spec = BenchSpec(data=str(data), sites=2, alpha=0.5, epsilons=[8.0], seeds=1,
                     partition_seed=0, rounds=1)
    out = tmp_path / "out"
    out.mkdir()
    claim_sweep_folder(out, spec)
    claim_sweep_folder(out, spec)
    recorded = json.loads((out / "bench.json").read_text())
    assert recorded["dataset_sha256"] == {
        "train.csv": hashlib.sha256(b"text,label\nhi,greet\n").hexdigest(),
        "test.csv": file_sha256(data / "test.csv")}
    assert len(recorded["software"]) == 2
    assert (recorded["sites"], recorded["alpha"], recorded["partition_seed"]) == (2, 0.5, 0)


def test_a_sweep_folder_refuses_the_same_path_with_other_data(tmp_path):
    data = tmp_path / "csv"
    data.mkdir()
    (data / "train.csv").write_text("text,label\nhi,greet\n", encoding="utf-8")
    spec = BenchSpec(data=str(data), sites=2, alpha=0.5, epsilons=[8.0], seeds=1,
                     partition_seed=0, rounds=1)
    claim_sweep_folder(tmp_path, spec)
    (data / "train.csv").write_text("text,label\nbye,farewell\n", encoding="utf-8")
    before = hashlib.sha256(b"text,label\nhi,greet\n").hexdigest()[:12]
    now = file_sha256(data / "train.csv")[:12]
    with pytest.raises(ValueError, match=rf"other settings than this one \(dataset_sha256\."
                                         rf"train\.csv: {before} there, {now} now; in "):
        claim_sweep_folder(tmp_path, spec)


def test_provenance_changes_name_each_version_and_the_commit_that_differ():
    before = {"versions": {"torch": "2.13.0", "numpy": "2.4.6", "flwr": None},
              "git_commit": "a" * 40}
    assert provenance_changes(before, before) == []
    after = {"versions": {"torch": "2.14.0", "numpy": "2.4.6", "flwr": "1.41.0"},
             "git_commit": "b" * 40}
    assert provenance_changes(before, after) == [
        "flwr None -> 1.41.0", "torch 2.13.0 -> 2.14.0", f"git commit {'a' * 12} -> {'b' * 12}"]
    assert provenance_changes(before, {"versions": {"torch": "2.13.0"}}) == []  # nothing to compare


def test_a_checkout_with_changes_to_tracked_files_is_recorded_as_dirty(tmp_path):
    """Found in review: a report cited a commit while tracked files differed from it, so the
    commit named was not the code that made its numbers. Untracked files are not the code."""
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                        "user.email=t@example.org", *args], check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-q", "-m", "one")
    commit = git_commit(tmp_path)
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert git_dirty(tmp_path) is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_dirty(tmp_path) is True
    assert git_dirty(tmp_path / "notes.txt") is None  # not a folder git can read
    dirty = {"versions": {}, "git_commit": commit, "git_dirty": True}
    assert commit_text(dirty) == f"{commit}+dirty"
    assert provenance_changes({"versions": {}, "git_commit": commit}, dirty) == [
        f"git commit {commit[:12]} -> {commit[:12]}+dirty"]
