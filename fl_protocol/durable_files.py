"""Files that a crash at any moment leaves whole: the old version or the new, never a torn one.

Every file fedintent writes goes through here. ``write_bytes_atomic`` replaces a file (temporary
file in the same folder, fsync, ``os.replace``, fsync of the folder); ``create_exclusive``
creates one that must not exist yet (a site secret, a private key: never overwritten, even by a
concurrent process); ``append_line`` appends one durable line (egress log, audit log). Each
takes the file's ``mode``: 0644 for run outputs, 0600 for what a site derives from customer data
or keeps secret. ``json_safe`` is the one rule for JSON's missing infinity, ``remove_entry`` the
one way to take back what a failed command wrote.
"""

import contextlib
import errno
import fcntl
import json
import math
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path


class FileExistsRefusal(FileExistsError):
    """``create_exclusive`` found the file already there; nothing was written."""


class ReplacedNotFlushed(OSError):
    """The file was replaced, and every reader now sees the new version, but its folder could
    not be flushed: a power loss before the disk recovers could bring the old one back (found
    in review: a purge took this for "nothing rewritten" and logged no rows removed)."""


def write_bytes_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably, with permissions ``mode``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _durable_temporary(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        sync_folder(path.parent)
    except OSError as err:
        raise ReplacedNotFlushed(err.errno, f"{path} was replaced, but its folder could not "
                                 f"be flushed: {err.strerror or err}") from err


def replace_in_folder(folder: int, name: str, data: bytes, mode: int, owner: tuple[int, int],
                      still: Callable[[], None],
                      attributes: Mapping[str, bytes] | None = None) -> None:
    """``write_bytes_atomic`` of the entry ``name`` of the open folder ``folder``, whatever path
    leads to it now: the temporary file, the last check (``still``, which raises to refuse) and
    the rename are all relative to the folder, so a folder above it swapped for a link cannot
    send the write elsewhere (found in review: a data file's rewrite, redirected so, replaced
    /etc/passwd as root). The new file gets ``attributes`` (extended attributes, an ACL among
    them) or is not written."""
    tmp = f".{name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=folder)
    try:
        _fill(fd, data, mode, owner, attributes)
        still()
        os.replace(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=folder)
        raise
    try:
        _sync_open_folder(folder)
    except OSError as err:
        raise ReplacedNotFlushed(err.errno, f"{name} was replaced, but its folder could not be "
                                 f"flushed: {err.strerror or err}") from err


def write_text_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """``write_bytes_atomic`` for UTF-8 text with ``\\n`` line ends."""
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def write_json_atomic(
    path: Path, document: object, mode: int = 0o644, infinity: object = None
) -> None:
    """``write_bytes_atomic`` for a strict JSON document, indented, ``json_safe`` first."""
    text = json.dumps(json_safe(document, infinity), indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"), mode)


def create_exclusive(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``data``, durably; raise ``FileExistsRefusal`` if it exists.

    The bytes go to a private temporary file that is hard-linked to the final name: the link
    fails rather than replaces, so two processes racing to create the file never overwrite
    each other and a reader never sees it half-written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _durable_temporary(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError as err:
        raise FileExistsRefusal(f"{path} already exists; refusing to overwrite it") from err
    finally:
        Path(tmp).unlink(missing_ok=True)
    sync_folder(path.parent)


def append_line(path: Path, line: str, mode: int = 0o644) -> int:
    """Append ``line`` and a newline, fsync'd before returning; the file is created ``mode``.
    Returns the offset the line starts at.

    A write that fails part-way (a full disk) is undone: the file is cut back to its length
    before it and the error raised, so no torn line is left for a reader to take for tampering
    (found in review: a hash-chained log torn so could never be extended or resumed again)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, mode)
    try:
        # every appender holds the lock, so the undo never cuts another process's finished line
        fcntl.flock(fd, fcntl.LOCK_EX)
        before = os.fstat(fd).st_size
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except BaseException:
            os.ftruncate(fd, before)
            with contextlib.suppress(OSError):  # the write's own error is the one to report
                os.fsync(fd)  # else a power loss could bring the torn line back
            raise
    finally:
        os.close(fd)
    return before


def json_safe(value: object, infinity: object = None) -> object:
    """``value`` ready for strict JSON: NaN as null, infinity as ``infinity`` (null in run
    records, where it means "no bound"; "inf" in reports), numpy scalars as Python numbers,
    tuples as lists, every key a string."""
    if isinstance(value, dict):
        return {str(k): json_safe(v, infinity) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v, infinity) for v in value]
    if hasattr(value, "item") and not isinstance(value, int | float | str):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float) and math.isinf(value):
        return infinity
    return value


def sync_tree(folder: Path) -> None:
    """Flush every file under ``folder``, and the folders themselves, to disk: a folder written
    file by file and then renamed into place is durable only after this."""
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            sync_folder(path)
    sync_folder(Path(folder))


def remove_entry(path: Path, ignore_errors: bool = False) -> None:
    """Remove ``path``: a file, a link (never what it points to) or a folder with everything in
    it; one already gone is no error. With ``ignore_errors`` (a failed start cleaning up after
    itself, its own error to report), whatever cannot be removed is passed over, the rest
    removed."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=ignore_errors)
        else:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    except OSError:
        if not ignore_errors:
            raise


def _durable_temporary(path: Path, data: bytes, mode: int) -> str:
    """A temporary file next to ``path`` holding ``data`` with ``mode``, flushed to disk."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        _fill(fd, data, mode)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def _fill(fd: int, data: bytes, mode: int, owner: tuple[int, int] | None = None,
          attributes: Mapping[str, bytes] | None = None) -> None:
    """Give the new temporary file ``fd`` its ``owner``, ``mode`` and extended ``attributes``
    before any data, then ``data``, flushed to disk; the descriptor is closed."""
    with os.fdopen(fd, "wb") as f:
        if owner is not None:
            os.fchown(f.fileno(), *owner)
        os.fchmod(f.fileno(), mode)
        for attribute, value in (attributes or {}).items():
            os.setxattr(f.fileno(), attribute, value)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it, a file created in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        _sync_open_folder(fd)
    finally:
        os.close(fd)


def _sync_open_folder(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise  # an I/O error: the rename may not be on disk
