"""A real deployment: a TLS SuperLink that admits only registered sites, and runs on it.

The SuperLink and each site are started by ``deploy/superlink.sh`` and
``deploy/site-entrypoint.sh``; this module holds the steps around them as small functions:
waiting for the SuperLink's health over TLS, a ``flwr`` connection that verifies the SuperLink
against the CA, registering a site's public key, submitting a run and following it to its
outcome (``flwr run`` returns at submission, so the outcome is read with ``flwr ls``).
docs/DEPLOYMENT.md shows the same steps as commands; ``releases`` holds the signed bundles the
sites run.
"""

import fcntl
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from fedintent.launch.flower_cli import config_overrides, flower_env, toml_value
from fedintent.launch.processes import start_process
from fedintent.launch.run_outcome import report_new_rounds
from fl_protocol.durable_files import write_bytes_atomic, write_json_atomic
from fl_server.run_record import DEPLOYMENT_FILE

HEALTH_TIMEOUT_S = 60
CERTIFICATE_CHECK_TIMEOUT_S = 10
CLI_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


RUN_NOT_FOUND = re.compile(r"\bRun (ID|\d+) not found")
"""How ``flwr ls --run-id`` says the SuperLink does not know a run (Flower 1.41: "Run ID not
found.")."""


@dataclass(frozen=True)
class Connection:
    """A named ``flwr`` connection to a SuperLink, stored in its own ``FLWR_HOME``."""

    flwr_home: Path
    name: str

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says which and why."""


def wait_superlink_healthy(
    host: str, port: int, ca_cert: Path, superlink: subprocess.Popen | None = None,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> None:
    """Wait until ``https://HOST:PORT/health`` answers with a certificate ``ca_cert`` verifies."""
    context = _superlink_tls_context(ca_cert)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if superlink is not None and superlink.poll() is not None:
            raise DeploymentError(f"the SuperLink exited at start-up (code {superlink.returncode})")
        try:
            with urllib.request.urlopen(
                f"https://{host}:{port}/health", context=context, timeout=2
            ):
                return
        except OSError as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise _not_verified(f"{host}:{port}", str(ca_cert), reason) from err
            time.sleep(0.3)
    raise DeploymentError(f"the SuperLink at {host}:{port} was not healthy within {timeout_s}s")


def check_superlink_certificate(address: str, ca_cert: Path,
                                timeout_s: float = CERTIFICATE_CHECK_TIMEOUT_S) -> None:
    """``DeploymentError`` naming ``ca_cert`` and the reason if the SuperLink at ``address``
    (HOST:PORT) presents a certificate that ``ca_cert`` does not verify (expired, another CA's,
    for another name). Flower reports those as an unreachable SuperLink ("check your network",
    found in review); a SuperLink that cannot be reached at all is left to Flower to report."""
    context = _superlink_tls_context(ca_cert)
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdecimal() or not 0 < int(port) < 65536:
        return  # not HOST:PORT: Flower's own message names the address
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as raw, \
                context.wrap_socket(raw, server_hostname=host):
            return
    except ssl.SSLCertVerificationError as err:
        raise _not_verified(address, f"--ca-cert {ca_cert}", err) from err
    except OSError:
        return  # unreachable, not TLS, too slow: Flower's message says so as before


