"""A launcher killed outright leaves nothing behind: its watchdog stops every process it started.

SIGKILL runs none of the launcher's own clean-up. Without the watchdog, a killed ``fedintent
train`` leaves its SuperLink, SuperExec and simulation running: the run goes on, and the sites
charge privacy budget for rounds that nobody will ever see.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest
from test_end_to_end import processes_left_behind, processes_started_by
from test_site_dropout import wait_for

from data_synth import write_sites
from fedintent.launch.run_outcome import RunFailedError, completed_run_metrics
from fedintent.launch.watchdog import read_started
from fl_client.privacy_report import site_privacy_report

ROUNDS = 40
"""Far more rounds than the run gets through before it is killed."""


def test_the_watchdog_forgets_the_processes_the_launcher_stopped_itself():
    lines = ["+ 11 100.5", "+ 12 101.25", "- 11", "+ 13 102.0", "- 99", "garbage line"]
    assert read_started(lines) == {12: 101.25, 13: 102.0}


WATCHED = textwrap.dedent("""
    import subprocess, sys, time
    import psutil
    from fedintent.launch.processes import start_process, stop_process_trees

    def watchdogs():
        found = []
        for child in psutil.Process().children():
            try:
                if "fedintent.launch.watchdog" in child.cmdline():
                    found.append(child)
            except psutil.Error:
                pass
        return found

    processes = []
    with open(sys.argv[1], "ab") as log:
        start_process([sys.executable, "-c", "import time; time.sleep(600)"], {}, log, processes)
    # Until the watchdog's exec completes, its command line is still this interpreter's.
    deadline = time.monotonic() + 120
    while not watchdogs() and time.monotonic() < deadline:
        time.sleep(0.1)
    print(len(watchdogs()), flush=True)
    stop_process_trees(processes)
    _, alive = psutil.wait_procs(watchdogs(), timeout=120)
    print(len(alive), flush=True)
""")


def test_the_watchdog_lives_only_while_a_started_process_does(tmp_path):
    """In a launcher of its own (a test worker may still hold another test's watchdog): one
    watchdog while a process is started, none once it is stopped."""
    result = subprocess.run([sys.executable, "-c", WATCHED, str(tmp_path / "sleep.log")],
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "0"]


LAUNCHER = textwrap.dedent("""
    import subprocess, sys, time
    from fedintent.launch.processes import start_process

    # A child that starts a grandchild in a session of its own, as Flower's SuperLink does.
    child = (
        "import subprocess, sys, time; "
        "g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
        "start_new_session=True); "
        "print(g.pid, flush=True); time.sleep(600)"
    )
    processes = []
    with open(sys.argv[1], "ab") as log:
        started = start_process([sys.executable, "-c", child], {}, log, processes)
    print(started.pid, flush=True)
    time.sleep(600)
""")


def test_processes_started_by_a_killed_launcher_are_stopped(tmp_path):
    log = tmp_path / "children.log"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(log)],
                                stdout=subprocess.PIPE, text=True, cwd=Path.cwd())
    child = int(launcher.stdout.readline())
    wait_for(lambda: log.read_text().strip(), 120, "the grandchild to start", poll_s=0.2)
    grandchild = int(log.read_text().split()[0])
    assert psutil.pid_exists(child) and psutil.pid_exists(grandchild)

    try:
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        wait_for(lambda: not any(_running(pid) for pid in (child, grandchild)), 120,
                 "the watchdog to stop the launcher's processes")
    finally:
        for pid in (child, grandchild):  # only if the test failed
            with contextlib.suppress(OSError):
                if _running(pid):
                    os.kill(pid, signal.SIGKILL)


def test_a_killed_training_run_stops_and_charges_no_further_round(tmp_path):
    data, out, state = tmp_path / "data", tmp_path / "out", tmp_path / "state"
    write_sites(data, n_sites=2, seed=3, size=120)
    tag = uuid.uuid4().hex
    log = tmp_path / "train.log"
    with open(log, "wb") as output:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "fedintent.cli", "train", "--data", str(data),
             "--model", "ngram", "--rounds", str(ROUNDS), "--out", str(out),
             "--state-dir", str(state)],
            stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path,
            env=os.environ | {"FEDINTENT_TEST_TAG": tag},
        )
    try:
        wait_for(lambda: _completed_rounds(out) >= 1, 600, "the first round")
        assert len(processes_started_by(tag)) > 1, "the run's processes are not visible"
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()

        assert processes_left_behind(tag, grace=120) == []
        completed = _completed_rounds(out)
        assert completed < ROUNDS
        time.sleep(2)
        for site in sorted(path.name for path in state.iterdir()):
            report = site_privacy_report(state / site, max_epsilon=8.0)
            charged = sum(run.rounds for run in report.runs)
            # A round the site trained in but whose result the server never recorded is charged;
            # nothing after it.
            assert charged <= completed + 1, (site, charged, completed)
    finally:
        if launcher.poll() is None:
            launcher.kill()
        print(log.read_text()[-3000:])


def _completed_rounds(out: Path) -> int:
    try:
        return len(json.loads((out / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_a_server_that_died_mid_run_is_reported_with_the_way_to_continue(tmp_path):
    """Found in review: a killed ServerApp left metrics.json saying ``running`` and the launcher
    said only "run status finished:failed"."""
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"status": "running", "rounds": [{"round": 1}]}))
    with pytest.raises(RunFailedError) as err:
        completed_run_metrics(path, "finished:failed")
    assert str(err.value) == (
        "the run failed: the server process ended (finished:failed) without recording how the "
        f"run ended; {path} still says running; continue with: fedintent train --resume "
        f"{tmp_path}")
