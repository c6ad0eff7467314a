"""Finding and opening a site's data files safely, and decoding their lines.

Which files are read: ``train.*`` and ``test.*`` when the site gives its split, else every
``*.jsonl`` and ``*.csv`` file in the folder (``files_read``, for the loader and ``check-data``
alike).

A data folder is written by other accounts (the exporter's, an administrator's), so opening a
file is hardened: a file is looked at through an ``O_PATH`` descriptor before it is opened, so a
FIFO, socket or device named as a data file is refused without being opened (no driver called,
no FIFO waited on); every symbolic link on the way is resolved here (``resolved``) with its
owner, and, run as root, a file reached through a link of another account is not read
(``link_problem``); ``file_stamp`` records which file was read, so that an erasure rewrites that
very file.

Files are UTF-8 (a leading byte-order mark dropped). A file saved as UTF-16 or UTF-32 (Excel's
"Unicode text"), known by its byte-order mark or, for UTF-16 without one, by NUL bytes in every
other position of its first bytes, is one rejection of the whole file, not one per line. A line
that is not UTF-8 or is over ``MAX_LINE_BYTES`` is one rejection, and a file that cannot be read
is reported (line 0: the whole file), never raised.
"""

import codecs
import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from fl_client.rows import FileStamp, RejectedRow, SiteDataError

MAX_LINE_BYTES = 1 << 20
"""A longer line (line break included) is rejected unread, so one line cannot exhaust memory."""
_WIDE_MARKS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
               (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
"""Byte-order marks of the encodings a spreadsheet's "Unicode" export writes; UTF-32 first, since
its little-endian mark begins with UTF-16's."""
_SNIFFED_BYTES = 16
"""How much of a file's start is read for NULs in alternate positions: UTF-16 without a mark."""
MAX_LINKS = 40
"""Symbolic links ``resolved`` follows in one path before it gives up, as Linux does."""


def check_site_folder(site_dir: Path) -> None:
    """``SiteDataError`` unless ``site_dir`` is a folder, naming a data file given for it."""
    if site_dir.is_file():
        raise SiteDataError(f"site data folder {site_dir} is a file, not a folder: give the "
                            f"folder that holds the site's data files ({site_dir.parent})")
    if not site_dir.is_dir():
        raise SiteDataError(f"site data folder not found: {site_dir}")


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
                "that holds the site folders" if files_read(data_dir).in_order() else "")
        raise SiteDataError(f"no site folders in {data_dir}{hint}")
    return sites


class FilesRead(NamedTuple):
    """The data files the loader reads: the split the site gives (``train.*``, ``test.*``), or,
    without a ``train.*`` file, every data file (``unsplit``), which the loader splits."""

    train: list[Path]
    test: list[Path]
    unsplit: list[Path]

    def in_order(self) -> list[Path]:
        """Every file, in the order ``read_rows`` reads them."""
        return self.train + self.test + self.unsplit


def files_read(site_dir: Path) -> FilesRead:
    """The data files ``read_rows`` reads: decided here once, for the loader and the checks."""
    given = _split_files(site_dir, "train")
    if given:
        return FilesRead(given, _split_files(site_dir, "test"), [])
    return FilesRead([], [], _data_files(site_dir))


def holds_data_files(folder: Path) -> bool:
    """Whether ``folder`` is a visible folder with data files: a site folder, inside a folder
    of sites given where one site's was meant (found in review: "no data files" said no more)."""
    try:
        return folder.is_dir() and not folder.name.startswith(".") and bool(_data_files(folder))
    except (OSError, SiteDataError):
        return False


def _data_files(site_dir: Path) -> list[Path]:
    try:
        return _regular_files(sorted(p for p in site_dir.iterdir()
                                     if p.suffix in (".jsonl", ".csv")))
    except OSError as err:
        raise SiteDataError(f"cannot list {site_dir}: {err.strerror or err}") from err


def _split_files(site_dir: Path, split: str) -> list[Path]:
    return _regular_files([site_dir / f"{split}.jsonl", site_dir / f"{split}.csv"])


def _regular_files(paths: list[Path]) -> list[Path]:
    """The files among ``paths`` that are there; a name that is there but is no regular file is
    an error, never skipped (found in review: a ``train.jsonl`` linked into a volume that was
    not mounted was passed over, and the site split its test file and trained on it)."""
    found = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_symlink() or path.exists():
            raise SiteDataError(f"{path}: {_not_regular(path)}, not a data file; a data file "
                                "must be a regular file (is the data volume mounted?)")
    return found


def _not_regular(path: Path) -> str:
    if path.is_symlink() and not path.exists():
        try:
            return f"a link to {os.readlink(path)}, which is not there"
        except OSError:
            return "a link that does not resolve"
    return "a folder" if path.is_dir() else "not a regular file (a FIFO, socket or device?)"


def file_stamp(info: os.stat_result) -> FileStamp:
    """A data file's identity and version: (device, inode, size, modification and change times
    in ns; the change time also moves when the modification time is set back)."""
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns


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


def shown_name(path: Path) -> str:
    """The file's name as printable text, even when it is not UTF-8 on disk."""
    return path.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def decoded_lines(path: Path, rejected: list[RejectedRow],
                   stamps: dict[Path, FileStamp] | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, text) for each non-blank line. A line that is not UTF-8 or is over
    ``MAX_LINE_BYTES`` is reported; so is a file that cannot be read, from where reading stopped,
    and a file in UTF-16 or UTF-32, once (its every line would be noise). ``stamps`` gets the
    file's ``file_stamp`` as opened."""
    name = shown_name(path)
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
        return reopened(probe, flags)
    finally:
        os.close(probe)


def reopened(probe: int, flags: int) -> int:
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
