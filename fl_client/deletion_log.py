"""The site's deletion log: the record of every row it stopped using and deleted, and of every
customer it was asked to forget. The counterpart of ``privacy_ledger.py``: the ledger keeps what
each privacy unit spent, this log what the site promised to forget.

The log (``STATE/deletions.jsonl``) is the run audit log's hash chain
(``fl_protocol/hash_chain.py``), each entry and the head beside it MACed with the site secret.
Every purge and erasure (``retention.py``) appends one entry: the actor, the time, each record
kind and its count (a purge: the retention it applied); never text, and a customer only as a
keyed hash. ``fedintent audit verify`` checks it.

What it protects: an erased customer's rows are never used again, wherever they still are,
because the log names the customer. A log deleted, or restored from an older copy, no longer
does, so those rows would be read, trained on and evaluated again. The privacy ledger therefore
records the log's length and last hash whenever the log grows (``append_deletion_entry``) and at
every charge, and the rule that the log is that one or a later one (``deletion_log_problem``) is
enforced

* before any row is read: the ClientApp stops the site (``check_deletion_log``);
* at every charge: ``privacy_budget.charge_round`` refuses to train (``deletion_log_check``);
* before a purge or erasure extends the log: it is refused (``refuse_an_older_log``), since an
  entry appended to an older log is lost when the newest copy is restored over it;
* and reported by ``fedintent privacy-report`` and ``fedintent audit verify``.

A broken log (``RetentionError``) also stops the site until it is restored from a backup.
"""

import math
from pathlib import Path

from fl_client.privacy_ledger import (
    HEAD_FILE,
    LEDGER_FILE,
    LedgerError,
    read_ledger,
    write_ledger,
)
from fl_client.rows import SiteDataError
from fl_client.site_secret import site_secret
from fl_protocol.hash_chain import ChainError, append_entry, extends, head_path, read_entries

DELETION_LOG = "deletions.jsonl"


class RetentionError(SiteDataError):
    """The site's deletion records are unusable (a broken deletion log): it must not use its
    data until they are restored, or it could use rows it promised to forget."""


def append_deletion_entry(state_dir: Path, secret: bytes, event: str,
                          fields: dict) -> tuple[dict, str]:
    """Append one entry to the deletion log, then record the log's new length in the privacy
    ledger, if the site has one: a log later restored from a copy older than this entry stops
    the site before any row is read (found in review: the ledger recorded it only at charges,
    so erasures made after the last charge were lost, unnoticed, when the log was restored as
    the guide said). Returns (the entry, why the ledger could not record it, or "")."""
    try:
        entry = append_entry(Path(state_dir) / DELETION_LOG, event, fields, key=secret)
    except ChainError as err:
        raise RetentionError(f"deletion log: {err}") from err
    try:
        ledger = read_ledger(Path(state_dir), secret)
    except LedgerError as err:  # the site does not train until it reads; the entry stands
        return entry, str(err)
    if ledger is not None:
        # never over a log older than the one recorded: that would bless it (found in review)
        _, problem = deletion_log_check(state_dir, secret, ledger.deletion_log)
        if problem:
            return entry, problem
        ledger.deletion_log = {"entries": int(entry["seq"]), "hash": str(entry["hash"])}
        write_ledger(Path(state_dir), ledger, secret)
    return entry, ""


def refuse_an_older_log(state_dir: Path, secret: bytes) -> None:
    """Refuse to extend a deletion log that is broken, or older than the one the privacy ledger
    recorded: an entry appended there would be lost when the log is repaired as the guide says,
    by restoring the newest copy over it (found in review: an erasure recorded so, and reported
    done, was undone by that repair, and a scheduled purge added an entry each time). The site
    reads no row until the log is repaired, so nothing is used meanwhile. A ledger that does
    not read leaves the log as it is: its repair restores the whole folder, and ``forget`` then
    says to run it again."""
    entries = deletion_log_entries(state_dir, secret)
    try:
        ledger = read_ledger(Path(state_dir), secret)
    except LedgerError:
        return
    problem = deletion_log_problem(entries, ledger.deletion_log) if ledger else None
    if problem:
        raise RetentionError(
            f"{problem}; nothing is recorded or removed. Restore the deletion log and its head "
            "from the newest copy (docs/SITE_GUIDE.md, \"Only the deletion log is older\"), "
            "then run this again")


