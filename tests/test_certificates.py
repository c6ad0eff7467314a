"""Development credentials: what Flower needs, private keys private, nothing overwritten."""

import contextlib
import errno
import hashlib
import io
import ipaddress
import json
import stat
import zipfile
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)
from flwr.supercore.fab import Fab
from flwr.supernode.start_client_internal import _verify_fab

from fedintent.cli import main
from fedintent.launch import releases
from fedintent.launch.certificates import (
    CredentialsExistError,
    signing_key_id,
    signing_key_pair,
    site_names,
    write_dev_credentials,
)
from fedintent.launch.releases import RELEASE_FAB, RELEASE_SIGNATURE, read_release

SITES = site_names(2)


@pytest.fixture
def credentials(tmp_path):
    return write_dev_credentials(tmp_path / "creds", SITES, ["127.0.0.1"], ["localhost"])


def test_server_certificate_is_signed_by_the_ca_for_the_given_names(credentials):
    ca = x509.load_pem_x509_certificate(credentials.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(credentials.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    key = load_pem_private_key(credentials.server_key.read_bytes(), None)
    assert key.public_key() == server.public_key()


def test_site_keys_are_openssh_ec_pairs(credentials):
    for site in SITES:
        private = load_ssh_private_key(credentials.site_keys[site].read_bytes(), None)
        public = load_ssh_public_key(credentials.site_public_keys[site].read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.public_key() == public
        assert credentials.site_public_keys[site].read_text().split()[2] == site


def test_private_keys_are_owner_only_and_no_temporary_files_remain(credentials):
    private = [credentials.ca_key, credentials.server_key, credentials.signing_key,
               *credentials.site_keys.values()]
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in credentials.ca_cert.parent.iterdir() if p.name.startswith(".")]


def test_existing_credentials_are_never_overwritten(credentials):
    before = {p: p.read_bytes() for p in credentials.ca_cert.parent.iterdir()}
    with pytest.raises(CredentialsExistError):
        write_dev_credentials(credentials.ca_cert.parent, SITES, ["127.0.0.1"], [])
    assert {p: p.read_bytes() for p in credentials.ca_cert.parent.iterdir()} == before


def test_cli_writes_credentials_and_refuses_to_overwrite_them(tmp_path, capsys):
    out = tmp_path / "creds"
    assert main(["certs", "--out", str(out), "--sites", "3", "--host", "10.0.0.5",
                 "--dns", "superlink.example.org"]) == 0
    server = x509.load_pem_x509_certificate((out / "superlink.crt").read_bytes())
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["superlink.example.org"]
    assert sorted(p.name for p in out.glob("site-*.pub")) == [f"{s}.pub" for s in site_names(3)]
    listed = {line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed == {p.name for p in out.iterdir()}  # review: release-signing.pub was not
    assert main(["certs", "--out", str(out), "--sites", "3"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err


def test_cli_rejects_a_name_given_as_host(tmp_path):
    assert main(["certs", "--out", str(tmp_path / "c"), "--sites", "1", "--host", "example"]) == 2
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("command,message", [
    (["certs", "--sites", "1", "--dns", "ünï.example"], "--dns takes a DNS name"),
    (["certs", "--sites", "1", "--dns", ""], "--dns takes a DNS name"),
    (["certs", "--sites", "1", "--out", "{file}"], "is a file, not a folder"),
    (["certs", "--sites", "1", "--out", "{file}/creds"], "is a file, not a folder"),
    (["release", "--signing-key", "{file}", "--out", "{file}"], "is a file, not a folder"),
], ids=["non-ASCII name", "empty name", "out is a file", "out under a file", "release out"])
def test_credential_commands_name_a_bad_option_without_a_traceback(tmp_path, capsys, command,
                                                                   message):
    """Found in review: these raised from deep inside, after the folder was already made."""
    file = tmp_path / "a-file"
    file.write_text("x")
    command = [part.format(file=file) for part in command]
    if "--out" not in command:
        command += ["--out", str(tmp_path / "c")]
    assert main(command) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "c").exists() and file.read_text() == "x"


def test_release_signing_key_is_ed25519_and_pinned_in_trusted_entities(credentials):
    private = load_ssh_private_key(credentials.signing_key.read_bytes(), None)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    assert stat.S_IMODE(credentials.signing_key.stat().st_mode) == 0o600
    trusted = yaml.safe_load(credentials.trusted_entities.read_text())
    assert trusted == {signing_key_id(private.public_key()):
                       credentials.signing_public_key.read_text().strip()}
    assert load_ssh_public_key(next(iter(trusted.values())).encode()) == private.public_key()


def test_release_is_signed_as_flower_verifies_it(credentials, tmp_path, capsys):
    assert main(["release", "--signing-key", str(credentials.signing_key),
                 "--out", str(tmp_path / "release")]) == 0
    release = read_release(tmp_path / "release")
    verifications = {release.key_id: json.dumps(
        {"signature": release.signature, "signed_at": release.signed_at})}
    fab = Fab(hashlib.sha256(release.fab).hexdigest(), release.fab, verifications)
    trusted = yaml.safe_load(credentials.trusted_entities.read_text())
    assert _verify_fab(fab, trusted)
    assert not _verify_fab(Fab(fab.hash_str, release.fab + b" ", verifications), trusted)
    assert release.app_spec in capsys.readouterr().out


def test_release_names_a_bad_signing_key(credentials, tmp_path, capsys):
    assert main(["release", "--signing-key", str(credentials.site_keys[SITES[0]]),
                 "--out", str(tmp_path / "release")]) == 2
    assert f"{credentials.site_keys[SITES[0]]} is not an Ed25519 key" in capsys.readouterr().err
    assert main(["release", "--signing-key", str(tmp_path / "nope.key"),
                 "--out", str(tmp_path / "release")]) == 2
    assert f"cannot read the signing key {tmp_path / 'nope.key'}" in capsys.readouterr().err
    assert not (tmp_path / "release").exists()


def other_signing_key(tmp_path) -> Path:
    """An Ed25519 release-signing key other than the credentials' (ssh-keygen's format)."""
    path = tmp_path / "other.key"
    path.write_bytes(signing_key_pair("other")[0])
    return path


def release_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_release_refuses_to_overwrite_a_release_unless_forced(credentials, tmp_path, capsys):
    """Found in review: a release signed with the operator's key was replaced, without a word,
    by one signed with another key, which the sites pinned to the first then refuse."""
    out = tmp_path / "release"
    assert main(["release", "--signing-key", str(credentials.signing_key), "--out", str(out)]) == 0
    signed = release_files(out)
    other = other_signing_key(tmp_path)
    assert main(["release", "--signing-key", str(other), "--out", str(out)]) == 2
    assert (f"refusing to overwrite {out / RELEASE_FAB}, {out / RELEASE_SIGNATURE}: give --force "
            "to replace that release") in capsys.readouterr().err
    (out / RELEASE_FAB).unlink()  # half a release is not overwritten either
    assert main(["release", "--signing-key", str(other), "--out", str(out)]) == 2
    assert f"refusing to overwrite {out / RELEASE_SIGNATURE}: give --force" in \
        capsys.readouterr().err
    assert release_files(out) == {RELEASE_SIGNATURE: signed[RELEASE_SIGNATURE]}
    assert main(["release", "--signing-key", str(other), "--out", str(out), "--force"]) == 0
    assert read_release(out).key_id == signing_key_id(
        load_ssh_private_key(other.read_bytes(), None).public_key())
    assert sorted(release_files(out)) == [RELEASE_FAB, RELEASE_SIGNATURE]


def test_release_help_says_it_overwrites_nothing_without_force(capsys):
    with pytest.raises(SystemExit):
        main(["release", "--help"])
    assert "An existing release in --out is never overwritten unless --force is given." in \
        " ".join(capsys.readouterr().out.split())


def no_space_for_the_signature(monkeypatch, stage: str) -> None:
    """Writing (``stage`` "write") or renaming into place ("rename") the signature file fails,
    as on a full disk."""
    def full(path: Path, *args, **kwargs):
        if Path(path).name == RELEASE_SIGNATURE:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return allowed(path, *args, **kwargs)

    if stage == "write":
        allowed = releases.write_bytes_atomic
        monkeypatch.setattr(releases, "write_bytes_atomic", full)
    else:
        allowed = Path.replace
        monkeypatch.setattr(Path, "replace", lambda self, target: full(self, target))


def another_bundle(monkeypatch) -> None:
    """The next release builds another bundle, as a new fedintent version would (the same code
    builds the same bytes)."""
    build = releases.build_fab_from_disk

    def changed(app: Path) -> bytes:
        fab = io.BytesIO(build(app))
        with zipfile.ZipFile(fab, "a") as archive:
            archive.writestr("CHANGES", "a new version\n")
        return fab.getvalue()

    monkeypatch.setattr(releases, "build_fab_from_disk", changed)


@pytest.mark.parametrize("stage", ["write", "rename"])
def test_a_release_that_fails_part_way_leaves_no_new_bundle_beside_the_old_signature(
        credentials, tmp_path, capsys, monkeypatch, stage):
    """Found in review: the bundle was replaced, then the signature could not be, leaving the
    new bundle with the old signature, and a traceback."""
    out = tmp_path / "release"
    assert main(["release", "--signing-key", str(credentials.signing_key), "--out", str(out)]) == 0
    signed = release_files(out)
    another_bundle(monkeypatch)
    no_space_for_the_signature(monkeypatch, stage)
    assert main(["release", "--signing-key", str(other_signing_key(tmp_path)), "--out", str(out),
                 "--force"]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write the release to {out}: " in err
    assert "No space left on device" in err and "Traceback" not in err
    if stage == "write":  # before anything in --out changed
        assert release_files(out) == signed
    else:  # the old signature went first: the new bundle alone, which deploy-run refuses
        assert sorted(release_files(out)) == [RELEASE_FAB]
        assert (out / RELEASE_FAB).read_bytes() != signed[RELEASE_FAB]


def tls_server(cert: Path, key: Path):
    """A TLS listener on 127.0.0.1 that completes handshakes with ``cert``: (port, stop)."""
    import socket
    import ssl
    import threading

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopped = threading.Event()

    def serve() -> None:
        while not stopped.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        stopped.set()
        thread.join()
        listener.close()

    return listener.getsockname()[1], stop


def expired_server_certificate(credentials, folder: Path) -> tuple[Path, Path]:
    """The SuperLink's key with a certificate from the same CA that expired in 2021."""
    import datetime

    from cryptography.hazmat.primitives import hashes, serialization

    ca_key = load_pem_private_key(credentials.ca_key.read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate(credentials.ca_cert.read_bytes())
    key = load_pem_private_key(credentials.server_key.read_bytes(), None)
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "superlink")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    path = folder / "expired.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, credentials.server_key


@pytest.mark.parametrize("case,reason", [("foreign CA", "unable to get local issuer certificate"),
                                         ("expired", "certificate has expired")])
def test_a_superlink_certificate_that_does_not_verify_is_named_not_taken_for_the_network(
        credentials, tmp_path, case, reason):
    """Found in review: deploy-run reported an expired SuperLink certificate, or a --ca-cert from
    another CA, as Flower's "Connection to the SuperLink is unavailable... check your network"."""
    from fedintent.launch.deployment import DeploymentError, check_superlink_certificate

    if case == "expired":
        cert, key = expired_server_certificate(credentials, tmp_path)
        ca_cert = credentials.ca_cert
    else:
        cert, key = credentials.server_cert, credentials.server_key
        ca_cert = write_dev_credentials(tmp_path / "other", SITES, ["127.0.0.1"], []).ca_cert
    port, stop = tls_server(cert, key)
    try:
        with pytest.raises(DeploymentError) as err:
            check_superlink_certificate(f"127.0.0.1:{port}", ca_cert)
        assert str(err.value) == (f"the SuperLink at 127.0.0.1:{port} presents a certificate that "
                                  f"--ca-cert {ca_cert} does not verify: {reason}")
    finally:
        stop()
    port, stop = tls_server(credentials.server_cert, credentials.server_key)
    try:
        check_superlink_certificate(f"127.0.0.1:{port}", credentials.ca_cert)  # verifies: silent
    finally:
        stop()
