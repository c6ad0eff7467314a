"""Every option is checked before anything starts or is written, a resumed run is checked down
to its record, audit log and checkpoints, and a run stopped by a signal says ``interrupted``.

All in-process: ``fedintent.cli.main`` with the parts that would start Flower replaced, so that
a check that is missing shows as a test failure, not as a simulation that runs."""

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, RecordDict

import fedintent.launch.simulation as simulation
import fl_server.run_record as run_record
from fedintent.cli import main
from fedintent.commands import CliError, train
from fedintent.commands.deploy import deploy_settings
from fedintent.launch.processes import is_alive
from fedintent.launch.simulated_sites import mean_training_rows
from fl_protocol.hash_chain import append_entry
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.checkpoints import save_checkpoint
from fl_server.run_config import check_run_config, tuned_settings
from fl_server.run_record import RunRecord, run_folder_lock
from fl_server.server_app import main as server_main
from fl_server.tensor_digest import arrays_sha256


@pytest.fixture
def nothing_starts(monkeypatch):
    """Fail the test if a simulation would be started."""
    def started(*args, **kwargs):
        raise AssertionError("a simulation was started")

    monkeypatch.setattr(simulation, "run_simulation", started)


def refused(capsys, *args: str) -> str:
    """The one error line of a command that must exit 2 (argparse's own, for an option's
    type, by SystemExit)."""
    try:
        code = main(list(args))
    except SystemExit as refusal:
        code = refusal.code
    assert code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err


