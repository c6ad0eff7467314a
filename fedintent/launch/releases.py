"""Signed releases: the app bundle the sites run, and the operator's signature on it.

Sites run only app bundles signed by the operator's release key. Flower's SuperNode verifies a
bundle (``--trusted-entities``) against signatures that reach it only with a bundle the
SuperLink fetched from an app hub (a bundle uploaded with ``flwr run ./app`` reaches the sites
unsigned and is refused). So a release is a bundle plus its Ed25519 signature, made once with
the key (:func:`write_release`), and ``fedintent deploy-run`` answers the SuperLink's hub
request for it from 127.0.0.1 while it submits the run (:func:`serve_release`). The release
folder carries the key's public half too, so that ``deploy-run`` checks the signature before it
names the key (:func:`read_release`); whether that key may start runs, each site decides.
"""

import base64
import hashlib
import http.server
import io
import json
import shutil
import tempfile
import threading
import time
import tomllib
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from flwr.cli.build import build_fab_from_disk
from flwr.supercore.primitives.asymmetric_ed25519 import (
    create_message_to_sign,
    decode_base64url,
    verify_signature,
)

from fedintent.launch.certificates import signing_key_id
from fedintent.launch.deployment import Connection, DeploymentError, submit_run
from fedintent.launch.flower_cli import write_app
from fl_protocol.durable_files import sync_folder, write_bytes_atomic
from fl_protocol.file_owner import os_error_line

RELEASE_FAB = "fedintent.fab"
RELEASE_SIGNATURE = "fedintent.fab.sig.json"


@dataclass(frozen=True)
class Release:
    """A signed app bundle: the exact bundle bytes, the operator's signature on them, and the
    signing key's public half (OpenSSH line) whose fingerprint ``key_id`` is."""

    fab: bytes
    app_id: str
    version: str
    key_id: str
    signature: str
    signed_at: int
    public_key: str

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
    public_key = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                               serialization.PublicFormat.OpenSSH)
    return Release(fab, app_id, version, signing_key_id(key.public_key()),
                   _base64url(signature), signed_at, public_key.decode("ascii"))


def write_release(out_dir: Path, signing_key: Path, replace: bool = False) -> Release:
    """Build the fedintent app bundle, sign it, and write bundle and signature to ``out_dir``.

    An existing release there is replaced only with ``replace`` (found in review: one signed
    with another key was replaced without a word, and sites pinned to that key then refuse it).
    """
    out_dir = Path(out_dir)
    existing = [str(path) for path in (out_dir / RELEASE_FAB, out_dir / RELEASE_SIGNATURE)
                if path.exists() or path.is_symlink()]
    if existing and not replace:
        raise DeploymentError(f"refusing to overwrite {', '.join(existing)}: give --force to "
                              "replace that release")
    key = load_signing_key(signing_key)
    build_dir = Path(tempfile.mkdtemp(prefix="fedintent-release-"))
    try:
        fab = build_fab_from_disk(write_app(build_dir / "app"))
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    release = sign_release(fab, key)
    signature = json.dumps({"public_key_id": release.key_id, "public_key": release.public_key,
                            "signature": release.signature, "signed_at": release.signed_at,
                            "fab_sha256": hashlib.sha256(release.fab).hexdigest()}, indent=2)
    try:
        _write_pair(out_dir, release.fab, signature.encode())
    except OSError as err:
        raise DeploymentError(f"cannot write the release to {out_dir}: {os_error_line(err)}") \
            from err
    return release


def _write_pair(out_dir: Path, fab: bytes, signature: bytes) -> None:
    """Put bundle and signature in ``out_dir`` so that no failure leaves a new bundle beside an
    old signature (found in review: a signature that could not be written left the new bundle
    with the old one). Both are written in a folder inside ``out_dir`` first, so a full disk
    fails with the old release untouched; then the old signature goes, and the new files are
    renamed into place, the signature last. A failure after that leaves a bundle with no
    signature, which ``read_release`` refuses."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir, prefix=".release."))
    try:
        write_bytes_atomic(staging / RELEASE_FAB, fab)
        write_bytes_atomic(staging / RELEASE_SIGNATURE, signature)
        (out_dir / RELEASE_SIGNATURE).unlink(missing_ok=True)
        sync_folder(out_dir)
        for name in (RELEASE_FAB, RELEASE_SIGNATURE):
            (staging / name).replace(out_dir / name)
        sync_folder(out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def read_release(release_dir: Path) -> Release:
    """The bundle and signature that :func:`write_release` wrote, checked: the signature file is
    this bundle's, and its signature verifies under the public key whose id it names (found in
    review: deploy-run printed "signed by" any key id the file claimed). Whether that key may
    start runs, each site decides from its own trusted keys."""
    fab_path, sig_path = Path(release_dir) / RELEASE_FAB, Path(release_dir) / RELEASE_SIGNATURE
    try:
        fab = fab_path.read_bytes()
        signature = json.loads(sig_path.read_text(encoding="utf-8"))
        app_id, version = _fab_identity(fab)
        release = Release(fab, app_id, version, str(signature["public_key_id"]),
                          str(signature["signature"]), int(signature["signed_at"]),
                          str(signature["public_key"]))
        signed_sha256 = str(signature["fab_sha256"])
    except OSError as err:
        raise DeploymentError(f"cannot read the release: {err.filename}: {err.strerror}") \
            from err
    except (ValueError, KeyError, TypeError, OverflowError, zipfile.BadZipFile) as err:
        raise DeploymentError(f"{release_dir} does not hold a release written by `fedintent "
                              f"release` ({RELEASE_FAB}, and {RELEASE_SIGNATURE} with "
                              f"public_key_id, public_key, signature, signed_at and fab_sha256): "
                              f"run `fedintent release` again") from err
    fab_sha256 = hashlib.sha256(fab).hexdigest()
    if signed_sha256 != fab_sha256:
        raise DeploymentError(f"{sig_path} is for a bundle with SHA-256 {signed_sha256}, but "
                              f"{fab_path} has SHA-256 {fab_sha256}: copy both files from the "
                              f"same `fedintent release`")
    _check_signature(release, sig_path)
    return release


def _check_signature(release: Release, sig_path: Path) -> None:
    """Raise DeploymentError unless ``release``'s signature verifies, as a site verifies it,
    under its public key, and that key's fingerprint is its ``key_id``."""
    try:
        public_key = serialization.load_ssh_public_key(release.public_key.encode("ascii"))
        signature = decode_base64url(release.signature)
        message = create_message_to_sign(hashlib.sha256(release.fab).digest(), release.signed_at)
    except (ValueError, OverflowError, UnsupportedAlgorithm) as err:  # an unknown key type too
        raise DeploymentError(f"{sig_path}: public_key, signature or signed_at is malformed") \
            from err
    if not isinstance(public_key, ed25519.Ed25519PublicKey):
        raise DeploymentError(f"{sig_path}: public_key is not an Ed25519 key")
    if signing_key_id(public_key) != release.key_id:
        raise DeploymentError(f"{sig_path}: public_key_id {release.key_id} is not the id of its "
                              f"public_key ({signing_key_id(public_key)})")
    if not verify_signature(public_key, message, signature):
        raise DeploymentError(f"{sig_path}: the signature does not verify under key "
                              f"{release.key_id}: sign the release again with `fedintent "
                              f"release`")


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
    return submit_run(release.app_spec, connection, run_config)


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
