"""The launcher's watchdog: a process that stops what the launcher started, and removes the
temporary folders it made, if the launcher dies without doing so itself.

A launcher killed outright (SIGKILL, the kernel's out-of-memory killer) runs none of its
clean-up, and its SuperLink, SuperExec, ServerApp and simulation run on in sessions of their
own: the sites go on training and charging privacy budget for rounds nobody will see, and the
ports stay taken. Its throwaway ``FLWR_HOME`` (a connection file and a copy of the app) would
stay in the temporary directory, one more after every such run. ``PR_SET_PDEATHSIG`` would
reach only the launcher's direct children, not the processes Flower and Ray start from them, so
a separate process does it.

The launcher holds the write end of this process's stdin and sends one line per process it
starts (``+ PID CREATE_TIME``) and per process it has stopped itself (``- PID``), and one per
temporary folder it makes (``+dir PATH``) and per folder it has removed itself (``-dir PATH``),
the path as a JSON string. The kernel closes that pipe when the launcher exits, however it
exits; at end of file the watchdog stops the process trees of every process still listed, then
removes every folder still listed, and exits. The creation time guards against a recycled
process id: a process that is not the one the launcher started is never signalled. A folder is
removed only if it is an absolute path to a directory of this user's, not a symbolic link,
whose name starts with :data:`~fedintent.launch.processes.TEMPORARY_FOLDER_PREFIX`: a corrupted
line cannot make the watchdog remove anything else. Lines it cannot read are skipped.

Run as ``python -m fedintent.launch.watchdog``; :mod:`fedintent.launch.processes` starts it.
"""

import contextlib
import json
import os
import shutil
import signal
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from fedintent.launch.processes import TEMPORARY_FOLDER_PREFIX, stop_trees

CREATE_TIME_TOLERANCE_S = 0.01
"""How far apart two readings of one process's creation time may be (it is kept in clock
ticks of 10 ms); a recycled pid's process started at least that much later."""


@dataclass
class Listed:
    """What the launcher left to the watchdog when its lines end."""

    processes: dict[int, float] = field(default_factory=dict)
    """pid -> creation time of each process started and not stopped."""
    folders: set[Path] = field(default_factory=set)
    """Each temporary folder made and not removed."""


def read_listed(lines: Iterable[str]) -> Listed:
    """The processes and temporary folders still listed when ``lines`` ends."""
    listed = Listed()
    for line in lines:
        kind, _, rest = line.rstrip("\n").partition(" ")
        with contextlib.suppress(ValueError):  # a line it cannot read is skipped
            match kind, rest.split():
                case "+", [pid, created]:
                    listed.processes[int(pid)] = float(created)
                case "-", [pid]:
                    listed.processes.pop(int(pid), None)
                case "+dir", _:
                    listed.folders.add(_folder(rest))
                case "-dir", _:
                    listed.folders.discard(_folder(rest))
    return listed


def _folder(text: str) -> Path:
    path = json.loads(text)
    if not isinstance(path, str):
        raise ValueError(f"not a path: {text!r}")
    return Path(path)


def launched_processes(listed: dict[int, float]) -> list[psutil.Process]:
    """Those of ``listed`` that still run and are the very process the launcher started."""
    found = []
    for pid, created in listed.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < CREATE_TIME_TOLERANCE_S:
                found.append(proc)
    return found


def removable(folder: Path) -> bool:
    """Whether ``folder`` may be one the launcher made: an absolute, normalised path to a
    directory of this user's, not a symbolic link, whose name starts with
    :data:`~fedintent.launch.processes.TEMPORARY_FOLDER_PREFIX`."""
    text = str(folder)
    if not (folder.is_absolute() and os.path.normpath(text) == text
            and folder.name.startswith(TEMPORARY_FOLDER_PREFIX)):
        return False
    try:
        return not folder.is_symlink() and folder.is_dir() and folder.stat().st_uid == os.getuid()
    except (OSError, ValueError):
        return False


def remove_folders(folders: Iterable[Path]) -> None:
    """Remove those of ``folders`` that are :func:`removable`, ignoring errors."""
    for folder in sorted(folders):
        if removable(folder):
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    # Ctrl-C and a terminal's hang-up are for the launcher, which then stops its processes
    # itself; the watchdog only ever acts on the launcher's end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Read as bytes: a corrupted byte is one unreadable line, not an error that stops nothing.
    listed = read_listed(line.decode("utf-8", "replace") for line in sys.stdin.buffer)
    stop_trees(launched_processes(listed.processes))
    remove_folders(listed.folders)


if __name__ == "__main__":
    main()
