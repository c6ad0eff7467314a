"""The launcher's watchdog: a process that stops what the launcher started, if the launcher
dies without doing so itself.

A launcher killed outright (SIGKILL, the kernel's out-of-memory killer) runs none of its
clean-up, and its SuperLink, SuperExec, ServerApp and simulation run on in sessions of their
own: the sites go on training and charging privacy budget for rounds nobody will see, and the
ports stay taken. ``PR_SET_PDEATHSIG`` would reach only the launcher's direct children, not the
processes Flower and Ray start from them, so a separate process does it.

The launcher holds the write end of this process's stdin and sends one line per process it
starts (``+ PID CREATE_TIME``) and per process it has stopped itself (``- PID``). The kernel
closes that pipe when the launcher exits, however it exits; at end of file the watchdog stops
the process trees of every process still listed, and exits. The creation time guards against a
recycled process id: a process that is not the one the launcher started is never signalled.

Run as ``python -m fedintent.launch.watchdog``; :mod:`fedintent.launch.processes` starts it.
"""

import contextlib
import signal
import sys

import psutil

from fedintent.launch.processes import stop_trees

CREATE_TIME_TOLERANCE_S = 0.01
"""How far apart two readings of one process's creation time may be (it is kept in clock
ticks of 10 ms); a recycled pid's process started at least that much later."""


def read_started(lines) -> dict[int, float]:
    """The processes still listed when ``lines`` ends: pid -> creation time."""
    listed: dict[int, float] = {}
    for line in lines:
        match line.split():
            case ["+", pid, created]:
                listed[int(pid)] = float(created)
            case ["-", pid]:
                listed.pop(int(pid), None)
    return listed


def launched_processes(listed: dict[int, float]) -> list[psutil.Process]:
    """Those of ``listed`` that still run and are the very process the launcher started."""
    found = []
    for pid, created in listed.items():
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < CREATE_TIME_TOLERANCE_S:
                found.append(proc)
    return found


def main() -> None:
    # Ctrl-C and a terminal's hang-up are for the launcher, which then stops its processes
    # itself; the watchdog only ever acts on the launcher's end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stop_trees(launched_processes(read_started(sys.stdin)))


if __name__ == "__main__":
    main()
