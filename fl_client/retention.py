"""Retention and erasure at the site: which rows may still be used, and removing the rest from
every store the site derives from them. The server never sees any of it.

The policy is the site's own (node config, set by its IT team):

* ``retention-days`` (default 30; ``inf``: keep forever). A row dated more than this many days
  ago is *expired*: never used, for training or evaluation, and purged from the derived stores.
  The cut-off is rounded up to the next whole hour, so a row expires up to an hour early, never
  late, and "now" is never earlier than any entry of the deletion log, so a clock set back
  does not make expired rows usable again. Simulation: the run config's
  ``site-retention-days`` stands in (default ``inf``: the built-in synthetic and public
  benchmark data are historical).
* Under a finite retention, a row without a ``timestamp`` is not used (*undated*: nothing shows
  it is within the policy; dating it by its file's time would keep old rows of a file that is
  appended to), nor is a row dated more than a day ahead (*dated in the future*: it would outlive
  the policy).
* An erasure request (``fedintent forget``) is recorded in the deletion log: the customer as a
  keyed hash of its ``canonical_customer`` form (case, width, invisible characters, dashes and
  digit scripts do not tell ids apart), and its cut-off: the request's time plus the day of
  clock skew a row may be dated ahead, or the customer's newest row if that is later (a row
  exported in local time without an offset reads as UTC, so it can lie hours "ahead"; found in
  review: those rows survived the erasure). From then on every row of that customer dated up to
  the cut-off, or undated, is *erased*: never used again, wherever it still is. A customer who
  returns later brings new rows, dated after it, and is the same privacy unit in the ledger:
  their lifetime spend did not reset.

What the site derives from rows, and how each copy goes:

* the feature store (``STATE/features``): ``models.feature_store.prune`` keeps only the rows
  still in use; everything else in it is deleted;
* the ClientApp's in-memory copy of the rows: keyed by this policy, so it is reloaded when a row
  expires or a customer is erased, and the copy from before is dropped;
* the privacy ledger: per unit a keyed hash and its spend, no text; it is kept, since the spend
  is the guarantee. It records the deletion log's length after every entry, so a log restored
  from an older copy stops the site (``deletion_log.check_deletion_log``);
* the egress log: sizes, norms and epsilons; nothing per row;
* the data folder: the site's own records. fedintent reads them and removes rows from them only
  when the site asks (``--delete-from-data``).

Every purge and erasure appends to the deletion log (``STATE/deletions.jsonl``,
``deletion_log.py``): the run audit log's hash chain, with each entry and the head MACed with the
site secret (``fl_protocol/hash_chain.py``). An entry records the actor, the time, each record
kind and its count; never text, and a customer only as a keyed hash. ``fedintent audit verify``
checks it.
The ClientApp purges before every training round; ``fedintent purge`` (the site container runs
it on a schedule) covers the time between runs.
"""

import errno
import getpass
import hashlib
import hmac
import json
import math
import os
import re
import socket
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import NamedTuple, NoReturn

from fl_client.customer_ids import canonical_customer, erasure_forms
from fl_client.deletion_log import (
    RetentionError,
    append_deletion_entry,
    deletion_log_entries,
    has_deletion_log,
    refuse_an_older_log,
)
from fl_client.erase_lines import remove_lines
from fl_client.privacy_accounting import rdp_epsilon
from fl_client.privacy_ledger import (
    LedgerError,
    alone_spend,
    group_epsilon,
    privacy_unit_key,
    read_ledger,
    unit_epsilons,
)
from fl_client.redaction import redact
from fl_client.rows import FileStamp, RejectedRow, Row, SiteDataError
from fl_client.site_data import filter_rows, read_rows
from fl_client.site_folders import state_lock
from fl_client.site_secret import site_secret
from fl_protocol.durable_files import ReplacedNotFlushed
from fl_protocol.file_owner import os_error_line
from models.feature_store import Pruned, prune

