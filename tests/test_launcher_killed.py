"""A launcher killed outright leaves nothing behind: its watchdog stops every process it started
and removes the temporary folders it made.

SIGKILL runs none of the launcher's own clean-up. Without the watchdog, a killed ``fedintent
train`` leaves its SuperLink, SuperExec and simulation running: the run goes on, and the sites
charge privacy budget for rounds that nobody will ever see. Its throwaway ``FLWR_HOME`` would
stay in the temporary directory, one more after every killed run.
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
from fedintent.launch.processes import TEMPORARY_FOLDER_PREFIX
from fedintent.launch.run_outcome import RunFailedError, completed_run_metrics
from fedintent.launch.watchdog import read_listed, remove_folders
from fl_client.privacy_report import site_privacy_report

ROUNDS = 40
"""Far more rounds than the run gets through before it is killed."""


def test_the_watchdog_forgets_the_processes_the_launcher_stopped_itself():
    lines = ["+ 11 100.5", "+ 12 101.25", "- 11", "+ 13 102.0", "- 99", "garbage line",
             "+ x 1.0", "- y"]
    assert read_listed(lines).processes == {12: 101.25, 13: 102.0}


def test_the_watchdog_forgets_the_folders_the_launcher_removed_itself():
    made = ["/tmp/fedintent-flwr-a", "/tmp/with space/fedintent-flwr-b c",
            '/tmp/fedintent-flwr-"q"', "/tmp/fedintent-flwr-\u00e9\n"]
    lines = [f"+dir {json.dumps(path)}\n" for path in made] + [
        f"-dir {json.dumps(made[0])}\n", '-dir "/tmp/never-made"\n', "+ 12 101.25\n",
        "+dir /tmp/fedintent-flwr-unquoted\n", "+dir 17\n", '+dir "/tmp/fedintent-flwr-cut\n',
    ]
    listed = read_listed(lines)
    assert listed.folders == {Path(path) for path in made[1:]}
    assert listed.processes == {12: 101.25}


def test_the_watchdog_removes_only_temporary_folders_of_fedintent(tmp_path, monkeypatch):
    """A corrupted line must not make it remove anything else."""
    made = tmp_path / f"{TEMPORARY_FOLDER_PREFIX}made"
    (made / "app").mkdir(parents=True)
    (made / "config.toml").write_text("[superlink]\n")
    other = tmp_path / "other"
    other.mkdir()
    elsewhere = tmp_path / f"{TEMPORARY_FOLDER_PREFIX}elsewhere"
    elsewhere.mkdir()
    link = tmp_path / f"{TEMPORARY_FOLDER_PREFIX}link"
    link.symlink_to(other, target_is_directory=True)
    a_file = tmp_path / f"{TEMPORARY_FOLDER_PREFIX}file"
    a_file.write_text("")
    monkeypatch.chdir(tmp_path)  # where the relative path would find it
    remove_folders([made, other, link, a_file, Path(elsewhere.name),
                    tmp_path / "other" / ".." / elsewhere.name])
    assert not made.exists()
    assert other.is_dir() and elsewhere.is_dir() and link.is_symlink() and a_file.is_file()


WATCHDOGS = textwrap.dedent("""
    import psutil

    def watchdogs():
        found = []
        for child in psutil.Process().children():
            try:
                if "fedintent.launch.watchdog" in child.cmdline():
                    found.append(child)
            except psutil.Error:
                pass
        return found
""")
"""A launcher script's helper: the watchdogs it started."""


