"""A real deployment: a TLS SuperLink that admits only registered sites, and runs on it.

The SuperLink and each site are started by ``deploy/superlink.sh`` and
``deploy/site-entrypoint.sh``; this module holds the steps around them as small functions:
waiting for the SuperLink's health over TLS, a ``flwr`` connection that verifies the SuperLink
against the CA, registering a site's public key, submitting a run and following it to its
outcome (``flwr run`` returns at submission, so the outcome is read with ``flwr ls``), and
stopping whole process trees. docs/DEPLOYMENT.md shows the same steps as commands.

Sites run only app bundles signed by the operator's release key. Flower's SuperNode verifies a
bundle (``--trusted-entities``) against signatures that reach it only with a bundle the
SuperLink fetched from an app hub (a bundle uploaded with ``flwr run ./app`` reaches the sites
unsigned and is refused). So a release is a bundle plus its Ed25519 signature, made once with
the key (:func:`write_release`), and ``fedintent deploy-run`` answers the SuperLink's hub
request for it from 127.0.0.1 while it submits the run (:func:`serve_release`).
"""

import base64
import hashlib
import http.server
import io
import json
import shutil
import ssl
import subprocess
import tempfile
import threading
import time
import tomllib
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.primitives.asymmetric_ed25519 import create_message_to_sign

from fl_server.atomic_write import write_bytes_atomic
from fl_server.certificates import signing_key_id
from fl_server.local_simulation import _report_new_rounds, _stop_all, _write_app, flower_env
from fl_server.run_config import toml_value

HEALTH_TIMEOUT_S = 60
CLI_TIMEOUT_S = 120
RELEASE_FAB = "fedintent.fab"
RELEASE_SIGNATURE = "fedintent.fab.sig.json"


class DeploymentError(RuntimeError):
    """A deployment step failed; the message says which and why."""


@dataclass(frozen=True)
class Connection:
    """A named ``flwr`` connection to a SuperLink, stored in its own ``FLWR_HOME``."""

    flwr_home: Path
    name: str

    @property
    def env(self) -> dict[str, str]:
        return flower_env(self.flwr_home)


