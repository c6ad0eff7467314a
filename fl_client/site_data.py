"""Reading and validating a site's own conversation data.

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

Files are UTF-8 (a leading byte-order mark dropped). A file saved as UTF-16 or UTF-32 (Excel's
"Unicode text"), known by its byte-order mark or, for UTF-16 without one, by NUL bytes in every
other position of its first bytes, is one rejection of the whole file, not one per line.

Site data never takes a site down: whatever makes a row unusable (bytes that are not UTF-8, a
line over ``MAX_LINE_BYTES``, malformed JSON or CSV, JSON nested past the recursion limit or
holding an integer past Python's digit limit, a missing or mistyped field, text that is not valid
Unicode) skips that row, reported as ``file:line: reason``. A file that cannot be read is
reported the same way (line 0: the whole file), and a CSV file whose header is unusable has each
of its rows reported. ``load_site`` raises only when there is no folder or no data file; a site
with no usable rows is for its caller to refuse, saying so. Rows whose label is not in the run's
taxonomy are skipped and counted. Text is PII-redacted here, before any tokenizer or encoder
sees it.

So that no later stage (redaction, tokenizers, encoders, feature caches, a terminal) can choke on
a text that loaded, text follows fixed rules here: a lone surrogate (which only a JSON
``"\\ud800"`` escape can produce) cannot be encoded, so it rejects its row, in any field used; a
label holding a control character rejects its row; in a text, control characters other than tab,
line feed and carriage return become spaces (after the row's identity is taken, so identities
stay stable); and a text over ``MAX_TEXT_CHARS`` rejects its row (redaction time grows with
length, and an utterance is not a document).

Every row has a stable identity, so that the privacy ledger can charge the same utterance and
the same customer across data versions (files appended, rows fixed, files reordered or renamed):
``conversation_id`` and the intent turn's index for conversations, an ``id`` / ``conversation_id``
field or column for flat rows, and otherwise a hash of the customer and the raw text (then an
edited text is a new utterance); ids, customer and text without surrounding white space, the
forms as written kept as aliases (``_written_forms``). Its customer is ``customer_id``, or
the utterance itself; ``unread_customer_keys`` names the columns and keys that look like a
customer's but are not read. Training uses one row per identity: ``one_row_per_id`` names
the others as ``file:line``.

A row may carry a ``timestamp`` (field or column): an ISO 8601 date-time, UTC unless it names
another offset; one that does not parse rejects its row. The site's retention policy and erasure
requests decide, by customer and timestamp, which rows may still be used: ``load_site`` takes
that decision as ``keep`` (``fl_client/retention.py`` makes it) and counts the rows it leaves
out by reason, without reading their text any further.
"""

import codecs
import csv
import errno
import hashlib
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from difflib import get_close_matches
from functools import partial
from itertools import islice
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

from fl_client.customer_ids import canonical_customer
from fl_client.redaction import redact
from fl_protocol.durable_files import replace_in_folder

TEST_SHARE_WHEN_UNSPLIT = 0.2
MAX_LINE_BYTES = 1 << 20
"""A longer line (line break included) is rejected unread, so one line cannot exhaust memory."""
MAX_TEXT_CHARS = 10_000
"""A longer text is rejected: redaction takes about a second per 10,000 digit-heavy characters."""
_WIDE_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
"""Byte-order marks of the encodings a spreadsheet's "Unicode" export writes; UTF-32 first, since
its little-endian mark begins with UTF-16's."""
_SNIFFED_BYTES = 16
"""How much of a file's start is read for NULs in alternate positions: UTF-16 without a mark."""

_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_LABEL_SHAPED = re.compile(r"[A-Za-z][A-Za-z0-9_.:/\-]{0,39}")
_WORDS_LABEL = re.compile(r"[a-z]+(?:[_.:/\-][a-z]+)*")
_SHOWN_INT_LIMIT = 100_000
"""Smaller integers (a round number) are shown: below the redactor's six-digit floor."""
MAX_LINKS = 40
"""Symbolic links ``resolved`` follows in one path before it gives up, as Linux does."""
_SHOWN_COLUMNS = 8
"""How many of an unusable CSV header's columns its rejection names (``_column_shown``)."""
_COLUMN_WORDS = frozenset((
    "text", "label", "labels", "intent", "intents", "utterance", "message", "query", "sentence",
    "customer", "conversation", "call", "id", "timestamp", "time", "date", "category", "class",
    "name", "type", "body", "content", "user", "agent", "turn", "turns"))
"""The words a CSV column name is made of, as ``_column_shown`` asks."""
_KEY_SHAPED = re.compile(r"[A-Za-z][A-Za-z _.\-]{0,39}")
_CUSTOMER_LIKE = re.compile(r"(customer|cust|caller|client|user|member|subscriber|account|"
                            r"contact)(id|no|num|number|key|ref|code)?")
