"""What of a site's data may appear in a log line or ``check-data``'s output.

A site's log and ``check-data``'s output are kept and copied where no erasure reaches, so a
value from the data is never printed as it is, only what it is (``described``: "a string of
length 12"), unless it is shaped like what it stands for:

* ``shown``: a label or a run setting, quoted when label-shaped and nothing the redactor finds
  in it, else only its shape. For values that are labels of the run, or settings.
* ``shown_unknown_label``: a row's label that is not one of the run's labels. Use it, not
  ``shown``, for every unknown label: a mis-columned file puts customer ids and names,
  label-shaped, where labels belong, and this quotes only a label gone wrong.
* ``column_shown``: a column of an unusable CSV header, which may be a data row read as one.
* ``rejection_lines``: the rejected rows as lines, a run of one file's rejections for one reason
  as one line; their reasons never quote a row's content.
"""

import re
from collections.abc import Sequence
from difflib import get_close_matches

from fl_client.redaction import redact
from fl_client.rows import RejectedRow

_LABEL_SHAPED = re.compile(r"[A-Za-z][A-Za-z0-9_.:/\-]{0,39}")
_WORDS_LABEL = re.compile(r"[a-z]+(?:[_.:/\-][a-z]+)*")
_SHOWN_INT_LIMIT = 100_000
"""Smaller integers (a round number) are shown: below the redactor's six-digit floor."""
_COLUMN_WORDS = frozenset((
    "text", "label", "labels", "intent", "intents", "utterance", "message", "query", "sentence",
    "customer", "conversation", "call", "id", "timestamp", "time", "date", "category", "class",
    "name", "type", "body", "content", "user", "agent", "turn", "turns"))
"""The words a CSV column name is made of, as ``column_shown`` asks."""


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
    return f"<{described(value)}, not shown>"


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
    return f"<{described(value)}, near no label of the run, not shown>"


def described(value: object) -> str:
    """What a value from the data is, without any of its content: messages about rows say
    this, never the value itself."""
    if isinstance(value, str):
        return f"a string of length {len(value)}"
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def column_shown(name: str) -> str:
    """A column of an unusable CSV header as its message may name it: quoted when it is
    label-shaped and made of words columns are named with (``Intent_Name``, ``Customer ID``),
    else only its shape. A file without a header line has its first row read as the header, and
    that row is data: a customer id such as ``AB-4711`` is label-shaped, and so is
    ``CUSTOMER-4711`` (found in review: each reached ``check-data``'s output and every round's
    site log, where no erasure reaches)."""
    words = re.split(r"[\s_.\-]+", name.strip().lower())
    if words and set(words) <= _COLUMN_WORDS and shown(name) == repr(name):
        return repr(name)
    return f"<{described(name)}, not shown>"


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