FEATURES = "features"
FUTURE_SLACK = timedelta(days=1)
"""How far ahead a row may be dated (clock skew between the site's systems)."""
UNBOUNDED_CUT_OFF = datetime.max.replace(tzinfo=UTC)
"""The cut-off of an erasure whose rows could not be read: every row of the customer, whatever
its date."""
EXPIRED, UNDATED, FUTURE, ERASED = "expired", "undated", "dated in the future", "erased"
DELETED_FROM_DATA = (EXPIRED, ERASED)
"""The rows ``--delete-from-data`` removes from the data folder: those the policy has ended.
Undated and future-dated rows stay there for the site to fix."""


@dataclass(frozen=True)
class RowPolicy:
    """Which rows may be used now: called with a row's customer ids and timestamp, it returns
    why the row may not be (``None``: it may). Hashable, so a loaded copy of the data can be
    keyed by it."""

    not_before: datetime | None
    """Rows dated earlier are expired (``None``: no retention limit)."""
    not_after: datetime
    erased: tuple[tuple[str, datetime], ...] = ()
    """(keyed hash of the customer id, the erasure's cut-off), from the deletion log."""
    secret: bytes = field(default=b"", repr=False)

    def __call__(self, customers: tuple[str, ...], when: datetime | None) -> str | None:
        for customer in customers if self.erased else ():
            for form in erasure_forms(customer):
                erased_at = self._erased_at.get(customer_key(self.secret, form))
                if erased_at is not None and (when is None or when <= erased_at):
                    return ERASED
        if self.not_before is None:
            return None
        if when is None:
            return UNDATED
        if when < self.not_before:
            return EXPIRED
        if when > self.not_after:
            return FUTURE
        return None

    @cached_property
    def _erased_at(self) -> dict[str, datetime]:
        latest: dict[str, datetime] = {}
        for key, when in self.erased:
            latest[key] = max(when, latest.get(key, when))
        return latest


@dataclass(frozen=True)
class Deletion:
    """What one purge or erasure did; the same numbers are in its deletion-log entry."""

    not_used: Counter
    """Rows in the data folder the policy leaves out, by reason."""
    feature_rows: int
    """Rows removed from the feature store."""
    files: int
    """Files removed from the feature store."""
    data_rows: int
    """Rows removed from the data folder (``delete_from_data`` only)."""
    log_entry: int
    """The deletion log's entry number for this deletion."""
    ledger_problem: str = ""
    """Why the privacy ledger could not record the deletion log's new length ("" if it did, or
    the site has none yet): the deletion is done either way, and the site does not train until
    its ledger reads again."""


def customer_key(secret: bytes, customer: str) -> str:
    """How the deletion log names a customer: a keyed hash (its own domain, so it matches no
    ledger key), 128 bits."""
    return hmac.new(secret, b"erasure\0" + customer.encode(), hashlib.sha256).hexdigest()[:32]


def row_policy(state_dir: Path, retention_days: float, now: datetime | None = None) -> RowPolicy:
    """The policy now: the retention cut-off, and every erasure the deletion log records. "Now"
    is never earlier than any entry of the log: a clock set back must not make rows usable
    again that a purge already ended (found in review). Any entry, not the last: the entries
    are stamped by the same clock, so a purge run after it was set back logs the earlier time
    (found in review: the next load then used the purged rows again)."""
    erased: tuple[tuple[str, datetime], ...] = ()
    secret = b""
    now = now or datetime.now(UTC)
    if has_deletion_log(state_dir):  # a site that never deleted anything needs no secret to read
        secret = site_secret(state_dir)
        entries = deletion_log_entries(state_dir, secret)
        erased = tuple(sorted(
            (str(entry["customer"]), datetime.fromisoformat(str(entry["erased_at"])))
            for entry in entries if entry.get("event") == "erasure"
        ))
        now = max([now, *(datetime.fromisoformat(str(entry["time"])) for entry in entries)])
    not_before, not_after = retention_window(retention_days, now)
    return RowPolicy(not_before=not_before, not_after=not_after, erased=erased, secret=secret)


def retention_window(retention_days: float,
                     now: datetime | None = None) -> tuple[datetime | None, datetime]:
    """(earliest, latest) timestamp a row may have now; ``None``: no earliest. Whole hours, so
    a loaded copy of the data keyed by the policy stays valid for up to an hour."""
    now = now or datetime.now(UTC)
    not_before = None
    if math.isfinite(retention_days):
        try:
            not_before = _next_hour(now - timedelta(days=retention_days))
        except OverflowError:  # before the first date there is: every dated row is within it
            not_before = datetime.min.replace(tzinfo=UTC)  # (found in review: a traceback)
    return not_before, now.replace(minute=0, second=0, microsecond=0) + FUTURE_SLACK


