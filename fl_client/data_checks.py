"""``check-data``'s diagnostics of a site folder, beyond what loading it reports: the languages
its conversations name (``record_languages``, also a simulated site's declared languages), the
columns and keys that look like a customer's but are not read (``unread_customer_keys``), and
the data files that hold no row (``empty_data_files``).

They read the files through the loader's guards (``data_files``, ``row_parsing``) and keep
its reports to themselves: loading reports the same problems.
"""

import json
import re
from itertools import islice
from pathlib import Path

from fl_client.data_files import decoded_lines, files_read, shown_name
from fl_client.row_parsing import csv_fields, parsed
from fl_client.rows import RejectedRow

_KEY_SHAPED = re.compile(r"[A-Za-z][A-Za-z _.\-]{0,39}")
_CUSTOMER_LIKE = re.compile(r"(customer|cust|caller|client|user|member|subscriber|account|"
                            r"contact)(id|no|num|number|key|ref|code)?")
"""A column or key name, lower-cased and without separators, that may name the customer."""


def record_languages(site_dir: Path) -> set[str]:
    """The languages a site folder's JSONL conversations name in their ``language`` field, as
    base codes (``zh`` for ``zh-TW``); lines that do not parse are skipped (loading reports
    them). What the synthetic generator writes, and what a simulated site declares."""
    found = set()
    for path in sorted(Path(site_dir).glob("*.jsonl")):
        for _, line in decoded_lines(path, rejected=[]):  # the loader's guards, its reports
            language = parsed(_record_language, line)
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
    for path in files_read(Path(site_dir)).in_order():
        keys = _csv_header_keys if path.suffix == ".csv" else _jsonl_keys
        found.update(((shown_name(path), key), None) for key in keys(path)
                     if _looks_like_a_customer_key(key))
    return list(found)


def empty_data_files(site_dir: Path) -> list[str]:
    """The names of the data files the loader reads that hold no row (nothing, blank lines, or a
    CSV header alone): they add nothing and report nothing, so ``check-data`` names them rather
    than leave "0 rows read" unexplained."""
    empty = []
    for path in files_read(Path(site_dir)).in_order():
        problems: list[RejectedRow] = []
        lines = sum(1 for _ in islice(decoded_lines(path, problems), 2))
        header_lines = 1 if path.suffix == ".csv" else 0
        if lines <= header_lines and not problems:
            empty.append(shown_name(path))
    return empty


def _looks_like_a_customer_key(key: str) -> bool:
    if key == "customer_id" or not _KEY_SHAPED.fullmatch(key):
        return False
    return bool(_CUSTOMER_LIKE.fullmatch(re.sub(r"[ _.\-]", "", key.lower())))


def _csv_header_keys(path: Path) -> list[str]:
    """The columns a CSV file's first line names (the loader's guards, its reports)."""
    for _, line in decoded_lines(path, rejected=[]):
        header = parsed(csv_fields, line)
        return [] if isinstance(header, str) else [name.strip() for name in header]
    return []


def _jsonl_keys(path: Path) -> list[str]:
    """The top-level keys of a JSONL file's objects, in order of first appearance."""
    keys: dict[str, None] = {}
    for _, line in decoded_lines(path, rejected=[]):
        record = parsed(json.loads, line)
        if isinstance(record, dict):
            keys.update(dict.fromkeys(record))
    return list(keys)
