"""Reading and validating a site's own conversation data: the loader's contract.

A site folder holds either

* ``train.jsonl`` / ``test.jsonl``: one conversation per line, with ``turns`` and an ``intent``;
  the turn that carries the intent is ``turns[intent_turn]``, or the first customer turn when
  ``intent_turn`` is absent. A flat ``{"text": ..., "label": ...}`` line is accepted too.
* ``train.csv`` / ``test.csv``: a header with ``text,label`` (optionally ``customer_id``), one
  row per line: a quoted field may not span lines (a line with an odd number of ``"`` is
  rejected, with the reason), and a label's surrounding spaces are dropped.

Without a ``train.*`` file, every ``*.jsonl`` and ``*.csv`` file in the folder is read and split
deterministically at the site (by a hash of the customer, so one customer's conversations never
straddle train and test).

Site data never takes a site down: whatever makes a row unusable skips that row, reported as
``file:line: reason``; a file that cannot be read is reported the same way (line 0: the whole
file). Opening and decoding files is ``data_files``; one line to a row, and a row's identity, is
``row_parsing``. ``load_site`` raises only when there is no folder or no data file; a site with
no usable rows is for its caller to refuse, saying so. Rows whose label is not in the run's
taxonomy are skipped and counted. Text is PII-redacted here, before any tokenizer or encoder
sees it.

Every row has a stable identity (``row_parsing``), so that the privacy ledger can charge the same
utterance and the same customer across data versions; ``data_checks.unread_customer_keys`` names
the columns and keys that look like a customer's but are not read. Training uses one row per
identity: ``one_row_per_id`` names the others as ``file:line``.

A row may carry a ``timestamp`` (field or column): an ISO 8601 date-time, UTC unless it names
another offset; one that does not parse rejects its row. The site's retention policy and erasure
requests decide, by customer and timestamp, which rows may still be used: ``load_site`` takes
that decision as ``keep`` (``fl_client/retention.py`` makes it) and counts the rows it leaves
out by reason, without reading their text any further.
"""

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from fl_client.customer_ids import canonical_customer
from fl_client.data_files import check_site_folder, files_read, holds_data_files, shown_name
from fl_client.redaction import redact
from fl_client.row_parsing import read_files
from fl_client.rows import RejectedRow, Row, SiteDataError

TEST_SHARE_WHEN_UNSPLIT = 0.2
RowFilter = Callable[[tuple[str, ...], datetime | None], str | None]
"""(the row's customer ids, ``Row.customer_ids``; timestamp) -> why the row may not be used
(``None``: it may)."""


@dataclass
class SiteSplit:
    """One split of a site: redacted texts, label indices, each row's stable utterance identity
    (``ids``) and its customer (``units``)."""

    texts: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    units: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    aliases: list[tuple[str, ...]] = field(default_factory=list)
    """Each row's ``Row.aliases``."""
    places: list[tuple[str, int]] = field(default_factory=list)
    """Each row's file name and line, so that a row left out later can be named."""
    customers: list[str | None] = field(default_factory=list)
    """Each row's ``customer_id`` (``None`` without one: under the customer unit, such a row is
    a unit of its own). ``units`` holds one form for all of a customer's forms in the split
    (``_one_unit_per_customer``); this holds the form the row writes."""

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class SiteData:
    train: SiteSplit
    test: SiteSplit
    rows_read: int
    rejected: list[RejectedRow]
    unknown_labels: Counter
    excluded: Counter = field(default_factory=Counter)
    """Rows left out by ``keep`` (the site's retention and erasures), by reason."""
    other_label_texts: list[str] = field(default_factory=list)
    """The redacted texts of valid rows whose label is not in the run's label set: not used by
    this run, still the site's data (a derived store keeps their features for the next run)."""

    def label_counts(self, labels: Sequence[str]) -> Counter:
        return Counter(labels[i] for i in self.train.labels + self.test.labels)


def load_site(
    site_dir: Path, labels: Sequence[str], redact_pii: bool = True, keep: RowFilter | None = None
) -> SiteData:
    """Read, validate and (by default) redact one site folder against the run's label set,
    leaving out the rows ``keep`` names a reason for."""
    rejected: list[RejectedRow] = []
    train_rows, test_rows = read_rows(site_dir, rejected)
    excluded: Counter = Counter()
    if keep is not None:
        train_rows, train_out = filter_rows(train_rows, keep)
        test_rows, test_out = filter_rows(test_rows, keep)
        excluded.update(reason for _, reason in train_out + test_out)
    label_index = {label: i for i, label in enumerate(labels)}
    clean = redact if redact_pii else _unredacted
    unknown: Counter = Counter()
    other: list[str] = []
    train = _to_split(train_rows, label_index, unknown, other, clean)
    test = _to_split(test_rows, label_index, unknown, other, clean)
    return SiteData(
        train=train,
        test=test,
        rows_read=len(train_rows) + len(test_rows) + len(rejected) + sum(excluded.values()),
        rejected=rejected,
        unknown_labels=unknown,
        excluded=excluded,
        other_label_texts=other,
    )


