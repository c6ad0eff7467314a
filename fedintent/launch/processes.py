"""Processes that fedintent starts (SuperLink, SuperNodes, ``flwr run``), and stopping them all.

Flower starts its SuperExec, ServerApp and simulation (and Ray its workers) in sessions of
their own, so a process group does not hold them: stopping walks the whole process tree, and
every process that was started is gone afterwards, on success, failure or Ctrl-C. Should the
launcher itself be killed before it can stop them, its watchdog (:mod:`fedintent.launch.watchdog`)
does; it also removes the temporary folders made with :func:`make_temporary_folder` that the
launcher did not get to remove itself.
"""

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import psutil

TERMINATE_GRACE_S = 10.0
KILL_GRACE_S = 5.0


PORT_RANGE_VARIABLE = "FEDINTENT_PORT_RANGE"
"""Environment variable ``LOW-HIGH`` (for example ``20000-25999``): the ports :func:`free_port`
takes from. Unset, the kernel picks one from its ephemeral range. Give two launchers on one host
(parallel test workers, two operators) disjoint ranges below the ephemeral range, and neither
can take the port the other chose before its server has bound it."""

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (and not handed out before
    by this process, which may not have bound it yet)."""
    span = os.environ.get(PORT_RANGE_VARIABLE, "").strip()
    if not span:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    low, high = _port_range(span)
    start = random.SystemRandom().randrange(low, high + 1)
    for offset in range(high - low + 1):
        port = low + (start - low + offset) % (high - low + 1)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise OSError(f"no free port left in {PORT_RANGE_VARIABLE}={span}")


def _port_range(span: str) -> tuple[int, int]:
    """``LOW-HIGH`` as two ports, or a ValueError that names the variable."""
    try:
        low, high = (int(part) for part in span.split("-"))
    except ValueError:
        low = high = -1
    if not 1024 <= low <= high <= 65535:
        raise ValueError(f"{PORT_RANGE_VARIABLE}={span!r}: expected LOW-HIGH with "
                         "1024 <= LOW <= HIGH <= 65535")
    return low, high


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def start_process(
    command: list[str],
    env: dict[str, str],
    log: BinaryIO,
    processes: list[subprocess.Popen],
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start ``command`` in its own session, logging to ``log``; record it in ``processes`` and
    with the watchdog.

    Recording it before anything else can fail is what lets :func:`stop_process_trees` stop it.
    """
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, start_new_session=True,
    )
    processes.append(process)
    with contextlib.suppress(psutil.Error):
        _watch(process.pid, psutil.Process(process.pid).create_time())
    return process


def stop_process_trees(processes: list[subprocess.Popen]) -> None:
    """Stop the processes and every process they spawned: terminate, then kill what is left."""

    def reap() -> None:
        for process in processes:
            process.poll()

    stop_trees(_tree(process.pid for process in processes), reap)
    reap()
    for process in processes:
        _unwatch(process.pid)


def stop_trees(roots: list[psutil.Process], reap: Callable[[], None] = lambda: None) -> None:
    """Stop ``roots`` and all their descendants: terminate, then kill what is left; ``reap``
    collects the exit status of those that are this process's own children.

    The whole tree is collected before the first signal, since a child whose parent is gone
    can no longer be found from it. ``psutil.wait_procs`` is not used: a zombie whose parent
    never reaps it would hold it for the whole grace period, and it would reap the started
    processes behind ``Popen``'s back, losing their exit codes.
    """
    tree = _tree_of(roots)
    for stop, grace in ((psutil.Process.terminate, TERMINATE_GRACE_S),
                        (psutil.Process.kill, KILL_GRACE_S)):
        tree = [proc for proc in _tree_of(tree) if _running(proc)]
        for proc in tree:
            with contextlib.suppress(psutil.Error):
                stop(proc)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_running(proc) for proc in tree):
            reap()
            time.sleep(0.1)


TEMPORARY_FOLDER_PREFIX = "fedintent-flwr-"
"""How the name of every folder :func:`make_temporary_folder` makes begins; the watchdog removes
no folder whose name does not."""


def make_temporary_folder() -> Path:
    """A new private folder in the temporary directory (``tempfile.mkdtemp``), recorded with the
    watchdog: should this launcher be killed before :func:`remove_temporary_folder`, the
    watchdog removes it once it has stopped the processes."""
    folder = Path(tempfile.mkdtemp(prefix=TEMPORARY_FOLDER_PREFIX)).absolute()
    _watched[folder] = f"+dir {json.dumps(str(folder))}"
    try:
        _tell_watchdog(_watched[folder])
    except BaseException:  # no watchdog (or Ctrl-C while it starts): nobody else removes it
        _watched.pop(folder, None)
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return folder


def remove_temporary_folder(folder: Path) -> None:
    """Remove ``folder``, made by :func:`make_temporary_folder`, and tell the watchdog so."""
    shutil.rmtree(folder, ignore_errors=True)
    if _watched.pop(folder, None) is not None:
        _tell_watchdog(f"-dir {json.dumps(str(folder))}")


_watchdog: subprocess.Popen | None = None
_watched: dict[int | Path, str] = {}
"""pid or folder -> the watchdog's line for each process started and not yet stopped, and each
temporary folder made and not yet removed. A path is sent as a JSON string: it may hold spaces
or any other character."""


def _watch(pid: int, created: float) -> None:
    """Tell the watchdog that process ``pid``, created at ``created``, was started."""
    _watched[pid] = f"+ {pid} {created!r}"
    _tell_watchdog(_watched[pid])


def _unwatch(pid: int) -> None:
    """Tell the watchdog that process ``pid`` was stopped here."""
    if _watched.pop(pid, None) is not None:
        _tell_watchdog(f"- {pid}")


def _tell_watchdog(line: str) -> None:
    """Send ``line`` to this launcher's watchdog, starting it (again) if it is not running; a
    new one is first told every process still started and folder still made. Once neither is
    left, the watchdog is let go: it lives exactly as long as something it may have to stop or
    remove."""
    global _watchdog
    if _watchdog is not None:
        try:
            _watchdog.stdin.write(f"{line}\n".encode())
            _watchdog.stdin.flush()
        except OSError:  # it is gone: a new one takes over what is still started
            _watchdog = None
    if _watchdog is None and _watched:
        _watchdog = subprocess.Popen(
            [sys.executable, "-m", "fedintent.launch.watchdog"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, start_new_session=True,
        )
        _watchdog.stdin.write("".join(f"{started}\n" for started in _watched.values()).encode())
        _watchdog.stdin.flush()
    if not _watched and _watchdog is not None:
        with contextlib.suppress(OSError):
            _watchdog.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            _watchdog.wait(timeout=TERMINATE_GRACE_S)
        _watchdog = None


def descendants(pids: Iterable[int]) -> set[int]:
    """The ids of every process spawned, directly or not, by the processes ``pids``."""
    pids = set(pids)
    return {proc.pid for proc in _tree(pids)} - pids


def is_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a zombie has stopped running)."""
    try:
        return _running(psutil.Process(pid))
    except psutil.Error:
        return False


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM so a second one cannot abort a clean-up half way.

    They are delivered when the block ends.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _tree(pids: Iterable[int]) -> list[psutil.Process]:
    """The processes ``pids`` that still exist, with all their descendants."""
    roots = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            roots.append(psutil.Process(pid))
    return _tree_of(roots)


def _tree_of(roots: list[psutil.Process]) -> list[psutil.Process]:
    """``roots`` and every descendant of those still running, each once."""
    found = {proc.pid: proc for proc in roots}
    for proc in roots:
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    return list(found.values())


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
