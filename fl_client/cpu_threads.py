"""How many threads a site's torch runs: the CPUs its container may use, not the host's cores.

Torch starts a thread per core it sees (OpenMP counts the process's CPU affinity), and a
container held to a CPU quota (``docker run --cpus 2``, a Kubernetes CPU limit) still sees every
core of its host: its threads then take turns at the quota and wait on each other. Measured on
the 2-core machine: two processes embedding the same 245 texts side by side, each with two
threads, took 14 to 58 s each; with one thread each, 7 s. ``fedintent-supernode`` sets
``OMP_NUM_THREADS`` to the quota before Flower starts, so every ClientApp process it launches
inherits it; a value the site set itself is kept. Only cgroup v2's ``cpu.max`` is read (Docker
and Kubernetes on current Linux); without a quota nothing is set.
"""

import math
import os
from collections.abc import MutableMapping
from pathlib import Path

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
"""cgroup v2's quota of the process's own group: ``"<quota> <period>"`` in microseconds, or
``"max <period>"`` for none."""


def quota_cpus(cpu_max: Path) -> int | None:
    """The CPUs the quota in ``cpu_max`` allows, rounded up; None without one (no file, no
    quota, or a line that is not one)."""
    try:
        quota, period = cpu_max.read_text(encoding="ascii").split()
        allowed, per = int(quota), int(period)
    except (OSError, UnicodeError, ValueError):  # "max": no quota
        return None
    if allowed <= 0 or per <= 0:
        return None
    return math.ceil(allowed / per)


def limit_threads_to_quota(environ: MutableMapping[str, str]) -> None:
    """Set ``OMP_NUM_THREADS`` in ``environ`` to the container's CPU quota, unless it is set or
    there is no quota; never above the cores the process may run on."""
    if "OMP_NUM_THREADS" in environ:
        return
    cpus = quota_cpus(CGROUP_CPU_MAX)
    if cpus is None:
        return
    environ["OMP_NUM_THREADS"] = str(min(cpus, len(os.sched_getaffinity(0))))
