"""Whose a file is, for the message when an account may not read or write it; what a path that
is no file is instead; and any other file error, in one line.

A site's state folder belongs to the account its SuperNode runs as. A command run as another
account (root, through sudo) cannot read what the site wrote, and what it rewrites by rename
becomes that account's, which the site then cannot read (found in review: the site stopped,
and its message said to restore a backup, which would have lost the erasure just recorded).
Permission denied is never damage: the message says whose the file is and what to run as.
"""

import os
from pathlib import Path


def permission_denied(path: str | os.PathLike | None, site: bool = True) -> str:
    """Why ``path`` could not be opened, for an error message: this account's uid, the owner's
    (of the path, or of the nearest folder above it this account can see), and, for a site's
    files (``site``), which account to run as and that nothing is damaged."""
    account = f"this account (uid {os.geteuid()})"
    advice = ("run the command as the account that owns the site's folders (the one its "
              "SuperNode runs as; `docker exec` into the site container runs as it), or give "
              "the files back to it (chown); nothing is damaged, so restore no backup"
              if site else "run the command as an account that may, or give this one access")
    if path is None:
        return f"permission denied to {account}: {advice}"
    path = Path(path)
    found = _owner(path)
    if found is None:
        whose = ""
    elif found[0] == path:
        whose = f", which belongs to uid {found[1]}"
    else:  # found in review: the folder's owner was named as the owner of a missing file
        whose = (f" (the nearest folder above it this account can see, {found[0]}, is uid "
                 f"{found[1]}'s)")
    return f"permission denied to {account} for {path}{whose}: {advice}"


def _owner(path: Path) -> tuple[Path, int] | None:
    """(the path or the nearest folder above it this account can see, its owner)."""
    for candidate in (path, *path.parents):
        try:
            return candidate, candidate.stat().st_uid
        except OSError:
            continue
    return None


def not_a_file(path: Path, what: str) -> str:
    """Why ``path``, there but no regular file (a folder, a FIFO, a device), cannot be read as
    ``what`` ("" for a regular file, or for nothing there, which the caller names as missing).
    Found in review: a folder named test.csv or model.safetensors was "file not found"."""
    if path.is_dir():
        return f"{path} is a folder, not {what}"
    if path.exists() and not path.is_file():
        return f"{path} is not a regular file, not {what}"
    return ""


def os_error_line(err: OSError) -> str:
    """An ``OSError`` in one line, with the file it concerns when it names one."""
    where = f"{err.filename}: " if err.filename else ""
    return f"{where}{err.strerror or err}"
