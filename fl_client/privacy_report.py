"""What a site's privacy ledgers say: cumulative epsilon and the history of every run.

Read-only: it verifies each ledger with the site secret (so a tampered ledger is reported, not
trusted) and recomputes epsilon with the same accountant code training uses.
"""

import json
from dataclasses import dataclass
from pathlib import Path

from fl_client.privacy_accounting import epsilon_spent
from fl_client.privacy_ledger import LedgerEntry, LedgerError, read_ledger
from fl_client.site_secret import SecretError, site_secret


@dataclass(frozen=True)
class RunSummary:
    run: str
    rounds: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    epsilon: float
    first: str
    last: str


@dataclass(frozen=True)
class LedgerReport:
    path: Path
    data_fingerprint: str
    privacy_unit: str
    accountant: str
    delta: float
    epsilon: float
    runs: list[RunSummary]


def site_privacy_report(state_dir: Path) -> list[LedgerReport]:
    """One report per ledger (per distinct training data) in a site's state folder."""
    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        raise FileNotFoundError(f"state folder not found: {state_dir}")
    paths = sorted(state_dir.glob("privacy-ledger-*.json"))
    if not paths:
        return []
    try:
        secret = site_secret(state_dir, create=False)
    except SecretError as err:
        raise LedgerError(f"cannot verify the ledgers: {err}") from err
    return [_report(path, secret) for path in paths]


def _report(path: Path, secret: bytes) -> LedgerReport:
    try:
        fingerprint = json.loads(path.read_text(encoding="utf-8"))["data_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise LedgerError(f"{path}: unreadable privacy ledger ({err})") from err
    entries = read_ledger(path, fingerprint, secret)
    latest = entries[-1]
    runs: dict[str, list[LedgerEntry]] = {}
    for entry in entries:
        runs.setdefault(entry.run, []).append(entry)
    return LedgerReport(
        path=path,
        data_fingerprint=fingerprint,
        privacy_unit=latest.privacy_unit,
        accountant=latest.accountant,
        delta=latest.delta,
        epsilon=epsilon_spent([e.release for e in entries], latest.delta, latest.accountant),
        runs=[_run_summary(name, run, latest) for name, run in runs.items()],
    )


def _run_summary(name: str, entries: list[LedgerEntry], latest: LedgerEntry) -> RunSummary:
    first = entries[0]
    return RunSummary(
        run=name,
        rounds=len(entries),
        noise_multiplier=first.noise_multiplier,
        sample_rate=first.sample_rate,
        steps=first.steps,
        clip_norm=first.clip_norm,
        epsilon=epsilon_spent([e.release for e in entries], latest.delta, latest.accountant),
        first=first.time,
        last=entries[-1].time,
    )
