"""What a site's data loads into, and what is reported about it: a valid ``Row``, a
``RejectedRow`` (a row or a file skipped, where and why) and ``SiteDataError`` (the folder cannot
be used at all).

They sit below every stage of loading (opening files, ``data_files``; parsing lines,
``row_parsing``; erasing lines, ``erase_lines``; the loader, ``site_data``), so that each stage
reports in the same terms without importing the loader above it.
"""

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

FileStamp = tuple[int, int, int, int, int]
"""A data file's ``file_stamp``: (device, inode, size, modification and change times in ns)."""


class SiteDataError(ValueError):
    """The site folder cannot be used at all (missing, empty, no valid rows)."""


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