def read_rows(site_dir: Path, rejected: list[RejectedRow]) -> tuple[list[Row], list[Row]]:
    """(train rows, test rows) of a site folder, every label, unredacted; problems are added to
    ``rejected``."""
    site_dir = Path(site_dir)
    check_site_folder(site_dir)
    files = files_read(site_dir)
    if files.train:
        train_rows = read_files(files.train, rejected)
        test_rows = read_files(files.test, rejected)
    else:
        if not files.unsplit:
            folders = sorted(p.name for p in site_dir.iterdir() if holds_data_files(p))
            hint = (f"; it holds site folders ({', '.join(folders[:3])}"
                    f"{', ...' if len(folders) > 3 else ''}): give one of them"
                    if folders else "")
            raise SiteDataError(
                f"no data files in {site_dir}: expected train.jsonl/test.jsonl, "
                f"train.csv/test.csv, or other *.jsonl / *.csv files{hint}"
            )
        all_rows = read_files(files.unsplit, rejected)
        train_rows = [r for r in all_rows if not _is_test_unit(r.unit)]
        test_rows = [r for r in all_rows if _is_test_unit(r.unit)]
    return train_rows, test_rows


def filter_rows(rows: list[Row], keep: RowFilter) -> tuple[list[Row], list[tuple[Row, str]]]:
    """(the rows ``keep`` lets through, and each row it leaves out with its reason)."""
    kept, left_out = [], []
    for row in rows:
        reason = keep(row.customer_ids, row.when)
        if reason is None:
            kept.append(row)
        else:
            left_out.append((row, reason))
    return kept, left_out


def _unredacted(text: str) -> str:
    return text


def _is_test_unit(unit: str) -> bool:
    bucket = int(hashlib.sha256(unit.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < TEST_SHARE_WHEN_UNSPLIT


def _to_split(
    rows: list[Row],
    label_index: dict[str, int],
    unknown: Counter,
    other: list[str],
    clean: Callable[[str], str],
) -> SiteSplit:
    split = SiteSplit()
    for row in rows:
        if row.label not in label_index:
            unknown[row.label] += 1
            other.append(clean(row.text))
            continue
        split.texts.append(clean(row.text))
        split.labels.append(label_index[row.label])
        split.units.append(row.unit)
        split.ids.append(row.uid)
        split.aliases.append(row.aliases)
        split.places.append((shown_name(row.file), row.line))
        split.customers.append(row.customer)
    _one_unit_per_customer(split)
    return split


def _one_unit_per_customer(split: SiteSplit) -> None:
    """Make the rows of each customer written in more than one form in the split
    (``customer_ids.canonical_customer``: case, character width, invisible characters, dashes,
    digit scripts) one unit, under the form most of its rows write (the first in code-point
    order among equals): as two units, one person would be sampled, clipped and charged twice
    in one release. The privacy ledger takes the other forms as units this one was
    (``privacy_units.unit_aliases``)."""
    rows = Counter(customer for customer in split.customers if customer is not None)
    forms: dict[str, list[str]] = {}
    for customer in rows:  # each id as written once, not each row
        forms.setdefault(canonical_customer(customer), []).append(customer)
    chosen = {form: min(written, key=lambda one: (-rows[one], one))
              for written in forms.values() if len(written) > 1 for form in written}
    if chosen:
        split.units = [chosen.get(customer, unit)
                       for unit, customer in zip(split.units, split.customers, strict=True)]


def one_row_per_id(split: SiteSplit) -> tuple[list[int], list[RejectedRow]]:
    """(the index of each id's first row, and each later row with that id, reported where it
    is and where the row used is): training takes one row per identity, since a duplicated row
    would be one utterance counted twice, with twice the influence its clipping allows."""
    first: dict[str, int] = {}
    later = []
    for index, uid in enumerate(split.ids):
        used = first.setdefault(uid, index)
        if used != index:
            name, line = split.places[index]
            used_name, used_line = split.places[used]
            later.append(RejectedRow(name, line, "duplicated id, used once (the row used is "
                                     f"{used_name}:{used_line})"))
    return list(first.values()), later
