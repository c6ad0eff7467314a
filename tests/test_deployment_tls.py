"""A real deployment on 127.0.0.1: a TLS SuperLink that admits only registered sites.

The SuperLink and the sites are started with the scripts the deployment guide gives
(``deploy/superlink.sh``, ``deploy/site-entrypoint.sh``, the site container's entrypoint),
each site with its own key, data, state folder and the operator's release key as its trusted
entity; the signed release is run with ``fedintent deploy-run`` on the SuperLink's control
port. An unregistered site and a plaintext client are refused. Every process
is started and stopped here.
"""

import json
import re
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from data_synth import write_sites
from fedintent.launch.certificates import site_names, write_dev_credentials
from fedintent.launch.deployment import (
    deployed_run_ids,
    register_site_key,
    start_loopback_superlink,
    unfinished_status,
    write_connection,
)
from fedintent.launch.flower_cli import flower_env
from fedintent.launch.processes import (
    descendants,
    free_port,
    is_alive,
    start_process,
    stop_process_trees,
)
from fedintent.launch.releases import write_release

REPO = Path(__file__).resolve().parent.parent
REGISTERED = site_names(3)
UNREGISTERED = "site-03"
REFUSAL_TIMEOUT_S = 60
RUN_TIMEOUT_S = 900


def site_env(tmp: Path, site: str, superlink: str, data_dir: Path, key: Path, ca: Path) -> dict:
    """What a site's IT team sets for the site container, here pointing at tmp folders; its
    state folder made as a new site makes it, by a one-off run with INIT_STATE=1."""
    env = flower_env(tmp / "site-homes" / site) | {
        "SUPERLINK": superlink, "CA_CERT": str(ca), "SITE_KEY": str(key),
        "TRUSTED_ENTITIES": str(ca.parent / "trusted-entities.yaml"),
        "DATA_DIR": str(data_dir), "STATE_DIR": str(tmp / "state" / site),
        "MAX_EPSILON": "8.0", "SUPERNODE_PORT": str(free_port()),
        # The synthetic conversations are dated early 2026; the scheduled purge has its own test.
        "RETENTION_DAYS": "inf", "PURGE_INTERVAL_HOURS": "0",
    }
    subprocess.run([str(REPO / "deploy" / "site-entrypoint.sh")], env=env | {"INIT_STATE": "1"},
                   check=True, capture_output=True, timeout=120)
    return env


def run_to_exit(command: list[str], env: dict, log_path: Path) -> int:
    """Run a SuperNode expected to give up; return its exit code, leaving nothing behind.

    Output goes to a file, not a pipe: the SuperExec a SuperNode starts outlives it for a
    while and would hold a pipe open.
    """
    processes: list[subprocess.Popen] = []
    with open(log_path, "wb") as log:
        try:
            return start_process(command, env, log, processes).wait(timeout=REFUSAL_TIMEOUT_S)
        finally:
            stop_process_trees(processes)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls-deployment")
    creds = write_dev_credentials(tmp / "creds", [*REGISTERED, UNREGISTERED],
                                  ["127.0.0.1"], ["localhost"])
    write_sites(tmp / "data", n_sites=3, seed=7, size=100)
    port, control, release_port = free_port(), free_port(), free_port()
    superlink = f"127.0.0.1:{port}"
    processes: list[subprocess.Popen] = []
    started: set[int] = set()
    with open(tmp / "flower.log", "ab") as log:
        try:
            _, operator = start_loopback_superlink(
                REPO / "deploy" / "superlink.sh", tmp, creds.ca_cert,
                (port, control, release_port), log, processes)
            for site in REGISTERED:
                register_site_key(creds.site_public_keys[site], operator)
                env = site_env(tmp, site, superlink, tmp / "data" / site, creds.site_keys[site],
                               creds.ca_cert)
                start_process([str(REPO / "deploy" / "site-entrypoint.sh")], env, log, processes)
            write_release(tmp / "release", creds.signing_key)
            yield {"tmp": tmp, "creds": creds, "port": port, "superlink": superlink,
                   "control": f"127.0.0.1:{control}", "release_port": release_port,
                   "log": tmp / "flower.log"}
        finally:
            started = {p.pid for p in processes} | descendants({p.pid for p in processes})
            stop_process_trees(processes)
    assert not [pid for pid in started if is_alive(pid)], "processes left behind"