def start_process(
    command: list[str], env: dict[str, str], log: BinaryIO, processes: list[subprocess.Popen]
) -> subprocess.Popen:
    """Start ``command`` in its own session, logging to ``log``; record it in ``processes``."""
    process = subprocess.Popen(
        command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    processes.append(process)
    return process


def stop_process_trees(processes: list[subprocess.Popen]) -> None:
    """Stop the processes and everything they spawned (SuperExec, ServerApp, ClientApps)."""
    _stop_all(processes)


def wait_superlink_healthy(
    host: str, port: int, ca_cert: Path, superlink: subprocess.Popen | None = None,
    timeout_s: float = HEALTH_TIMEOUT_S,
) -> None:
    """Wait until ``https://HOST:PORT/health`` answers with a certificate ``ca_cert`` verifies."""
    context = ssl.create_default_context(cafile=str(ca_cert))
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
                raise DeploymentError(
                    f"the SuperLink's certificate does not verify against {ca_cert}: {reason}"
                ) from err
            time.sleep(0.3)
    raise DeploymentError(f"the SuperLink at {host}:{port} was not healthy within {timeout_s}s")


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


def register_site_key(public_key: Path, connection: Connection) -> int:
    """Register a site's OpenSSH public key with the SuperLink; return the site's node id."""
    reply = _flwr(["supernode", "register", str(public_key), connection.name], connection)
    return int(reply["node-id"])


def write_app(app_dir: Path) -> Path:
    """A Flower app folder naming the installed ServerApp and ClientApp (no code, no data)."""
    return _write_app(app_dir)


@dataclass(frozen=True)
class Release:
    """A signed app bundle: the exact bundle bytes and the operator's signature on them."""

    fab: bytes
    app_id: str
    version: str
    key_id: str
    signature: str
    signed_at: int

    @property
    def app_spec(self) -> str:
        """What ``flwr run`` names to have the SuperLink fetch this release."""
        return f"{self.app_id}=={self.version}"


def load_signing_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """The operator's Ed25519 release-signing key (OpenSSH format, as ``ssh-keygen`` writes)."""
    try:
        key = serialization.load_ssh_private_key(Path(path).read_bytes(), password=None)
    except OSError as err:
        raise DeploymentError(f"cannot read the signing key {path}: {err.strerror}") from err
    except ValueError as err:
        raise DeploymentError(f"{path} is not an unencrypted OpenSSH private key") from err
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise DeploymentError(f"{path} is not an Ed25519 key (Flower verifies only Ed25519)")
    return key


def sign_release(fab: bytes, key: ed25519.Ed25519PrivateKey) -> Release:
    """Sign the bundle as Flower's SuperNode verifies it: time (8 bytes) + SHA-256 of the FAB."""
    app_id, version = _fab_identity(fab)
    signed_at = int(time.time())
    signature = key.sign(create_message_to_sign(hashlib.sha256(fab).digest(), signed_at))
    return Release(fab, app_id, version, signing_key_id(key.public_key()),
                   _base64url(signature), signed_at)


def write_release(out_dir: Path, signing_key: Path) -> Release:
    """Build the fedintent app bundle, sign it, and write bundle and signature to ``out_dir``."""
    key = load_signing_key(signing_key)
    build_dir = Path(tempfile.mkdtemp(prefix="fedintent-release-"))
    try:
        fab = build_fab_from_disk(write_app(build_dir / "app"))
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    release = sign_release(fab, key)
    write_bytes_atomic(Path(out_dir) / RELEASE_FAB, release.fab)
    write_bytes_atomic(
        Path(out_dir) / RELEASE_SIGNATURE,
        json.dumps({"public_key_id": release.key_id, "signature": release.signature,
                    "signed_at": release.signed_at,
                    "fab_sha256": hashlib.sha256(release.fab).hexdigest()}, indent=2).encode(),
    )
    return release


def read_release(release_dir: Path) -> Release:
    """The bundle and signature that :func:`write_release` wrote (not verified: sites do that)."""
    fab_path, sig_path = Path(release_dir) / RELEASE_FAB, Path(release_dir) / RELEASE_SIGNATURE
    try:
        fab = fab_path.read_bytes()
        signature = json.loads(sig_path.read_text(encoding="utf-8"))
        app_id, version = _fab_identity(fab)
        return Release(fab, app_id, version, str(signature["public_key_id"]),
                       str(signature["signature"]), int(signature["signed_at"]))
    except OSError as err:
        raise DeploymentError(f"cannot read the release: {err.filename}: {err.strerror}") \
            from err
    except (ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise DeploymentError(f"{release_dir} does not hold a release written by `fedintent "
                              f"release` ({RELEASE_FAB}, {RELEASE_SIGNATURE})") from err


@contextmanager
def serve_release(release: Release, port: int) -> Iterator[None]:
    """Answer the SuperLink's app-hub requests for ``release`` on ``127.0.0.1:port``.

    The SuperLink asks ``POST /hub/fetch-fab`` for where to download the bundle and for its
    signatures, then downloads it; both go to the address in its ``FLWR_SUPERGRID_API_URL``.
    """
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _release_handler(release, port))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def submit_release_run(release: Release, connection: Connection, run_config: dict) -> int:
    """Submit a run of the signed release (fetched by the SuperLink); return its run id."""
    return _submit(release.app_spec, connection, run_config)


def submit_run(app_dir: Path, connection: Connection, run_config: dict) -> int:
    """Submit a run of the app folder as an unsigned bundle; return its run id."""
    return _submit(str(app_dir), connection, run_config)


def _submit(app: str, connection: Connection, run_config: dict) -> int:
    command = ["run", app, connection.name]
    for key, value in run_config.items():
        command += ["-c", f"{key}={toml_value(value)}"]
    return int(_flwr(command, connection)["run-id"])


def run_status(connection: Connection, run_id: int) -> str:
    """``status`` of the run as the SuperLink reports it, e.g. ``finished:completed``."""
    reply = _flwr(["ls", connection.name, "--run-id", str(run_id)], connection)
    return str(reply["runs"][0]["status"])


def stop_run(connection: Connection, run_id: int) -> None:
    """Ask the SuperLink to stop the run (the SuperNodes keep running)."""
    _flwr(["stop", str(run_id), connection.name], connection)


def follow_run(
    connection: Connection,
    run_id: int,
    metrics_path: Path,
    on_round: Callable[[dict], None],
    poll_seconds: float = 2.0,
) -> str:
    """Report each round as ``metrics.json`` records it, until the run finishes; return status.

    ``metrics_path`` is read where the ServerApp writes it: on the SuperLink's machine.
    """
    seen = 0
    while True:
        status = run_status(connection, run_id)
        seen = _report_new_rounds(metrics_path, seen, on_round)
        if status.startswith("finished"):
            return status
        time.sleep(poll_seconds)


def _fab_identity(fab: bytes) -> tuple[str, str]:
    """``(@publisher/name, version)`` from the bundle's ``pyproject.toml``."""
    with zipfile.ZipFile(io.BytesIO(fab)) as archive:
        config = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
    publisher = config["tool"]["flwr"]["app"]["publisher"]
    return f"@{publisher}/{config['project']['name']}", config["project"]["version"]


def _base64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _release_handler(release: Release, port: int) -> type[http.server.BaseHTTPRequestHandler]:
    fab_path = f"/fab/{hashlib.sha256(release.fab).hexdigest()}.fab"

    class ReleaseHandler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length", 0))
            try:
                request = json.loads(self.rfile.read(length))
            except ValueError:
                request = {}
            if self.path != "/hub/fetch-fab" or (request.get("app_id"),
                                                 request.get("app_version")) != (
                                                     release.app_id, release.version):
                self._reply(404, b'{"detail": "no such release"}')
                return
            verification = {"public_key_id": release.key_id, "signature": release.signature,
                            "signed_at": release.signed_at}
            self._reply(200, json.dumps({"fab_url": f"http://127.0.0.1:{port}{fab_path}",
                                         "verifications": [verification]}).encode())

        def do_GET(self) -> None:  # noqa: N802
            if self.path == fab_path:
                self._reply(200, release.fab, "application/octet-stream")
            else:
                self._reply(404, b'{"detail": "not found"}')

        def _reply(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

    return ReleaseHandler


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
