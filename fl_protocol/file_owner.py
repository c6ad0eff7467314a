"""Whose a file is, for the message when an account may not read or write it.

A site's state folder belongs to the account its SuperNode runs as. A command run as another
account (root, through sudo) cannot read what the site wrote, and what it rewrites by rename
becomes that account's, which the site then cannot read (found in review: the site stopped,
and its message said to restore a backup, which would have lost the erasure just recorded).
Permission denied is never damage: the message says whose the file is and what to run as.
"""

import os
from pathlib import Path


def permission_denied(path: str | os.PathLike | None) -> str:
    """Why ``path`` could not be opened, for an error message: this account's uid, the owner's
    (of the path, or of the nearest folder above it this account can see), and that nothing is
    damaged."""
    account = f"this account (uid {os.geteuid()})"
    if path is None:
        return (f"permission denied to {account}: run the command as the account that owns "
                "the site's folders; nothing is damaged, so restore no backup")
    owner = _owner(Path(path))
    whose = f", which belongs to uid {owner}" if owner is not None else ""
    return (f"permission denied to {account} for {path}{whose}: run the command as the "
            "account that owns the site's folders (the one its SuperNode runs as; `docker "
            "exec` into the site container runs as it), or give the files back to it (chown); "
            "nothing is damaged, so restore no backup")


def _owner(path: Path) -> int | None:
    for candidate in (path, *path.parents):
        try:
            return candidate.stat().st_uid
        except OSError:
            continue
    return None
