"""The site's privacy ledger: every DP release its training data has been part of.

One JSON file per training-data fingerprint in the site's state folder. A release is written
(atomically, fsync'd) *before* the model update that it pays for leaves the site, so a crash
after charging can only over-count, never under-count.

Each entry carries a MAC chained to the previous entry's, and the document a MAC over the entry
count and the last entry's MAC, both keyed with the site secret (``site_secret.py``): an edited
value, a deleted, reordered or appended entry, or a truncated ledger no longer verifies. A
ledger that cannot be parsed or verified, or whose fingerprint does not match the data, stops
the site with an error; it is never reset silently.
"""

import hmac
import json
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from fl_client.site_secret import ledger_mac
from fl_server.atomic_write import write_bytes_atomic

FORMAT = "fedintent-privacy-ledger/2"


class LedgerError(RuntimeError):
    """The ledger is unreadable or inconsistent; the site must not train until it is resolved."""


@dataclass(frozen=True)
class LedgerEntry:
    run: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    delta: float
    accountant: str
    privacy_unit: str
    time: str

    @property
    def release(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def ledger_path(state_dir: Path, data_fingerprint: str) -> Path:
    return Path(state_dir) / f"privacy-ledger-{data_fingerprint[:16]}.json"


def read_ledger(path: Path, data_fingerprint: str, secret: bytes) -> list[LedgerEntry]:
    """All recorded releases for this data, verified; an absent file means nothing spent yet."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("format") != FORMAT:
            raise LedgerError(f"{path}: not a fedintent privacy ledger (format {FORMAT!r})")
        if document.get("data_fingerprint") != data_fingerprint:
            raise LedgerError(f"{path}: ledger belongs to different training data")
        records = document["releases"]
        entries = [_entry_from(record) for record in records]
    except LedgerError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise LedgerError(
            f"{path}: privacy ledger is corrupt ({err}); refusing to train. Restore it from a "
            "backup: deleting it would forget privacy budget already spent."
        ) from err
    previous = ""
    for number, (entry, record) in enumerate(zip(entries, records, strict=True), start=1):
        expected = ledger_mac(secret, previous, _canonical(entry))
        if not hmac.compare_digest(expected, str(record.get("mac", ""))):
            raise LedgerError(
                f"{path}: release {number} does not verify (edited, reordered or inserted); "
                "refusing to train"
            )
        previous = expected
    if not hmac.compare_digest(_document_mac(secret, entries, previous),
                               str(document.get("mac", ""))):
        raise LedgerError(f"{path}: ledger was truncated or extended; refusing to train")
    for entry in entries:
        if not (entry.noise_multiplier > 0 and 0 < entry.sample_rate <= 1 and entry.steps > 0):
            raise LedgerError(f"{path}: invalid release in ledger: {entry}")
    return entries


def append_entry(
    path: Path, data_fingerprint: str, entry: LedgerEntry, secret: bytes
) -> list[LedgerEntry]:
    """Durably add one release and return the full, verified history including it."""
    path = Path(path)
    entries = read_ledger(path, data_fingerprint, secret) + [entry]
    records, previous = [], ""
    for item in entries:
        previous = ledger_mac(secret, previous, _canonical(item))
        records.append(asdict(item) | {"mac": previous})
    document = {
        "format": FORMAT,
        "data_fingerprint": data_fingerprint,
        "releases": records,
        "mac": _document_mac(secret, entries, previous),
    }
    write_bytes_atomic(path, json.dumps(document, indent=1).encode("utf-8"))
    return entries


def _entry_from(record: dict) -> LedgerEntry:
    names = {f.name for f in fields(LedgerEntry)}
    if not isinstance(record, dict):
        raise ValueError(f"release is a {type(record).__name__}, not an object")
    if set(record) != names | {"mac"}:
        raise ValueError(f"release with fields {sorted(record)}")
    return LedgerEntry(**{k: v for k, v in record.items() if k in names})


def _canonical(entry: LedgerEntry) -> str:
    return json.dumps(asdict(entry), sort_keys=True, separators=(",", ":"))


def _document_mac(secret: bytes, entries: list[LedgerEntry], last_mac: str) -> str:
    return ledger_mac(secret, last_mac, f"count={len(entries)}")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
