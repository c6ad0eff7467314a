"""Erasing rows from a site's data files (``forget --delete-from-data``, ``purge``; only
``retention`` calls it). Nothing else in loading writes a data file.

A rewrite keeps the file whole, old or new, at every moment, and keeps its permissions, owner
and extended attributes; it rewrites only the very file the rows were read from (its
``file_stamp``), opened in a descriptor of its folder without following a link, so that a file
renamed, replaced or swapped for a link since the rows were read is left as it is.
"""

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from fl_client.data_files import file_stamp, link_problem, reopened, resolved
from fl_client.rows import FileStamp, SiteDataError
from fl_protocol.durable_files import replace_in_folder


def remove_lines(path: Path, lines: set[int], stamp: FileStamp) -> None:
    """Rewrite a data file without the given line numbers (as ``RejectedRow`` and ``Row`` count
    them), atomically and with its permissions, owner and extended attributes kept: the file is
    whole, old or new, at every moment. A symbolic link's target is rewritten, not the link
    (replacing the link would leave the rows in the exporter's file); a file with other hard
    links is refused, since they would keep the rows. So is a read-only file (someone made it
    so), and one whose owner this account could not keep (found in review: a file rewritten by
    another account became its, and the exporter could no longer append to it).

    Only the file the rows were read from (``stamp``, the rows' ``Row.stamp``), unchanged since,
    is rewritten: it is opened in a descriptor of its folder, without following a link, every
    check is of that open file, and the new version is written and renamed in that folder,
    after a last look that the name is still the file read. Found in review: an account that
    may rename files in the data folder swapped a link to another file, or to another folder
    above it, in after the rows were read, and the erasure deleted those line numbers from the
    site's privacy ledger, or, run as root, replaced any file on the host."""
    entry = Path(path)
    real, links = resolved(entry)
    folder = os.open(real.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        probe = os.open(real.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
        try:
            info = os.fstat(probe)
            if stat.S_ISLNK(info.st_mode):
                raise SiteDataError(_changed(real, "was replaced by a link since its rows were "
                                                   "read"))
            if file_stamp(info) != stamp:  # the file read was a regular one (_open_regular)
                raise SiteDataError(_changed(real, "is not the file the rows were read from, or "
                                                   "it changed (written, replaced or renamed) "
                                                   "since"))
            fd = reopened(probe, os.O_RDONLY)
        finally:
            os.close(probe)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if file_stamp(info) != stamp:
                raise SiteDataError(_changed(real, "changed since its rows were read"))
            if problem := link_problem(entry, links, info):
                raise SiteDataError(f"{problem}: nothing is removed from it; delete the rows at "
                                    "the source")
            kept = _kept_lines(real, info, f, lines)
            attributes = _kept_attributes(f.fileno())

        def still_the_file_read() -> None:
            now = os.stat(real.name, dir_fd=folder, follow_symlinks=False)
            if file_stamp(now) != stamp:
                raise SiteDataError(_changed(real, "changed while its new version was "
                                               "written"))

        replace_in_folder(folder, real.name, b"".join(kept), info.st_mode & 0o7777,
                          (info.st_uid, info.st_gid), still_the_file_read, attributes)
    finally:
        os.close(folder)


def _kept_attributes(fd: int) -> dict[str, bytes]:
    """The extended attributes of the open file a rewrite keeps: all but ``security.*`` labels
    (SELinux's), which the kernel gives the new file as to any file made in its folder (found
    in review: the rewrite dropped an ACL, through which the site read the exporter's file)."""
    try:
        names = os.listxattr(fd)
    except OSError as err:
        if err.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {name: os.getxattr(fd, name) for name in names if not name.startswith("security.")}


def _changed(path: Path, what: str) -> str:
    return (f"{path} {what}: nothing is removed from it; run this again, and if nothing "
            "should have changed it, check who may write the data folder")


def _kept_lines(path: Path, info: os.stat_result, f: BinaryIO, lines: set[int]) -> list[bytes]:
    """The lines of the open data file ``f`` but ``lines``, once the file may be rewritten."""
    if info.st_nlink > 1:
        raise SiteDataError(f"{path} has {info.st_nlink - 1} other hard link(s), which "
                            "would keep the rows removed from this name; remove the links, or "
                            "delete the rows in the files they name, then run this again")
    if not info.st_mode & 0o222:
        raise SiteDataError(f"{path} is read-only (mode {info.st_mode & 0o7777:o}): make it "
                            "writable to let the rows be removed from it, or delete them at "
                            "the source")
    if os.geteuid() != 0 and (info.st_uid != os.geteuid() or info.st_gid not in
                              {os.getegid(), *os.getgroups()}):
        raise SiteDataError(f"{path} belongs to uid {info.st_uid} (group {info.st_gid}), and "
                            f"this account (uid {os.geteuid()}) cannot keep that: rewritten, "
                            "it would become this account's, and whoever writes the file could "
                            "no longer append to it; delete the rows at the source, or make the "
                            "site's account the file's owner (chown; the exporter can still "
                            "append through a group both hold)")
    return [raw for number, raw in enumerate(iter(f.readline, b""), start=1)
            if number not in lines]
