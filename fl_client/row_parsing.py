"""One line of a data file to a ``Row``, or the reason it is not one.

Whatever makes a row unusable (malformed JSON or CSV, JSON nested past the recursion limit or
holding an integer past Python's digit limit, a missing or mistyped field, text that is not
valid Unicode) skips that row, reported as ``file:line: reason`` (``parsed``), and a CSV file
whose header is unusable has each of its rows reported.

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
forms as written kept as aliases (``_written_forms``, ``identity_aliases``). Its customer is
``customer_id``, or the utterance itself. A change to these rules gives units new identities,
and so fresh budgets: the ledger depends on them.
"""

import csv
import hashlib
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import NamedTuple, TypeVar

from fl_client.data_files import decoded_lines, shown_name
from fl_client.rows import FileStamp, RejectedRow, Row
from fl_client.shown import column_shown, described

MAX_TEXT_CHARS = 10_000
"""A longer text is rejected: redaction takes about a second per 10,000 digit-heavy characters."""
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SHOWN_COLUMNS = 8
"""How many of an unusable CSV header's columns its rejection names (``column_shown``)."""
_Parsed = TypeVar("_Parsed")


def read_files(paths: list[Path], rejected: list[RejectedRow]) -> list[Row]:
    """The valid rows of the data files ``paths``, in order; problems are added to ``rejected``."""
    rows: list[Row] = []
    for path in paths:
        read = _read_jsonl if path.suffix == ".jsonl" else _read_csv
        rows.extend(read(path, rejected))
    return rows


def parsed(parse: Callable[[str], _Parsed | str], line: str) -> _Parsed | str:
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
    name = shown_name(path)
    stamps: dict[Path, FileStamp] = {}
    for number, line in decoded_lines(path, rejected, stamps):
        row_or_reason = parsed(_jsonl_row, line)
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
        return f"timestamp is not an ISO 8601 date-time ({described(value)})"
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
        return f"intent_turn is not an index into turns ({described(index)})"
    if not 0 <= index < len(turns):
        return f"intent_turn is not an index into turns (outside 0 to {len(turns) - 1})"
    if turns[index].get("speaker") != "customer":
        return f"intent_turn {index} is not a customer turn"
    return (turns[index]["text"], index)


def _read_csv(path: Path, rejected: list[RejectedRow]) -> list[Row]:
    """One row per line; the first line is the header, which must name ``text`` and ``label``
    (or ``intent``). Without a usable header every row of the file is reported."""
    rows = []
    name = shown_name(path)
    header: list[str] | str | None = None
    header_line = 0
    stamps: dict[Path, FileStamp] = {}
    for number, line in decoded_lines(path, rejected, stamps):
        if header is None:
            header, header_line = parsed(_csv_header, line), number
            if isinstance(header, str):
                rejected.append(RejectedRow(name, number, header))
            continue
        if isinstance(header, str):
            row_or_reason = f"skipped: the file's header (line {header_line}) is unusable"
        else:
            row_or_reason = parsed(partial(_csv_row, header), line)
        if isinstance(row_or_reason, str):
            rejected.append(RejectedRow(name, number, row_or_reason))
        else:
            rows.append(replace(row_or_reason, file=path, line=number, stamp=stamps[path]))
    return rows


def csv_fields(line: str) -> list[str]:
    return next(csv.reader([line]), [])


def _csv_header(line: str) -> list[str] | str:
    header = [h.strip() for h in csv_fields(line)]
    columns = set(header)
    missing = [name for name, names in (("text", {"text"}), ("label", {"label", "intent"}))
               if not names & columns]
    if missing:
        found = ", ".join(column_shown(name) for name in header[:_SHOWN_COLUMNS])
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


def _csv_row(header: list[str], line: str) -> Row | str:
    if line.count('"') % 2:  # RFC 4180 doubles a quote inside a field: the count is even
        return ("an odd number of double quotes: a quoted field spanning lines (one row per "
                "line here), or a stray quote (write a quote inside a field as \"\")")
    fields = csv_fields(line)
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
