"""Reading and validating a site's own conversation data.

A site folder holds either

* ``train.jsonl`` / ``test.jsonl``: one conversation per line, with ``turns`` and an ``intent``;
  the turn that carries the intent is ``turns[intent_turn]``, or the first customer turn when
  ``intent_turn`` is absent. A flat ``{"text": ..., "label": ...}`` line is accepted too.
* ``train.csv`` / ``test.csv``: a header with ``text,label`` (optionally ``customer_id``), one
  row per line.

Without a ``train.*`` file, every ``*.jsonl`` and ``*.csv`` file in the folder is read and split
deterministically at the site (by a hash of the customer, so one customer's conversations never
straddle train and test).

Bad rows never crash a site: each is skipped and reported with ``file:line`` and a reason. Rows
whose label is not in the run's taxonomy are skipped and counted. Text is PII-redacted here,
before any tokenizer or encoder sees it.

Every row has a stable identity, so that the privacy ledger can charge the same utterance and
the same customer across data versions (files appended, rows fixed, files reordered or renamed):
``conversation_id`` and the intent turn's index for conversations, an ``id`` / ``conversation_id``
field or column for flat rows, and otherwise a hash of the customer and the raw text (then an
edited text is a new utterance). Its customer is ``customer_id``, or the utterance itself.
"""

import csv
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fl_client.redaction import redact

TEST_SHARE_WHEN_UNSPLIT = 0.2


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

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class RejectedRow:
    """A row that was skipped, where and why; logged at the site, never sent."""

    file: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


@dataclass
class SiteData:
    train: SiteSplit
    test: SiteSplit
    rows_read: int
    rejected: list[RejectedRow]
    unknown_labels: Counter

    def label_counts(self, labels: Sequence[str]) -> Counter:
        return Counter(labels[i] for i in self.train.labels + self.test.labels)


@dataclass(frozen=True)
class _Row:
    text: str
    label: str
    unit: str
    uid: str


def load_site(
    site_dir: Path, labels: Sequence[str], redact_pii: bool = True
) -> SiteData:
    """Read, validate and (by default) redact one site folder against the run's label set."""
    site_dir = Path(site_dir)
    if not site_dir.is_dir():
        raise SiteDataError(f"site data folder not found: {site_dir}")
    label_index = {label: i for i, label in enumerate(labels)}
    rejected: list[RejectedRow] = []
    clean = redact if redact_pii else _identity

    train_files = _split_files(site_dir, "train")
    test_files = _split_files(site_dir, "test")
    if train_files:
        train_rows = _read_files(train_files, rejected)
        test_rows = _read_files(test_files, rejected)
    else:
        other = sorted(
            p for p in site_dir.iterdir() if p.suffix in (".jsonl", ".csv") and p.is_file()
        )
        if not other:
            raise SiteDataError(
                f"no data files in {site_dir}: expected train.jsonl/test.jsonl, "
                "train.csv/test.csv, or other *.jsonl / *.csv files"
            )
        all_rows = _read_files(other, rejected)
        train_rows = [r for r in all_rows if not _is_test_unit(r.unit)]
        test_rows = [r for r in all_rows if _is_test_unit(r.unit)]

    unknown: Counter = Counter()
    train = _to_split(train_rows, label_index, unknown, clean)
    test = _to_split(test_rows, label_index, unknown, clean)
    return SiteData(
        train=train,
        test=test,
        rows_read=len(train_rows) + len(test_rows) + len(rejected),
        rejected=rejected,
        unknown_labels=unknown,
    )


def _identity(text: str) -> str:
    return text


def _split_files(site_dir: Path, split: str) -> list[Path]:
    return [p for p in (site_dir / f"{split}.jsonl", site_dir / f"{split}.csv") if p.is_file()]


