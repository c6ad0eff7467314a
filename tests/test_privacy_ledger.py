"""The site's privacy ledger: durable, append-only, verified, and never silently reset."""

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
from fl_client.site_secret import SecretError, site_secret

FINGERPRINT = "ab" * 32
SECRET = b"s" * 32


def entry(run: str = "run-1", server_round: int = 1, sigma: float = 1.1) -> LedgerEntry:
    return LedgerEntry(
        run=run, server_round=server_round, noise_multiplier=sigma, sample_rate=0.1,
        steps=10, clip_norm=1.0, delta=1e-5, accountant="prv", privacy_unit="utterance",
        time=now(),
    )


@pytest.fixture
def ledger(tmp_path):
    path = ledger_path(tmp_path, FINGERPRINT)
    for run, server_round in (("a", 1), ("a", 2), ("b", 1)):
        append_entry(path, FINGERPRINT, entry(run, server_round), SECRET)
    return path


def test_absent_ledger_means_nothing_spent(tmp_path):
    assert read_ledger(ledger_path(tmp_path, FINGERPRINT), FINGERPRINT, SECRET) == []


def test_entries_accumulate_across_runs(ledger):
    history = read_ledger(ledger, FINGERPRINT, SECRET)
    assert [(e.run, e.server_round) for e in history] == [("a", 1), ("a", 2), ("b", 1)]
    assert not list(ledger.parent.glob("*.tmp"))


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "",
        "[]",
        json.dumps({"format": "something-else", "data_fingerprint": FINGERPRINT, "releases": []}),
        json.dumps({"format": "fedintent-privacy-ledger/2", "data_fingerprint": FINGERPRINT}),
        json.dumps({"format": "fedintent-privacy-ledger/2", "data_fingerprint": FINGERPRINT,
                    "releases": [{"run": "x"}]}),
        json.dumps({"format": "fedintent-privacy-ledger/2", "data_fingerprint": FINGERPRINT,
                    "releases": ["x"]}),
    ],
)
def test_corrupt_ledger_refuses_and_is_left_untouched(tmp_path, content):
    path = ledger_path(tmp_path, FINGERPRINT)
    path.write_text(content)
    with pytest.raises(LedgerError):
        read_ledger(path, FINGERPRINT, SECRET)
    with pytest.raises(LedgerError):
        append_entry(path, FINGERPRINT, entry(), SECRET)
    assert path.read_text() == content


def edit(path, change) -> None:
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))


@pytest.mark.parametrize(
    "tamper",
    [
        lambda d: d["releases"][0].update(noise_multiplier=50.0),  # looks cheaper: edited
        lambda d: d["releases"][1].update(steps=1),
        lambda d: d["releases"].pop(0),                             # deleted first entry
        lambda d: d["releases"].pop(),                              # truncated
        lambda d: d["releases"].reverse(),                          # reordered
        lambda d: d["releases"].append(dict(d["releases"][0])),     # duplicated
        lambda d: d.update(releases=[]),                            # reset
        lambda d: d.pop("mac"),
    ],
)
def test_tampered_ledger_is_refused(ledger, tamper):
    edit(ledger, tamper)
    with pytest.raises(LedgerError, match="refusing to train"):
        read_ledger(ledger, FINGERPRINT, SECRET)


def test_a_ledger_does_not_verify_under_another_site_secret(ledger):
    with pytest.raises(LedgerError):
        read_ledger(ledger, FINGERPRINT, b"t" * 32)


def test_a_one_byte_edit_is_refused(ledger):
    raw = bytearray(ledger.read_bytes())
    position = raw.index(b'"steps": 10') + len(b'"steps": 1')
    raw[position] = ord("1")
    ledger.write_bytes(bytes(raw))
    with pytest.raises(LedgerError):
        read_ledger(ledger, FINGERPRINT, SECRET)


def test_ledger_of_other_data_is_refused(ledger):
    with pytest.raises(LedgerError, match="different training data"):
        read_ledger(ledger, "cd" * 32, SECRET)


def test_site_secret_is_created_once_private_and_checked(tmp_path):
    first = site_secret(tmp_path)
    assert site_secret(tmp_path) == first and len(first) == 32
    assert (tmp_path / "site-secret").stat().st_mode & 0o077 == 0
    (tmp_path / "site-secret").write_text("zz")
    with pytest.raises(SecretError):
        site_secret(tmp_path)
    with pytest.raises(SecretError, match="missing"):
        site_secret(tmp_path / "elsewhere", create=False)