"""A column or key name, lower-cased and without separators, that may name the customer."""
_Parsed = TypeVar("_Parsed")
FileStamp = tuple[int, int, int, int, int]
"""A data file's ``file_stamp``: (device, inode, size, modification and change times in ns)."""
RowFilter = Callable[[tuple[str, ...], datetime | None], str | None]
"""(the row's customer ids, ``Row.customer_ids``; timestamp) -> why the row may not be used
(``None``: it may)."""


class SiteDataError(ValueError):
    """The site folder cannot be used at all (missing, empty, no valid rows)."""


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


@dataclass(frozen=True)
class RejectedRow:
    """A row that was skipped, where and why; logged at the site, never sent. Line 0 stands for
    the whole file (one that could not be opened)."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        if self.line == 0:
            return f"{self.file}: {self.reason}"
        return f"{self.file}:{self.line}: {self.reason}"


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


@dataclass(frozen=True)
class Row:
    """One valid row as read, before redaction; where it is (``file``, ``line``) so that an
    erasure can remove it from the data folder."""

    text: str
    label: str
    unit: str
    uid: str
    customer: str | None = None
    when: datetime | None = None
    file: Path | None = None
    line: int = 0
    aliases: tuple[str, ...] = ()
    """The identities the same utterance has when written another way (``identity_aliases``)."""
    written_customer: str | None = None
    """``customer_id`` as written, when white space around it was stripped: an erasure recorded
    under that form still covers the row."""
    stamp: FileStamp | None = None
    """The data file as it was read (``file_stamp``): ``remove_lines`` rewrites that file only."""

    def unit_under(self, privacy_unit: str) -> str:
        """The unit this row counts as under ``privacy_unit``: its utterance, or its customer."""
        return self.uid if privacy_unit == "utterance" else self.unit

    @property
    def customer_ids(self) -> tuple[str, ...]:
        """Every id an erasure of this row's customer may be recorded under, asked together so
        an erasure under either outranks every other reason (found in review: one recorded
        under the written form missed the customer's undated and future-dated rows)."""
        return tuple(c for c in (self.customer, self.written_customer) if c is not None)


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
    clean = redact if redact_pii else _identity
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
    train_files = _split_files(site_dir, "train")
    test_files = _split_files(site_dir, "test")
    if train_files:
        train_rows = _read_files(train_files, rejected)
        test_rows = _read_files(test_files, rejected)
    else:
        other = _data_files(site_dir)
        if not other:
            folders = sorted(p.name for p in site_dir.iterdir() if _holds_data_files(p))
            hint = (f"; it holds site folders ({', '.join(folders[:3])}"
                    f"{', ...' if len(folders) > 3 else ''}): give one of them"
                    if folders else "")
            raise SiteDataError(
                f"no data files in {site_dir}: expected train.jsonl/test.jsonl, "
                f"train.csv/test.csv, or other *.jsonl / *.csv files{hint}"
            )
        all_rows = _read_files(other, rejected)
        train_rows = [r for r in all_rows if not _is_test_unit(r.unit)]
        test_rows = [r for r in all_rows if _is_test_unit(r.unit)]
    return train_rows, test_rows


def check_site_folder(site_dir: Path) -> None:
    """``SiteDataError`` unless ``site_dir`` is a folder, naming a data file given for it."""
    if site_dir.is_file():
        raise SiteDataError(f"site data folder {site_dir} is a file, not a folder: give the "
                            f"folder that holds the site's data files ({site_dir.parent})")
    if not site_dir.is_dir():
        raise SiteDataError(f"site data folder not found: {site_dir}")


def file_stamp(info: os.stat_result) -> FileStamp:
    """A data file's identity and version: (device, inode, size, modification and change times
    in ns; the change time also moves when the modification time is set back)."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


def remove_lines(path: Path, lines: set[int], stamp: FileStamp) -> None:
    """Rewrite a data file without the given line numbers (as ``RejectedRow`` and ``Row`` count
    them), atomically and with its permissions, owner and extended attributes kept: the file is
    whole, old or new, at every moment. A symbolic link's target is rewritten, not the link
    (replacing the link would leave the rows in the exporter's file); a file with other hard
    links is refused, since they would keep the rows. So is a read-only file (someone made it
    so), and one whose owner this account could not keep (found in review: a file rewritten by
    another account became its, and the exporter could no longer append to it).

    Only the file the rows were read from (``stamp``, the rows' ``Row.stamp``), unchanged since,
    is rewritten: it is opened in a descriptor of its folder, without following a link, every
    check is of that open file, and the new version is written and renamed in that folder,
    after a last look that the name is still the file read. Found in review: an account that
    may rename files in the data folder swapped a link to another file, or to another folder
    above it, in after the rows were read, and the erasure deleted those line numbers from the
    site's privacy ledger, or, run as root, replaced any file on the host."""
    entry = Path(path)
    real, links = resolved(entry)
    folder = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        probe = os.open(real.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        try:
            info = os.fstat(probe)
            if stat.S_ISLNK(info.st_mode):
                raise SiteDataError(_changed(real, "was replaced by a link since its rows were "
                                                   "read"))
            if file_stamp(info) != stamp:  # the file read was a regular one (_open_regular)
                raise SiteDataError(_changed(real, "is not the file the rows were read from, or "
                                                   "it changed (written, replaced or renamed) "
                                                   "since"))
            fd = _reopened(probe, os.O_RDONLY)
        finally:
            os.close(probe)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if file_stamp(info) != stamp:
                raise SiteDataError(_changed(real, "changed since its rows were read"))
            if problem := link_problem(entry, links, info):
                raise SiteDataError(f"{problem}: nothing is removed from it; delete the rows at "
                                    "the source")
            kept = _kept_lines(real, info, f, lines)
            attributes = _kept_attributes(f.fileno())

        def still_the_file_read() -> None:
            now = os.stat(real.name, dir_fd=folder, follow_symlinks=False)
            if file_stamp(now) != stamp:
                raise SiteDataError(_changed(real, "changed while its new version was "
                                               "written"))

        replace_in_folder(folder, real.name, b"".join(kept), info.st_mode & 0o7777,
                          (info.st_uid, info.st_gid), still_the_file_read, attributes)
    finally:
        os.close(folder)


def _kept_attributes(fd: int) -> dict[str, bytes]:
    """The extended attributes of the open file a rewrite keeps: all but ``security.*`` labels
    (SELinux's), which the kernel gives the new file as to any file made in its folder (found
    in review: the rewrite dropped an ACL, through which the site read the exporter's file)."""
    try:
        names = os.listxattr(fd)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(fd, name) for name in names if not name.startswith("security.")}


def _changed(path: Path, what: str) -> str:
    return (f"{path} {what}: nothing is removed from it; run this again, and if nothing "
            "should have changed it, check who may write the data folder")


def resolved(path: Path) -> tuple[Path, list[tuple[Path, int]]]:
    """``path`` with every symbolic link in it resolved, as the kernel resolves it, and each
    link passed on the way with its owner (the kernel's ``ELOOP`` past ``MAX_LINKS``)."""
    links: list[tuple[Path, int]] = []
    done, todo = Path("/"), list(Path(path).absolute().parts[1:])
    while todo:
        part = todo.pop(0)
        if part == "..":
            done = done.parent
            continue
        candidate = done / part
        info = candidate.lstat()
        if not stat.S_ISLNK(info.st_mode):
            done = candidate
            continue
        links.append((candidate, info.st_uid))
        if len(links) > MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path))
        target = Path(os.readlink(candidate))
        todo = [p for p in target.parts if p not in ("/", ".")] + todo
        if target.is_absolute():
            done = Path("/")
    return done, links


def link_problem(path: Path, links: list[tuple[Path, int]], info: os.stat_result) -> str | None:
    """Why a data file reached through ``links`` (``resolved``) must not be used, or None: a
    link made by an account other than root, this one or the file's owner may point anywhere
    that account could not read or write itself (found in review: run as root, a link the
    exporter made, or a link in the exporter's folder that root's supported link points into,
    had a file of root's, another site's data, rewritten)."""
    for link, owner in links:
        if owner not in {0, os.geteuid(), info.st_uid}:
            return (f"{path} is reached through {link}, a link of uid {owner}, to a file of uid "
                    f"{info.st_uid}, which that account could not use itself")
    return None


def _kept_lines(path: Path, info: os.stat_result, f: BinaryIO, lines: set[int]) -> list[bytes]:
    """The lines of the open data file ``f`` but ``lines``, once the file may be rewritten."""
    if info.st_nlink > 1:
        raise SiteDataError(f"{path} has {info.st_nlink - 1} other hard link(s), which "
                            "would keep the rows removed from this name; remove the links, or "
                            "delete the rows in the files they name, then run this again")
    if not info.st_mode & 0o222:
        raise SiteDataError(f"{path} is read-only (mode {info.st_mode & 0o7777:o}): make it "
                            "writable to let the rows be removed from it, or delete them at "
                            "the source")
    if os.geteuid() != 0 and (info.st_uid != os.geteuid() or info.st_gid not in
                              {os.getegid(), *os.getgroups()}):
        raise SiteDataError(f"{path} belongs to uid {info.st_uid} (group {info.st_gid}), and "
                            f"this account (uid {os.geteuid()}) cannot keep that: rewritten, "
                            "it would become this account's, and whoever writes the file could "
                            "no longer append to it; delete the rows at the source, or make the "
                            "site's account the file's owner (chown; the exporter can still "
                            "append through a group both hold)")
    return [raw for number, raw in enumerate(iter(f.readline, b""), start=1)
            if number not in lines]


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


def _identity(text: str) -> str:
    return text


def _holds_data_files(folder: Path) -> bool:
    """Whether ``folder`` is a visible folder with data files: a site folder, inside a folder
    of sites given where one site's was meant (found in review: "no data files" said no more)."""
    try:
        return folder.is_dir() and not folder.name.startswith(".") and bool(_data_files(folder))
    except (OSError, SiteDataError):
        return False


def _data_files(site_dir: Path) -> list[Path]:
    try:
        return sorted(
            p for p in site_dir.iterdir() if p.suffix in (".jsonl", ".csv") and p.is_file()
        )
    except OSError as err:
        raise SiteDataError(f"cannot list {site_dir}: {err.strerror or err}") from err


def _split_files(site_dir: Path, split: str) -> list[Path]:
    return [p for p in (site_dir / f"{split}.jsonl", site_dir / f"{split}.csv") if p.is_file()]


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
        split.places.append((_shown_name(row.file), row.line))
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


def _read_files(paths: list[Path], rejected: list[RejectedRow]) -> list[Row]:
    rows: list[Row] = []
    for path in paths:
        read = _read_jsonl if path.suffix == ".jsonl" else _read_csv
        rows.extend(read(path, rejected))
    return rows


def _shown_name(path: Path) -> str:
    """The file's name as printable text, even when it is not UTF-8 on disk."""
    return path.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _decoded_lines(path: Path, rejected: list[RejectedRow],
                   stamps: dict[Path, FileStamp] | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each non-blank line. A line that is not UTF-8 or is over
    ``MAX_LINE_BYTES`` is reported; so is a file that cannot be read, from where reading stopped,
    and a file in UTF-16 or UTF-32, once (its every line would be noise). ``stamps`` gets the
    file's ``file_stamp`` as opened."""
    name = _shown_name(path)
    number = 0
    try:
        real, links = resolved(path)
        # as root, whose reads no permission bounds: as another account, a link leads only to
        # what it may read anyway (a third account's links, an administrator's, keep working)
        if os.geteuid() == 0 and (problem := link_problem(path, links, real.stat())):
            rejected.append(RejectedRow(name, 0, f"not read: {problem}"))
            return
        with open(real, "rb", opener=_open_regular) as f:
            if stamps is not None:
                stamps[path] = file_stamp(os.fstat(f.fileno()))
            problem = wide_encoding_problem(f.read(_SNIFFED_BYTES))
            if problem is not None:
                rejected.append(RejectedRow(name, 0, problem))
                return
            f.seek(0)
            while raw := f.readline(MAX_LINE_BYTES + 1):
                number += 1
                if len(raw) > MAX_LINE_BYTES:
                    _skip_rest_of_line(f, raw)
                    rejected.append(
                        RejectedRow(name, number, f"line longer than {MAX_LINE_BYTES} bytes")
                    )
                    continue
                try:
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as err:
                    rejected.append(RejectedRow(name, number, f"undecodable bytes ({err.reason}): "
                                                              "not UTF-8, save the file as UTF-8"))
                    continue
                if line.strip():
                    yield number, line
    except OSError as err:
        problem = err.strerror or str(err)
        if number == 0:
            rejected.append(RejectedRow(name, 0, f"unreadable file ({problem})"))
        else:
            rejected.append(RejectedRow(name, number + 1, f"read failed ({problem}); the rest "
                                        "of the file is skipped"))


def _open_regular(path: str, flags: int) -> int:
    """``os.open`` of a data file that refuses all but a regular file before opening it (found
    in review: a FIFO renamed over ``train.jsonl`` after it was listed hung ``forget`` for good,
    holding the state lock, and every round with it; and a device named as a data file had its
    driver opened before its type was checked)."""
    probe = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(probe).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (a FIFO, socket or device?)", path)
        return _reopened(probe, flags)
    finally:
        os.close(probe)


def _reopened(probe: int, flags: int) -> int:
    """The file an ``O_PATH`` descriptor names, opened with ``flags``: that descriptor opened
    nothing (no driver called, no FIFO waited on), and this opens that very file, whatever its
    name is now."""
    return os.open(f"/proc/self/fd/{probe}", flags | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)


def wide_encoding(start: bytes) -> str | None:
    """``"UTF-16"`` or ``"UTF-32"`` when a file starting with these bytes (its first 16 are
    read) is in that encoding (``None``: it may be UTF-8), so that such a file is named once,
    not line by line: by its byte-order mark, or, for UTF-16 without one, by NULs in every other
    byte of an ASCII start (a data file starts with ``{"`` or its CSV header)."""
    start = start[:_SNIFFED_BYTES]
    for mark, encoding in _WIDE_MARKS:
        if start.startswith(mark):
            return encoding
    pairs = len(start) // 2
    even, odd = start[0:2 * pairs:2], start[1:2 * pairs:2]
    for nuls, other in ((even, odd), (odd, even)):
        if pairs >= 2 and nuls.count(0) == pairs and other.count(0) == 0:
            return "UTF-16"
    return None


def wide_encoding_problem(start: bytes) -> str | None:
    """What to tell the user about a file starting with these bytes when it is in UTF-16 or
    UTF-32 (``wide_encoding``; ``None``: it may be UTF-8), in the words every reader of site
    texts uses (the loader, ``fedintent predict --file``)."""
    wide = wide_encoding(start)
    return None if wide is None else f"not UTF-8 text (saved as {wide}); save it as UTF-8"


def _skip_rest_of_line(f: BinaryIO, start: bytes) -> None:
    """Read past an over-long line a bounded chunk at a time, never holding all of it."""
    chunk = start
    while chunk and not chunk.endswith(b"\n"):
        chunk = f.readline(MAX_LINE_BYTES)


def _parsed(parse: Callable[[str], _Parsed | str], line: str) -> _Parsed | str:
    """``parse(line)``, or the reason the line is unusable: whatever malformed data makes the
    parsers raise (bad JSON or CSV, nesting past the recursion limit, an integer past Python's
    digit limit, text that cannot be encoded) costs one row, never the site. Other exceptions
    are bugs in this module and propagate."""
    try:
        return parse(line)
    except json.JSONDecodeError as err:
        return _json_problem(err)
    except csv.Error as err:
        return f"malformed CSV ({err})"
    except RecursionError:
        return "nested too deeply to parse"
    except ValueError as err:
        return f"unusable value ({type(err).__name__}: {str(err).split(';')[0][:120]})"


def _json_problem(err: json.JSONDecodeError) -> str:
    """The parser's message made whole (some end in a dangling "at", found in review): where in
    the line parsing stopped, and, when it stopped at the line's end or inside a string that
    never ends, that the line may be cut short, the usual cause. No part of the line is quoted."""
    message = err.msg.removesuffix(" at")
    if err.pos >= len(err.doc.rstrip()):
        return f"invalid JSON ({message} at the end of the line: it may be cut short)"
    cut = "; the line may be cut short" if message.startswith("Unterminated string") else ""
    return f"invalid JSON ({message} at column {err.pos + 1}{cut})"


def _read_jsonl(path: Path, rejected: list[RejectedRow]) -> list[Row]:
    rows = []
    name = _shown_name(path)
    stamps: dict[Path, FileStamp] = {}
    for number, line in _decoded_lines(path, rejected, stamps):
        row_or_reason = _parsed(_jsonl_row, line)
        if isinstance(row_or_reason, str):
            rejected.append(RejectedRow(name, number, row_or_reason))
        else:
            rows.append(replace(row_or_reason, file=path, line=number, stamp=stamps[path]))
    return rows


def _jsonl_row(line: str) -> Row | str:
    return _row_from_record(json.loads(line))


def _row_from_record(record: object) -> Row | str:
    """A row, or the reason the record is not one."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    customer = _identity_field(record.get("customer_id"))
    if customer is not None and (not isinstance(customer, str | int) or isinstance(customer, bool)
                                 or customer == ""):
        return "customer_id must be a non-empty string"
    label = record.get("intent", record.get("label"))
    label_field = _label_field(record)
    if not isinstance(label, str) or not label:
        return f"missing or non-string {label_field}"
    if _CONTROL.search(label):
        return f"{label_field} holds a control character"
    row_id = _identity_field(record.get("conversation_id", record.get("id")))
    if row_id is not None and (not isinstance(row_id, str | int) or isinstance(row_id, bool)
                               or row_id == ""):
        return "conversation_id must be a non-empty string"
    conversation = row_id
    if "turns" in record:
        text = _intent_turn_text(record)
        if not isinstance(text, tuple):
            return text
        text, turn = text
        row_id = None if row_id is None else f"{row_id}#{turn}"
    else:
        text = record.get("text")
        if text is None:
            return "missing text (no 'turns' and no 'text')"
        if not isinstance(text, str):
            return f"text must be a string, got {type(text).__name__}"
    when = _timestamp(record.get("timestamp"))
    if isinstance(when, str):
        return when
    for name, value in (("text", text), (label_field, label), ("customer_id", customer),
                        ("conversation_id", row_id)):
        if isinstance(value, str) and _SURROGATE.search(value):
            return f"{name} holds a lone surrogate (not valid Unicode)"
    written = _written_forms(record, text)
    text = text.strip()
    digest = _content_digest(customer, text)
    uid = f"text:{digest}" if row_id is None else f"id:{row_id}"
    text = _CONTROL_IN_TEXT.sub(" ", text)
    if not text.strip():
        return "empty text"
    if len(text) > MAX_TEXT_CHARS:
        return f"text longer than {MAX_TEXT_CHARS} characters"
    aliases = identity_aliases(conversation, digest)
    if written is not None:  # as read before identities were stripped: the spend stays found
        aliases += tuple(a for a in identity_aliases(written.conversation, written.digest)
                         if a not in aliases)
    return Row(text=text, label=label, unit=uid if customer is None else str(customer), uid=uid,
               customer=None if customer is None else str(customer), when=when,
               aliases=aliases,
               written_customer=None if written is None else written.customer)


def _label_field(record: dict) -> str:
    """The name the row gives its label, so a message about it names the field the user wrote:
    ``intent`` (conversations, and rows that use it), else ``label`` (flat rows and CSV)."""
    if "intent" in record or ("label" not in record and "turns" in record):
        return "intent"
    return "label"


def identity_aliases(conversation: str | int | None, content_digest: str) -> tuple[str, ...]:
    """The identities an utterance keeps however its row is written, which the ledger charges
    beside its own (``privacy_budget.charge_round``): its conversation (a conversation line's
    ``conversation_id`` without the turn, a flat row's ``conversation_id`` or ``id``), and its
    customer and text. Exported as CSV instead of conversations, or given ids it lacked,
    the same utterance is then known by one of them and keeps the budget it spent."""
    content = (f"content:{content_digest}",)
    return content if conversation is None else (f"conversation:{conversation}", *content)


def _identity_field(value: object) -> object:
    """An id as the row's identity uses it: a string without surrounding white space. The same
    CSV exported with ", " between fields gives every id, customer and text a leading space,
    and so, taken as written, every unit a new identity and a fresh budget (found in review:
    true epsilon about 16 where the ledger said 7.97)."""
    return value.strip() if isinstance(value, str) else value


class _Written(NamedTuple):
    """A row's identity fields as written, where they differed from the stripped ones."""

    customer: str | None
    conversation: str | int | None
    digest: str


def _written_forms(record: dict, text: str) -> _Written | None:
    """The row's identities as they were taken before fields were stripped (``None``: the
    same): kept as aliases and an erasure's second name, so that a spend or an erasure
    recorded under them still binds the row."""
    customer = record.get("customer_id")
    conversation = record.get("conversation_id", record.get("id"))
    if (customer == _identity_field(customer) and conversation == _identity_field(conversation)
            and text == text.strip()):
        return None
    return _Written(None if customer is None else str(customer), conversation,
                    _content_digest(customer, text))


def _content_digest(customer: object, text: str) -> str:
    return hashlib.sha256(f"{customer}\0{text}".encode()).hexdigest()[:32]


def _timestamp(value: object) -> datetime | None | str:
    """The row's time (UTC when it names no offset), ``None`` without one, or why it is bad."""
    if value is None:
        return None
    if not isinstance(value, str):
        return f"timestamp must be a string, got {type(value).__name__}"
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        return f"timestamp is not an ISO 8601 date-time ({_described(value)})"
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def _intent_turn_text(record: dict) -> tuple[str, int] | str:
    turns = record["turns"]
    if not isinstance(turns, list) or not turns:
        return "turns must be a non-empty list"
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("text"), str):
            return "each turn must be an object with a string 'text'"
    index = record.get("intent_turn")
    if index is None:
        customer = [i for i, t in enumerate(turns) if t.get("speaker") == "customer"]
        if not customer:
            return "no customer turn to carry the intent"
        index = customer[0]
    if not isinstance(index, int) or isinstance(index, bool):
        return f"intent_turn is not an index into turns ({_described(index)})"
    if not 0 <= index < len(turns):
        return f"intent_turn is not an index into turns (outside 0 to {len(turns) - 1})"
    if turns[index].get("speaker") != "customer":
        return f"intent_turn {index} is not a customer turn"
    return (turns[index]["text"], index)


def shown(value: object) -> str:
    """A label (or a run setting) as a log line or ``check-data`` may name it: quoted when it is
    shaped like a taxonomy label (ASCII letters, digits and ``_ . : / -``, starting with a
    letter, at most 40 characters, nothing the redactor finds in it), else only its shape. A
    mis-columned file can put a customer's words or number where a label belongs, and quoting
    them redacted would be only as good as the redactor."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < _SHOWN_INT_LIMIT:
        return str(value)
    if isinstance(value, str) and _LABEL_SHAPED.fullmatch(value) and redact(value) == value:
        return repr(value)
    return f"<{_described(value)}, not shown>"


def shown_unknown_label(value: object, labels: Sequence[str]) -> str:
    """A row's label that is not one of the run's ``labels``, as a log line or ``check-data``
    may name it: ``shown``, and only when it reads as a label gone wrong, near one of
    ``labels`` (another case, a typo) or lowercase words (``refund_later``). A mis-columned
    file puts customer ids and names, label-shaped, where labels belong (found in review:
    ``AB-4711`` and ``John_Smith`` reached check-data's output and every round's site log,
    where no erasure reaches them)."""
    if isinstance(value, str) and (_WORDS_LABEL.fullmatch(value) or get_close_matches(
            value.lower(), [label.lower() for label in labels], n=1, cutoff=0.75)):
        return shown(value)
    return f"<{_described(value)}, near no label of the run, not shown>"


def _described(value: object) -> str:
    """What a value from the data is, without any of its content: messages about rows say
    this, never the value itself."""
    if isinstance(value, str):
        return f"a string of length {len(value)}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _read_csv(path: Path, rejected: list[RejectedRow]) -> list[Row]:
    """One row per line; the first line is the header, which must name ``text`` and ``label``
    (or ``intent``). Without a usable header every row of the file is reported."""
    rows = []
    name = _shown_name(path)
    header: list[str] | str | None = None
    header_line = 0
    stamps: dict[Path, FileStamp] = {}
    for number, line in _decoded_lines(path, rejected, stamps):
        if header is None:
            header, header_line = _parsed(_csv_header, line), number
            if isinstance(header, str):
                rejected.append(RejectedRow(name, number, header))
            continue
        if isinstance(header, str):
            row_or_reason = f"skipped: the file's header (line {header_line}) is unusable"
        else:
            row_or_reason = _parsed(partial(_csv_row, header), line)
        if isinstance(row_or_reason, str):
            rejected.append(RejectedRow(name, number, row_or_reason))
        else:
            rows.append(replace(row_or_reason, file=path, line=number, stamp=stamps[path]))
    return rows


def _csv_fields(line: str) -> list[str]:
    return next(csv.reader([line]), [])


def _csv_header(line: str) -> list[str] | str:
    header = [h.strip() for h in _csv_fields(line)]
    columns = set(header)
    missing = [name for name, names in (("text", {"text"}), ("label", {"label", "intent"}))
               if not names & columns]
    if missing:
        found = ", ".join(_column_shown(name) for name in header[:_SHOWN_COLUMNS])
        more = f", ... ({len(header)} in all)" if len(header) > _SHOWN_COLUMNS else ""
        return (f"CSV header must name 'text' and 'label' (or 'intent'); its {len(header)} "
                f"columns ({found}{more}) lack {' and '.join(map(repr, missing))} (column "
                "names are case-sensitive: write them in lower case; a file without a header "
                f"line has its first row read as the header){_separator_hint(line)}")
    return header


def _separator_hint(line: str) -> str:
    """Where a header names the columns separated by ``;`` or a tab, in any case, say so (found
    in review: a semicolon-separated export, Excel's default in much of Europe, was told only
    that its one column lacked 'text' and 'label')."""
    for separator, name in ((";", "semicolons"), ("\t", "tabs")):
        columns = {column.strip().strip('"').lower() for column in line.split(separator)}
        if "text" in columns and columns & {"label", "intent"}:
            return (f"; its columns are separated by {name}: export the file comma-separated "
                    "(in Excel: CSV UTF-8, comma delimited)")
    return ""


def rejection_lines(rejected: list[RejectedRow]) -> list[str]:
    """The rejections as lines to print or log, a run of consecutive ones of one file for one
    reason as one line (found in review: a CSV whose header did not read gave a line per row,
    thousands for a real export, twice over in the site's log)."""
    lines: list[str] = []
    run: list[RejectedRow] = []
    for row in [*rejected, None]:
        if run and (row is None or (row.file, row.reason) != (run[0].file, run[0].reason)):
            first, last = run[0], run[-1]
            lines.append(str(first) if len(run) == 1 else
                         f"{first.file}:{first.line}-{last.line} ({len(run)} rows): "
                         f"{first.reason}")
            run = []
        if row is not None:
            run.append(row)
    return lines


def _column_shown(name: str) -> str:
    """A column of an unusable CSV header as its message may name it: quoted when it is
    label-shaped and made of words columns are named with (``Intent_Name``, ``Customer ID``),
    else only its shape. A file without a header line has its first row read as the header, and
    that row is data: a customer id such as ``AB-4711`` is label-shaped, and so is
    ``CUSTOMER-4711`` (found in review: each reached ``check-data``'s output and every round's
    site log, where no erasure reaches)."""
    words = re.split(r"[\s_.\-]+", name.strip().lower())
    if words and set(words) <= _COLUMN_WORDS and shown(name) == repr(name):
        return repr(name)
    return f"<{_described(name)}, not shown>"


def _csv_row(header: list[str], line: str) -> Row | str:
    if line.count('"') % 2:  # RFC 4180 doubles a quote inside a field: the count is even
        return ("an odd number of double quotes: a quoted field spanning lines (one row per "
                "line here), or a stray quote (write a quote inside a field as \"\")")
    fields = _csv_fields(line)
    if len(fields) != len(header):
        return f"expected {len(header)} fields, got {len(fields)}"
    record = dict(zip(header, fields, strict=True))
    record.setdefault("label", record.get("intent"))
    for name in ("label", "intent"):  # "text, label" spacing, as in the header
        if isinstance(record.get(name), str):
            record[name] = record[name].strip()
    for optional in ("customer_id", "conversation_id", "id", "timestamp"):
        if optional in record and not record[optional].strip():
            record.pop(optional)
    return _row_from_record(record)

def list_site_dirs(data_dir: Path) -> list[Path]:
    """The site folders of a simulation data folder, in a stable order (hidden folders skipped)."""
    data_dir = Path(data_dir)
    if data_dir.is_file():  # found in review: it was "not found"
        raise SiteDataError(f"data folder {data_dir} is a file, not a folder: give the folder "
                            "that holds the site folders")
    if not data_dir.is_dir():
        raise SiteDataError(f"data folder not found: {data_dir}")
    sites = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sites:
        hint = ("; it holds data files itself, so it is one site's folder: give the folder "
                "that holds the site folders" if _files_read(data_dir) else "")
        raise SiteDataError(f"no site folders in {data_dir}{hint}")
    return sites


def record_languages(site_dir: Path) -> set[str]:
    """The languages a site folder's JSONL conversations name in their ``language`` field, as
    base codes (``zh`` for ``zh-TW``); lines that do not parse are skipped (loading reports
    them). What the synthetic generator writes, and what a simulated site declares."""
    found = set()
    for path in sorted(Path(site_dir).glob("*.jsonl")):
        for _, line in _decoded_lines(path, rejected=[]):  # the loader's guards, its reports
            language = _parsed(_record_language, line)
            if isinstance(language, tuple):
                found.update(language)
    return found


def _record_language(line: str) -> tuple[str, ...]:
    """The base code a JSONL line's ``language`` names, as a 0- or 1-tuple."""
    record = json.loads(line)
    language = record.get("language") if isinstance(record, dict) else None
    if not isinstance(language, str) or not language.strip():
        return ()
    return (language.strip().lower().split("-")[0],)


def unread_customer_keys(site_dir: Path) -> list[tuple[str, str]]:
    """(file name, column or key) for each CSV column and JSON key of the files the loader
    reads that looks like a customer key (``customer``, ``customerId``, ``caller_id``) but is
    not ``customer_id``, the only one read: under the customer unit each row of such a file is a
    unit of its own, without a word from the loader. The names returned are letters and
    separators only (a name holding anything else is never one), so they can be shown."""
    found: dict[tuple[str, str], None] = {}
    for path in _files_read(Path(site_dir)):
        keys = _csv_header_keys if path.suffix == ".csv" else _jsonl_keys
        found.update(((_shown_name(path), key), None) for key in keys(path)
                     if _looks_like_a_customer_key(key))
    return list(found)


def empty_data_files(site_dir: Path) -> list[str]:
    """The names of the data files the loader reads that hold no row (nothing, blank lines, or a
    CSV header alone): they add nothing and report nothing, so ``check-data`` names them rather
    than leave "0 rows read" unexplained."""
    empty = []
    for path in _files_read(Path(site_dir)):
        problems: list[RejectedRow] = []
        lines = sum(1 for _ in islice(_decoded_lines(path, problems), 2))
        header_lines = 1 if path.suffix == ".csv" else 0
        if lines <= header_lines and not problems:
            empty.append(_shown_name(path))
    return empty


def _files_read(site_dir: Path) -> list[Path]:
    """The data files ``read_rows`` reads, in its order."""
    given = _split_files(site_dir, "train")
    return given + _split_files(site_dir, "test") if given else _data_files(site_dir)


def _looks_like_a_customer_key(key: str) -> bool:
    if key == "customer_id" or not _KEY_SHAPED.fullmatch(key):
        return False
    return bool(_CUSTOMER_LIKE.fullmatch(re.sub(r"[ _.\-]", "", key.lower())))


def _csv_header_keys(path: Path) -> list[str]:
    """The columns a CSV file's first line names (the loader's guards, its reports)."""
    for _, line in _decoded_lines(path, rejected=[]):
        header = _parsed(_csv_fields, line)
        return [] if isinstance(header, str) else [name.strip() for name in header]
    return []


def _jsonl_keys(path: Path) -> list[str]:
    """The top-level keys of a JSONL file's objects, in order of first appearance."""
    keys: dict[str, None] = {}
    for _, line in _decoded_lines(path, rejected=[]):
        record = _parsed(json.loads, line)
        if isinstance(record, dict):
            keys.update(dict.fromkeys(record))
    return list(keys)
