"""The operator's side of a deployment: what ``fedintent deploy-run`` submits and says it
submitted, the release it reads, the Fleet gateway's limit on what anyone may send it, and the
SuperLink certificates that ``deploy/superlink.sh`` and ``deploy-run`` refuse.

``deploy-run`` runs in-process with the parts that reach a SuperLink replaced (the submitted
run config is recorded); the gateway is driven through ASGI calls, and once as its own process
on 127.0.0.1; ``deploy/superlink.sh`` and ``flower-superlink`` run as processes on 127.0.0.1.
"""

import asyncio
import base64
import contextlib
import datetime
import hashlib
import http.client
import importlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_ssh_private_key
from flwr.app import Context, RecordDict
from test_server_app import DecliningGrid

from fedintent.cli import main
from fedintent.commands import deploy as deploy_command
from fedintent.commands.deploy import OWN_OPTIONS, SIMULATION_ONLY
from fedintent.launch import deployment, releases
from fedintent.launch.certificates import signing_key_pair, site_names, write_dev_credentials
from fedintent.launch.flower_cli import flower_env
from fedintent.launch.processes import free_port, start_process, stop_process_trees
from fedintent.launch.releases import (
    RELEASE_FAB,
    RELEASE_SIGNATURE,
    read_release,
    sign_release,
    write_release,
)
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_record import json_safe, run_folder_lock
from fl_server.server_app import main as server_main

REPO = Path(__file__).resolve().parent.parent
MIB = 2**20


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Development credentials and a release signed with their key."""
    tmp = tmp_path_factory.mktemp("operator")
    creds = write_dev_credentials(tmp / "creds", site_names(1), ["127.0.0.1"], ["localhost"])
    write_release(tmp / "release", creds.signing_key)
    (tmp / "labels.txt").write_text("card_lost\nrefund\n")
    return {"tmp": tmp, "creds": creds, "release": tmp / "release"}


def copied_release(signed, into: Path) -> Path:
    into.mkdir()
    for name in (RELEASE_FAB, RELEASE_SIGNATURE):
        (into / name).write_bytes((signed["release"] / name).read_bytes())
    return into


@pytest.fixture
def nothing_reaches_a_superlink(monkeypatch):
    """deploy-run with the release handover and the run's submission recorded, not made; the
    run then fails as if the SuperLink had gone, so the command exits 1 after submitting."""
    submitted = []

    @contextlib.contextmanager
    def serve(release, port):
        yield

    def submit(release, connection, run_config):
        submitted.append(run_config)
        return 7

    def follow(*args, **kwargs):
        raise deployment.DeploymentError("the test stops here")

    monkeypatch.setattr(deployment, "write_connection", lambda *args: None)
    monkeypatch.setattr(deployment, "follow_run", follow)
    monkeypatch.setattr(releases, "serve_release", serve)
    monkeypatch.setattr(releases, "submit_release_run", submit)
    return submitted


def deploy_run(signed, tmp_path, *args: str, release: Path | None = None,
               superlink: str = "127.0.0.1:9", ca_cert: Path | None = None) -> int:
    return main(["deploy-run", "--superlink", superlink, "--release",
                 str(release or signed["release"]), "--ca-cert",
                 str(ca_cert or signed["creds"].ca_cert),
                 "--labels", str(signed["tmp"] / "labels.txt"), "--min-sites", "2",
                 "--rounds", "3", "--out", str(tmp_path / "run"), *args])


# --- deploy-run: --set and what it says it submitted ----------------------------------------

@pytest.mark.parametrize("key", sorted(OWN_OPTIONS))
def test_deploy_run_refuses_set_for_a_key_it_sets_itself(signed, tmp_path, capsys, key,
                                                         nothing_reaches_a_superlink):
    """Found in review: --set target-epsilon=1 was replaced by --epsilon's default 8, without a
    word, and the others by what deploy-run sets."""
    assert deploy_run(signed, tmp_path, "--set", f"{key}=1") == 2
    err = capsys.readouterr().err
    assert f"--set {key} is refused: {OWN_OPTIONS[key]}" in err
    assert nothing_reaches_a_superlink == []


@pytest.mark.parametrize("key", sorted(SIMULATION_ONLY))
def test_deploy_run_refuses_set_for_a_simulated_sites_policy(signed, tmp_path, capsys, key,
                                                             nothing_reaches_a_superlink):
    """Found in review: --set site-max-epsilon=1 was taken, and every deployed site kept its
    own budget (8 by default), the operator told nothing."""
    assert deploy_run(signed, tmp_path, "--set", f"{key}=1") == 2
    err = capsys.readouterr().err
    assert f"--set {key} is refused: it stands in for simulated sites' policy, and no " \
        f"deployed site reads it; each site sets {SIMULATION_ONLY[key]}" in err
    assert nothing_reaches_a_superlink == [] and not (tmp_path / "run").exists()


@pytest.mark.parametrize(("given", "error"), [
    (["--epsilon", "1e400"], "argument --epsilon: '1e400' is too large for a number; write inf "
                             "for no limit"),
    (["--site-rows", "1e999"], "argument --site-rows: '1e999' is too large for a number"),
    (["--set", "delta=1e-400"], "--set delta: '1e-400' is too small for a number: it would "
                                "read as 0"),
    (["--set", "max-update-norm=1e400"], "--set max-update-norm: '1e400' is too large for a "
                                         "number"),
    (["--set", "=5"], "--set takes KEY=VALUE, got '=5'"),
])
def test_deploy_run_refuses_a_number_that_would_read_as_another(
        signed, tmp_path, capsys, nothing_reaches_a_superlink, given, error):
    """Found in review: --epsilon 1e400 was submitted as inf, no DP; --set delta=1e-400 as 0,
    each site's default delta, looser than the one asked; max-update-norm=1e400 as no bound."""
    try:
        code = deploy_run(signed, tmp_path, *given)
    except SystemExit as refused:  # argparse's, for an option's type
        code = refused.code
    assert code == 2
    assert error in capsys.readouterr().err
    assert nothing_reaches_a_superlink == [] and not (tmp_path / "run").exists()