WATCHED = WATCHDOGS + textwrap.dedent("""
    import subprocess, sys, time
    import psutil
    from fedintent.launch.processes import start_process, stop_process_trees

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


FOLDER_WATCHED = WATCHDOGS + textwrap.dedent("""
    import subprocess, sys, time
    import psutil
    from fedintent.launch.processes import (
        make_temporary_folder, remove_temporary_folder, start_process, stop_process_trees)

    def wait_watchdog():
        deadline = time.monotonic() + 120
        while not watchdogs() and time.monotonic() < deadline:
            time.sleep(0.1)
        return len(watchdogs())

    folder = make_temporary_folder()
    print(wait_watchdog(), flush=True)
    processes = []
    with open(folder / "sleep.log", "ab") as log:
        start_process([sys.executable, "-c", "import time; time.sleep(600)"], {}, log, processes)
    stop_process_trees(processes)
    print(wait_watchdog(), flush=True)
    remove_temporary_folder(folder)
    _, alive = psutil.wait_procs(watchdogs(), timeout=120)
    print(len(alive), folder.exists(), flush=True)
""")


def test_the_watchdog_lives_while_a_temporary_folder_does(tmp_path):
    """One watchdog from the moment the folder is made, still one once the process is stopped,
    none once the launcher has removed the folder itself."""
    result = subprocess.run([sys.executable, "-c", FOLDER_WATCHED], capture_output=True,
                            text=True, timeout=300, check=False,
                            env=os.environ | {"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1", "0", "False"]


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


FOLDER_LAUNCHER = textwrap.dedent("""
    import sys, time
    from fedintent.launch.processes import make_temporary_folder, start_process

    folder = make_temporary_folder()
    (folder / "app").mkdir()
    (folder / "config.toml").write_text("[superlink]\\n")
    processes = []
    with open(folder / "sleep.log", "ab") as log:
        started = start_process([sys.executable, "-c", "import time; time.sleep(600)"], {}, log,
                                processes)
    print(started.pid, flush=True)
    print(folder, flush=True)
    time.sleep(600)
""")


def test_the_temporary_folder_of_a_killed_launcher_is_removed(tmp_path):
    """Found in review: every killed ``fedintent train`` left its ``FLWR_HOME`` in /tmp."""
    temporary = tmp_path / "temporary files"  # a path with a space in it
    temporary.mkdir()
    launcher = subprocess.Popen([sys.executable, "-c", FOLDER_LAUNCHER], stdout=subprocess.PIPE,
                                text=True, cwd=Path.cwd(),
                                env=os.environ | {"TMPDIR": str(temporary)})
    child = int(launcher.stdout.readline())
    folder = Path(launcher.stdout.readline().rstrip("\n"))
    try:
        assert folder.parent == temporary and folder.name.startswith(TEMPORARY_FOLDER_PREFIX)
        assert (folder / "config.toml").is_file()
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        wait_for(lambda: not _running(child), 120, "the watchdog to stop the launcher's process")
        wait_for(lambda: not folder.exists(), 120, "the watchdog to remove the folder")
    finally:
        if launcher.poll() is None:  # only if the test failed
            launcher.kill()
        with contextlib.suppress(OSError):
            if _running(child):
                os.kill(child, signal.SIGKILL)


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
        homes = flower_homes(tag)
        assert len(homes) == 1 and homes[0].is_dir(), homes
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()

        assert processes_left_behind(tag, grace=120) == []
        wait_for(lambda: not homes[0].exists(), 120, "the watchdog to remove the FLWR_HOME")
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


def flower_homes(tag: str) -> list[Path]:
    """The ``FLWR_HOME`` of every live process whose environment carries this test's tag."""
    marker = f"FEDINTENT_TEST_TAG={tag}".encode()
    found = set()
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            environ = (proc / "environ").read_bytes().split(b"\0")
            if marker in environ:
                found |= {Path(os.fsdecode(entry.removeprefix(b"FLWR_HOME=")))
                          for entry in environ if entry.startswith(b"FLWR_HOME=")}
    return sorted(found)


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


@pytest.mark.parametrize("damaged", ["{not json", "[1, 2]"])
def test_a_damaged_run_record_is_a_failure_that_says_so_not_a_traceback(tmp_path, damaged):
    path = tmp_path / "metrics.json"
    path.write_text(damaged)
    with pytest.raises(RunFailedError, match="cannot be read as a run record"):
        completed_run_metrics(path, "finished:completed")
