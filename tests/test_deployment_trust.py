"""Who may start code at a site: only the operator submits runs, and a site runs only bundles
signed by the key it pins.

One loopback deployment from the guide's scripts (``deploy/superlink.sh``: SuperLink on a
private control port behind the Fleet-only public gateway; ``deploy/site-entrypoint.sh``: a
site with ``trusted-entities.yaml``) serves every submission: the signed release runs; the
same bundle with one changed line in ``fl_client/``, a bundle signed by another key and an
unsigned bundle are refused by the site; runs sent to the public address are refused by the
gateway. Every process is started and stopped here.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.build import build_fab_from_disk
from flwr.common.config import parse_config_args

from data_synth import write_sites
from fedintent.launch.certificates import (
    credential_paths,
    signing_key_pair,
    site_names,
    write_dev_credentials,
)
from fedintent.launch.deployment import (
    DeploymentError,
    register_site_key,
    run_status,
    start_loopback_superlink,
    stop_run,
    submit_run,
    write_connection,
)
from fedintent.launch.flower_cli import flower_env, write_app
from fedintent.launch.processes import (
    descendants,
    free_port,
    is_alive,
    start_process,
    stop_process_trees,
)
from fedintent.launch.releases import (
    serve_release,
    sign_release,
    submit_release_run,
    write_release,
)
from fl_protocol.wire import Reason

REPO = Path(__file__).resolve().parent.parent
SITE = site_names(1)[0]
RUN_TIMEOUT_S = 600
REFUSAL_TIMEOUT_S = 300
REFUSED = "FAB verification failed"
UNSIGNED = "The FAB could not be verified"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trust-deployment")
    creds = write_dev_credentials(tmp / "creds", [SITE], ["127.0.0.1"], ["localhost"])
    write_sites(tmp / "data", n_sites=1, seed=11, size=60)
    public, control, release_port = free_port(), free_port(), free_port()
    processes: list[subprocess.Popen] = []
    started: set[int] = set()
    with open(tmp / "flower.log", "ab") as link_log, open(tmp / "site.log", "ab") as site_log:
        try:
            _, operator = start_loopback_superlink(
                REPO / "deploy" / "superlink.sh", tmp, creds.ca_cert,
                (public, control, release_port), link_log, processes)
            register_site_key(creds.site_public_keys[SITE], operator)
            site_env = flower_env(tmp / "site-home") | {
                "SUPERLINK": f"127.0.0.1:{public}", "CA_CERT": str(creds.ca_cert),
                "SITE_KEY": str(creds.site_keys[SITE]),
                "TRUSTED_ENTITIES": str(creds.trusted_entities),
                "DATA_DIR": str(tmp / "data" / SITE), "STATE_DIR": str(tmp / "state"),
                "SUPERNODE_PORT": str(free_port()), "RETENTION_DAYS": "inf",
                "PURGE_INTERVAL_HOURS": "0", "EVALUATION": "off",
                "LABELS_FILE": str(tmp / "data" / "labels.txt"),
            }
            initialise_state(site_env)
            start_process([str(REPO / "deploy" / "site-entrypoint.sh")], site_env, site_log,
                          processes)
            yield {"tmp": tmp, "creds": creds, "public": public, "control": control,
                   "release_port": release_port, "operator": operator,
                   "release": write_release(tmp / "release", creds.signing_key)}
        finally:
            started = {p.pid for p in processes} | descendants({p.pid for p in processes})
            stop_process_trees(processes)
    assert not [pid for pid in started if is_alive(pid)], "processes left behind"


def initialise_state(env: dict) -> None:
    """Make a new site's state folder as its operator does: a one-off run with INIT_STATE=1."""
    result = subprocess.run([str(REPO / "deploy" / "site-entrypoint.sh")],
                            env=env | {"INIT_STATE": "1"}, capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def run_config(deployment) -> dict:
    """A one-round run on the one site, as ``fedintent deploy-run`` would configure it."""
    tmp = deployment["tmp"]
    return {"num-rounds": 1, "min-sites": 1, "data-dir": str(tmp / "data"),
            "labels-file": str(tmp / "data" / "labels.txt"),
            "out-dir": str(tmp / f"refused-{time.monotonic_ns()}")}


def site_log_size(deployment) -> int:
    return (deployment["tmp"] / "site.log").stat().st_size


def wait_for_refusals(deployment, log_offset: int, run_ids: list[int], expected: str) -> None:
    """Wait until the site logs one refusal per run after ``log_offset``; stop the runs."""
    log = deployment["tmp"] / "site.log"
    deadline = time.monotonic() + REFUSAL_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            new = log.read_bytes()[log_offset:].decode(errors="replace")
            if new.count(expected) >= len(run_ids):
                return
            time.sleep(1)
        pytest.fail(f"runs {run_ids}: the site did not log {expected!r}:\n{new[-3000:]}")
    finally:
        for run_id in run_ids:
            stop_if_running(deployment["operator"], run_id)


def stop_if_running(operator, run_id: int) -> None:
    """Stop a refused run unless its ServerApp already gave up on the refusing site."""
    try:
        stop_run(operator, run_id)
    except DeploymentError:
        if not run_status(operator, run_id).startswith("finished"):
            raise


def submit_bundle(deployment, release) -> int:
    """Hand ``release`` to the SuperLink as deploy-run does; return the run id."""
    with serve_release(release, deployment["release_port"]):
        return submit_release_run(release, deployment["operator"], run_config(deployment))


def egress_lines(deployment) -> int:
    egress = deployment["tmp"] / "state" / "egress.jsonl"
    return len(egress.read_text().splitlines()) if egress.exists() else 0


def test_a_site_without_trusted_keys_refuses_to_start(tmp_path):
    creds = write_dev_credentials(tmp_path / "creds", [SITE], ["127.0.0.1"], [])
    (tmp_path / "data").mkdir()
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nobody\n")
    site_key = tmp_path / "site-key.yaml"
    site_key.write_text(f'site: "{creds.site_public_keys[SITE].read_text().strip()}"\n')
    for trusted, message in [(tmp_path / "missing.yaml", "TRUSTED_ENTITIES"),
                             (empty, "names no trusted key"),
                             (site_key, "is not an ssh-ed25519 key")]:
        env = flower_env(tmp_path / "home") | {
            "SUPERLINK": "127.0.0.1:9", "CA_CERT": str(creds.ca_cert),
            "SITE_KEY": str(creds.site_keys[SITE]), "TRUSTED_ENTITIES": str(trusted),
            "DATA_DIR": str(tmp_path / "data"), "STATE_DIR": str(tmp_path / "state"),
        }
        result = subprocess.run([str(REPO / "deploy" / "site-entrypoint.sh")], env=env,
                                capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        assert message in result.stderr and str(trusted) in result.stderr
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("setting, value", [
    ("RETENTION_DAYS", "30 max-epsilon=inf"),  # would smuggle a weaker policy into node config
    ("RETENTION_DAYS", "0"), ("RETENTION_DAYS", "nan"), ("RETENTION_DAYS", "-5"),
    ("PURGE_INTERVAL_HOURS", "daily"), ("PURGE_INTERVAL_HOURS", "1.5"),
    ("EVALUATION", "exact' max-epsilon=inf '"), ("EVALUATION", "noisy"),
    ("EVALUATION_EPSILON", "1 max-epsilon=inf"), ("EVALUATION_EPSILON", "0"),
    ("EVALUATION_EPSILON", "inf"), ("EVALUATION_EPSILON", "nan"),
    ("EVALUATION_EPSILON", "0.05"), ("EVALUATION_EPSILON", "101"),  # no accountant plans them
    ("LABELS_FILE", "/nonexistent/labels.txt"), ("LABELS_FILE", "x' max-epsilon=inf '"),
    ("LOCAL_MODELS", "/models/x' max-epsilon=inf '"),
    ("LANGUAGES", "en' max-epsilon=inf x='"), ("MAX_EPSILON", "4 max-delta=0.5"),
    ("MAX_DELTA", "1e-7,"), ("MIN_TOLERATED_SITES", "1.5"), ("PURGE_INTERVAL_HOURS", "9999"),
    ("PURGE_INTERVAL_HOURS", "-1"),
])
def test_a_site_with_a_malformed_policy_setting_refuses_to_start(tmp_path, setting, value):
    creds = write_dev_credentials(tmp_path / "creds", [SITE], ["127.0.0.1"], [])
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "lost my card", "label": "a"}\n')
    env = flower_env(tmp_path / "home") | {
        "SUPERLINK": "127.0.0.1:9", "CA_CERT": str(creds.ca_cert),
        "SITE_KEY": str(creds.site_keys[SITE]), "TRUSTED_ENTITIES": str(creds.trusted_entities),
        "DATA_DIR": str(tmp_path / "data"), "STATE_DIR": str(tmp_path / "state"), setting: value,
    }
    result = subprocess.run([str(REPO / "deploy" / "site-entrypoint.sh")], env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert setting in result.stderr
    assert not (tmp_path / "state").exists()


def stand_in_site(tmp_path: Path, supernode: str, **settings: str) -> dict:
    """The environment of a site whose ``fedintent-supernode`` is the shell ``supernode``
    (on PATH), with dev credentials and a data folder under ``tmp_path``."""
    if not (tmp_path / "creds").exists():
        write_dev_credentials(tmp_path / "creds", [SITE], ["127.0.0.1"], [])
    creds = credential_paths(tmp_path / "creds", [SITE])
    stand_ins = tmp_path / "bin"
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "lost my card", "label": "a"}\n')
    stand_ins.mkdir(exist_ok=True)
    (stand_ins / "fedintent-supernode").write_text(f"#!/bin/sh\n{supernode}")
    (stand_ins / "fedintent-supernode").chmod(0o755)
    env = flower_env(tmp_path / "home") | {
        "SUPERLINK": "127.0.0.1:9", "CA_CERT": str(creds.ca_cert),
        "SITE_KEY": str(creds.site_keys[SITE]), "TRUSTED_ENTITIES": str(creds.trusted_entities),
        "DATA_DIR": str(tmp_path / "data"), "STATE_DIR": str(tmp_path / "state"),
        "SUPERNODE_PORT": str(free_port()),  # never the default: a site on this host may hold it
    } | settings
    env["PATH"] = f"{stand_ins}{os.pathsep}{env['PATH']}"
    return env


def entrypoint(tmp_path: Path, args: tuple[str, ...] = (), initialised: bool = True,
               **settings: str) -> tuple[subprocess.CompletedProcess, dict | None]:
    """The entrypoint with a stand-in ``fedintent-supernode`` that prints its node config, on
    a state folder made by INIT_STATE=1 first unless not ``initialised``; the result, and the
    node config as Flower parses it (None if it never started)."""
    env = stand_in_site(tmp_path, 'while [ "$1" != --node-config ]; do shift; done\n'
                                  'echo "NODE CONFIG:$2"\n',
                        PURGE_INTERVAL_HOURS="0", **settings)
    if initialised:
        initialise_state(env)
    result = subprocess.run([str(REPO / "deploy" / "site-entrypoint.sh"), *args], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    [line] = [line for line in result.stdout.splitlines() if line.startswith("NODE CONFIG:")] \
        or [None]
    return result, parse_config_args([line.removeprefix("NODE CONFIG:")]) if line else None


def test_every_policy_value_reaches_the_node_config_as_the_number_set(tmp_path):
    """Found in review: Flower's parser dropped `max-epsilon= 4` without a word (the site ran at
    the default budget of 8), `07` days crashed it, and dash read `010` hours as octal."""
    result, config = entrypoint(tmp_path, MAX_EPSILON=" 4", MAX_DELTA="1e-7 ",
                                RETENTION_DAYS="07", MIN_TOLERATED_SITES="02",
                                MAX_EPSILON_ALONE=".5", EVALUATION_EPSILON="3.",
                                LANGUAGES="en,zh")
    assert result.returncode == 0, result.stderr
    assert config == {"data-path": str(tmp_path / "data"), "state-dir": str(tmp_path / "state"),
                      "max-epsilon": 4.0, "max-delta": 1e-7, "retention-days": 7.0,
                      "min-tolerated-sites": 2, "max-epsilon-alone": 0.5,
                      "evaluation-epsilon": 3.0, "languages": "en,zh"}


@pytest.mark.parametrize("setting, value, message", [
    ("MAX_EPSILON", "-1", "MAX_EPSILON is invalid: max-epsilon must be > 0, got -1.0"),
    ("MAX_DELTA", "5", "MAX_DELTA is invalid: max-delta must be in [1e-10, 1), got 5"),
    ("MAX_DELTA", "1e-12", "MAX_DELTA is invalid: max-delta must be in [1e-10, 1), got 1e-12"),
    ("EVALUATION", "noisy", "EVALUATION is invalid: node config: evaluation: 'noisy' is not one"),
    ("LABELS_FILE", "/nonexistent/labels.txt", "LABELS_FILE is invalid: labels-file: label file "
                                               "not found: /nonexistent/labels.txt"),
    ("PRIVACY_UNIT", "foo", "PRIVACY_UNIT is invalid: privacy-unit must be one of"),
    ("LANGUAGES", "xx", "LANGUAGES is invalid: languages: xx not among ar, de, en"),
    ("MAX_NOISE_RATIO", "0.5", "MAX_NOISE_RATIO is invalid: max-noise-ratio must be >= 1"),
    ("LOCAL_MODELS", "/nonexistent/model", "LOCAL_MODELS is invalid: local-models: "
                                           "/nonexistent/model not found"),
])
def test_a_policy_the_client_app_refuses_stops_the_site_at_start(tmp_path, setting, value,
                                                                  message):
    """Found in review: these started the SuperNode (its health check SERVING) and were refused
    only at the first round, as "site configuration invalid" to the server; the entrypoint runs
    the ClientApp's own checks (site_policy, site_languages) on the node config it composes."""
    result, config = entrypoint(tmp_path, **{setting: value})
    assert result.returncode == 2 and config is None, result.stdout + result.stderr
    assert f"site-entrypoint: {message}" in result.stderr


@pytest.mark.parametrize("setting, value, message", [
    ("MAX_EPSILION", "2", "MAX_EPSILION is not a setting of the site (did you mean MAX_EPSILON?)"),
    ("PRIVACY_MODEL", "local", "PRIVACY_MODEL is not a setting of the site (did you mean "
                               "PRIVACY_MODELS?)"),
    ("EVALUATON", "off", "EVALUATON is not a setting of the site (did you mean EVALUATION?)"),
    ("LABEL_FILE", "/x", "LABEL_FILE is not a setting of the site (did you mean LABELS_FILE?)"),
    ("RETENTION_DAY", "7", "RETENTION_DAY is not a setting of the site (did you mean "
                           "RETENTION_DAYS?)"),
    ("max_epsilon", "2", "max_epsilon is not a setting of the site (did you mean MAX_EPSILON?)"),
    ("FEDINTENT_MAX_EPSILON", "1", "FEDINTENT_MAX_EPSILON is not a setting of the site (did you "
                                   "mean MAX_EPSILON?)"),
    ("FEDINTENT_RETENTION_DAYS", "7", "FEDINTENT_RETENTION_DAYS is not a setting of the site "
                                      "(did you mean RETENTION_DAYS?)"),
    ("SITE_MAX_EPSILON", "1", "SITE_MAX_EPSILON is not a setting of the site (did you mean "
                              "MAX_EPSILON?)"),
    ("HEALTH_PORT", "", "HEALTH_PORT is set but empty"),
    ("MAX_EPSILON", "", "MAX_EPSILON is set but empty; give it a value, or unset it"),
    ("PRIVACY_UNIT", " ", "PRIVACY_UNIT is set but empty"),
    ("LANGUAGES", "en\nzh", "LANGUAGES holds a line break or another control character"),
    ("INIT_STATE", "true", "INIT_STATE must be 1 (make a new site's state folder, then exit) or "
                           "unset, not 'true'"),
    ("MAX_EPSILON", "1_5", "MAX_EPSILON must be a number, not '1_5'"),
    ("MIN_TOLERATED_SITES", "\u0661", "MIN_TOLERATED_SITES must be a whole number, not"),
    ("SUPERNODE_PORT", "x", "SUPERNODE_PORT must be a whole number, not 'x'"),
    ("HEALTH_PORT", "65536", "HEALTH_PORT must be a whole number from 1 to 65535, not '65536'"),
])
def test_a_setting_that_would_not_take_as_meant_stops_the_site(tmp_path, setting, value,
                                                                message):
    """Found in review: a misspelled or empty setting left the site at a looser default without
    a word, INIT_STATE=true started the long-running site, a line break crashed Flower's parser
    with a traceback naming no variable, 1_5 was read as 15, and a bad port gave a traceback or
    a SuperNode that never exited."""
    result, config = entrypoint(tmp_path, initialised=False, **{setting: value})
    assert result.returncode == 2 and config is None, result.stdout + result.stderr
    assert f"site-entrypoint: {message}" in result.stderr and "Traceback" not in result.stderr


def test_a_state_folder_given_as_a_file_is_named_so(tmp_path):
    state = tmp_path / "site-secret"
    state.write_text("x")
    result, config = entrypoint(tmp_path, initialised=False, STATE_DIR=str(state))
    assert result.returncode == 2 and config is None
    assert f"STATE_DIR {state} is not a folder" in result.stderr


def test_other_softwares_variables_are_no_misspelled_settings(tmp_path):
    """Found in review: refusing every MAX_* or EVALUATION* name stopped a site beside a
    Kubernetes Service named evaluation (EVALUATION_PORT) or a shell with MAX_JOBS, and
    refusing every setting's name after a prefix, or taking it for a near miss, one with
    SUPPORTED_LANGUAGES or LOG_RETENTION_DAYS."""
    result, config = entrypoint(tmp_path, LANGUAGE="de_DE:en", MAX_JOBS="4", MAX_WORKERS="2",
                                EVALUATION_PORT="tcp://10.0.0.7:8080",
                                EVALUATION_SERVICE_HOST="10.0.0.7", LABEL_STUDIO_PORT="8080",
                                LANGUAGES_DIR="/x", RETENTION_POLICY="x", INIT_STATE="",
                                SUPPORTED_LANGUAGES="en,de", ENABLE_EVALUATION="1",
                                BACKUP_LABELS_FILE="/x", LOG_RETENTION_DAYS="14",
                                HF_LOCAL_MODELS="/models")
    assert result.returncode == 0 and "languages" not in config, result.stderr


def test_the_two_ports_must_differ(tmp_path):
    result, config = entrypoint(tmp_path, SUPERNODE_PORT="39411", HEALTH_PORT="39411")
    assert result.returncode == 2 and config is None
    assert "SUPERNODE_PORT and HEALTH_PORT must differ (both 39411)" in result.stderr


def test_a_port_in_use_is_named_before_flower_starts(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result, config = entrypoint(tmp_path, HEALTH_PORT=str(port))
    assert result.returncode == 2 and config is None
    assert f"site-entrypoint: HEALTH_PORT {port}: 127.0.0.1:{port} cannot be used" in result.stderr


@pytest.mark.parametrize("layout", ["empty", "the folder above"])
def test_a_data_folder_with_nothing_to_read_stops_the_site(tmp_path, layout):
    """Found in review: the site started, reported healthy, and declined every round."""
    folder = tmp_path / "empty" if layout == "empty" else tmp_path
    (tmp_path / "empty").mkdir()
    result, config = entrypoint(tmp_path, DATA_DIR=str(folder))
    assert result.returncode == 2 and config is None
    assert f"DATA_DIR is invalid: data-path: site data folder {folder} holds no data file" in \
        result.stderr


def test_trusted_keys_must_be_named_by_their_fingerprint_and_the_ca_be_a_ca(tmp_path):
    """Found in review: a key named otherwise (operator:, or YAML's yes read as True) started a
    site that refused every release, as Flower looks a release's key up by its fingerprint; the
    SuperLink's own certificate passed for the CA's."""
    creds = write_dev_credentials(tmp_path / "creds", [SITE], ["127.0.0.1"], [])
    key = creds.signing_public_key.read_text().strip()
    renamed = tmp_path / "renamed.yaml"
    renamed.write_text(f'operator: "{key}"\n')
    result, config = entrypoint(tmp_path, TRUSTED_ENTITIES=str(renamed))
    assert result.returncode == 2 and config is None
    assert "the key named 'operator' must be named by its fingerprint, SHA256:" in result.stderr
    result, config = entrypoint(tmp_path, CA_CERT=str(creds.server_cert))
    assert result.returncode == 2 and config is None
    assert f"CA_CERT {creds.server_cert} is a certificate but no CA's" in result.stderr


def test_the_purge_loop_ends_with_the_site(tmp_path):
    """Found in review: outside a container, the scheduled purge outlived a SuperNode that
    exited (asleep for a day, one more loop at each restart)."""
    env = stand_in_site(tmp_path, "exit 3\n", PURGE_INTERVAL_HOURS="1")
    initialise_state(env)
    site = subprocess.Popen([str(REPO / "deploy" / "site-entrypoint.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    assert site.wait(timeout=300) == 3
    try:
        for _ in range(600):  # the loop looks every 10 s; this allows 5 minutes
            os.killpg(site.pid, 0)
            time.sleep(0.5)
        pytest.fail("the purge loop still runs 5 minutes after its SuperNode exited")
    except ProcessLookupError:
        pass
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(site.pid, signal.SIGKILL)


def test_the_purge_loop_ends_with_a_site_that_ended_unreaped(tmp_path):
    """Found in review: the loop looked with `kill -0`, which holds for a site that ended but
    was not yet reaped by its parent (a zombie), and for another process that took its PID:
    the loop ran on. Here the site's parent, this test, reaps it only once the loop is gone."""
    env = stand_in_site(tmp_path, "exit 3\n", PURGE_INTERVAL_HOURS="1")
    initialise_state(env)
    site = subprocess.Popen([str(REPO / "deploy" / "site-entrypoint.sh")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        ended = os.waitid(os.P_PID, site.pid, os.WEXITED | os.WNOWAIT)  # a zombie now
        assert ended.si_status == 3  # the stand-in SuperNode's: the loop had been started
        deadline = time.monotonic() + 300  # the loop looks every 10 s
        while running_in_session(site.pid):
            if time.monotonic() > deadline:
                pytest.fail("the purge loop still runs 5 minutes after its site ended")
            time.sleep(0.5)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(site.pid, signal.SIGKILL)
        site.wait(timeout=60)


def running_in_session(session: int) -> list[int]:
    """The processes of ``session`` that have not ended (zombies left out), from /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            state, _, _, sid = entry.read_text().rpartition(")")[2].split()[:4]
            if int(sid) == session and state not in "ZX":
                found.append(int(entry.parent.name))
    return found


def test_a_budget_too_large_for_a_number_is_refused_and_inf_means_no_limit(tmp_path):
    """1e309 overflows to infinity, which for max-epsilon means no limit at all (rounds without
    DP accepted): only a budget written as inf may mean that (found in review)."""
    result, config = entrypoint(tmp_path, MAX_EPSILON="1e309")
    assert result.returncode == 2 and config is None
    assert "MAX_EPSILON '1e309' is too large for a number; write inf" in result.stderr
    result, config = entrypoint(tmp_path, MAX_EPSILON=" Inf")
    assert result.returncode == 0 and config["max-epsilon"] == math.inf, result.stderr
    result, config = entrypoint(tmp_path, MAX_EPSILON="-inf")  # refused, but not as too large
    assert result.returncode == 2 and config is None
    assert "too large" not in result.stderr and "MAX_EPSILON" in result.stderr, result.stderr


@pytest.mark.parametrize(("setting", "allowed"), [
    ("MAX_DELTA", "MAX_DELTA must be in [1e-10, 1)"),
    ("EVALUATION_EPSILON", "EVALUATION_EPSILON must be in [0.1, 100]"),
])
def test_a_number_too_large_for_a_setting_without_inf_names_its_range(tmp_path, setting,
                                                                      allowed):
    """Found in review: MAX_DELTA=1e400 was told to write inf, which the site then refused."""
    result, config = entrypoint(tmp_path, initialised=False, **{setting: "1e400"})
    assert result.returncode == 2 and config is None
    assert f"{setting} '1e400' is too large for a number; {allowed}" in result.stderr
    assert "inf" not in result.stderr.replace("'1e400'", "")


def test_a_state_folder_without_its_secret_is_refused_and_only_a_one_off_run_makes_one(
        tmp_path):
    """A missing or mistyped /state mount gives an empty state folder: starting on it would
    begin a new ledger, every unit's spent budget forgotten. INIT_STATE=1 makes one and exits,
    so it is never set on the running site (found in review: set on a restarting container,
    it would have made a new ledger after every lost mount)."""
    state = tmp_path / "state"
    result, config = entrypoint(tmp_path, initialised=False)
    assert result.returncode == 2 and config is None
    assert f"STATE_DIR {state} holds no site secret" in result.stderr
    assert not state.exists()
    result, config = entrypoint(tmp_path, initialised=False, INIT_STATE="1")
    assert result.returncode == 0 and config is None, result.stderr  # made, not started
    assert "made the state folder" in result.stdout
    assert (state / "site-secret").is_file() and stat.S_IMODE(state.stat().st_mode) == 0o700
    secret = (state / "site-secret").read_bytes()
    result, config = entrypoint(tmp_path, initialised=False)
    assert result.returncode == 0 and config is not None, result.stderr
    result, config = entrypoint(tmp_path, initialised=False, INIT_STATE="1")
    assert result.returncode == 0 and config is None and "nothing done" in result.stdout
    assert (state / "site-secret").read_bytes() == secret
    (state / "site-secret").unlink()  # lost beside what it signed: never made anew
    (state / "deletions.jsonl.head").write_text("x")
    result, config = entrypoint(tmp_path, initialised=False, INIT_STATE="1")
    assert result.returncode == 2 and config is None
    assert "site-secret is missing" in result.stderr and not (state / "site-secret").exists()


@pytest.mark.parametrize("setting", ["CA_CERT", "SITE_KEY", "TRUSTED_ENTITIES"])
def test_a_malformed_credential_is_named_before_flower_starts(tmp_path, setting):
    """Found in review: these gave a Flower traceback, and a bad CA a SuperNode that hung."""
    bad = tmp_path / "bad"
    bad.write_text("key: ssh-ed25519 AAAAnotakey\n" if setting == "TRUSTED_ENTITIES"
                   else "dummy\n")
    result, config = entrypoint(tmp_path, **{setting: str(bad)})
    assert result.returncode == 2 and config is None
    assert str(bad) in result.stderr and "Traceback" not in result.stderr


def test_arguments_to_the_entrypoint_are_refused(tmp_path):
    result, config = entrypoint(tmp_path, ("--insecure",))
    assert result.returncode == 2 and config is None
    assert "takes no arguments (got: --insecure)" in result.stderr


@pytest.mark.parametrize("retention", ["30", "unset, after a purge by hand of no limit"])
def test_the_site_container_purges_on_schedule_from_the_start(tmp_path, retention):
    """The entrypoint starts `fedintent purge` in the background before the SuperNode. Here a
    stand-in `fedintent-supernode` on PATH waits for the purge's deletion-log entry, then exits.
    Unset, RETENTION_DAYS is the ClientApp's default, 30, whatever a purge run by hand last
    recorded (found in review: after a one-off `--retention-days inf`, every scheduled purge
    kept every row)."""
    earlier = 0 if retention == "30" else 1
    env = stand_in_site(tmp_path, f'while [ "$(cat "$STATE_DIR/deletions.jsonl" 2>/dev/null '
                                  f'| wc -l)" -le {earlier} ]; do sleep 0.2; done\n',
                        **({"RETENTION_DAYS": "30"} if retention == "30" else {}))
    data, state = tmp_path / "data", tmp_path / "state"
    now = datetime.now(UTC)
    (data / "train.jsonl").write_text("".join(json.dumps(
        {"conversation_id": f"c{age}", "text": f"lost my card {age}", "label": "card_lost",
         "timestamp": (now - timedelta(days=age)).isoformat()}) + "\n" for age in (1, 40)))
    initialise_state(env)
    if earlier:
        subprocess.run([sys.executable, "-m", "fedintent.cli", "purge", str(data), "--state-dir",
                        str(state), "--retention-days", "inf"], env=env, capture_output=True,
                       timeout=300, check=True)
    with open(tmp_path / "site.log", "wb") as log:
        site = subprocess.Popen([str(REPO / "deploy" / "site-entrypoint.sh")], env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert site.wait(timeout=600) == 0, (tmp_path / "site.log").read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):  # the purge loop, asleep for 24 h
            os.killpg(site.pid, signal.SIGKILL)
    *_, entry = [json.loads(line) for line in
                 (state / "deletions.jsonl").read_text().splitlines()]
    assert entry["seq"] == earlier + 1
    assert entry["event"] == "purge" and entry["actor"].startswith("fedintent purge")
    assert entry["retention_days"] == 30 and entry["rows_not_used"] == {"expired": 1}


def test_the_public_address_serves_the_sites_only(deployment):
    creds = deployment["creds"]
    outsider = write_connection(deployment["tmp"] / "outsider-home", "fedintent",
                                f"127.0.0.1:{deployment['public']}", creds.ca_cert)
    with pytest.raises(DeploymentError, match="flwr run"):
        submit_run(write_app(deployment["tmp"] / "outsider-app"), outsider, {})
    with pytest.raises(DeploymentError, match="flwr supernode"):
        register_site_key(creds.site_public_keys[SITE], outsider)
    context = ssl.create_default_context(cafile=str(creds.ca_cert))
    request = urllib.request.Request(
        f"https://127.0.0.1:{deployment['public']}/v1/control/start-run", data=b"{}",
        method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, context=context, timeout=30)
    assert refused.value.code == 404


def test_the_site_runs_the_signed_release(deployment):
    tmp, creds = deployment["tmp"], deployment["creds"]
    out = tmp / "run"
    run = subprocess.run(
        [sys.executable, "-m", "fedintent.cli", "deploy-run",
         "--superlink", f"127.0.0.1:{deployment['control']}", "--ca-cert", str(creds.ca_cert),
         "--release", str(tmp / "release"), "--release-port", str(deployment["release_port"]),
         "--labels", str(tmp / "data" / "labels.txt"), "--min-sites", "1", "--rounds", "1",
         "--epsilon", "4", "--set", "local-epochs=1", "--out", str(out)],
        env=flower_env(tmp / "engineer-home"), capture_output=True, text=True,
        timeout=RUN_TIMEOUT_S, check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr + (tmp / "site.log").read_text()[-3000:]
    assert "round   1/1  sites trained 1/1" in run.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    # the site's EVALUATION=off reaches its ClientApp: it trains, and declines to evaluate
    assert [failure["reason"] for failure in metrics["rounds"][0]["evaluation_failures"]] == \
        [Reason.EVALUATION_REFUSED.value]
    assert "accuracy" not in metrics["rounds"][0]
    assert f"did not evaluate: {Reason.EVALUATION_REFUSED.value}" in run.stdout
    report = subprocess.run([sys.executable, "-m", "fedintent.cli", "privacy-report",
                             str(tmp / "state")], capture_output=True, text=True, timeout=60,
                            check=True)
    assert "evaluate replies (egress log):\n  1 declined\n" in report.stdout
    assert "exact metrics" not in report.stdout
    assert egress_lines(deployment) > 0
    assert REFUSED not in (tmp / "site.log").read_text()


def test_the_site_refuses_the_release_with_one_changed_line_in_fl_client(deployment):
    app = write_app(deployment["tmp"] / "tampered-app")
    (app / "fl_client").mkdir()
    for source in (REPO / "fl_client").glob("*.py"):
        (app / "fl_client" / source.name).write_text(source.read_text())
    client_app = app / "fl_client" / "client_app.py"
    lines = client_app.read_text().splitlines(keepends=True)
    lines[-1] = lines[-1].rstrip("\n") + "  # changed\n"
    client_app.write_text("".join(lines))
    signed = deployment["release"]
    tampered = dataclasses.replace(signed, fab=build_fab_from_disk(app))
    assert tampered.fab != signed.fab and len(tampered.fab) > len(signed.fab)
    before, offset = egress_lines(deployment), site_log_size(deployment)
    wait_for_refusals(deployment, offset, [submit_bundle(deployment, tampered)], REFUSED)
    assert egress_lines(deployment) == before


def test_the_site_refuses_code_in_a_bundle_the_operator_signed(deployment):
    """The operator's key signs it, so Flower alone would run its modules in place of the
    image's; the site's SuperNode runs only the ClientApp installed in its image."""
    app = write_app(deployment["tmp"] / "operator-code-app")
    (app / "fl_client").mkdir()
    (app / "fl_client" / "egress_guard.py").write_text("def check_reply(*args): pass\n")
    key = load_ssh_private_key(deployment["creds"].signing_key.read_bytes(), None)
    with_code = sign_release(build_fab_from_disk(app), key)
    before, offset = egress_lines(deployment), site_log_size(deployment)
    wait_for_refusals(deployment, offset, [submit_bundle(deployment, with_code)],
                      "carries files besides its pyproject.toml: fl_client/egress_guard.py")
    assert egress_lines(deployment) == before


def test_the_site_refuses_a_bundle_signed_by_another_key(deployment):
    other_key = load_ssh_private_key(signing_key_pair("someone else")[0], None)
    signed = deployment["release"]
    by_other = sign_release(signed.fab, other_key)
    # The other key's signature, claimed under the trusted key's id.
    claimed = dataclasses.replace(by_other, key_id=signed.key_id)
    before, offset = egress_lines(deployment), site_log_size(deployment)
    run_ids = [submit_bundle(deployment, release) for release in (by_other, claimed)]
    wait_for_refusals(deployment, offset, run_ids, REFUSED)
    assert egress_lines(deployment) == before


def test_the_site_refuses_an_unsigned_bundle(deployment):
    before, offset = egress_lines(deployment), site_log_size(deployment)
    run_id = submit_run(write_app(deployment["tmp"] / "unsigned-app"), deployment["operator"],
                        run_config(deployment))
    wait_for_refusals(deployment, offset, [run_id], UNSIGNED)
    assert egress_lines(deployment) == before