def _superlink_tls_context(ca_cert: Path) -> ssl.SSLContext:
    """A client context that verifies the SuperLink as Flower's CLI does (against ``ca_cert``
    alone, and by name); ``DeploymentError`` naming the file when it holds no certificate, which
    had escaped as a traceback."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cafile=str(ca_cert))
    except ssl.SSLError as err:
        raise DeploymentError(f"{ca_cert} is not a PEM CA certificate ({err.reason or err})"
                              ) from err
    except OSError as err:
        raise DeploymentError(f"cannot read {ca_cert}: {err.strerror}") from err
    return context


def _not_verified(address: str, ca: str, err: ssl.SSLCertVerificationError) -> DeploymentError:
    """The one message for a SuperLink certificate that ``ca`` does not verify, with OpenSSL's
    reason ("certificate has expired", "unable to get local issuer certificate", ...)."""
    return DeploymentError(f"the SuperLink at {address} presents a certificate that {ca} does "
                           f"not verify: {err.verify_message}")


def write_connection(flwr_home: Path, name: str, address: str, ca_cert: Path) -> Connection:
    """Write ``FLWR_HOME/config.toml`` with one TLS connection, the default, and return it."""
    write_bytes_atomic(
        flwr_home / "config.toml",
        (
            f'[superlink]\ndefault = "{name}"\n\n'
            f"[superlink.{name}]\naddress = {toml_value(address)}\n"
            f"root-certificates = {toml_value(ca_cert.resolve())}\n"
        ).encode(),
    )
    return Connection(flwr_home, name)


def start_loopback_superlink(
    script: Path, home: Path, ca_cert: Path, ports: tuple[int, int, int], log: BinaryIO,
    processes: list[subprocess.Popen],
) -> tuple[subprocess.Popen, Connection]:
    """A whole deployment's SuperLink on this machine, for tests and benchmarks: start
    ``deploy/superlink.sh`` (``script``) on 127.0.0.1 with the certificates beside ``ca_cert``
    and its (fleet, control, release) ``ports``, wait until both APIs answer over TLS, and
    return it with the operator's connection to its control API (``home/operator-home``)."""
    port, control, release_port = ports
    env = flower_env(home / "superlink-home") | {
        "CERT_DIR": str(ca_cert.parent), "SUPERLINK_HOST": "127.0.0.1",
        "SUPERLINK_PORT": str(port), "CONTROL_PORT": str(control),
        "RELEASE_PORT": str(release_port)}
    superlink = start_process([str(script)], env, log, processes)
    wait_superlink_healthy("127.0.0.1", control, ca_cert, superlink)
    wait_superlink_healthy("127.0.0.1", port, ca_cert, superlink)
    operator = write_connection(home / "operator-home", "fedintent", f"127.0.0.1:{control}",
                                ca_cert)
    return superlink, operator


def register_site_key(public_key: Path, connection: Connection) -> int:
    """Register a site's OpenSSH public key with the SuperLink; return the site's node id."""
    reply = _flwr(["supernode", "register", str(public_key), connection.name], connection)
    return int(reply["node-id"])


def submit_run(app: Path | str, connection: Connection, run_config: dict) -> int:
    """Submit a run; return its run id. ``app`` is an app folder (uploaded as an unsigned
    bundle, which signature-checking sites refuse) or an app spec ``@publisher/name==version``
    that the SuperLink fetches from its app hub."""
    command = ["run", str(app), connection.name, *config_overrides(run_config)]
    return int(_flwr(command, connection)["run-id"])


def run_status(connection: Connection, run_id: int) -> str:
    """``status`` of the run as the SuperLink reports it, e.g. ``finished:completed``."""
    reply = _flwr(["ls", connection.name, "--run-id", str(run_id)], connection)
    return str(reply["runs"][0]["status"])


def stop_run(connection: Connection, run_id: int) -> None:
    """Ask the SuperLink to stop the run (the SuperNodes keep running)."""
    _flwr(["stop", str(run_id), connection.name], connection)


def wait_run_finished(
    connection: Connection, run_id: int, timeout_s: float = STOP_TIMEOUT_S,
    poll_seconds: float = 1.0,
) -> bool:
    """Whether the SuperLink lists the run finished within ``timeout_s``. After ``stop_run`` it
    does at once, while the run's ServerApp goes on until its next heartbeat tells it (found in
    review): ``fl_server.run_record.run_folder_busy`` says when it has let go of its folder."""
    deadline = time.monotonic() + timeout_s
    while not run_status(connection, run_id).startswith("finished"):
        if time.monotonic() > deadline:
            return False
        time.sleep(poll_seconds)
    return True