def prune_features(state_dir: Path, live_texts: list[str], not_used: Counter,
                   actor: str, retention_days: float) -> Deletion:
    """Keep in the feature store only ``live_texts`` (the redacted texts in use), and log what
    was removed, if anything (a ClientApp does this every training round; the scheduled
    ``fedintent purge`` logs every run, removed or not). The caller holds ``state_lock``."""
    pruned = prune(Path(state_dir) / FEATURES, live_texts)
    if not (pruned.rows or pruned.files):
        return Deletion(not_used=not_used, feature_rows=0, files=0, data_rows=0, log_entry=0)
    return _logged(state_dir, "purge", actor, not_used, pruned.rows, pruned.files, 0,
                   {"retention_days": retention_days})


def purge(site_dir: Path, state_dir: Path, retention_days: float, actor: str,
          delete_from_data: bool = False, now: datetime | None = None,
          default_retention: bool = False) -> Deletion:
    """Apply the retention policy and the recorded erasures to every derived store at the site
    (and, if asked, to the data folder), and log what was removed. ``default_retention``: the
    caller did not know the site's retention and applied a default, which the log says, so that
    it is never taken for the site's (``recorded_retention_days``).

    A row leaves the data folder only if it has expired by this clock too: "now" for use is
    never earlier than the log's newest entry, and one purge stamped while the clock ran ahead
    would otherwise delete, for good, rows still within the retention (found in review)."""
    secret = site_secret(state_dir)  # a site's state folder, set up: never a stray one remade
    with state_lock(state_dir):
        refuse_an_older_log(state_dir, secret)
        policy = row_policy(state_dir, retention_days, now)
        rejected: list[RejectedRow] = []
        train, test = read_rows(site_dir, rejected)
        live, ended, not_used = _partition(train + test, policy)
        pruned = prune(Path(state_dir) / FEATURES, [redact(row.text) for row in live])
        details = {"retention_days": retention_days, "delete_from_data": delete_from_data}
        if default_retention:
            details["retention_default"] = True
        by_this_clock = replace(policy, not_before=retention_window(retention_days, now)[0])
        gone = [row for row, reason in filter_rows(ended, by_this_clock)[1]
                if reason in DELETED_FROM_DATA] if delete_from_data else []
        data_rows = _delete_rows_logged(state_dir, gone, "purge", actor, not_used, pruned,
                                        details)
        return _logged(state_dir, "purge", actor, not_used, pruned.rows, pruned.files,
                       data_rows, details)


class EarlierErasure(NamedTuple):
    """An erasure the deletion log records, with the spend it found."""

    asked_at: datetime
    ledger_units: int | None
    """Their privacy units the ledger held a spend for when it was asked for; None where the
    erasure did not count them (an earlier release's, or the ledger unreadable then) but found
    rows of theirs."""


@dataclass(frozen=True)
class Erasure:
    """What ``forget`` found and did for one customer."""

    rows_found: int
    erased_until: datetime
    """The cut-off recorded: no run uses their rows dated up to it (or undated)."""
    deletion: Deletion
    ledger_units: int
    """The customer's privacy units the ledger holds a spend for (kept)."""
    ledger_epsilon: float
    """The largest lifetime epsilon among them (0 if none), at ``ledger_delta``."""
    ledger_group_epsilon: float | None
    """Under the utterance unit, with more than one: all of them together, the customer's
    (``privacy_ledger.group_epsilon``; ``inf``: no bound); None otherwise."""
    ledger_delta: float
    """The ledger's delta, the site's own, which every lifetime epsilon of it is at (NaN with
    no ledger); found in review: the epsilon was printed without it."""
    ledger_problem: str = ""
    """Why the ledger could not be read for the two numbers above ("" if it was): the erasure
    is recorded and done either way (found in review: it was reported as a failure)."""
    rejected_mentions: tuple[str, ...] = ()
    """The data lines that failed validation and name the customer (``file:line``), or a file
    that could not be read and so searched: left in the data folder, which only a person can
    settle (found in review: ``--delete-from-data`` left them and reported success)."""
    forms: int = 1
    """How many ways the rows found write the id (``canonical_customer`` takes them as one)."""
    earlier_erasure: EarlierErasure | None = None
    """Where their spend can no longer be looked up, the earlier erasure that found it
    (``_unnamed_spend``); None otherwise."""
    other_case_rows: int = 0
    """Rows found whose id differs from the one given in case: no longer used, but not deleted
    from the data folder, since a case-sensitive system may hold another customer under it
    (found in review: ``--delete-from-data`` deleted such a customer's rows for good)."""