def tree(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("args,message", [
    (["--clip-norm", "inf"], "--clip-norm must be a finite number in [1e-06, 100], got inf"),
    (["--clip-norm", "1e300"], "--clip-norm must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number in [1e-08, 10000], got inf"),
    (["--lr", "nan"], "argument --lr: not a number: 'nan'"),
    (["--epsilon", "1e-300"], "--epsilon must be inf (no DP) or in [0.1, 100]"),
    (["--epsilon", "1e308"], "--epsilon must be inf (no DP) or in [0.1, 100]"),
    (["--epsilon", "0.3", "--accountant", "rdp"], "in [0.5, 100] with accountant rdp, got 0.3"),
    (["--seed", "-1"], "seed must be a whole number >= 0 and <= 4294967295, got -1"),
    (["--seed", str(2**40)], "seed must be a whole number >= 0"),
    (["--delta", "1e-300"], "delta must be 0 (each site's default) or in [1e-10, 0.1]"),
    (["--site-max-epsilon", "1e-300"], "--site-max-epsilon must be inf (no limit) or in"),
    (["--site-retention-days", "0"], "--site-retention-days must be inf (keep without limit) or"),
    (["--rounds", "1000000"], "--rounds must be a whole number >= 1 and <= 10000"),
    (["--batch-size", "0"], "--batch-size must be a whole number >= 1"),
    (["--local-epochs", "100000"], "--local-epochs must be a whole number"),
    (["--server-momentum", "nan"], "argument --server-momentum: not a number: 'nan'"),
    (["--tolerated-sites", "-1"], "--tolerated-sites must be a whole number >= 0"),
    (["--sites", "0"], "--sites must be a whole number >= 1 and <= 10000, got 0"),
    (["--max-update-norm", "-1"], "--max-update-norm must be >= 0 (0 = derived"),
    (["--max-update-norm", "nan"], "argument --max-update-norm: not a number: 'nan'"),
    # found in review: the run-config key was named, not the option typed, and "min-sites"
    (["--tolerated-sites", "5", "--privacy-model", "distributed"],
     "--privacy-model distributed: --sites (4) must exceed --tolerated-sites (5)"),
    (["--site-evaluation-epsilon", "0.3", "--accountant", "rdp"],
     "--site-evaluation-epsilon must be in [0.5, 100] with accountant rdp, got 0.3"),
])
def test_a_bad_option_is_refused_before_any_folder_is_made(tmp_path, capsys, nothing_starts,
                                                           monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    err = refused(capsys, "train", "--out", str(out), *args)
    assert message in err
    assert not out.exists() and tree(tmp_path) == []


@pytest.mark.parametrize("where,message", [
    ("{file}/out", "is a file, not a folder"),
    ("{file}", "is a file, not a folder"),
    ("/proc/fedintent-out", "is under /proc, which holds no files"),
    ("/sys/kernel/fedintent-out", "is under /sys"),
])
def test_an_output_folder_that_cannot_be_written_is_refused(tmp_path, capsys, nothing_starts,
                                                            where, message):
    file = tmp_path / "file"
    file.write_text("x")
    err = refused(capsys, "train", "--out", where.format(file=file))
    assert err.startswith("fedintent train: error: --out ") and message in err
    assert tree(tmp_path) == ["file"] and file.read_text() == "x"


def test_a_state_dir_under_a_file_is_refused(tmp_path, capsys, nothing_starts):
    (tmp_path / "file").write_text("x")
    err = refused(capsys, "train", "--out", str(tmp_path / "out"),
                  "--state-dir", str(tmp_path / "file" / "state"))
    assert "--state-dir" in err and "is a file, not a folder" in err
    assert tree(tmp_path) == ["file"]


def test_a_failure_while_setting_up_leaves_the_output_folder_as_it_was(
        tmp_path, nothing_starts, monkeypatch):
    import data_synth

    def no_space(data_dir, *args):
        (data_dir / "site-00").mkdir(parents=True)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data_synth, "write_run_sites", no_space)
    (tmp_path / "existing").mkdir()
    for out in (tmp_path / "existing", tmp_path / "new" / "out"):
        with pytest.raises(OSError):
            main(["train", "--out", str(out)])
        assert tree(tmp_path) == ["existing"]


def test_bench_and_deploy_options_are_checked_too(tmp_path, capsys):
    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("text,label\n")
    bench = ["bench", "--data", str(tmp_path), "--out", str(tmp_path / "b")]
    assert "--epsilons must be inf (no DP) or in [0.1, 100]" in refused(
        capsys, *bench, "--epsilons", "8,1e308")
    assert "--partition-seed must be a whole number >= 0" in refused(
        capsys, *bench, "--partition-seed", "-1")
    assert "--alpha must be a finite number" in refused(capsys, *bench, "--alpha", "inf")
    assert "is under /proc" in refused(capsys, "bench", "--data", str(tmp_path),
                                       "--out", "/proc/b")
    assert tree(tmp_path) == ["test.csv", "train.csv"]


def test_deploy_run_scales_the_tuned_rate_to_the_sites_it_is_told_of(capsys):
    tuned = tuned_settings(8.0)["learning-rate"]
    assert deploy_settings(8.0, None, {})["learning-rate"] == tuned
    assert deploy_settings(8.0, 425, {})["learning-rate"] == pytest.approx(tuned / 2)
    assert f"the tuned {tuned:g} scaled to sites of 425 training rows" in capsys.readouterr().out
    assert deploy_settings(8.0, 5000, {})["learning-rate"] == tuned
    assert (deploy_settings(math.inf, 425, {})["learning-rate"]
            == tuned_settings(math.inf)["learning-rate"])
    assert deploy_settings(8.0, 425, {"learning-rate": 7.0})["learning-rate"] == 7.0
    assert "--site-rows ignored" in capsys.readouterr().out
    for bad in (0.0, -3.0, math.nan):
        with pytest.raises(CliError, match="--site-rows must be a positive number"):
            deploy_settings(8.0, bad, {})


def test_deploy_run_takes_the_tuned_settings_of_the_privacy_model_it_is_set_to():
    """Found in review: a distributed-DP deployment ran the local-DP table (40 rounds, no
    server momentum) while ``fedintent train`` ran the distributed one."""
    distributed = {"privacy-model": "distributed"}
    assert deploy_settings(8.0, None, distributed) == (tuned_settings(8.0, "distributed")
                                                       | distributed)
    assert deploy_settings(8.0, None, distributed)["server-momentum"] == 0.8
    assert "server-momentum" not in deploy_settings(8.0, None, distributed
                                                    | {"strategy": "fedadam"})
    assert deploy_settings(8.0, None, {}) == tuned_settings(8.0)


# --- resume ----------------------------------------------------------------------------------

MODEL = {"w": np.ones((2, 3), np.float32)}


def interrupted_run(tmp_path):
    """A run folder as ``fedintent train`` leaves it when interrupted after round 2."""
    data, out = tmp_path / "data", tmp_path / "out"
    (data / "site-00").mkdir(parents=True)
    (data / "labels.txt").write_text("a\nb\n")
    config = check_run_config({"data-dir": str(data), "out-dir": str(out), "run-name": "r-1",
                               "model": "ngram", "target-epsilon": 3.0})
    append_entry(out / "audit.jsonl", "run-started", {"run_name": "r-1", "config": config,
                                                       "labels": ["a", "b"]})
    for server_round in (1, 2):
        model = {k: v * server_round for k, v in MODEL.items()}
        append_entry(out / "audit.jsonl", "round", {"run_name": "r-1", "round": server_round,
                                                     "model_sha256": arrays_sha256(model)})
        save_checkpoint(out / "checkpoints", server_round, "fedavg", "r-1", model, {})
    record = RunRecord.start(out / "metrics.json", 1, config, ["a", "b"])
    record.doc["rounds"] = [{"round": 1}, {"round": 2}]
    record.finish("interrupted")
    return out


@pytest.mark.parametrize("damage,message", [
    ("minimal", "not the record of a fedintent run: format is not fedintent-metrics/1"),
    ("no labels", "records no labels"),
    ("bad config", "records a run configuration that is not valid: seed must be"),
    ("no audit log", "audit.jsonl is missing or unreadable"),
    ("forged", "not vouched for by the audit log"),
    ("labels changed", "changed since the run started"),
])
def test_resume_checks_the_run_folder_before_anything_starts(tmp_path, capsys, nothing_starts,
                                                             damage, message):
    out = interrupted_run(tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    if damage == "minimal":
        metrics = {"config": {}, "rounds": []}
    elif damage == "no labels":
        metrics["labels"] = []
    elif damage == "bad config":
        metrics["config"]["seed"] = -1
    elif damage == "no audit log":
        (out / "audit.jsonl").unlink()
    elif damage == "forged":
        for server_round in (1, 2):
            save_checkpoint(out / "checkpoints", server_round, "fedavg", "r-1",
                            {"w": np.zeros((2, 3), np.float32)}, {})
    else:
        (tmp_path / "data" / "labels.txt").write_text("a\nc\n")
    (out / "metrics.json").write_text(json.dumps(metrics))
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert message in refused(capsys, "train", "--resume", str(out))
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before


@pytest.mark.parametrize("make,message", [
    # found in review: "metrics.json is missing or unreadable ([Errno 2] No such file ...)"
    (lambda out: None, "cannot resume: run folder not found: {out}"),
    (lambda out: out.mkdir(), "cannot resume: {out} holds no run record (no metrics.json)"),
    (lambda out: (out / "metrics.json").mkdir(parents=True),
     "cannot resume: {out}/metrics.json is a folder, not a run record"),
], ids=["no folder", "no record", "record a folder"])
def test_resume_names_a_folder_that_holds_no_run(tmp_path, capsys, nothing_starts, make,
                                                message):
    out = tmp_path / "run"
    make(out)
    err = refused(capsys, "train", "--resume", str(out))
    assert message.format(out=out) in err and "Errno" not in err


def test_resume_names_a_run_record_this_account_may_not_read(tmp_path, capsys, nothing_starts,
                                                              monkeypatch):
    out = interrupted_run(tmp_path)
    record = out / "metrics.json"
    allowed = Path.read_text

    def denied(self, *args, **kwargs):
        if self == record:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return allowed(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", denied)
    err = refused(capsys, "train", "--resume", str(out))
    assert (f"cannot resume: permission denied to this account (uid {os.geteuid()}) for "
            f"{record}, which belongs to uid {record.stat().st_uid}" in err)
    assert "Errno" not in err


def test_a_run_folder_as_out_offers_a_resume_only_where_one_can_run(tmp_path, capsys,
                                                                    nothing_starts):
    """Found in review: a completed run's folder offered ``--resume``, which then failed."""
    out = interrupted_run(tmp_path)
    assert f"(or continue with: fedintent train --resume {out})" in refused(
        capsys, "train", "--out", str(out))
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(metrics | {"status": "completed"}))
    err = refused(capsys, "train", "--out", str(out))
    assert "already holds a run" in err and "--resume" not in err


def test_an_interrupted_run_can_be_resumed(tmp_path, capsys, monkeypatch):
    out = interrupted_run(tmp_path)
    started = []
    monkeypatch.setattr(train, "_simulate", lambda config, sites, rounds, reported_rounds:
                        started.append((config, reported_rounds)) or 0)
    with run_folder_lock(out):  # found in review: a second server beside the first
        assert main(["train", "--resume", str(out)]) == 2
    assert f"cannot resume: a fedintent ServerApp is still writing {out}" in \
        capsys.readouterr().err
    assert main(["train", "--resume", str(out)]) == 0
    [(config, done)] = started
    assert config["resume"] is True and config["run-name"] == "r-1" and done == 2
    assert "resuming run r-1 after round 2 of 40" in capsys.readouterr().out


def test_a_run_folder_whose_lock_cannot_be_asked_is_not_resumed(tmp_path, capsys,
                                                                 monkeypatch, nothing_starts):
    """Found in review: any error asking the lock (no lock service on a network file system)
    read as a folder no server writes."""
    out = interrupted_run(tmp_path)
    (out / ".run.lock").touch()

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_record.fcntl, "flock", no_locks)
    assert f"cannot resume: cannot check {out / '.run.lock'}: No locks available" in refused(
        capsys, "train", "--resume", str(out))


# --- interrupted -----------------------------------------------------------------------------

def test_ctrl_c_stops_every_process_and_records_interrupted(tmp_path, monkeypatch,
                                                            sleeping_flower):
    """The launcher's handler: whatever the ServerApp managed to write, the record says
    ``interrupted`` once the processes are stopped, and the run can be resumed."""
    metrics = tmp_path / "metrics.json"
    RunRecord.start(metrics, 1, check_run_config({}), ["a"])
    started = sleeping_flower

    def ctrl_c(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulation, "report_new_rounds", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        simulation.run_simulation(check_run_config({}), 2, metrics, tmp_path / "flower.log",
                                  on_round=lambda entry: None)
    assert len(started) == 2 and not any(is_alive(p.pid) for p in started)
    doc = json.loads(metrics.read_text())
    assert doc["status"] == "interrupted" and "interrupted by a signal" in doc["error"]


class InterruptedGrid:
    """The ServerApp's side: a signal arrives while it waits for the sites (Flower turns
    SIGTERM into ``SystemExit``, a terminal's Ctrl-C is ``KeyboardInterrupt``)."""

    def __init__(self, signal_error: type[BaseException]) -> None:
        self.signal_error = signal_error

    def get_node_ids(self) -> list[int]:
        return [1, 2]

    def send_and_receive(self, messages, timeout: float):
        raise self.signal_error()


@pytest.mark.parametrize("signal_error", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("deployed", [False, True])
def test_the_server_app_records_a_signal_as_interrupted(tmp_path, task_identity, signal_error,
                                                        deployed):
    """And how it goes on: for a run of deploy-run (its deployment.json beside the record), with
    deploy-run --resume on its sites (found in review: it said to continue with train --resume,
    a simulation)."""
    data = tmp_path / "data"
    (data / "site-00").mkdir(parents=True)
    (data / "labels.txt").write_text("a\nb\n")
    out = tmp_path / "out"
    if deployed:
        out.mkdir()
        (out / "deployment.json").write_text("{}")
    config = RUN_CONFIG_DEFAULTS | {"out-dir": str(out), "data-dir": str(data), "model": "ngram"}
    context = Context(run_id=3, node_id=0, node_config={}, state=RecordDict(),
                      run_config=config)
    with pytest.raises(signal_error):
        server_main(InterruptedGrid(signal_error), context)
    record = json.loads((out / "metrics.json").read_text())
    assert record["status"] == "interrupted"
    way_on = "fedintent deploy-run --resume" if deployed else "fedintent train --resume"
    assert record["error"].startswith("interrupted by a signal (Ctrl-C or SIGTERM); it can be "
                                      f"resumed; continue with: {way_on} {out}")
    events = [json.loads(line)["event"] for line in (out / "audit.jsonl").read_text().splitlines()]
    assert events == ["run-started", "run-interrupted"]


def test_the_one_line_error_is_printed_for_a_refused_resume_from_the_shell(tmp_path):
    """The same check from a real command line: exit code 2 and one line."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"config": {}, "rounds": []}))
    result = subprocess.run([sys.executable, "-m", "fedintent.cli", "train", "--resume",
                             str(out)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot resume" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert tree(out) == ["metrics.json"]


@pytest.mark.parametrize("languages,model", [
    (["en"], "minilm-head"),
    (["zh"], "use-multilingual"),
    (["en", "zh"], "use-multilingual"),
])
def test_the_default_model_reads_the_sites_languages(tmp_path, monkeypatch, languages, model):
    """Without --model, sites holding anything but English train the multilingual family:
    minilm-head would see most Chinese characters as [UNK]."""
    from data_synth import write_sites

    write_sites(tmp_path / "data", n_sites=2, seed=3, languages=languages, size=20)
    started = []

    def run_simulation(run_config, **kwargs):
        started.append(run_config["model"])
        raise simulation.SimulationError("stopped by the test")

    monkeypatch.setattr(simulation, "run_simulation", run_simulation)
    args = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")]
    assert main(args) == 1
    assert started == [model]
    assert main([*args[:-1], str(tmp_path / "out2"), "--model", "ngram"]) == 1
    assert started == [model, "ngram"]


def test_csv_sites_and_unreadable_lines_keep_the_english_default(tmp_path):
    site = tmp_path / "site-00"
    site.mkdir()
    (site / "train.csv").write_text("text,label\nhello,a\n", encoding="utf-8")
    (site / "extra.jsonl").write_text('not json\n[1]\n{"language": 7}\n{"language": "EN-gb"}\n',
                                      encoding="utf-8")
    assert train.data_languages(tmp_path) == {"en"}
    assert train.default_model(train.data_languages(tmp_path)) == "minilm-head"
    assert train.data_languages(tmp_path / "missing") == set()
    (site / "more.jsonl").write_text('{"language": "zh-TW"}\n', encoding="utf-8")
    assert train.default_model(train.data_languages(tmp_path)) == "use-multilingual"


def test_the_tuned_dp_learning_rate_scales_down_with_the_sites_size(tmp_path, monkeypatch,
                                                                   capsys):
    """Small sites take noisier full-batch steps, so a tuned DP learning rate shrinks with their
    mean size; an --lr given, or a run without DP, is kept as it is."""
    from fl_server.run_config import MIN_SITE_SIZE_SCALE, TUNING_SITE_ROWS, tuned_settings

    for index, rows in enumerate((100, 700)):
        site = tmp_path / "data" / f"site-{index:02d}"
        site.mkdir(parents=True)
        lines = "".join(f"row {i},a\n" for i in range(rows))
        (site / "train.csv").write_text("text,label\n" + lines, encoding="utf-8")
        (site / "test.csv").write_text("text,label\nx,a\n", encoding="utf-8")
    (tmp_path / "data" / "labels.txt").write_text("a\nb\n", encoding="utf-8")
    assert mean_training_rows(tmp_path / "data", 2) == 400
    assert mean_training_rows(tmp_path / "data", 1) == 100
    assert mean_training_rows(tmp_path / "data") == 400  # every site
    assert mean_training_rows(tmp_path / "missing", 2) is None
    started = []

    def run_simulation(run_config, **kwargs):
        started.append(run_config["learning-rate"])
        raise simulation.SimulationError("stopped by the test")

    monkeypatch.setattr(simulation, "run_simulation", run_simulation)

    def run(out: str, *extra: str) -> None:
        assert main(["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / out),
                     "--model", "ngram", *extra]) == 1

    run("eps8", "--epsilon", "8")
    tuned = tuned_settings(8.0)["learning-rate"]
    assert started[-1] == pytest.approx(tuned * 400 / TUNING_SITE_ROWS, rel=1e-3)
    assert "scaled to sites of 400 training rows" in capsys.readouterr().out
    run("one-site", "--epsilon", "8", "--sites", "1")
    assert started[-1] == pytest.approx(tuned * MIN_SITE_SIZE_SCALE)
    run("given", "--epsilon", "8", "--lr", "7")
    assert started[-1] == 7
    capsys.readouterr()
    run("no-dp", "--epsilon", "inf")
    assert started[-1] == tuned_settings(float("inf"))["learning-rate"]
    assert "scaled" not in capsys.readouterr().out