def test_deploy_run_names_the_release_port_when_the_superlink_cannot_fetch_the_release(
        signed, tmp_path, capsys, monkeypatch, nothing_reaches_a_superlink):
    """Found in review: a --release-port other than the SuperLink's RELEASE_PORT failed with
    Flower's words alone, which do not say which port to change."""
    def unfetched(release, connection, run_config):
        raise deployment.DeploymentError(
            "[code: 34] Failed to request FAB download link: url: "
            "http://127.0.0.1:19095/hub/fetch-fab")

    monkeypatch.setattr(releases, "submit_release_run", unfetched)
    assert deploy_run(signed, tmp_path, "--release-port", "19096") == 1
    assert "the release was handed over on 127.0.0.1:19096: --release-port must be the " \
        "SuperLink's RELEASE_PORT" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_deploy_run_names_no_release_port_for_another_submit_failure(
        signed, tmp_path, capsys, monkeypatch, nothing_reaches_a_superlink):
    """Only a SuperLink that could not fetch the release is told about --release-port; another
    refusal is said in Flower's words alone."""
    def refused(release, connection, run_config):
        raise deployment.DeploymentError("[code: 3] the run config is refused")

    monkeypatch.setattr(releases, "submit_release_run", refused)
    assert deploy_run(signed, tmp_path) == 1
    err = capsys.readouterr().err
    assert "the run config is refused" in err and "--release-port" not in err


@pytest.mark.parametrize("superlink", ["nohost", "127.0.0.1:", ":9091", "host:99999",
                                       "http://127.0.0.1:9091", "127.0.0.1:\u00b2",
                                       "127.0.0.1:\uff19\uff10\uff19\uff11", "127.0.0.1 :9091",
                                       "127.0.0.1:9091\n"])
def test_deploy_run_refuses_a_superlink_that_is_not_host_and_port(
        signed, tmp_path, capsys, nothing_reaches_a_superlink, superlink):
    """Found in review: no port was taken, and failed later as an unavailable SuperLink; a
    superscript digit as the port ended in a traceback, and full-width digits were read as
    9091 (found in review)."""
    assert deploy_run(signed, tmp_path, superlink=superlink) == 2
    assert "--superlink must be HOST:PORT" in capsys.readouterr().err
    assert nothing_reaches_a_superlink == [] and not (tmp_path / "run").exists()


def test_deploy_run_names_the_option_to_use_instead(signed, tmp_path, capsys,
                                                    nothing_reaches_a_superlink):
    assert deploy_run(signed, tmp_path, "--set", " target-epsilon = 1") == 2
    assert "--set target-epsilon is refused: use --epsilon" in capsys.readouterr().err


def test_deploy_run_names_the_options_typed_in_a_refused_setting(signed, tmp_path, capsys,
                                                                nothing_reaches_a_superlink):
    """Found in review: the run-config key was named (num-rounds), not the option typed."""
    assert deploy_run(signed, tmp_path, "--rounds", "0") == 2
    assert "--rounds must be a whole number >= 1" in capsys.readouterr().err
    assert deploy_run(signed, tmp_path, "--set", "privacy-model=distributed", "--set",
                      "secure-aggregation=true", "--set", "tolerated-sites=1") == 2
    assert "--min-sites (2) must exceed tolerated-sites (1)" in capsys.readouterr().err
    assert nothing_reaches_a_superlink == []


def test_deploy_run_prints_the_privacy_settings_it_submitted(signed, tmp_path, capsys,
                                                             nothing_reaches_a_superlink):
    assert deploy_run(signed, tmp_path, "--epsilon", "1", "--set", "privacy-unit=customer",
                      "--set", "delta=1e-6") == 1
    [config] = nothing_reaches_a_superlink
    assert (config["target-epsilon"], config["delta"], config["privacy-unit"]) == \
        (1.0, 1e-6, "customer")
    out = capsys.readouterr().out
    assert "3 rounds, at least 2 sites, 2 intents, target-epsilon 1, delta 1e-06, " \
        "privacy-unit customer, privacy-model local; output:" in out
    assert deploy_run(signed, tmp_path / "again", "--min-sites", "4", "--set",
                      "privacy-model=distributed", "--set", "secure-aggregation=true") == 1
    assert "target-epsilon 8, delta per-site default, privacy-unit utterance, " \
        "privacy-model distributed;" in capsys.readouterr().out


@pytest.fixture
def interrupted_follow(monkeypatch, nothing_reaches_a_superlink):
    """deploy-run interrupted by Ctrl-C while it follows its run, the ServerApp's record still
    saying running; stopping the run on the SuperLink succeeds at once."""
    def follow(connection, run_id, metrics_path, on_round, **kwargs):
        metrics_path.write_text(json.dumps({"status": "running"}), encoding="utf-8")
        raise KeyboardInterrupt

    monkeypatch.setattr(deployment, "follow_run", follow)
    monkeypatch.setattr(deployment, "stop_run", lambda *args: None)
    monkeypatch.setattr(deployment, "wait_run_finished", lambda *args: True)