def forget(site_dir: Path, state_dir: Path, customer: str, retention_days: float, actor: str,
           delete_from_data: bool = False, now: datetime | None = None) -> Erasure:
    """Erase one customer at the site: record the request first (from then on no load uses
    their rows, even if this is interrupted), then remove their rows from every derived store
    (and, if asked, the data folder), and log what was removed. The ledger keeps their spend."""
    now = now or datetime.now(UTC)
    written, customer = customer.strip(), canonical_customer(customer)
    if not customer:
        raise ValueError("the customer id is empty")
    secret = site_secret(state_dir)  # a site's state folder, set up: never a stray one remade
    with state_lock(state_dir):
        refuse_an_older_log(state_dir, secret)
        rejected: list[RejectedRow] = []
        try:
            train, test = read_rows(site_dir, rejected)
        except (OSError, SiteDataError) as err:
            _unread_erasure(state_dir, secret, customer, actor, now, err)
        rows = train + test
        theirs = [row for row in rows if _is_customer(row, customer)]
        try:
            spend, problem = _ledger_spend(state_dir, secret, written, theirs), ""
        except LedgerError as err:
            spend, problem = LedgerSpend(0, 0.0, 0.0, None, math.nan, ""), str(err)
        units, unit = spend.units, spend.privacy_unit
        # every row present now, whatever clock or time zone dated it
        cut_off = max([now + FUTURE_SLACK, *(row.when for row in theirs if row.when is not None)])
        append_deletion_entry(
            state_dir, secret, "erasure",
            {"actor": actor, "customer": customer_key(secret, customer),
             "requested_at": now.isoformat(), "erased_at": cut_off.isoformat(),
             "rows_found": len(theirs), "ledger_units": None if problem else units})
        policy = row_policy(state_dir, retention_days, now)
        live, ended, not_used = _partition(rows, policy)
        pruned = prune(Path(state_dir) / FEATURES, [redact(row.text) for row in live])
        details = {"customer": customer_key(secret, customer),
                   "delete_from_data": delete_from_data}
        exact = canonical_customer(written, fold_case=False)
        same_case = [row for row in ended if _is_customer(row, customer)
                     and canonical_customer(str(row.customer), fold_case=False) == exact]
        gone = same_case if delete_from_data else []
        data_rows = _delete_rows_logged(state_dir, gone, "erasure-done", actor, not_used,
                                        pruned, details)
        if data_rows:  # the lines after those removed moved up: name them as they are now
            rejected = []
            read_rows(site_dir, rejected)
        deletion = _logged(state_dir, "erasure-done", actor, not_used, pruned.rows,
                           pruned.files, data_rows, details)
        return Erasure(rows_found=len(theirs), erased_until=cut_off, deletion=deletion,
                       ledger_units=units, ledger_epsilon=spend.epsilon,
                       ledger_group_epsilon=spend.group_epsilon, ledger_delta=spend.delta,
                       ledger_problem=problem,
                       earlier_erasure=_unnamed_spend(state_dir, secret, customer, theirs,
                                                      units, unit),
                       rejected_mentions=_mentions(site_dir, rejected, written),
                       forms=len({row.customer for row in theirs}) or 1,
                       other_case_rows=sum(
                           canonical_customer(str(row.customer), fold_case=False) != exact
                           for row in theirs))