def follow_run(
    connection: Connection,
    run_id: int,
    metrics_path: Path,
    on_round: Callable[[dict], None],
    poll_seconds: float = 2.0,
    seen: int = 0,
    resumes: int = 0,
) -> str:
    """Report each round after round ``seen`` as ``metrics.json`` records it, until the run
    finishes; return status. A resume passes the rounds done before it and its number among the
    record's ``resumes`` (``run_outcome.report_new_rounds``).

    ``metrics_path`` is read where the ServerApp writes it: on the SuperLink's machine.
    """
    while True:
        status = run_status(connection, run_id)
        seen = report_new_rounds(metrics_path, seen, on_round, resumes)
        if status.startswith("finished"):
            return status
        time.sleep(poll_seconds)


def _flwr(args: list[str], connection: Connection) -> dict:
    """Run a ``flwr`` command with JSON output in the connection's ``FLWR_HOME``."""
    result = subprocess.run(
        ["flwr", *args, "--format", "json"], env=connection.env, cwd=connection.flwr_home,
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )
    try:
        reply = json.loads(result.stdout)
    except ValueError:
        reply = {}
    if result.returncode != 0 or not reply.get("success"):
        detail = reply.get("error-message") or (result.stdout + result.stderr).strip()[-500:]
        raise DeploymentError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''} failed: "
                              f"{detail}")
    return reply


def record_deployed_run(out_dir: Path, run_id: int, superlink: str, app: str,
                        release_key: str, fab_sha256: str) -> None:
    """Mark ``out_dir`` as a deployed run's (``fl_server.run_record.DEPLOYMENT_FILE``): where it
    ran, under which Flower run id, with which signed release (its app spec, signing key and
    bundle digest). A resume of the run adds its own submission to the record's ``resumes``."""
    path = out_dir / DEPLOYMENT_FILE
    submission = {"superlink": superlink, "flower_run_id": run_id, "app": app,
                  "release_key": release_key, "fab_sha256": fab_sha256}
    with deployment_record_lock(out_dir):
        if not path.exists():
            write_json_atomic(path, submission)
            return
        record = read_deployment_record(out_dir)
        write_json_atomic(path, record | {"resumes": [*record.get("resumes", []), submission]})


@contextmanager
def deployment_record_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` locked while its deployment record is read and written back, so that
    two resumes recording at once each keep the other's submission (found in review: the
    one written second dropped the first, whose run a later resume then did not wait for).
    The folder itself is locked: the record is replaced on every write, so a lock on it would
    not hold across writers."""
    folder = os.open(out_dir, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)


def read_deployment_record(out_dir: Path) -> dict:
    """``out_dir``'s deployment record, checked to hold a submission per start and resume of
    the run; ``DeploymentError`` naming the file and what is wrong with it."""
    path = out_dir / DEPLOYMENT_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DeploymentError(f"{out_dir} holds no {DEPLOYMENT_FILE}, so it is not the folder of "
                              "a run of fedintent deploy-run (a run of fedintent train resumes "
                              "with fedintent train --resume)") from None
    except (OSError, ValueError) as err:
        raise DeploymentError(f"{path} cannot be read as JSON ({err})") from None
    submissions = [record, *record.get("resumes", [])] if isinstance(record, dict) else []
    if not isinstance(record, dict) or not isinstance(record.get("resumes", []), list) or not all(
            isinstance(entry, dict) and isinstance(entry.get("flower_run_id"), int)
            and isinstance(entry.get("app"), str) for entry in submissions):
        raise DeploymentError(f"{path} is not a deployment record: it must hold the "
                              "flower_run_id and app of the run and of each of its resumes")
    return record


def deployed_run_ids(record: dict) -> list[int]:
    """The Flower run ids a deployment record holds: the run's first submission, then each
    resume's."""
    return [entry["flower_run_id"] for entry in [record, *record.get("resumes", [])]]


def unfinished_status(connection: Connection, run_id: int) -> str | None:
    """The SuperLink's status of Flower run ``run_id`` while it has not finished; ``None`` once
    it has, or when the SuperLink does not know it (restarted without a database, where every
    run it held has ended)."""
    try:
        status = run_status(connection, run_id)
    except DeploymentError as err:
        if RUN_NOT_FOUND.search(str(err)):
            return None
        raise
    return None if status.startswith("finished") else status