def test_plaintext_and_untrusted_clients_are_refused(deployment):
    port = deployment["port"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
    with pytest.raises(urllib.error.URLError) as untrusted:
        urllib.request.urlopen(f"https://127.0.0.1:{port}/health", timeout=5,
                               context=ssl.create_default_context())
    assert isinstance(untrusted.value.reason, ssl.SSLCertVerificationError)
    tmp = deployment["tmp"]
    log = tmp / "plaintext-supernode.log"
    code = run_to_exit(
        ["flower-supernode", "--insecure", "--max-wait-time", "5",
         "--superlink", deployment["superlink"], "--port", str(free_port()),
         "--node-config", f"data-path='{tmp / 'data' / 'site-00'}' retention-days=inf"],
        flower_env(tmp / "plaintext-home"), log,
    )
    assert code != 0
    assert "Exit Code: 305" in log.read_text()


def test_an_unregistered_site_is_refused(deployment):
    tmp, creds = deployment["tmp"], deployment["creds"]
    env = site_env(tmp, UNREGISTERED, deployment["superlink"], tmp / "data" / "site-00",
                   creds.site_keys[UNREGISTERED], creds.ca_cert)
    log = tmp / "unregistered-site.log"
    code = run_to_exit([str(REPO / "deploy" / "site-entrypoint.sh")], env, log)
    output = log.read_text()
    assert code != 0
    assert "Exit Code: 305" in output and "Failed to activate SuperNode" in output
    assert not (tmp / "state" / UNREGISTERED / "egress.jsonl").exists()


def test_a_dp_run_over_tls_stops_resumes_on_the_same_sites_and_completes(deployment):
    """A DP training run over TLS, stopped after round 1 and resumed: ``deploy-run --resume``
    goes on after the checkpoint on the deployed sites, and each site charges the resumed round
    to the same run in its own ledger: its epsilon for the run grows from round 1's, within the
    run's target, where a new run would have started from nothing. The run completes with
    every output, and each site's ledger verifies. The SuperLink says it does not know a run
    id, which a resume reads as a run that ended. (One run for both: a deployed run costs
    every site a Flower process per message.)"""
    tmp, creds = deployment["tmp"], deployment["creds"]
    out = tmp / "resumed-run"
    env = flower_env(tmp / "engineer-home")
    common = ["--superlink", deployment["control"], "--ca-cert", str(creds.ca_cert),
              "--release", str(tmp / "release"), "--release-port", str(deployment["release_port"])]

    def deploy_run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fedintent.cli", "deploy-run", *common, *args],
                              env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              check=False)

    stopped = deploy_run("--labels", str(tmp / "data" / "labels.txt"), "--min-sites", "3",
                         "--rounds", "2", "--epsilon", "2", "--set", "local-epochs=1",
                         "--set", "stop-after-round=1", "--out", str(out))
    assert stopped.returncode == 1, stopped.stdout + stopped.stderr
    assert "round   1/2  sites trained 3/3" in stopped.stdout
    assert "stopped after round 1 as asked (stop-after-round); continue with: fedintent " \
        f"deploy-run --resume {out}" in stopped.stderr
    resumed = deploy_run("--resume", str(out))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr
                                     + deployment["log"].read_text()[-3000:])
    assert re.search(r"^resuming run resumed-run-\w+ after round 1 of 2: ", resumed.stdout, re.M)
    assert "round   2/2  sites trained 3/3" in resumed.stdout
    assert "round   1/2" not in resumed.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["status"] == "completed" and len(metrics["resumes"]) == 1
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    assert [r["sites_trained"] for r in metrics["rounds"]] == [3, 3]
    first, second = (r["sites"] for r in metrics["rounds"])
    assert sorted(first) == sorted(second) == sorted(metrics["final"]["sites"])
    assert len(first) == 3
    for site, entry in second.items():
        assert 0 < first[site]["epsilon"] < entry["epsilon"] <= 2.0
    assert all(0 < site["epsilon"] <= 2.0 for site in metrics["final"]["sites"].values())
    assert (out / "model" / "model.safetensors").stat().st_size > 0
    assert json.loads((out / "model" / "config.json").read_text())
    for site in REGISTERED:
        state = tmp / "state" / site
        report = subprocess.run(
            [sys.executable, "-m", "fedintent.cli", "privacy-report", str(state)],
            capture_output=True, text=True, timeout=60, check=True,
        )
        assert "ledger verified" in report.stdout
        # a deployed site evaluates under DP unless its node config says otherwise
        assert "evaluate replies (egress log):\n  2 with DP estimates" in report.stdout
        assert "exact metrics" not in report.stdout and "left no reply" not in report.stdout
    record = json.loads((out / "deployment.json").read_text())
    runs = deployed_run_ids(record)
    assert len(runs) == 2 and runs[0] != runs[1]
    operator = write_connection(tmp / "resume-operator-home", "fedintent", deployment["control"],
                                creds.ca_cert)
    assert unfinished_status(operator, runs[1]) is None
    assert unfinished_status(operator, max(runs) + 1000) is None
