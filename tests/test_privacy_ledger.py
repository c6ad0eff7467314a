"""The site's privacy ledger: durable, append-only, and never silently reset."""

import json

import pytest

from fl_client.privacy_ledger import (
    LedgerEntry,
    LedgerError,
    append_entry,
    ledger_path,
    now,
    read_ledger,
)

FINGERPRINT = "ab" * 32


def entry(run: str = "run-1", server_round: int = 1, sigma: float = 1.1) -> LedgerEntry:
    return LedgerEntry(
        run=run, server_round=server_round, noise_multiplier=sigma, sample_rate=0.1,
        steps=10, clip_norm=1.0, delta=1e-5, accountant="prv", privacy_unit="utterance",
        time=now(),
    )


def test_absent_ledger_means_nothing_spent(tmp_path):
    assert read_ledger(ledger_path(tmp_path, FINGERPRINT), FINGERPRINT) == []


def test_entries_accumulate_across_runs(tmp_path):
    path = ledger_path(tmp_path, FINGERPRINT)
    append_entry(path, FINGERPRINT, entry(run="a", server_round=1))
    append_entry(path, FINGERPRINT, entry(run="a", server_round=2))
    history = append_entry(path, FINGERPRINT, entry(run="b", server_round=1))
    assert [(e.run, e.server_round) for e in history] == [("a", 1), ("a", 2), ("b", 1)]
    assert read_ledger(path, FINGERPRINT) == history
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        json.dumps({"format": "something-else", "data_fingerprint": FINGERPRINT, "releases": []}),
        json.dumps({"format": "fedintent-privacy-ledger/1", "data_fingerprint": FINGERPRINT}),
        json.dumps({"format": "fedintent-privacy-ledger/1", "data_fingerprint": FINGERPRINT,
                    "releases": [{"run": "x"}]}),
    ],
)
def test_corrupt_ledger_refuses_and_is_left_untouched(tmp_path, content):
    path = ledger_path(tmp_path, FINGERPRINT)
    path.write_text(content)
    with pytest.raises(LedgerError):
        read_ledger(path, FINGERPRINT)
    with pytest.raises(LedgerError):
        append_entry(path, FINGERPRINT, entry())
    assert path.read_text() == content


def test_edited_release_values_are_refused(tmp_path):
    path = ledger_path(tmp_path, FINGERPRINT)
    append_entry(path, FINGERPRINT, entry())
    document = json.loads(path.read_text())
    document["releases"][0]["noise_multiplier"] = 0.0
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerError, match="invalid release"):
        read_ledger(path, FINGERPRINT)


def test_ledger_of_other_data_is_refused(tmp_path):
    path = ledger_path(tmp_path, FINGERPRINT)
    append_entry(path, FINGERPRINT, entry())
    with pytest.raises(LedgerError, match="different training data"):
        read_ledger(path, "cd" * 32)
