"""What produced a result: package versions, the machine and, from a checkout, the project's git
commit.

A number in ``metrics.json`` or a benchmark report is only comparable with another when both
say which code made them. Nothing here may fail a run: a package that is not installed is
``None``, and a commit that cannot be read (no git, not a checkout, the code installed from an
app bundle) is left out.
"""

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

PACKAGES = ("fedintent", "flwr", "torch", "opacus", "transformers", "numpy")
"""The packages whose versions decide what a run computes."""
PROJECT_ROOT = Path(__file__).resolve().parent.parent
GIT_TIMEOUT_SECONDS = 5.0


def software_provenance() -> dict:
    """Package versions, the machine (``machine_provenance``), and ``git_commit`` when the code
    runs from a git checkout, with ``git_dirty``: whether tracked files differ from it (found in
    review: numbers cited a commit whose code had not made them)."""
    record: dict = {"versions": {name: _version(name) for name in PACKAGES},
                    "machine": machine_provenance()}
    commit = git_commit(PROJECT_ROOT)
    if commit is not None:
        record["git_commit"] = commit
        dirty = git_dirty(PROJECT_ROOT)
        if dirty is not None:
            record["git_dirty"] = dirty
    return record


def machine_provenance() -> dict:
    """What a timing depends on besides the code: Python, the operating system, the processor
    and how many cores and how much memory the machine has (found in review: a benchmark report
    gave seconds per round and peak memory with nothing of the machine that measured them)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):  # not a POSIX system that says
        memory = None
    return {"python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "memory_gib": None if memory is None else round(memory, 1)}


def commit_text(record: dict, digits: int = 40) -> str:
    """A record's commit as a report names it: with "+dirty" where the checkout had changes."""
    return f"{record['git_commit'][:digits]}{'+dirty' if record.get('git_dirty') else ''}"


def provenance_changes(recorded: dict, now: dict) -> list[str]:
    """What differs between two ``software_provenance`` records, one line per package version
    or commit (``None``: not installed, or not read); a key one record lacks is not compared."""
    versions, current = recorded.get("versions", {}), now.get("versions", {})
    changes = [f"{name} {versions[name]} -> {current[name]}"
               for name in sorted(versions.keys() & current.keys())
               if versions[name] != current[name]]
    if "git_commit" in recorded and "git_commit" in now \
            and commit_text(recorded) != commit_text(now):
        changes.append(f"git commit {commit_text(recorded, 12)} -> {commit_text(now, 12)}")
    return changes


def git_commit(root: Path) -> str | None:
    """HEAD of the checkout whose top level is ``root``; ``None`` otherwise. A folder inside
    some other repository (an app bundle unpacked under a checkout) is not ``root``'s commit."""
    lines = (_git(root, "rev-parse", "--show-toplevel", "HEAD") or "").split()
    if len(lines) != 2 or Path(lines[0]).resolve() != root.resolve():
        return None
    return lines[1]


def git_dirty(root: Path) -> bool | None:
    """Whether tracked files of the checkout at ``root`` differ from its HEAD (untracked ones
    are not code the project runs); ``None`` where git cannot tell."""
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status.strip())


def _git(root: Path, *args: str) -> str | None:
    """What ``git -C root ARGS`` prints; ``None`` where it fails or cannot run (no git, not a
    checkout): provenance never fails a run."""
    try:
        result = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                timeout=GIT_TIMEOUT_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, read in blocks (a dataset can be large)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
