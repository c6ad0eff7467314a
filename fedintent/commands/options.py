"""Options that several commands share, with their checks and their help."""

import argparse
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from fedintent.commands import CliError
from fl_protocol.durable_files import remove_entry, sync_folder, sync_tree
from fl_protocol.file_owner import os_error_line
from fl_protocol.written_numbers import is_written_number, reads_as_zero
from fl_server.run_config import RunConfigError, check_epsilon, check_run_config
from fl_server.run_record import METRICS_FILE, run_files_in

TUNED_HELP = "tuned for the epsilon, see docs/BENCHMARKS.md"
DEFAULT_OUT_ROOT = Path("fedintent-out")
NO_FILES_HERE = (Path("/proc"), Path("/sys"))
"""Kernel file systems: writable-looking to root, yet no folder of results can live there."""


def path_argument(text: str) -> Path:
    """A path given on the command line (``type=`` of every path option). An empty one, as an
    unset shell variable gives, is refused rather than read as the current folder (found in
    review: ``init-site --state-dir "$STATE_DIR"`` made the current folder a state folder,
    owner-only, with a site secret in it); so is one with white space around it."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the path is empty (an unset variable?): give one, or "
                                         ". for the current folder")
    if text != text.strip():  # found in review: " /srv/state" made a folder named " " here
        raise argparse.ArgumentTypeError(f"the path {text!r} begins or ends with white space (a "
                                         "stray space or line break in a variable?): remove it")
    return Path(text)


def number_argument(text: str) -> float:
    """A number given on the command line where ``inf`` (no limit) is one of its values
    (``type=`` of an epsilon, budget, retention or bound): not NaN, and the number written
    (``number_read_otherwise``)."""
    return _number(text, suggest_inf=True)


def finite_number_argument(text: str) -> float:
    """A number given on the command line where ``inf`` is none of its values (a delta, a
    rate, a norm): as ``number_argument``, without suggesting ``inf``."""
    return _number(text, suggest_inf=False)


def _number(text: str, suggest_inf: bool) -> float:
    if not is_written_number(text):  # ASCII digits: float() reads other scripts' too
        raise argparse.ArgumentTypeError(f"not a number: {text!r}")
    value = float(text)
    problem = number_read_otherwise(text, value, suggest_inf)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return value


def number_read_otherwise(text: str, value: float, suggest_inf: bool = False) -> str:
    """Why ``value``, read from ``text``, is not the number written (empty if it is): beyond a
    float's range ``1e400`` reads as infinity and ``1e-400`` as 0, and either can mean another
    thing (found in review: ``--retention-days 1e400`` was no retention limit, ``--epsilon
    1e400`` no DP, ``--set delta=1e-400`` each site's default delta). ``suggest_inf``: the
    option takes ``inf``, so the message says to write it."""
    written = text.strip()
    if math.isinf(value) and written.lstrip("+-").lower() not in ("inf", "infinity"):
        if value < 0:
            return f"{written!r} is too far below zero for a number"
        return (f"{written!r} is too large for a number"
                + ("; write inf for no limit" if suggest_inf else ""))
    if reads_as_zero(written, value):
        return f"{written!r} is too small for a number: it would read as 0"
    return ""


@contextmanager
def as_typed(flags: Mapping[str, str]) -> Iterator[None]:
    """A run-config error in the words the user typed: each key of ``flags`` as its option
    (found in review: ``--rounds 0`` was answered "num-rounds must be ...", and one about the
    site count named ``min-sites``, which train has no option for)."""
    try:
        yield
    except RunConfigError as err:
        text = str(err)
        for key, flag in flags.items():
            text = re.sub(rf"(?<![\w-]){re.escape(key)}(?![\w-])", flag, text)
        raise CliError(text) from err


def writable_folder(option: str, requested: Path) -> Path:
    """The absolute path of the folder ``requested`` (``option`` names it in the message),
    checked to be one this process can create or write: not under a file, a kernel file system
    or a folder it may not write. Nothing is created."""
    path = requested.expanduser().resolve()
    for root in NO_FILES_HERE:
        if path.is_relative_to(root):
            raise CliError(f"{option} {path} is under {root}, which holds no files; choose a "
                           "folder on a disk")
    existing = path
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as err:
        raise CliError(f"{option} {path}: {existing} cannot be read ({err.strerror})") from None
    if not existing.is_dir():
        raise CliError(f"{option} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CliError(f"{option} {path}: {existing} is not writable")
    return path


def new_out_dir(requested: Path | None) -> Path:
    """The absolute output folder of a new run (default: a dated one), checked, not created;
    never one that already holds a run."""
    if requested is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        requested = DEFAULT_OUT_ROOT / f"run-{stamp}"
    out_dir = writable_folder("--out", requested)
    if held := run_files_in(out_dir):
        raise CliError(f"{out_dir} already holds a run ({', '.join(held)}); choose another --out"
                       f"{resume_hint(out_dir)}")
    for name in ("logs", "data"):
        if (out_dir / name).exists() and not (out_dir / name).is_dir():
            raise CliError(f"--out {out_dir}: {out_dir / name} is a file; the run writes a "
                           "folder there")
    return out_dir


def resume_hint(out_dir: Path) -> str:
    """How to continue the run in ``out_dir``, where it can be (found in review: a completed
    run's folder offered a resume that then failed)."""
    from fl_server.resume import read_metrics
    from fl_server.run_record import way_on

    try:
        read_metrics(out_dir / METRICS_FILE)
    except RunConfigError:
        return ""
    return f" (or {way_on(out_dir)})"


class Resumption(NamedTuple):
    """A stopped run's folder as a resume finds it: the record, the run configuration the
    resume runs with, the rounds its checkpoint holds, and the warnings to print."""

    doc: dict
    run_config: dict
    done: int
    warnings: list[str]


def resumable_run(out_dir: Path, changes: Mapping[str, object]) -> Resumption:
    """The run in ``out_dir`` checked as ``train --resume`` and ``deploy-run --resume`` check it
    before anything starts: no ServerApp still writes the folder, the record and the run
    configuration it holds (with ``changes``, what the resume may change), the audit log and
    the checkpoint it vouches for. ``CliError`` says why it cannot be resumed."""
    from fl_protocol.hash_chain import ChainError
    from fl_server.checkpoints import CheckpointError
    from fl_server.resume import (
        check_audited_start,
        read_metrics,
        recorded_run_config,
        resume_point,
        resumed_run_config,
    )
    from fl_server.run_record import RunFolderRefused, json_safe, run_folder_busy

    try:
        busy = run_folder_busy(out_dir)
    except RunFolderRefused as err:
        raise CliError(f"cannot resume: {err}") from err
    if busy:  # found in review: two servers then wrote one record
        raise CliError(f"cannot resume: a fedintent ServerApp is still writing {out_dir} (the "
                       "run itself, one stopped that has not seen its stop yet, within about "
                       "30 s, or another resume of it); wait for it to end, then resume")
    doc = read_metrics(out_dir / METRICS_FILE)
    resumed = {"out-dir": str(out_dir), "resume": True, "stop-after-round": 0} | dict(changes)
    with as_typed({"min-sites": "--min-sites"}):
        run_config = check_run_config(resumed_run_config(recorded_run_config(doc) | resumed,
                                                         doc))
    try:
        checkpoint, warnings = resume_point(out_dir, str(run_config["run-name"]))
        check_audited_start(out_dir, json_safe(run_config), doc["labels"])
    except (CheckpointError, ChainError, RunConfigError) as err:
        said = str(err)
        raise CliError(said if said.startswith("cannot resume") else f"cannot resume: {said}"
                       ) from err
    done = checkpoint.server_round if checkpoint else 0
    if 0 < int(run_config["stop-after-round"]) <= done:
        raise CliError(f"--set stop-after-round={run_config['stop-after-round']}: the run has "
                       f"done {done} rounds already; the resume goes on from round {done + 1}")
    if warnings and math.isfinite(float(run_config["target-epsilon"])):
        # found in review: the summary then showed an epsilon above the target without a word
        warnings.append("each site charges the rounds trained again a second time (fresh noise, "
                        "docs/FAULT_TOLERANCE.md), so its epsilon for this run can end above "
                        "the run's target, where its lifetime budget leaves room for them")
    return Resumption(doc, run_config, done, warnings)


@contextmanager
def created_folder(folder: Path) -> Iterator[Path]:
    """Create ``folder`` (and missing parents) for the block; if the block raises, remove what
    was created here, so a refused or failed start leaves the folder as it was, or none."""
    first_new = _first_missing(folder)
    before = set(folder.iterdir()) if folder.is_dir() else None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(f"cannot create {folder}: {err.strerror}") from None
    try:
        yield folder
    except BaseException:
        for new in [first_new] if before is None else set(folder.iterdir()) - before:
            remove_entry(new, ignore_errors=True)
        raise


@contextmanager
def folder_made_whole(folder: Path, last: str = "manifest.json") -> Iterator[Path]:
    """A hidden folder for the block to fill, whose contents become ``folder`` (absent or
    empty) when the block ends, so that ``folder`` holds the whole output or nothing of it
    (found in review: an interrupted synth left site folders and no manifest, which a rerun
    refused and train --data would read). A new ``folder`` is the hidden sibling renamed into
    place; an existing empty one (a mount point, the current folder, one made with its owner,
    group and ACLs) is kept, its entries moved up into it from a hidden folder inside it,
    ``last`` (the manifest) last. If the block raises, Ctrl-C included, the hidden folder goes,
    with any parent created for it."""
    exists = folder.is_dir()
    first_new = None if exists else _first_missing(folder.parent)
    parent = folder if exists else folder.parent
    temporary = parent / f".{folder.name if not exists else 'partial'}.{secrets.token_hex(8)}"
    try:
        temporary.mkdir(parents=True)  # as ``mkdir`` makes ``folder``: the umask applies
    except OSError as err:
        raise CliError(f"cannot create {folder}: {err.strerror}") from None
    try:
        yield temporary
    except BaseException:  # the block's own error (a permission, a bad input) is raised as is
        _remove_new(temporary, first_new)
        raise
    try:
        sync_tree(temporary)  # on disk before it takes the folder's name
        if exists:
            for entry in sorted(temporary.iterdir(), key=lambda entry: entry.name == last):
                entry.rename(folder / entry.name)
            temporary.rmdir()
        else:
            temporary.rename(folder)
        sync_folder(folder if exists else folder.parent)
    except BaseException as err:
        _remove_new(temporary, first_new)
        if isinstance(err, OSError):
            raise CliError(f"cannot write {folder}: {os_error_line(err)}") from None
        raise


def _remove_new(temporary: Path, first_new: Path | None) -> None:
    """Remove ``folder_made_whole``'s temporary folder and the parent it created, if any."""
    shutil.rmtree(temporary, ignore_errors=True)
    if first_new is not None:
        shutil.rmtree(first_new, ignore_errors=True)


def _first_missing(folder: Path) -> Path | None:
    """The outermost folder of ``folder``'s path that does not exist yet (``folder`` itself
    where only it is missing), or None where ``folder`` exists."""
    if folder.exists():
        return None
    first_new = folder
    while not first_new.parent.exists():
        first_new = first_new.parent
    return first_new


def parse_epsilons(text: str) -> list[float]:
    """``--epsilons`` of bench and audit-privacy: comma-separated epsilons, each inf (no DP) or
    in the range the default accountant plans for (``wire.EPSILON_RANGES``)."""
    try:
        epsilons = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise CliError(f"--epsilons must be numbers or inf, got {text!r}") from None
    if not epsilons:
        raise CliError(f"--epsilons must be > 0 (inf = no DP), got {text!r}")
    try:
        return [check_epsilon("--epsilons", epsilon) for epsilon in epsilons]
    except RunConfigError as err:
        raise CliError(str(err)) from None