def _is_test_unit(unit: str) -> bool:
    bucket = int(hashlib.sha256(unit.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return bucket < TEST_SHARE_WHEN_UNSPLIT


def _to_split(
    rows: list[_Row],
    label_index: dict[str, int],
    unknown: Counter,
    clean: Callable[[str], str],
) -> SiteSplit:
    split = SiteSplit()
    for row in rows:
        if row.label not in label_index:
            unknown[row.label] += 1
            continue
        split.texts.append(clean(row.text))
        split.labels.append(label_index[row.label])
        split.units.append(row.unit)
        split.ids.append(row.uid)
    return split


def _read_files(paths: list[Path], rejected: list[RejectedRow]) -> list[_Row]:
    rows: list[_Row] = []
    for path in paths:
        read = _read_jsonl if path.suffix == ".jsonl" else _read_csv
        rows.extend(read(path, rejected))
    return rows


def _decoded_lines(path: Path, rejected: list[RejectedRow]):
    """Yield (line number, text) for each non-blank line that is valid UTF-8."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                rejected.append(RejectedRow(path.name, number, f"undecodable bytes ({err.reason})"))
                continue
            if line.strip():
                yield number, line


def _read_jsonl(path: Path, rejected: list[RejectedRow]) -> list[_Row]:
    rows = []
    for number, line in _decoded_lines(path, rejected):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            rejected.append(RejectedRow(path.name, number, f"invalid JSON ({err.msg})"))
            continue
        row_or_reason = _row_from_record(record)
        if isinstance(row_or_reason, str):
            rejected.append(RejectedRow(path.name, number, row_or_reason))
        else:
            rows.append(row_or_reason)
    return rows


def _row_from_record(record: object) -> _Row | str:
    """A row, or the reason the record is not one."""
    if not isinstance(record, dict):
        return f"expected a JSON object, got {type(record).__name__}"
    customer = record.get("customer_id")
    if customer is not None and (not isinstance(customer, str | int) or isinstance(customer, bool)
                                 or customer == ""):
        return "customer_id must be a non-empty string"
    label = record.get("intent", record.get("label"))
    if not isinstance(label, str) or not label:
        return "missing or non-string intent"
    row_id = record.get("conversation_id", record.get("id"))
    if row_id is not None and (not isinstance(row_id, str | int) or isinstance(row_id, bool)
                               or row_id == ""):
        return "conversation_id must be a non-empty string"
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
    if not text.strip():
        return "empty text"
    if row_id is None:
        digest = hashlib.sha256(f"{customer}\0{text}".encode()).hexdigest()[:32]
        uid = f"text:{digest}"
    else:
        uid = f"id:{row_id}"
    return _Row(text=text, label=label, unit=uid if customer is None else str(customer),
                uid=uid)


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
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(turns):
        return f"intent_turn {index!r} is not an index into turns"
    if turns[index].get("speaker") != "customer":
        return f"intent_turn {index} is not a customer turn"
    return (turns[index]["text"], index)


def _read_csv(path: Path, rejected: list[RejectedRow]) -> list[_Row]:
    """One row per line; the header must name ``text`` and ``label`` (or ``intent``)."""
    rows = []
    header: list[str] | None = None
    for number, line in _decoded_lines(path, rejected):
        try:
            fields = next(csv.reader([line]))
        except csv.Error as err:
            rejected.append(RejectedRow(path.name, number, f"malformed CSV ({err})"))
            continue
        if header is None:
            header = [h.strip() for h in fields]
            label_col = "label" if "label" in header else "intent"
            if "text" not in header or label_col not in header:
                raise SiteDataError(
                    f"{path}:{number}: CSV header must contain 'text' and 'label', got {header}"
                )
            continue
        if len(fields) != len(header):
            rejected.append(
                RejectedRow(path.name, number, f"expected {len(header)} fields, got {len(fields)}")
            )
            continue
        record = dict(zip(header, fields, strict=True))
        record.setdefault("label", record.get("intent"))
        for optional in ("customer_id", "conversation_id", "id"):
            if record.get(optional) == "":
                record.pop(optional)
        row_or_reason = _row_from_record(record)
        if isinstance(row_or_reason, str):
            rejected.append(RejectedRow(path.name, number, row_or_reason))
        else:
            rows.append(row_or_reason)
    if header is None:
        raise SiteDataError(f"{path}: empty CSV file (no header)")
    return rows


def list_site_dirs(data_dir: Path) -> list[Path]:
    """The site folders of a simulation data folder, in a stable order (hidden folders skipped)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SiteDataError(f"data folder not found: {data_dir}")
    sites = sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not sites:
        raise SiteDataError(f"no site folders in {data_dir}")
    return sites
