"""Running the Flower app as a local simulation, the way ``fedintent train`` does it.

A private SuperLink is started on a free loopback port with its own throwaway ``FLWR_HOME``,
the run is submitted with ``flwr run``, its outcome is read back from the SuperLink and the run
record (``run_outcome``), and every process started here is stopped and the ``FLWR_HOME`` removed
at the end, whatever happened (by the launcher's watchdog, should the launcher be killed).
Runtime dependency installation is disabled, so nothing is downloaded.
"""

import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from fedintent.launch.flower_cli import config_overrides, flower_env, write_app
from fedintent.launch.processes import (
    free_port,
    make_temporary_folder,
    remove_temporary_folder,
    signals_held,
    start_process,
    stop_process_trees,
)
from fedintent.launch.run_outcome import (
    RunFailedError,
    completed_run_metrics,
    recorded_outcome,
    report_new_rounds,
    resume_recorded,
)
from fl_server.run_record import record_interrupted, way_on

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
    resumes: int = 0,
) -> dict:
    """Run the app over ``num_sites`` simulated sites; return the final ``metrics.json``.

    ``on_round`` is called once for every round after ``reported_rounds`` (the rounds a
    resumed run already completed) as soon as ``metrics.json`` records it, and for a resume
    (``resumes``: how many the record will hold with its own) only once the ServerApp has
    recorded the resume (``report_new_rounds``). A run or resume whose ServerApp never recorded
    it (another held the folder; the folder held another run) fails rather than return a record
    that run did not write. On Ctrl-C or SIGTERM (``KeyboardInterrupt``) every process is
    stopped, then ``metrics.json`` says ``interrupted`` if the ServerApp was killed before it
    could say so itself.
    """
    flwr_home = make_temporary_folder()
    env = flower_env(flwr_home)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    processes: list[subprocess.Popen] = []
    interrupted = False
    try:
        with open(log_path, "ab") as log:
            port = free_port()
            write_local_connection(flwr_home, port)
            app_dir = write_app(flwr_home / "app")
            superlink = start_process(
                [
                    "flower-superlink", "--insecure", "--simulation",
                    "--disable-runtime-dependency-installation",
                    "--host", "127.0.0.1", "--port", str(port),
                ],
                env, log, processes,
            )
            wait_local_superlink(port, superlink)
            command = ["flwr", "run", str(app_dir), CONNECTION, "--stream", "--federation-config",
                       f"num-supernodes={num_sites} client-resources-num-cpus=1",
                       *config_overrides(run_config)]
            runner = start_process(command, env, log, processes, cwd=flwr_home)
            seen = reported_rounds
            while True:
                done = runner.poll() is not None
                seen = report_new_rounds(metrics_path, seen, on_round, resumes)
                if done:
                    break
                if superlink.poll() is not None:
                    raise SimulationError(f"the SuperLink stopped unexpectedly; see {log_path}")
                time.sleep(poll_seconds)
            run = last_local_run(env, flwr_home)
        return simulated_run_record(run, bool(run_config.get("resume")), metrics_path, log_path)
    except KeyboardInterrupt:
        interrupted = True
        raise
    finally:
        with signals_held():
            stop_process_trees(processes)
            if interrupted:
                record_interrupted(metrics_path)
            remove_temporary_folder(flwr_home)


def simulated_run_record(run: dict, resuming: bool, metrics_path: Path,
                         log_path: Path) -> dict:
    """The record of the SuperLink's ``run`` (``last_local_run``: its ``run-id`` and
    ``status``) if it completed and wrote it; ``SimulationError`` otherwise, and for a record
    that run did not write. ``resuming``: the run config's ``resume``, whatever a caller's
    count of resumes says."""
    status = str(run.get("status", "unknown"))
    if "run-id" not in run:  # found in review: then no check below could tell whose record
        raise SimulationError(  # metrics.json is, and another run's passed
            f"the SuperLink's run cannot be told ({status}), so neither can whether "
            f"{metrics_path} is its record; the log says what happened: {log_path}")
    if resuming and not resume_recorded(metrics_path, run["run-id"]):
        raise SimulationError(
            f"run {run['run-id']} ended ({status}) before its ServerApp resumed the run (the "
            f"log says why: {log_path}); it wrote nothing in {metrics_path.parent}; "
            f"{way_on(metrics_path.parent)}")
    recorded = recorded_outcome(metrics_path)
    if not resuming and recorded is not None and (
            str(recorded.get("run_id")) != str(run["run-id"])):
        # found in review: a bench cell re-run over an earlier run's folder, which the
        # ServerApp refused, reported that run's model and numbers as its own
        raise SimulationError(
            f"run {run['run-id']} ended ({status}) before its ServerApp started the run (the "
            f"log says why: {log_path}); {metrics_path} is another run's record")
    try:
        return completed_run_metrics(metrics_path, status)
    except RunFailedError as err:
        raise SimulationError(f"{err} (log: {log_path})") from err


def write_local_connection(flwr_home: Path, port: int) -> None:
    """``FLWR_HOME/config.toml`` with the default connection, :data:`CONNECTION`: the
    insecure SuperLink on ``127.0.0.1:port``."""
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n',
        encoding="utf-8",
    )


def wait_local_superlink(port: int, superlink: subprocess.Popen) -> None:
    """Wait until the insecure SuperLink on ``127.0.0.1:port`` answers its health check."""
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


def last_local_run(env: dict[str, str], flwr_home: Path) -> dict:
    """``flwr ls``'s entry for the last run on the SuperLink of :data:`CONNECTION` (``run-id``,
    ``status`` as ``status:sub-status``); only a ``status`` that says why where it cannot be
    read."""
    listing = subprocess.run(
        ["flwr", "ls", CONNECTION, "--format", "json"],
        env=env, cwd=flwr_home, capture_output=True, text=True, timeout=60,
    )
    try:
        runs = json.loads(listing.stdout)["runs"]
    except (ValueError, KeyError):
        return {"status": f"unknown ({listing.stdout.strip()[:200]} "
                          f"{listing.stderr.strip()[:200]})"}
    if not runs:
        return {"status": "not submitted"}
    return runs[-1]