def _unread_erasure(state_dir: Path, secret: bytes, customer: str, actor: str, now: datetime,
                    err: Exception) -> NoReturn:
    """Record an erasure whose customer's rows could not be read (found in review: a data
    folder this account may not read recorded nothing, while the site's account still used
    the rows), with the cut-off that needs none: every row of theirs, whatever its date (found
    in review: the request's time plus a day missed rows dated later, which a site without a
    retention limit uses, as does one whose log a clock running ahead stamped). Then say what
    was not done."""
    _, problem = append_deletion_entry(
        state_dir, secret, "erasure",
        {"actor": actor, "customer": customer_key(secret, customer),
         "requested_at": now.isoformat(), "erased_at": UNBOUNDED_CUT_OFF.isoformat(),
         "rows_found": None})
    reason = os_error_line(err) if isinstance(err, OSError) else str(err)
    ledger = (f"; the privacy ledger could not record the deletion log's new length, so the site "
              f"does not train until it reads again: {problem}" if problem else "")
    raise RetentionError(
        f"the erasure is recorded (no run uses any row of this customer, whatever its date, "
        f"from now on: its rows could not be read to date it), but the data folder could not be "
        f"read ({reason}): nothing was removed from the feature store or the data files; run "
        f"forget again once the folder can be read{ledger}") from err


def _is_customer(row: Row, canonical: str) -> bool:
    return row.customer is not None and canonical_customer(row.customer) == canonical


def _mentions(site_dir: Path, rejected: list[RejectedRow], customer: str) -> tuple[str, ...]:
    """Each rejected line that holds ``customer`` as a whole token (as written, \\u-escaped, or
    in the form erasures match, ``canonical_customer``), and each file that could not be read
    at all: where the loader could not tell whose a row is, the id decides."""
    forms = {customer.encode("utf-8"), json.dumps(customer)[1:-1].encode("ascii")}  # \u escapes
    token = re.compile(rb"(?<![\w-])(?:" + b"|".join(map(re.escape, forms)) + rb")(?![\w-])")
    canonical = re.compile(r"(?<![\w-])" + re.escape(canonical_customer(customer)) + r"(?![\w-])")
    lines: dict[str, set[int]] = {}
    found = []
    for row in rejected:
        if row.line == 0:
            found.append(f"{row.file} (unreadable: not searched)")
        else:
            lines.setdefault(row.file, set()).add(row.line)
    for file, wanted in sorted(lines.items()):
        try:
            with open(Path(site_dir) / file, "rb") as f:
                for number, raw in enumerate(iter(f.readline, b""), start=1):
                    if number in wanted and (token.search(raw) or canonical.search(
                            canonical_customer(_unescaped(raw.decode("utf-8", "replace"))))):
                        found.append(f"{file}:{number}")
        except OSError as err:
            found.append(f"{file} (unreadable: {err.strerror or err})")
    return tuple(found)


_JSON_ESCAPE = re.compile(r'\\(?:u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})'
                          r'|u([0-9a-fA-F]{4})|(["\\/]))')


def _unescaped(line: str) -> str:
    """A line with its JSON escapes read, so an id spelled with them is found: ``\\uXXXX``,
    surrogate pairs (a character beyond the BMP), and ``\\/`` (PHP writes every ``/`` so; found
    in review: such a line was not named)."""
    def read(found: re.Match) -> str:
        high, low, unit, plain = found.groups()
        if high:
            return chr(0x10000 + (int(high, 16) - 0xD800 << 10) + int(low, 16) - 0xDC00)
        return chr(int(unit, 16)) if unit else plain

    return _JSON_ESCAPE.sub(read, line)


