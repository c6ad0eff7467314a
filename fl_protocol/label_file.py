"""The run's label file: the intent taxonomy, one label per line.

The server reads it to build the model and sends the list to every site with each round; a site
maps its rows' intents onto that list. Its order is the model's output order.
"""

from pathlib import Path


class LabelFileError(ValueError):
    """The label file is missing or malformed; the message names the file."""


def read_labels(path: Path) -> list[str]:
    """The labels in file order; blank lines skipped, fewer than two or a duplicate refused."""
    path = Path(path)
    if not path.is_file():
        raise LabelFileError(f"label file not found: {path}")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    labels = [label for label in labels if label]
    if len(labels) < 2:
        raise LabelFileError(f"{path}: need at least 2 labels, found {len(labels)}")
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise LabelFileError(f"{path}: duplicate labels {duplicates}")
    return labels
