"""The run's label file: the intent taxonomy, one label per line.

The server reads it to build the model and sends the list to every site with each round; a site
maps its rows' intents onto that list. Its order is the model's output order.

The file must be UTF-8 (a byte-order mark, as some editors write, is dropped); anything else, a
label holding a control character, or a file that cannot be read is one ``LabelFileError`` that
names the file and the problem, never a traceback.
"""

import re
from pathlib import Path

from fl_protocol.file_owner import not_a_file

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_LABELS = 1_000
"""The most labels a run may name. A site builds the model's head, a row per label, before it
can compare the parameters it was sent (ngram's: 8,192 floats a label), so an unbounded label
list, a few bytes a label, made a 0.8 MB message cost a site 3 GB of memory (found in review).
Intent taxonomies run to a few hundred; the server refuses a larger label file at start."""
MAX_LABEL_LENGTH = 200
"""The longest label, in characters; a site quotes labels in its log and refusals."""


def _label_problem(label: str) -> str:
    """Why ``label`` cannot be one (empty if it can): over ``MAX_LABEL_LENGTH`` characters, or
    holding a control character. Never quotes the label: a data file given for labels is
    customers' rows."""
    if len(label) > MAX_LABEL_LENGTH:
        return (f"{len(label)} characters, longer than the {MAX_LABEL_LENGTH} a label may be; "
                "is this a data file, not the taxonomy?")
    control = _CONTROL.search(label)
    if control:
        return f"control character {control.group()!r}; is this a binary file?"
    return ""


def label_list_problem(labels: list[str]) -> str:
    """Why ``labels`` cannot be a run's label list (empty if it can): fewer than two, more than
    ``MAX_LABELS``, a label ``_label_problem`` refuses, or one named twice. The server checks its
    label file and every site the list it is sent; labels are named by position."""
    if len(labels) < 2:  # found in review: one label trained and charged, its gradient zero
        return (f"{len(labels)} labels; a classifier needs at least 2 (one spends budget on "
                "pure noise)")
    if len(labels) > MAX_LABELS:
        return f"{len(labels)} labels, more than the {MAX_LABELS} a run may name"
    first: dict[str, int] = {}
    for number, label in enumerate(labels, start=1):
        problem = _label_problem(label)
        if problem:
            return f"label {number}: {problem}"
        if label in first:
            return f"duplicate labels: label {number} is label {first[label]} again"
        first[label] = number
    return ""


class LabelFileError(ValueError):
    """The label file is missing or malformed; the message names the file."""


def read_labels(path: Path) -> list[str]:
    """The labels in file order; blank lines skipped, fewer than two or a duplicate refused."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(not_a_file(path, "a label file (one label per line, such as the "
                                              "data folder's labels.txt)")
                             or f"label file not found: {path}")
    labels, lines = [], {}
    for number, line in enumerate(_text(path).splitlines(), start=1):
        label = line.strip()
        problem = _label_problem(label)
        if problem:
            raise LabelFileError(f"{path}:{number}: {problem}")
        if label in lines:
            raise LabelFileError(f"{path}:{number}: the label of line {lines[label]} again "
                                 "(duplicate labels)")
        if label:
            labels.append(label)
            lines[label] = number
    problem = label_list_problem(labels)
    if problem:
        raise LabelFileError(f"{path}: {problem}")
    return labels


def _text(path: Path) -> str:
    """The file as text: UTF-8, a leading byte-order mark dropped."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise LabelFileError(f"{path}: cannot be read ({err.strerror or err})") from err
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise LabelFileError(
            f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "save it as UTF-8, one label per line"
        ) from None