def has_deletion_log(state_dir: Path) -> bool:
    log = Path(state_dir) / DELETION_LOG
    return log.exists() or head_path(log).exists()


def deletion_log_entries(state_dir: Path, secret: bytes) -> list[dict]:
    try:
        return read_entries(Path(state_dir) / DELETION_LOG, key=secret)
    except ChainError as err:
        if isinstance(err.__cause__, PermissionError):
            raise RetentionError(f"deletion log: {err}; the site does not use its data until "
                                 "it can read it") from err
        raise RetentionError(f"deletion log: {err}; the site does not use its data until the "
                             "log is restored from a backup (it records which customers were "
                             "erased)") from err


def deletion_log_check(state_dir: Path, secret: bytes,
                       recorded: dict) -> tuple[dict, str | None]:
    """(``{"entries", "hash"}`` of the site's deletion log now, empty without one; why it is not
    the log a ledger ``recorded`` when it last grew, or a later one, or None), from one read:
    deleted, or restored from an older copy, it no longer names every erased customer, whose
    rows would be used again."""
    entries = deletion_log_entries(state_dir, secret) if has_deletion_log(state_dir) else []
    now = {"entries": len(entries), "hash": entries[-1]["hash"]} if entries else {}
    return now, deletion_log_problem(entries, recorded)


def deletion_log_problem(entries: list[dict], recorded: dict) -> str | None:
    """Why a deletion log of ``entries`` (verified) is not the one a ledger ``recorded`` when it
    last grew, or a later one, or None: the site's rule, for a caller that has read the log."""
    if extends(entries, recorded):
        return None
    held = "1 entry" if len(entries) == 1 else f"{len(entries)} entries"
    count = int(recorded["entries"])
    if len(entries) < count:
        return (f"the deletion log holds {held}, but the privacy ledger recorded {count} when "
                "it last grew: it was deleted or restored from an older copy, and customers "
                "erased since would be used again")
    return (f"the deletion log's entry {count} is not the one the privacy ledger recorded when "
            f"the log last grew (it holds {held}): it was rewritten, or restored from a copy "
            "of another history, and customers erased in the one recorded may be used again")


def recorded_retention_days(state_dir: Path) -> float | None:
    """The retention the site's deletion log last recorded (every purge records the one it
    applied; so does a ClientApp's, from the node config), or None without one: what a purge
    run by hand should apply when it is not told (found in review: it applied a default of 30
    days, and with ``--delete-from-data`` deleted rows a 365-day site still keeps)."""
    if not has_deletion_log(state_dir):
        return None
    recorded = [entry["retention_days"]
                for entry in deletion_log_entries(state_dir, site_secret(state_dir))
                if "retention_days" in entry and not entry.get("retention_default")]
    if not recorded:
        return None
    return math.inf if recorded[-1] is None else float(recorded[-1])  # JSON's null: no limit


def older_log_refusal(state_dir: Path, problem: str, consequence: str) -> LedgerError:
    """The ``LedgerError`` that stops the site over a deletion log that is not the one the
    privacy ledger recorded (``problem``, from ``deletion_log_check``), saying what is not done
    (``consequence``) and how to repair it: one wording for the check before rows are read
    (``check_deletion_log``) and the one at the charge (``privacy_budget.charge_round``)."""
    return LedgerError(f"{state_dir}: {problem}; {consequence}. Restore the deletion log and its "
                       "head from the newest copy (docs/SITE_GUIDE.md)")


def check_deletion_log(state_dir: Path) -> None:
    """Raise ``LedgerError`` when the deletion log is not the one the privacy ledger recorded
    when it last grew (or a later one), before any row is read: under a log deleted or restored
    from an older copy, customers erased since would be read, featurized into the feature store
    and scored by an exact evaluation, none of which is charged (found in review: the check ran
    only at the charge)."""
    if not any((Path(state_dir) / name).exists() for name in (LEDGER_FILE, HEAD_FILE)):
        return  # nothing charged yet, so nothing recorded
    secret = site_secret(state_dir)
    ledger = read_ledger(Path(state_dir), secret)
    _, problem = deletion_log_check(state_dir, secret, ledger.deletion_log if ledger else {})
    if problem:
        raise older_log_refusal(state_dir, problem, "the site does not use its data")
