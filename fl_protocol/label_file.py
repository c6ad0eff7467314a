"""The run's label file: the intent taxonomy, one label per line.

The server reads it to build the model and sends the list to every site with each round; a site
maps its rows' intents onto that list. Its order is the model's output order.

The file must be UTF-8 (a byte-order mark, as some editors write, is dropped); anything else, a
label holding a control character, or a file that cannot be read is one ``LabelFileError`` that
names the file and the problem, never a traceback.
"""

import re
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class LabelFileError(ValueError):
    """The label file is missing or malformed; the message names the file."""


def read_labels(path: Path) -> list[str]:
    """The labels in file order; blank lines skipped, fewer than two or a duplicate refused."""
    path = Path(path)
    if path.is_dir():  # found in review: it was "not found"
        raise LabelFileError(f"{path} is a folder, not a label file (one label per line, such "
                             "as the data folder's labels.txt)")
    if not path.is_file():
        raise LabelFileError(f"label file not found: {path}")
    labels = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        label = line.strip()
        control = _CONTROL.search(label)
        if control:
            raise LabelFileError(f"{path}:{number}: control character {control.group()!r} in a "
                                 "label; is this a binary file?")
        if label:
            labels.append(label)
    if len(labels) < 2:
        raise LabelFileError(f"{path}: need at least 2 labels, found {len(labels)}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise LabelFileError(f"{path}: duplicate labels {duplicates}")
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