def who_deletes(what: str) -> str:
    """Who deletes: the program, the account and the host (for the deletion log)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{what} (user {user} on {socket.gethostname()})"


def _partition(rows: list[Row], policy: RowPolicy) -> tuple[list[Row], list[Row], Counter]:
    """(rows in use, rows the policy has ended, counts of rows not used by reason)."""
    live, left_out = filter_rows(rows, policy)
    ended = [row for row, reason in left_out if reason in DELETED_FROM_DATA]
    return live, ended, Counter(reason for _, reason in left_out)


def _delete_rows(rows: list[Row]) -> tuple[int, str]:
    """(lines removed from the data folder, why it stopped before the rest: "" when it did
    not). A file replaced whose folder could not be flushed counts as removed: every reader
    already sees it without those lines."""
    by_file: dict[FileStamp | None, tuple[Path, set[int]]] = {}
    for row in rows:
        if row.file is not None:  # one file under two names (a link) is rewritten once
            by_file.setdefault(row.stamp, (Path(row.file), set()))[1].add(row.line)
    removed = 0
    for stamp, (path, lines) in sorted(by_file.items(), key=lambda item: item[1][0]):
        try:
            remove_lines(path, lines, stamp)
        except ReplacedNotFlushed as err:
            return removed + len(lines), (f"{err.strerror}; check the disk: until the folder "
                                          "is flushed, a power loss could bring those rows back")
        except OSError as err:
            hint = " (is the data folder mounted read-only?)" if err.errno == errno.EROFS else ""
            left = sum(len(rest) for _, rest in by_file.values()) - removed
            return removed, (f"cannot remove rows from {path}: {err.strerror or err}{hint}; "
                             f"{left} of the rows to remove are left, in it and in any file after "
                             "it: let the "
                             "site's account write the data folder and its files (chattr -i "
                             "on a file made immutable), then run this again, or delete the "
                             "rows at the source")
        except SiteDataError as err:
            return removed, str(err)
        removed += len(lines)
    return removed, ""


def _delete_rows_logged(state_dir: Path, rows: list[Row], event: str, who: str,
                        not_used: Counter, pruned: Pruned, details: dict) -> int:
    """``_delete_rows``; when the data folder refuses, what was already done (the erasure
    recorded, the derived copies and any data-folder lines removed) is logged and said first
    (found in review: the error read as if nothing had been done, and nothing logged the
    features removed, nor the lines of a file rewritten before its folder's flush failed)."""
    removed, problem = _delete_rows(rows)
    if problem:
        _logged(state_dir, event, who, not_used, pruned.rows, pruned.files, removed,
                details | {"delete_from_data": "failed"})
        erasure = "; the erasure stays recorded" if event == "erasure-done" else ""
        raise SiteDataError(f"the site's derived copies of the rows are removed and logged "
                            f"({pruned.rows} feature rows{erasure}), and "
                            f"{removed} of their lines in the data folder, but the data folder "
                            f"could not be brought up to date: {problem}")
    return removed


def _logged(state_dir: Path, event: str, who: str, not_used: Counter, feature_rows: int,
            files: int, data_rows: int, details: dict) -> Deletion:
    entry, problem = append_deletion_entry(
        state_dir, site_secret(state_dir), event,
        {"actor": who, **details, "rows_not_used": dict(sorted(not_used.items())),
         "deleted": {"feature rows": feature_rows, "feature files": files,
                     "data rows": data_rows}})
    return Deletion(not_used=not_used, feature_rows=feature_rows, files=files,
                    data_rows=data_rows, log_entry=int(entry["seq"]), ledger_problem=problem)


@dataclass(frozen=True)
class CustomerSpend:
    """What the site's ledger holds of one customer (``customer_spend``)."""

    rows_found: int
    """The customer's rows in the data folder now, in any written form of the id."""
    units: int
    """Their privacy units the ledger holds a spend for."""
    epsilon: float
    """The largest lifetime epsilon among them (0 if none), at ``delta``."""
    epsilon_alone: float
    """The same from the site's own noise only (distributed DP; else equal)."""
    group_epsilon: float | None
    """Under the utterance unit, with more than one: all of them together, the customer's
    (``privacy_ledger.group_epsilon``; ``inf``: no bound); None otherwise."""
    delta: float
    """The ledger's delta, the site's own (NaN with no ledger)."""
    earlier_erasure: EarlierErasure | None = None
    """Where an erasure left no row of theirs to name the units their spend is under, that
    erasure (``_unnamed_spend``); None otherwise."""


def customer_spend(site_dir: Path, state_dir: Path, customer: str) -> CustomerSpend:
    """How much of the site's privacy budget one customer's data has spent, over every run, read
    only: their privacy units are their rows' (in any form of the id; under the customer unit,
    the id itself too, whose spend outlives rows deleted since). Found in review: only
    ``forget``, which erases the customer, said it."""
    written, canonical = customer.strip(), canonical_customer(customer)
    if not canonical:
        raise ValueError("the customer id is empty")
    secret = site_secret(state_dir)
    train, test = read_rows(site_dir, [])
    theirs = [row for row in train + test if _is_customer(row, canonical)]
    spend = _ledger_spend(state_dir, secret, written, theirs)
    return CustomerSpend(len(theirs), spend.units, spend.epsilon, spend.epsilon_alone,
                         spend.group_epsilon, spend.delta,
                         _unnamed_spend(state_dir, secret, canonical, theirs, spend.units,
                                        spend.privacy_unit))


def _unnamed_spend(state_dir: Path, secret: bytes, customer: str, rows: list[Row], units: int,
                   privacy_unit: str) -> EarlierErasure | None:
    """The earlier erasure of ``customer`` (canonical) that found their spend
    (``_earlier_erasure``), where it cannot be looked up now because an erasure removed their
    rows: none left, none found in the ledger, under a privacy unit other than the customer
    (whose ledger key is the id itself, not their rows); the deletion log is read only then.
    Found in review: a customer deleted from the data was reported "never trained on", which
    the ledger, keeping their spend, contradicts. An erasure recorded by this ``forget`` found
    no rows, so it never counts for itself."""
    if rows or units or privacy_unit in ("", "customer"):
        return None
    return _earlier_erasure(state_dir, secret, customer)


def _earlier_erasure(state_dir: Path, secret: bytes, customer: str) -> EarlierErasure | None:
    """The newest erasure of ``customer`` (canonical) the deletion log records as having found
    spend of theirs in the ledger, else the newest that found rows of theirs without counting
    the spend (recorded by an earlier release, or with the ledger unreadable). One that found
    neither is none (found in review: a mistyped id forgotten twice read as erased with spend
    kept, and an erasure made before any training as spend the ledger keeps)."""
    if not has_deletion_log(state_dir):
        return None
    key = customer_key(secret, customer)
    counted, uncounted = [], []
    for entry in deletion_log_entries(state_dir, secret):
        if entry.get("event") != "erasure" or entry.get("customer") != key:
            continue
        asked, units = datetime.fromisoformat(str(entry["requested_at"])), entry.get("ledger_units")
        if isinstance(units, int) and units > 0:
            counted.append(EarlierErasure(asked, units))
        elif not isinstance(units, int) and isinstance(entry.get("rows_found"), int) and (
                entry["rows_found"] > 0):
            uncounted.append(EarlierErasure(asked, None))
    return (counted or uncounted or [None])[-1]


class LedgerSpend(NamedTuple):
    """What the ledger holds of one customer's units (``_ledger_spend``)."""

    units: int
    epsilon: float
    """The largest lifetime epsilon among them, at ``delta``."""
    epsilon_alone: float
    """The same from the site's own noise only."""
    group_epsilon: float | None
    """Under the utterance unit, with more than one unit: all of them together."""
    delta: float
    privacy_unit: str
    """The ledger's privacy unit; "" without a ledger."""


def _ledger_spend(state_dir: Path, secret: bytes, customer: str, rows: list[Row]) -> LedgerSpend:
    """What the ledger holds of the customer's ``rows``' units, and under the customer unit of
    the id itself."""
    ledger = read_ledger(Path(state_dir), secret)
    if ledger is None:
        return LedgerSpend(0, 0.0, 0.0, None, math.nan, "")
    identities = {row.unit_under(ledger.privacy_unit) for row in rows}
    if ledger.privacy_unit == "customer":
        identities.add(customer)
    keys = [key for key in (privacy_unit_key(secret, ledger.privacy_unit, identity)
                            for identity in sorted(identities)) if key in ledger.spend]
    together = (group_epsilon(ledger, keys)
                if ledger.privacy_unit == "utterance" and len(keys) > 1 else None)
    return LedgerSpend(len(keys), max(unit_epsilons(ledger, keys), default=0.0),
                       rdp_epsilon(alone_spend(ledger, keys), ledger.order, ledger.delta),
                       together, ledger.delta, ledger.privacy_unit)


def _next_hour(when: datetime) -> datetime:
    hour = when.replace(minute=0, second=0, microsecond=0)
    return hour if hour == when else hour + timedelta(hours=1)
