"""Running the Flower app as a local simulation, the way ``fedintent train`` does it.

A private SuperLink is started on a free loopback port with its own throwaway ``FLWR_HOME``,
the run is submitted with ``flwr run``, its outcome is read back from the SuperLink (``flwr run
--stream`` exits 0 even when the run failed), and every process started here is stopped at the
end, whatever happened. Runtime dependency installation is disabled, so nothing is downloaded.
"""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from fl_server.run_config import DEFAULTS, toml_value

CONNECTION = "fedintent-local"
SUPERLINK_START_TIMEOUT_S = 60


class SimulationError(RuntimeError):
    """The simulation could not be started, or the run did not complete."""


def run_simulation(
    run_config: dict,
    num_sites: int,
    metrics_path: Path,
    log_path: Path,
    on_round: Callable[[dict], None],
    poll_seconds: float = 0.5,
    reported_rounds: int = 0,
) -> dict:
    """Run the app over ``num_sites`` simulated sites; return the final ``metrics.json``.

    ``on_round`` is called once for every round after ``reported_rounds`` (the rounds a
    resumed run already completed) as soon as ``metrics.json`` records it.
    """
    flwr_home = Path(tempfile.mkdtemp(prefix="fedintent-flwr-"))
    env = flower_env(flwr_home)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    try:
        with open(log_path, "ab") as log:
            port = _free_port()
            _write_connection(flwr_home, port)
            app_dir = _write_app(flwr_home / "app")
            superlink = _start(
                [
                    "flower-superlink", "--insecure", "--simulation",
                    "--disable-runtime-dependency-installation",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                env, log, processes,
            )
            _wait_healthy(port, superlink)
            overrides = [f"{k}={toml_value(v)}" for k, v in run_config.items()]
            command = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--federation-config",
                       f"num-supernodes={num_sites} client-resources-num-cpus=1"]
            for override in overrides:
                command += ["-c", override]
            runner = _start(command, env, log, processes, cwd=flwr_home)
            seen = reported_rounds
            while True:
                done = runner.poll() is not None
                seen = _report_new_rounds(metrics_path, seen, on_round)
                if done:
                    break
                if superlink.poll() is not None:
                    raise SimulationError(f"the SuperLink stopped unexpectedly; see {log_path}")
                time.sleep(poll_seconds)
            status = _run_status(env, flwr_home)
        if not metrics_path.exists():
            raise SimulationError(f"the run wrote no metrics ({status}); see {log_path}")
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        if status != "finished:completed" or metrics.get("status") != "completed":
            reason = metrics.get("error") or f"run status {status}"
            raise SimulationError(f"the run failed: {reason} (log: {log_path})")
        return metrics
    finally:
        with _signals_held():
            _stop_all(processes)
            shutil.rmtree(flwr_home, ignore_errors=True)


def flower_env(flwr_home: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env |= {
        "FLWR_HOME": str(flwr_home),
        "PATH": bin_dir + os.pathsep + env.get("PATH", ""),
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_DEDUP_LOGS": "0",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_connection(flwr_home: Path, port: int) -> None:
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )


def _write_app(app_dir: Path) -> Path:
    """A Flower app folder that points at the installed ServerApp and ClientApp.

    The app bundle carries only this ``pyproject.toml``; the code it names is the installed
    fedintent package, so the same code runs whether fedintent was installed from a checkout
    or from a wheel.
    """
    app_dir.mkdir(parents=True)
    config = "\n".join(f"{k} = {toml_value(v)}" for k, v in DEFAULTS.items())
    (app_dir / "pyproject.toml").write_text(
        '[project]\nname = "fedintent"\nversion = "0.1.0"\n'
        'description = "fedintent local simulation"\nlicense = "Apache-2.0"\n\n'
        '[tool.flwr.app]\npublisher = "fedintent"\n\n'
        '[tool.flwr.app.components]\nserverapp = "fl_server.server_app:app"\n'
        'clientapp = "fl_client.client_app:app"\n\n'
        f"[tool.flwr.app.config]\n{config}\n",
        encoding="utf-8",
    )
    return app_dir


def _start(command: list[str], env: dict, log, processes: list, cwd: Path | None = None):
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        cwd=cwd, start_new_session=True,
    )
    processes.append(process)
    return process


def _wait_healthy(port: int, superlink: subprocess.Popen) -> None:
    deadline = time.monotonic() + SUPERLINK_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if superlink.poll() is not None:
            raise SimulationError("the SuperLink exited at start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SimulationError(f"the SuperLink did not become healthy in {SUPERLINK_START_TIMEOUT_S}s")


def _report_new_rounds(metrics_path: Path, seen: int, on_round: Callable[[dict], None]) -> int:
    """Report the rounds numbered above ``seen``; return the last round reported."""
    try:
        rounds = json.loads(metrics_path.read_text(encoding="utf-8"))["rounds"]
    except (OSError, ValueError, KeyError):
        return seen
    for entry in rounds:
        if entry["round"] > seen:
            on_round(entry)
            seen = entry["round"]
    return seen


def _run_status(env: dict, flwr_home: Path) -> str:
    """``status:sub-status`` of the (only) run on the private SuperLink."""
    listing = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=env, cwd=flwr_home, capture_output=True, text=True, timeout=60,
    )
    try:
        runs = json.loads(listing.stdout)["runs"]
    except (ValueError, KeyError):
        return f"unknown ({listing.stdout.strip()[:200]} {listing.stderr.strip()[:200]})"
    if not runs:
        return "not submitted"
    return str(runs[-1].get("status", "unknown"))


@contextmanager
def _signals_held():
    """Hold Ctrl-C and SIGTERM so a second one cannot abort the clean-up half way.

    They are delivered when the block ends, once every process is gone.
    """
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _stop_all(processes: list[subprocess.Popen]) -> None:
    """Stop the started processes and every process they spawned.

    Flower starts its SuperExec and the simulation (and Ray its workers) in sessions of their
    own, so the whole process tree is collected first, then terminated, then killed.
    """
    pids = set()
    for process in processes:
        pids |= {process.pid} | _descendants(process.pid)
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        pids = {pid for pid in pids | descendants_of_all(pids) if _alive(pid)}
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
            for process in processes:
                process.poll()
            time.sleep(0.1)
    for process in processes:
        process.poll()


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return children


def _descendants(pid: int) -> set[int]:
    return descendants_of_all({pid})


def descendants_of_all(pids: set[int]) -> set[int]:
    children = _children_map()
    found: set[int] = set()
    stack = list(pids)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