def test_an_interrupted_deployed_run_says_how_to_resume_it_on_its_sites(
        signed, tmp_path, capsys, interrupted_follow):
    """Found in review: an interrupted deploy-run said to continue with ``fedintent train
    --resume``, which simulated sites over the labels' folder on the operator's machine, with
    fresh ledgers, the deployed sites' never charged for what it trained. It names the
    ``deploy-run --resume`` that goes on with the same SuperLink, release and CA."""
    out = tmp_path / "run"
    assert deploy_run(signed, tmp_path) == 130
    said = (f"continue with: fedintent deploy-run --resume {out} --superlink 127.0.0.1:9 "
            f"--release {signed['release']} --release-port 9095 --ca-cert "
            f"{signed['creds'].ca_cert}")
    assert f"fedintent deploy-run: interrupted; {said}" in capsys.readouterr().err
    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert record["status"] == "interrupted" and said in record["error"]
    assert json.loads((out / "deployment.json").read_text(encoding="utf-8"))[
        "flower_run_id"] == 7
    assert main(["train", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} holds a run of fedintent deploy-run" in err
    assert f"continue with: fedintent deploy-run --resume {out}" in err
    assert deploy_run(signed, tmp_path) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "train --resume" not in err


def test_a_deployment_record_that_cannot_be_written_leaves_the_run_going(
        signed, tmp_path, capsys, monkeypatch, nothing_reaches_a_superlink):
    """Found in review: it was reported as a release handover that failed, the folder removed
    while the submitted run went on."""
    def refused(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(deployment, "record_deployed_run", refused)
    assert deploy_run(signed, tmp_path) == 1  # the run then fails as the fixture makes it
    err = capsys.readouterr().err
    assert "cannot record run 7" in err and "No space left on device" in err
    assert "never fedintent train --resume" in err
    assert "cannot hand over the release" not in err and (tmp_path / "run").is_dir()


# --- deploy-run --resume --------------------------------------------------------------------

@pytest.fixture
def stopped_deployed_run(signed, tmp_path, task_identity) -> Path:
    """A deployed run's folder as its ServerApp leaves it after round 1 of 2 (stop-after-round):
    its record, audit log, checkpoint and deployment record (Flower run 5)."""
    taxonomy = tmp_path / "taxonomy"
    taxonomy.mkdir()
    (taxonomy / "labels.txt").write_text("card_lost\nrefund\n")
    out = tmp_path / "run"
    out.mkdir()
    release = read_release(signed["release"])
    deployment.record_deployed_run(out, 5, "127.0.0.1:9", release.app_spec, release.key_id,
                                   hashlib.sha256(release.fab).hexdigest())
    config = RUN_CONFIG_DEFAULTS | {
        "out-dir": str(out), "model": "ngram", "min-sites": 2, "num-rounds": 2,
        "stop-after-round": 1, "data-dir": str(taxonomy),
        "labels-file": str(taxonomy / "labels.txt"), "run-name": "deployed"}
    server_main(DecliningGrid([1, 2]), Context(run_id=5, node_id=0, node_config={},
                                               state=RecordDict(), run_config=config))
    record = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert record["status"] == "stopped"
    assert record["error"].endswith(
        f"continue with: fedintent deploy-run --resume {out} and the run's --superlink, "
        "--release, --release-port and --ca-cert")
    return out


@pytest.fixture
def earlier_runs(monkeypatch) -> dict[int, str]:
    """The SuperLink's status of each earlier Flower run a resume asks about (finished, unless
    the test sets it)."""
    statuses: dict[int, str] = {}
    monkeypatch.setattr(deployment, "unfinished_status",
                        lambda connection, run_id: statuses.setdefault(run_id, None))
    return statuses


def deploy_resume(signed, out: Path, *args: str) -> int:
    return main(["deploy-run", "--superlink", "127.0.0.1:9", "--release", str(signed["release"]),
                 "--ca-cert", str(signed["creds"].ca_cert), "--resume", str(out), *args])


def test_a_stopped_deployed_run_resumes_on_its_sites_with_the_settings_it_started_with(
        signed, stopped_deployed_run, capsys, monkeypatch, nothing_reaches_a_superlink,
        earlier_runs):
    """The resumed run keeps its name, rounds and privacy settings, so each site charges the
    new rounds to the same run in its own ledger; only how long the server waits, and for how
    many sites, may change."""
    out = stopped_deployed_run
    followed = {}

    def follow(connection, run_id, metrics_path, on_round, **kwargs):
        followed.update(kwargs)
        raise deployment.DeploymentError("the test stops here")

    monkeypatch.setattr(deployment, "follow_run", follow)
    recorded = json.loads((out / "metrics.json").read_text(encoding="utf-8"))["config"]
    assert deploy_resume(signed, out, "--min-sites", "3", "--set", "reply-timeout=60") == 1
    submitted = nothing_reaches_a_superlink[-1]
    kept = {key: value for key, value in recorded.items()
            if key not in {"resume", "min-sites", "reply-timeout", "stop-after-round"}}
    assert {key: json_safe(submitted)[key] for key in kept} == kept
    assert submitted["run-name"] == "deployed" and submitted["num-rounds"] == 2
    assert (submitted["resume"], submitted["min-sites"], submitted["reply-timeout"],
            submitted["stop-after-round"]) == (True, 3, 60.0, 0)
    assert earlier_runs == {5: None}  # the run's first Flower run was asked about
    assert followed == {"seen": 1, "resumes": 1}
    assert "resuming run deployed after round 1 of 2: run 7 of" in capsys.readouterr().out
    record = json.loads((out / "deployment.json").read_text(encoding="utf-8"))
    assert record["flower_run_id"] == 5
    assert [entry["flower_run_id"] for entry in record["resumes"]] == [7]
    assert deployment.deployed_run_ids(record) == [5, 7]


@pytest.mark.parametrize("args,said", [
    (["--rounds", "3"], "--resume uses the settings recorded in OUT/metrics.json; drop --rounds"),
    (["--epsilon", "4", "--labels", "x.txt"], "drop --labels, --epsilon"),
    (["--out", "elsewhere"], "drop --out"),
    (["--site-rows", "100"], "drop --site-rows"),
    (["--set", "learning-rate=1"], "--set learning-rate is refused with --resume: the run keeps "
                                   "the settings it started with (only reply-timeout, "
                                   "stop-after-round may change)"),
    (["--set", "num-rounds=3"], "--set num-rounds is refused: use --rounds"),
    (["--min-sites", "0"], "--min-sites must be >= 1"),
])
def test_a_resume_refuses_options_that_would_change_what_the_run_trains(
        signed, stopped_deployed_run, capsys, nothing_reaches_a_superlink, earlier_runs, args,
        said):
    before = (stopped_deployed_run / "deployment.json").read_bytes()
    assert deploy_resume(signed, stopped_deployed_run, *args) == 2
    assert said in capsys.readouterr().err
    assert nothing_reaches_a_superlink == [] and earlier_runs == {}
    assert (stopped_deployed_run / "deployment.json").read_bytes() == before


def test_a_resume_waits_for_no_run_still_writing_the_folder(
        signed, stopped_deployed_run, capsys, nothing_reaches_a_superlink, earlier_runs):
    """A deploy-run killed outright leaves its run going on the SuperLink: a resume beside it
    would have two ServerApps write one folder."""
    earlier_runs[5] = "running"
    assert deploy_resume(signed, stopped_deployed_run) == 2
    assert (f"cannot resume: run 5 of {stopped_deployed_run} is still running on 127.0.0.1:9 "
            "and writes there; wait for it to end, or stop it (flwr stop 5), then resume"
            ) in capsys.readouterr().err
    assert nothing_reaches_a_superlink == []


@pytest.mark.parametrize("damage,said", [
    (lambda out: (out / "deployment.json").unlink(),
     "holds no deployment.json, so it is not the folder of a run of fedintent deploy-run (a run "
     "of fedintent train resumes with fedintent train --resume)"),
    (lambda out: (out / "deployment.json").write_text("{"), "cannot be read as JSON"),
    (lambda out: (out / "deployment.json").write_text('{"app": "x", "resumes": [{}]}'),
     "is not a deployment record: it must hold the flower_run_id and app of the run and of "
     "each of its resumes"),
    (lambda out: (out.parent / "taxonomy" / "labels.txt").write_text("card_lost\nrefunds\n"),
     "labels.txt changed since the run started"),
    (lambda out: edit_record(out, lambda doc: doc["config"].update({"target-epsilon": 50})),
     "differs from the one the audit log recorded when the run started: target-epsilon=50"),
    (lambda out: edit_record(out, lambda doc: doc.update({"status": "completed"})),
     "cannot resume: the run completed all its rounds already"),
])
def test_a_resume_refuses_a_folder_it_cannot_continue_as_it_started(
        signed, stopped_deployed_run, capsys, nothing_reaches_a_superlink, earlier_runs, damage,
        said):
    damage(stopped_deployed_run)
    assert deploy_resume(signed, stopped_deployed_run) == 2
    assert said in capsys.readouterr().err
    assert nothing_reaches_a_superlink == [] and earlier_runs == {}


def edit_record(out: Path, edit) -> None:
    doc = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    edit(doc)
    (out / "metrics.json").write_text(json.dumps(doc), encoding="utf-8")


def test_a_resume_waits_for_a_server_app_still_writing_the_folder(
        signed, stopped_deployed_run, capsys, nothing_reaches_a_superlink, earlier_runs):
    """Found in review: ``flwr stop`` marks a run finished at once while its ServerApp goes on
    until its next heartbeat, so a resume pasted at once ran beside it; so did two resumes at
    once. The ServerApp holds the folder's lock while it writes there."""
    with run_folder_lock(stopped_deployed_run):
        assert deploy_resume(signed, stopped_deployed_run) == 2
    assert (f"cannot resume: a fedintent ServerApp is still writing {stopped_deployed_run}"
            in capsys.readouterr().err)
    assert nothing_reaches_a_superlink == []


def test_a_resume_whose_server_app_never_resumed_the_run_fails_and_says_so(
        signed, stopped_deployed_run, capsys, monkeypatch, nothing_reaches_a_superlink,
        earlier_runs):
    """Found in review: a resume whose ServerApp ended before it wrote anything (another
    ServerApp held the folder, its bundle did not install) reported the stopped run's own
    reason as its failure."""
    monkeypatch.setattr(deployment, "follow_run", lambda *args, **kwargs: "finished:completed")
    before = (stopped_deployed_run / "metrics.json").read_bytes()
    assert deploy_resume(signed, stopped_deployed_run) == 1
    err = capsys.readouterr().err
    assert ("run 7 ended (finished:completed) before its ServerApp resumed the run (flwr log 7 "
            f"says why); it wrote nothing in {stopped_deployed_run}; continue with: fedintent "
            f"deploy-run --resume {stopped_deployed_run}") in err
    assert (stopped_deployed_run / "metrics.json").read_bytes() == before


@pytest.mark.parametrize("written_by", ["this resume, failing at start", "another resume"])
def test_a_resume_reports_only_what_its_own_server_app_recorded(
        signed, stopped_deployed_run, capsys, monkeypatch, nothing_reaches_a_superlink,
        earlier_runs, written_by):
    """Found in review: a resume whose ServerApp failed before round 1 marked the record failed
    with why (a label file changed), and was reported as one that wrote nothing; and a resume
    refused the folder while another resume wrote the record reported that one's outcome."""
    def ended(*args, **kwargs):
        if written_by == "another resume":
            edit_record(stopped_deployed_run, lambda doc: doc.update(
                status="completed", resumes=[{"run_id": 8, "after_round": 1}]))
        else:
            edit_record(stopped_deployed_run, lambda doc: doc.update(
                status="failed", failed_start_run_id=7,
                error="cannot resume: the label file changed since the run started"))
        return "finished:completed"

    monkeypatch.setattr(deployment, "follow_run", ended)
    assert deploy_resume(signed, stopped_deployed_run) == 1
    err = capsys.readouterr().err
    if written_by == "another resume":
        assert "run 7 ended (finished:completed) before its ServerApp resumed the run" in err
    else:
        assert ("error: the run failed: cannot resume: the label file changed since the run "
                "started") in err and "it wrote nothing" not in err


def test_two_resumes_recording_at_once_each_keep_the_others_submission(tmp_path):
    """The deployment record is read and written back under the folder's lock: a resume that
    records while another holds it waits, and then adds its run beside the other's."""
    import threading

    out = tmp_path / "run"
    out.mkdir()
    deployment.record_deployed_run(out, 5, "127.0.0.1:9", "app", "key", "digest")
    with deployment.deployment_record_lock(out):
        second = threading.Thread(target=deployment.record_deployed_run,
                                  args=(out, 7, "127.0.0.1:9", "app", "key", "digest"))
        second.start()
        second.join(timeout=1)
        assert second.is_alive()  # waits for the lock
        record = deployment.read_deployment_record(out)  # the other resume, holding the lock,
        record["resumes"] = [record | {"flower_run_id": 6}]  # records its run 6
        (out / "deployment.json").write_text(json.dumps(record), encoding="utf-8")
    second.join()
    assert deployment.deployed_run_ids(deployment.read_deployment_record(out)) == [5, 6, 7]


def test_a_resume_warns_of_another_bundle_under_the_same_version(
        signed, stopped_deployed_run, capsys, nothing_reaches_a_superlink, earlier_runs):
    """Found in review: only the app spec was compared, so a bundle rebuilt under the same
    version (other code) resumed without a word."""
    record = json.loads((stopped_deployed_run / "deployment.json").read_text(encoding="utf-8"))
    (stopped_deployed_run / "deployment.json").write_text(
        json.dumps(record | {"fab_sha256": "0" * 64}), encoding="utf-8")
    assert deploy_resume(signed, stopped_deployed_run) == 1  # the fixture stops the followed run
    err = capsys.readouterr().err
    assert f"the run's last submission ran {record['app']} (bundle sha256 0000000000000000...)" \
        in err and "rounds after 1 are trained by it" in err
    assert deploy_resume(signed, stopped_deployed_run) == 1
    assert "bundle sha256" not in capsys.readouterr().err  # the resume's own is recorded last


def test_a_resume_warns_of_another_superlink_and_refuses_a_stop_it_has_passed(
        signed, stopped_deployed_run, capsys, nothing_reaches_a_superlink, earlier_runs):
    assert deploy_resume(signed, stopped_deployed_run, "--set", "stop-after-round=1") == 2
    assert ("--set stop-after-round=1: the run has done 1 rounds already; the resume goes on "
            "from round 2") in capsys.readouterr().err
    assert main(["deploy-run", "--superlink", "127.0.0.1:10", "--release",
                 str(signed["release"]), "--ca-cert", str(signed["creds"].ca_cert), "--resume",
                 str(stopped_deployed_run)]) == 1  # the fixture stops the followed run
    assert ("the run's last submission went to 127.0.0.1:9 and this one goes to 127.0.0.1:10"
            in capsys.readouterr().err)


def test_a_resume_that_cannot_ask_about_an_earlier_run_submits_nothing(
        signed, stopped_deployed_run, capsys, monkeypatch, nothing_reaches_a_superlink):
    def unreachable(connection, run_id):
        raise deployment.DeploymentError("flwr ls fedintent failed: connection refused")

    monkeypatch.setattr(deployment, "unfinished_status", unreachable)
    assert deploy_resume(signed, stopped_deployed_run) == 2
    assert ("cannot resume: cannot ask 127.0.0.1:9 whether run 5 of "
            f"{stopped_deployed_run} has ended: flwr ls fedintent failed: connection refused"
            ) in capsys.readouterr().err
    assert nothing_reaches_a_superlink == []


def test_an_interrupted_run_is_marked_only_once_its_server_app_let_go(
        signed, tmp_path, capsys, monkeypatch, interrupted_follow):
    """Found in review: the record was marked interrupted while the stopped run's ServerApp,
    which sees the stop only at its next heartbeat, still wrote there."""
    out = tmp_path / "run"

    monkeypatch.setattr(deploy_command, "SERVER_APP_EXIT_S", 0.2)
    out.mkdir()
    with run_folder_lock(out):
        assert deploy_run(signed, tmp_path) == 130
    assert "run 7's ServerApp has not ended within 0.2 s; it records how the run ended itself" \
        in capsys.readouterr().err
    assert json.loads((out / "metrics.json").read_text(encoding="utf-8"))["status"] == "running"


def test_ctrl_c_while_the_handover_closes_stops_the_submitted_run_and_keeps_its_folder(
        signed, tmp_path, capsys, monkeypatch, nothing_reaches_a_superlink):
    """Found in review: an interrupt after the submission but before the handover had closed
    left the run going, unstopped, and then removed the folder it was about to write."""
    stopped = []

    @contextlib.contextmanager
    def serve(release, port):
        yield
        raise KeyboardInterrupt  # as the handover's server shuts down

    monkeypatch.setattr(releases, "serve_release", serve)
    monkeypatch.setattr(deployment, "stop_run", lambda connection, run_id: stopped.append(run_id))
    monkeypatch.setattr(deployment, "wait_run_finished", lambda *args: True)
    assert deploy_run(signed, tmp_path) == 130
    assert stopped == [7] and (tmp_path / "run").is_dir()
    assert f"continue with: fedintent deploy-run --resume {tmp_path / 'run'}" in \
        capsys.readouterr().err


def test_deploy_run_without_resume_needs_labels_and_min_sites(signed, tmp_path, capsys):
    assert main(["deploy-run", "--superlink", "127.0.0.1:9", "--release", str(signed["release"]),
                 "--ca-cert", str(signed["creds"].ca_cert), "--min-sites", "2"]) == 2
    assert "deploy-run needs --labels and --min-sites (or --resume OUT, to continue a stopped " \
        "run)" in capsys.readouterr().err


# --- the release deploy-run reads -----------------------------------------------------------

def rewrite_signature(folder: Path, **changes) -> None:
    path = folder / RELEASE_SIGNATURE
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


def test_deploy_run_names_the_key_whose_signature_it_checked(signed, tmp_path, capsys,
                                                             nothing_reaches_a_superlink):
    release = read_release(signed["release"])
    trusted = signed["creds"].trusted_entities.read_text()
    assert f'"{release.key_id}": "{release.public_key}' in trusted
    assert deploy_run(signed, tmp_path) == 1
    assert (f"run 7 of {release.app_spec} (signature by key {release.key_id} checked here; "
            "each site runs it only if it trusts that key) submitted to") in \
        capsys.readouterr().out


def test_a_release_whose_signature_does_not_verify_is_refused(signed, tmp_path, capsys,
                                                              nothing_reaches_a_superlink):
    """Found in review: with its signature replaced by 64 zero bytes, deploy-run still printed
    "signed by" the trusted key's id."""
    folder = copied_release(signed, tmp_path / "zeroed")
    rewrite_signature(folder, signature=base64.urlsafe_b64encode(bytes(64)).decode())
    assert deploy_run(signed, tmp_path, release=folder) == 2
    key_id = read_release(signed["release"]).key_id
    assert (f"{folder / RELEASE_SIGNATURE}: the signature does not verify under key {key_id}"
            in capsys.readouterr().err)
    assert nothing_reaches_a_superlink == []


def test_a_signature_by_another_key_claiming_the_trusted_id_is_refused(signed, tmp_path):
    genuine = read_release(signed["release"])
    other = sign_release(genuine.fab, load_ssh_private_key(signing_key_pair("other")[0], None))
    folder = copied_release(signed, tmp_path / "claimed")
    rewrite_signature(folder, signature=other.signature, signed_at=other.signed_at)
    with pytest.raises(deployment.DeploymentError, match="does not verify under key"):
        read_release(folder)
    rewrite_signature(folder, public_key=other.public_key)
    with pytest.raises(deployment.DeploymentError, match=re.escape(
            f"public_key_id {genuine.key_id} is not the id of its public_key ({other.key_id})")):
        read_release(folder)


def test_a_bundle_from_another_release_is_named_with_both_files(signed, tmp_path):
    folder = copied_release(signed, tmp_path / "mixed")
    fab = (folder / RELEASE_FAB).read_bytes()
    (folder / RELEASE_FAB).write_bytes(fab + b"\0")
    with pytest.raises(deployment.DeploymentError) as refused:
        read_release(folder)
    message = str(refused.value)
    assert f"{folder / RELEASE_SIGNATURE} is for a bundle with SHA-256" in message
    assert f"but {folder / RELEASE_FAB} has SHA-256" in message


def test_a_signature_file_without_its_public_key_is_refused(signed, tmp_path):
    folder = copied_release(signed, tmp_path / "keyless")
    signature = json.loads((folder / RELEASE_SIGNATURE).read_text())
    del signature["public_key"]
    (folder / RELEASE_SIGNATURE).write_text(json.dumps(signature))
    with pytest.raises(deployment.DeploymentError, match="run `fedintent release` again"):
        read_release(folder)


def test_a_signature_file_naming_an_unknown_key_type_is_refused_by_name(signed, tmp_path):
    """Found in review: a key type cryptography does not know escaped as a traceback."""
    folder = copied_release(signed, tmp_path / "unknown-type")
    rewrite_signature(folder, public_key="ecdsa-sha2-nistp999 AAAA")
    with pytest.raises(deployment.DeploymentError, match="public_key, signature or signed_at "
                       "is malformed"):
        read_release(folder)


# --- the Fleet gateway's body limit ---------------------------------------------------------

def deploy_script(name: str) -> ModuleType:
    """``deploy/<name>.py`` as a module, imported as the scripts import each other (the folder
    is scripts, not a package: run as ``python deploy/<name>.py``, deploy/ is their
    ``sys.path[0]``), so one script's import of another is the module the tests load."""
    with mock.patch.object(sys, "path", [str(REPO / "deploy"), *sys.path]):
        return importlib.import_module(name)


@pytest.fixture(scope="module")
def gateway():
    return deploy_script("fleet_gateway")


@pytest.fixture(scope="module")
def checks():
    return deploy_script("superlink_checks")


class Upload:
    """An ASGI request's body, ``chunk`` bytes per message, up to ``total`` bytes; ``read``
    counts what the app took. With ``hold`` set, it stops after ``total`` bytes, until that
    event is set, without saying the body is complete."""

    def __init__(self, total: int, chunk: int = 64 * 1024, hold: asyncio.Event | None = None):
        self.left, self.chunk, self.hold, self.read = total, chunk, hold, 0

    async def receive(self) -> dict:
        if self.left == 0 and self.hold is not None:
            await self.hold.wait()
            self.hold = None
        size = min(self.chunk, self.left)
        self.left -= size
        self.read += size
        return {"type": "http.request", "body": b"\0" * size,
                "more_body": self.left > 0 or self.hold is not None}


async def post(app, upload: Upload, content_length: int | None = None,
               client: str = "127.0.0.1") -> int:
    """POST ``upload`` from ``client`` to the gateway's push-object call; the status it
    answered."""
    headers = [(b"content-type", b"application/protobuf")]
    if content_length is not None:
        headers.append((b"content-length", str(content_length).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "https", "path": "/v1/fleet/push-object",
             "raw_path": b"/v1/fleet/push-object", "query_string": b"", "root_path": "",
             "headers": headers, "client": (client, 5000), "server": ("127.0.0.1", 443)}
    statuses = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, upload.receive, send)
    return statuses[0]


def gateway_app(gateway, signed, max_body_mib: float, body_idle_s: float = 3600.0):
    """The gateway before a SuperLink nobody runs (forwarded requests get 502)."""
    return gateway.make_app(f"127.0.0.1:{free_port()}", str(signed["creds"].ca_cert),
                            max_body_mib, body_idle_s)


def test_a_declared_body_over_the_limit_is_refused_unread(gateway, signed):
    app = gateway_app(gateway, signed, 1)

    async def run() -> tuple[int, int]:
        async with app.router.lifespan_context(app):
            upload = Upload(2 * MIB)
            return await post(app, upload, content_length=2 * MIB), upload.read

    assert asyncio.run(run()) == (413, 0)


def test_a_streamed_body_is_refused_once_it_passes_the_limit(gateway, signed):
    """Found in review: a chunked 1.5 GB upload, no credentials, took the gateway from 42 MB to
    2.8 GB before the SuperLink could refuse it."""
    app = gateway_app(gateway, signed, 1)

    async def run() -> tuple[int, int, int]:
        async with app.router.lifespan_context(app):
            over = Upload(64 * MIB)
            within = Upload(MIB)
            return await post(app, over), over.read, await post(app, within)

    status, read, within = asyncio.run(run())
    assert status == 413 and read <= MIB + 64 * 1024
    assert within == 502  # forwarded: at the limit is allowed


def test_bodies_held_together_are_bounded_too(gateway, signed):
    """Many connections, each within the limit, would add up to any amount of memory: past
    BUFFERED_BODIES bodies of the largest size the gateway answers 503 (SuperNodes retry)."""
    app = gateway_app(gateway, signed, 1)
    held = gateway.BUFFERED_BODIES

    async def run() -> tuple[list[int], int, int]:
        async with app.router.lifespan_context(app):
            release = asyncio.Event()
            uploads = [Upload(MIB, hold=release) for _ in range(held)]
            pending = [asyncio.create_task(post(app, upload, client=f"10.0.0.{i}"))
                       for i, upload in enumerate(uploads)]
            while sum(upload.read for upload in uploads) < held * MIB:
                await asyncio.sleep(0)
            refused = await post(app, Upload(1))
            release.set()
            return await asyncio.gather(*pending), refused, await post(app, Upload(MIB))

    statuses, refused, after = asyncio.run(run())
    assert refused == 503
    assert statuses == [502] * held and after == 502  # all forwarded; the budget is free again


def test_one_address_holds_at_most_its_share_of_the_bodies(gateway, signed):
    """Found in review: eight senders stalling one byte short of the limit held the whole budget
    for as long as they kept their sockets open, and every site got 503. One address now holds
    at most PEER_BODIES bodies of the largest size."""
    app = gateway_app(gateway, signed, 1)
    share = gateway.PEER_BODIES

    async def run() -> tuple[list[int], int, int, int]:
        async with app.router.lifespan_context(app):
            release = asyncio.Event()
            uploads = [Upload(MIB, hold=release) for _ in range(share)]
            held = [asyncio.create_task(post(app, upload, client="10.9.9.9"))
                    for upload in uploads]
            while sum(upload.read for upload in uploads) < share * MIB:
                await asyncio.sleep(0)
            same_address = await post(app, Upload(MIB), client="10.9.9.9")
            other_address = await post(app, Upload(MIB), client="10.0.0.1")
            release.set()
            return await asyncio.gather(*held), same_address, other_address, \
                await post(app, Upload(MIB), client="10.9.9.9")

    held, same_address, other_address, after = asyncio.run(run())
    assert same_address == 503 and other_address == 502
    assert held == [502] * share and after == 502  # forwarded; the address's share is free


def test_a_stalled_body_is_let_go(gateway, signed):
    """A body without a new byte for the idle limit gets 408, and what it held is free again."""
    app = gateway_app(gateway, signed, 1, body_idle_s=0.05)

    async def run() -> tuple[int, int]:
        async with app.router.lifespan_context(app):
            stalled = await post(app, Upload(MIB // 2, hold=asyncio.Event()), client="10.9.9.9")
            return stalled, await post(app, Upload(MIB), client="10.9.9.9")

    assert asyncio.run(run()) == (408, 502)


def wait_until_listening(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the gateway did not listen on {port}:\n{log.read_text()}")


def test_the_gateway_process_refuses_a_body_over_max_body_mib(signed, tmp_path):
    creds, port = signed["creds"], free_port()
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, str(REPO / "deploy" / "fleet_gateway.py"),
             "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{free_port()}",
             "--ca-cert", str(creds.ca_cert), "--certfile", str(creds.server_cert),
             "--keyfile", str(creds.server_key), "--max-body-mib", "1"],
            stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_listening(port, process, log)
        context = ssl.create_default_context(cafile=str(creds.ca_cert))
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context,
                                                 timeout=60)
        connection.putrequest("POST", "/v1/fleet/push-object")
        connection.putheader("Content-Length", str(2 * MIB))
        connection.endheaders()  # the body is never sent: the answer comes without it
        reply = connection.getresponse()
        assert reply.status == 413
        assert f"limit of {MIB} bytes" in json.loads(reply.read())["detail"]
        connection.close()
    finally:
        process.terminate()
        process.wait(timeout=60)


def test_the_gateway_refuses_a_body_limit_that_is_not_positive(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "fleet_gateway.py"), "--listen", "127.0.0.1:9",
         "--upstream", "127.0.0.1:9", "--ca-cert", "x", "--certfile", "x", "--keyfile", "x",
         "--max-body-mib", "0"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert "--max-body-mib must be a number of MiB in [1, 1048576], got 0" in result.stderr


@pytest.mark.parametrize("setting, passed", [(None, []), ("16", ["--max-body-mib", "16"])])
def test_superlink_sh_passes_fleet_max_body_mib_to_the_gateway(signed, tmp_path, setting,
                                                               passed):
    """Stand-ins on PATH: ``flower-superlink`` waits, ``python`` prints its arguments and
    exits, so the script stops the stand-in SuperLink and exits 1."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "flower-superlink").write_text("#!/bin/sh\nexec sleep 600\n")
    (stand_ins / "python").write_text('#!/bin/sh\nprintf "ARG:%s\\n" "$@"\n')
    for stand_in in stand_ins.iterdir():
        stand_in.chmod(0o755)
    env = flower_env(tmp_path / "home") | {"CERT_DIR": str(signed["creds"].ca_cert.parent)}
    env["PATH"] = f"{stand_ins}{os.pathsep}{env['PATH']}"
    env.pop("FLEET_MAX_BODY_MIB", None)
    if setting is not None:
        env["FLEET_MAX_BODY_MIB"] = setting
    code, out, err = superlink_sh(env)
    assert code == 1 and "the Fleet gateway stopped" in err, err
    args = [line.removeprefix("ARG:") for line in out.splitlines() if line.startswith("ARG:")]
    assert [Path(arg).name for arg in args if arg.endswith(".py")] == [
        "superlink_checks.py", "fleet_gateway.py", "fleet_gateway.py"]
    assert args[-len(passed) - 1:] == [str(signed["creds"].server_key), *passed]


def superlink_sh(env: dict) -> tuple[int, str, str]:
    """deploy/superlink.sh with ``env``, run until it exits (its process group killed after):
    (status, stdout, stderr)."""
    script = subprocess.Popen([str(REPO / "deploy" / "superlink.sh")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        out, err = script.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
    return script.returncode, out, err


# --- the SuperLink's certificate --------------------------------------------------------------

def expired_certificate(creds) -> bytes:
    """The SuperLink's certificate re-issued by its CA for the same key and names, valid in
    2020 only."""
    return reissued(creds, datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC),
                    datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC))


def reissued(creds, not_before: datetime.datetime, not_after: datetime.datetime) -> bytes:
    """The SuperLink's certificate re-issued by its CA for the same key and names, valid from
    ``not_before`` to ``not_after``."""
    ca_key = load_pem_private_key(creds.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    current = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    builder = (x509.CertificateBuilder().subject_name(current.subject)
               .issuer_name(ca_cert.subject).public_key(current.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after))
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    return builder.sign(ca_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)


def cert_dir(creds, folder: Path, certificate: bytes | None = None,
             key: bytes | None = None) -> Path:
    """A ``CERT_DIR`` for superlink.sh: ``creds``' files, with ``certificate`` and ``key`` as
    superlink.crt and superlink.key where given."""
    folder.mkdir()
    (folder / "ca.crt").write_bytes(creds.ca_cert.read_bytes())
    (folder / "superlink.crt").write_bytes(certificate or creds.server_cert.read_bytes())
    (folder / "superlink.key").write_bytes(key or creds.server_key.read_bytes())
    return folder


@pytest.fixture(scope="module")
def expired_superlink(signed):
    """A real ``flower-superlink`` on 127.0.0.1 serving a certificate from the right CA that
    expired in 2021 (Flower serves it; superlink.sh refuses it): its address."""
    tmp = signed["tmp"]
    certs = cert_dir(signed["creds"], tmp / "expired", expired_certificate(signed["creds"]))
    port, log_path, processes = free_port(), tmp / "expired-superlink.log", []
    with open(log_path, "wb") as log:
        try:
            superlink = start_process(
                ["flower-superlink", "--ssl-ca-certfile", str(certs / "ca.crt"),
                 "--ssl-certfile", str(certs / "superlink.crt"),
                 "--ssl-keyfile", str(certs / "superlink.key"), "--host", "127.0.0.1",
                 "--port", str(port)], flower_env(tmp / "expired-home"), log, processes)
            wait_until_listening(port, superlink, log_path)
            yield f"127.0.0.1:{port}"
        finally:
            stop_process_trees(processes)


@pytest.mark.parametrize("ca, reason", [("its own", "certificate has expired"),
                                        ("another", "unable to get local issuer certificate")])
def test_deploy_run_names_a_superlink_certificate_that_its_ca_cert_does_not_verify(
        signed, tmp_path, capsys, expired_superlink, nothing_reaches_a_superlink, ca, reason):
    """Found in review: Flower reported an expired SuperLink certificate, or a --ca-cert from
    another CA, as "Connection to the SuperLink is unavailable. Please check your network"."""
    ca_cert = signed["creds"].ca_cert if ca == "its own" else write_dev_credentials(
        tmp_path / "other", site_names(1), ["127.0.0.1"], []).ca_cert
    assert deploy_run(signed, tmp_path, superlink=expired_superlink, ca_cert=ca_cert) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"fedintent deploy-run: error: the SuperLink at {expired_superlink} presents a "
        f"certificate that --ca-cert {ca_cert} does not verify: {reason}"]
    assert nothing_reaches_a_superlink == []
    assert not (tmp_path / "run").exists()


def test_deploy_run_names_a_ca_cert_that_holds_no_certificate(signed, tmp_path, capsys,
                                                              nothing_reaches_a_superlink):
    garbage = tmp_path / "ca.crt"
    garbage.write_text("not a certificate\n")
    assert deploy_run(signed, tmp_path, ca_cert=garbage) == 2
    assert f"error: {garbage} is not a PEM CA certificate" in capsys.readouterr().err
    assert nothing_reaches_a_superlink == []


def run_superlink_sh(certs: Path, home: Path) -> tuple[int, str]:
    """deploy/superlink.sh on free 127.0.0.1 ports, run until it exits: (status, output)."""
    env = flower_env(home) | {
        "CERT_DIR": str(certs), "SUPERLINK_HOST": "127.0.0.1",
        "SUPERLINK_PORT": str(free_port()), "CONTROL_PORT": str(free_port()),
        "RELEASE_PORT": str(free_port())}
    code, out, err = superlink_sh(env)
    return code, out + err


@pytest.mark.parametrize("case", ["garbage", "mismatched", "expired"])
def test_superlink_sh_refuses_a_certificate_it_cannot_serve_before_starting(signed, tmp_path,
                                                                            case):
    """Found in review: a garbage or mismatched pair was a traceback from the gateway naming
    neither file, and an expired certificate was served without a word."""
    creds = signed["creds"]
    other_key = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    certificate, key = {"garbage": (b"not a certificate\n", None),
                        "mismatched": (None, other_key),
                        "expired": (expired_certificate(creds), None)}[case]
    certs = cert_dir(creds, tmp_path / "certs", certificate, key)
    crt, pem = certs / "superlink.crt", certs / "superlink.key"
    refusal = {"garbage": f"cannot use {crt} and {pem}: the certificate is not a PEM certificate",
               "mismatched": f"cannot use {crt} and {pem}: the key is not the certificate's "
                             "(their public keys differ)",
               "expired": f"cannot use {crt}: it expired on 2021-01-01 00:00 UTC; renew it and "
                          "start the SuperLink again"}[case]
    assert run_superlink_sh(certs, tmp_path / "home") == (2, f"superlink: {refusal}\n")


def test_the_gateway_warns_within_30_days_of_the_certificate_expiring(checks, signed):
    creds = signed["creds"]
    expires = x509.load_pem_x509_certificate(creds.server_cert.read_bytes()).not_valid_after_utc

    def check(days_left: float) -> str | None:
        return checks.check_server_certificate(
            str(creds.server_cert), str(creds.server_key), str(creds.ca_cert),
            now=expires - datetime.timedelta(days=days_left))

    assert check(31) is None
    assert check(10) == (f"warning: {creds.server_cert} expires on {expires:%Y-%m-%d %H:%M} UTC, "
                         "in 10 days: renew it and restart the SuperLink before then")
    with pytest.raises(checks.CertificateRefused, match=re.escape(
            f"cannot use {creds.server_cert}: it expired on {expires:%Y-%m-%d %H:%M} UTC")):
        check(0)
