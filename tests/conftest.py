"""Shared fixtures, each pytest-xdist worker's own range of ports, and one torch thread per
process."""

import importlib.util
import math
import os
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import torch
from flwr.app import Context, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedintent.launch.processes import PORT_RANGE_VARIABLE
from fl_client.site_secret import create_site_secret
from fl_protocol.wire import RUN_CONFIG_DEFAULTS

# The ports between Ray's worker ports (up to 19999) and the kernel's ephemeral range (from
# 32768), split among the workers: two workers' SuperLinks, SuperNodes and `fedintent`
# subprocesses (which inherit the variable) never take the same port.
LOW_PORT, HIGH_PORT = 20000, 32767


def pytest_configure(config: pytest.Config) -> None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    index = int(worker.removeprefix("gw"))
    width = (HIGH_PORT - LOW_PORT + 1) // workers
    low = LOW_PORT + index * width
    os.environ[PORT_RANGE_VARIABLE] = f"{low}-{low + width - 1}"
    # Each worker's torch, and that of every site, ServerApp and command it starts (they inherit
    # the variable), computes with one thread: torch's default of a thread per core
    # oversubscribes CI's two cores as soon as two processes compute at once. Two processes
    # embedding the same 245 texts side by side took 14 to 58 s each with two threads, 7 s with
    # one (4 s alone).
    if "OMP_NUM_THREADS" not in os.environ:  # a developer's own setting is kept
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.fixture
def benchmark_script() -> Callable[[str], ModuleType]:
    """``benchmark_script(name)``: ``benchmarks/<name>.py`` imported as a module (the folder is
    scripts, not a package), so that tests can call its functions."""

    def load(name: str) -> ModuleType:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def twin_noise(monkeypatch):
    """Twin sites (one secret copied, fresh ledgers) draw the same noise: each release's fresh
    nonce (``site_secret.release_nonce``) replaced by a constant, the one thing a real site
    never repeats."""
    import fl_client.privacy_budget as privacy_budget

    monkeypatch.setattr(privacy_budget, "release_nonce", lambda: "twin")


@pytest.fixture
def task_identity():
    """Messages made outside a Flower process need a run, node and task identity."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 7, 1
    yield
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = saved


@pytest.fixture
def ctx(tmp_path) -> Context:
    """A deployed site's context outside Flower: data and state folders under ``tmp_path``, the
    default run config."""
    node = {"data-path": str(tmp_path / "data"), "state-dir": str(tmp_path / "state"),
            "retention-days": math.inf}
    create_site_secret(tmp_path / "state")  # as ``fedintent init-site`` does
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                   run_config=dict(RUN_CONFIG_DEFAULTS))


@pytest.fixture
def sleeping_flower(monkeypatch) -> list:
    """Flower's processes, as the launcher starts them, replaced by sleepers it starts and
    stops the same way, and the local SuperLink taken as up: the processes started, in order
    (each a ``subprocess.Popen``)."""
    import sys

    from fedintent.launch import simulation

    started = []
    real_start = simulation.start_process

    def start_sleeper(command, env, log, processes, cwd=None):
        started.append(real_start([sys.executable, "-c", "import time; time.sleep(120)"],
                                  env, log, processes, cwd))
        return started[-1]

    monkeypatch.setattr(simulation, "start_process", start_sleeper)
    monkeypatch.setattr(simulation, "wait_local_superlink", lambda port, superlink: None)
    return started
