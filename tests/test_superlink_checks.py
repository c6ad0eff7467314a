"""What ``deploy/superlink.sh`` refuses before it starts anything (review 120): a ``ca.crt`` that
does not verify ``superlink.crt``, a server certificate not valid yet or a CA's own, and a
misspelled, empty or out-of-range setting; each in one line naming the file or the variable,
exit 2. The checks run as ``deploy/superlink_checks.py`` and ``deploy/fleet_gateway.py
--check-certificate``; nothing here listens on a port.
"""

import datetime
import hashlib
import ipaddress
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from test_operator_side import cert_dir, deploy_script, reissued, run_superlink_sh, superlink_sh

from fedintent.launch.certificates import site_names, write_dev_credentials
from fedintent.launch.flower_cli import flower_env
from fedintent.launch.processes import free_port
from fl_protocol.settings import SettingRefused

REPO = Path(__file__).resolve().parents[1]
GATEWAY = REPO / "deploy" / "fleet_gateway.py"


@pytest.fixture(scope="module")
def checks():
    return deploy_script("superlink_checks")


@pytest.fixture(scope="module")
def gateway():
    return deploy_script("fleet_gateway")


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    """Development credentials, and a second CA's, for 127.0.0.1."""
    tmp = tmp_path_factory.mktemp("superlink-checks")
    return {name: write_dev_credentials(tmp / name, site_names(1), ["127.0.0.1"], ["localhost"])
            for name in ("ours", "other")}


# --- ca.crt (H1) ------------------------------------------------------------------------------

def replace_ca(certs: Path, case: str, creds: dict) -> str:
    """Make ``certs/ca.crt`` the ``case`` of a wrong CA file; the reason superlink.sh gives."""
    ca = certs / "ca.crt"
    ca.unlink()
    if case == "another CA's":
        ca.write_bytes(creds["other"].ca_cert.read_bytes())
        return f"it does not verify {certs / 'superlink.crt'} (unable to get local issuer " \
               "certificate)"
    if case == "a leaf":
        ca.write_bytes(creds["ours"].server_cert.read_bytes())
        return ("it is not a CA certificate (basicConstraints CA:FALSE or missing); give the "
                "CA's, e.g. ca.crt, not the SuperLink's")
    if case == "a directory":
        ca.mkdir()
        return "cannot read it: Is a directory"
    if case == "a key":
        ca.write_bytes(creds["ours"].server_key.read_bytes())
        return "it is not a PEM certificate"
    ca.write_bytes(b"")
    return "it is empty"


@pytest.mark.parametrize("case", ["another CA's", "a leaf", "a directory", "a key", "empty"])
def test_superlink_sh_refuses_a_ca_cert_that_does_not_verify_its_certificate(creds, tmp_path,
                                                                             case):
    """Found in review: with another CA's or a leaf as ca.crt it started, and every site got
    502; with a directory, a key or an empty file the gateway died with a traceback after
    flower-superlink had started."""
    certs = cert_dir(creds["ours"], tmp_path / "certs")
    reason = replace_ca(certs, case, creds)
    assert run_superlink_sh(certs, tmp_path / "home") == (
        2, f"superlink: cannot use {certs / 'ca.crt'}: {reason}\n")


def test_the_gateway_names_a_ca_cert_it_cannot_load(gateway, checks, tmp_path):
    """make_app had died in ssl.create_default_context with a traceback."""
    with pytest.raises(checks.CertificateRefused, match=f"cannot use {tmp_path}: cannot read "
                       "it: Is a directory"):
        gateway.make_app("127.0.0.1:9", str(tmp_path))


def test_the_right_ca_passes(checks, creds):
    ours = creds["ours"]
    assert checks.check_server_certificate(str(ours.server_cert), str(ours.server_key),
                                            str(ours.ca_cert)) is None


# --- the server certificate (L1) --------------------------------------------------------------

def test_a_certificate_not_valid_yet_is_refused(checks, creds, tmp_path):
    now = datetime.datetime.now(datetime.UTC)
    future = tmp_path / "superlink.crt"
    future.write_bytes(reissued(creds["ours"], now + datetime.timedelta(days=3),
                                now + datetime.timedelta(days=300)))
    with pytest.raises(checks.CertificateRefused, match=f"cannot use {future}: it is not valid "
                       "before .* UTC; check this machine's clock"):
        checks.check_server_certificate(str(future), str(creds["ours"].server_key),
                                         str(creds["ours"].ca_cert))


def test_the_cas_own_pair_is_refused_as_the_server_pair(checks, creds):
    """Found in review: accepted, so ca.key would sit on the SuperLink (the guide forbids it)."""
    ours = creds["ours"]
    with pytest.raises(checks.CertificateRefused, match=f"cannot use {ours.ca_cert}: it is a "
                       r"CA certificate \(basicConstraints CA:TRUE\)"):
        checks.check_server_certificate(str(ours.ca_cert), str(ours.ca_key), str(ours.ca_cert))


def test_a_pair_no_tls_client_can_connect_to_is_refused(checks, creds, tmp_path):
    """A DSA key from the right CA: no cipher suite both sides share, so every site would fail
    its handshake; it is named as the pair's fault, not the CA's."""
    ours = creds["ours"]
    key = dsa.generate_private_key(2048)
    ca = x509.load_pem_x509_certificate(ours.ca_cert.read_bytes())
    current = x509.load_pem_x509_certificate(ours.server_cert.read_bytes())
    builder = (x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(current.not_valid_before_utc)
               .not_valid_after(current.not_valid_after_utc))
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    certificate, private = tmp_path / "dsa.crt", tmp_path / "dsa.key"
    certificate.write_bytes(builder.sign(load_pem_private_key(ours.ca_key.read_bytes(), None),
                                         hashes.SHA384()).public_bytes(serialization.Encoding.PEM))
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    with pytest.raises(checks.CertificateRefused, match=re.escape(
            f"cannot use {certificate} and {private}: a TLS client cannot connect with them "
            "(NO_SHARED_CIPHER)")):
        checks.check_server_certificate(str(certificate), str(private), str(ours.ca_cert))


def test_a_certificate_serves_from_its_first_moment_and_is_warned_of_30_days_ahead(checks,
                                                                                   creds):
    """Each end of the window is the documented one: not valid *before* ``notBefore``, and
    the warning from ``EXPIRY_WARNING_DAYS`` (30) days left, that day included."""
    ours = creds["ours"]
    cert = x509.load_pem_x509_certificate(ours.server_cert.read_bytes())

    def check(now: datetime.datetime) -> str | None:
        return checks.check_server_certificate(str(ours.server_cert), str(ours.server_key),
                                                str(ours.ca_cert), now=now)

    check(cert.not_valid_before_utc)
    warning = check(cert.not_valid_after_utc - datetime.timedelta(days=30))
    assert warning is not None and "in 30 days" in warning


# --- the settings (M1, M2, L4) ----------------------------------------------------------------

@pytest.mark.parametrize("environ, refusal", [
    ({"SUPERLINK_HOTS": "10.0.0.5"}, "SUPERLINK_HOTS is not a setting of deploy/superlink.sh "
     "(did you mean SUPERLINK_HOST?)"),
    ({"SUPERLINK_DATABSE": "/srv/state.db"}, "did you mean SUPERLINK_DATABASE?"),
    ({"superlink_host": "10.0.0.5"}, "did you mean SUPERLINK_HOST?"),
    ({"FEDINTENT_SUPERLINK_DATABASE": "x"}, "did you mean SUPERLINK_DATABASE?"),
    ({"CONTROL_PROT": "9091"}, "did you mean CONTROL_PORT?"),
    ({"SUPERLINK_HOST": ""}, "SUPERLINK_HOST is set but empty; give it a value, or unset it"),
    ({"SUPERLINK_DATABASE": " "}, "SUPERLINK_DATABASE is set but empty"),
    ({"SUPERLINK_PORT": "70000"}, "SUPERLINK_PORT must be a port in [1, 65535], got '70000'"),
    ({"CONTROL_PORT": "abc"}, "CONTROL_PORT must be a port in [1, 65535], got 'abc'"),
    ({"RELEASE_PORT": "0"}, "RELEASE_PORT must be a port in [1, 65535], got '0'"),
    ({"RELEASE_PORT": "9O95"}, "RELEASE_PORT must be a port"),
    ({"SUPERLINK_PORT": "tcp://10.0.0.7:9093"}, "a Kubernetes service link"),
    ({"SUPERLINK_PORT": "9091", "CONTROL_PORT": "9091"},
     "SUPERLINK_PORT and CONTROL_PORT are both 9091; each needs its own port"),
    ({"CONTROL_PORT": "9095", "RELEASE_PORT": "9095"}, "CONTROL_PORT and RELEASE_PORT are both"),
    ({"FLEET_MAX_BODY_MIB": "abc"},
     "FLEET_MAX_BODY_MIB must be a number of MiB in [1, 1048576], got abc"),
    ({"FLEET_MAX_BODY_MIB": "nan"}, "FLEET_MAX_BODY_MIB must be a number of MiB"),
    # review 122 L7: other scripts' digits, underscores, and a limit that is 0 bytes
    ({"FLEET_MAX_BODY_MIB": "\uff11\uff10"}, "FLEET_MAX_BODY_MIB must be a number of MiB"),
    ({"FLEET_MAX_BODY_MIB": "1_0"}, "FLEET_MAX_BODY_MIB must be a number of MiB"),
    ({"FLEET_MAX_BODY_MIB": "1e-9"}, "FLEET_MAX_BODY_MIB must be a number of MiB in [1, "),
    ({"FLEET_MAX_BODY_MIB": "0.5"}, "FLEET_MAX_BODY_MIB must be a number of MiB in [1, "),
    ({"FEDINTENT_SUPERLINK_HOST": "x"}, "did you mean SUPERLINK_HOST?"),
    # review 122 M3: a host the gateway cannot listen on, refused before anything starts
    ({"SUPERLINK_HOST": "127.0.0.1:9093"}, "SUPERLINK_HOST must be a host name or an address of "
     "this machine, got '127.0.0.1:9093' (set the port in SUPERLINK_PORT)"),
    ({"SUPERLINK_HOST": "a..b"}, "(not a valid host name)"),
    ({"SUPERLINK_HOST": "no-such-host.invalid"},
     "SUPERLINK_HOST no-such-host.invalid cannot be resolved"),
    ({"SUPERLINK_HOST": "192.0.2.1", "SUPERLINK_PORT": "9093"},
     "SUPERLINK_PORT 9093 cannot be bound on 192.0.2.1 (SUPERLINK_HOST) now: Cannot assign "
     "requested address"),
    ({"SUPERLINK_HOST": "localhost", "SUPERLINK_PORT": "9091", "CONTROL_PORT": "9091"},
     "SUPERLINK_PORT and CONTROL_PORT are both 9091; each needs its own port"),
])
def test_settings_that_would_start_in_vain_are_refused_naming_the_variable(checks, environ,
                                                                           refusal):
    """Found in review: a misspelled or empty setting fell back to its default (the gateway on
    every interface, the state in memory), 70000 bound port 4464, and a word was a traceback
    after start."""
    with pytest.raises(SettingRefused) as refused:
        checks.check_settings({"PATH": "/usr/bin"} | environ)
    assert refusal in str(refused.value)


@pytest.mark.parametrize("host", ["http://x", "a b", "a\x01b", "x\n"])
def test_a_superlink_host_with_a_scheme_or_spaces_is_refused(checks, host):
    """Review 122 M3: the gateway failed with "Name or service not known" after the SuperLink
    had started."""
    with pytest.raises(SettingRefused) as refused:
        checks.check_settings({"SUPERLINK_HOST": host})
    assert str(refused.value) == ("SUPERLINK_HOST must be a host name or an address of this "
                                  f"machine, got {host!r}")


@pytest.mark.parametrize("environ", [
    {"PATH": "/usr/bin", "HOME": "/root", "LANG": "C.UTF-8", "SSL_CERT_DIR": "/etc/ssl/certs"},
    # Kubernetes, for Services named superlink, control and fedintent-superlink
    {"SUPERLINK_SERVICE_HOST": "10.0.0.7", "SUPERLINK_SERVICE_PORT": "9093",
     "SUPERLINK_PORT_9093_TCP": "tcp://10.0.0.7:9093", "SUPERLINK_PORT_9093_TCP_PORT": "9093",
     "SUPERLINK_PORT_9093_TCP_ADDR": "10.0.0.7", "CONTROL_SERVICE_PORT": "80",
     "FEDINTENT_SUPERLINK_PORT": "tcp://10.0.0.8:9093"},
    # the site's settings, and other tools' ports
    {"SUPERLINK": "10.0.0.5:9093", "SUPERNODE_PORT": "9094", "HEALTH_PORT": "9096",
     "GRAFANA_CONTROL_PORT": "3000", "MAX_JOBS": "2"},
    {"CERT_DIR": "/etc/fedintent", "SUPERLINK_HOST": "127.0.0.1", "SUPERLINK_PORT": "FREE",
     "CONTROL_PORT": "FREE", "RELEASE_PORT": "FREE", "FLEET_MAX_BODY_MIB": "128",
     "SUPERLINK_DATABASE": ":flwr-in-memory:"},
    {"SUPERLINK_HOST": "[::1]", "FLEET_MAX_BODY_MIB": "1"},
    # the name the sites dial behind NAT: not resolved here (.example resolves nowhere)
    {"SUPERLINK_HOST": "127.0.0.1", "SUPERLINK_PUBLIC_NAME": "link.example"},
    {"SUPERLINK_PUBLIC_NAME": "[2001:db8::1]"}, {"SUPERLINK_PUBLIC_NAME": "203.0.113.7"},
    # review 122 L8: other programs' variables that contain a setting's name
    {"SUPERLINK_HOSTNAME": "link.example", "SUPERLINK_HOST_IP": "10.0.0.5",
     "SUPERLINK_PORTS": "9093,9094", "MY_APP_SUPERLINK_PORT": "9093", "X_SUPERLINK_PORT": "1",
     "SUPERLINK_ENV_SUPERLINK_HOST": "10.0.0.5"},
])
def test_other_variables_and_good_settings_pass(checks, environ):
    checks.check_settings({name: str(free_port()) if value == "FREE" else value
                            for name, value in environ.items()})


def test_one_port_number_on_two_addresses_passes(checks):
    """Review 122 L8: SUPERLINK_PORT on SUPERLINK_HOST and CONTROL_PORT on 127.0.0.1 are two
    sockets when SUPERLINK_HOST is another address (127.0.0.2 is loopback too, on Linux)."""
    port = str(free_port())
    checks.check_settings({"SUPERLINK_HOST": "127.0.0.2", "SUPERLINK_PORT": port,
                            "CONTROL_PORT": port})


@pytest.mark.parametrize("name", ["SUPERLINK_PORT", "CONTROL_PORT", "RELEASE_PORT"])
def test_a_port_in_use_is_refused_naming_it(checks, name):
    """Review 122 M3: the gateway or the SuperLink failed with "address already in use" after
    the other had started, naming no variable."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(SettingRefused) as refused:
            checks.check_settings({"SUPERLINK_HOST": "127.0.0.1", name: str(port)})
    where = " (SUPERLINK_HOST)" if name == "SUPERLINK_PORT" else ""
    assert str(refused.value) == (f"{name} {port} cannot be bound on 127.0.0.1{where} now: "
                                  "Address already in use")


def test_the_ports_ends_are_taken_and_one_past_them_refused(checks):
    """The range is [1, 65535], each end included (a port of 65536 had bound port 0)."""
    checks.check_settings({"SUPERLINK_PORT": "1", "CONTROL_PORT": "65535"})
    for port in ("0", "65536"):
        with pytest.raises(SettingRefused, match=f"SUPERLINK_PORT must be a port in "
                                                 rf"\[1, 65535\], got '{port}'"):
            checks.check_settings({"SUPERLINK_PORT": port})


def test_a_database_path_flower_cannot_open_is_refused_and_left_alone(checks, tmp_path):
    """Found in review: a folder, a path in a missing folder, or a file that is not SQLite was a
    sqlalchemy traceback after start that did not name SUPERLINK_DATABASE."""
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"not a database\n")
    refusals = {}
    for path in (tmp_path, tmp_path / "nope" / "state.db", garbage):
        with pytest.raises(SettingRefused) as refused:
            checks.check_settings({"SUPERLINK_DATABASE": str(path)})
        refusals[path] = str(refused.value)
    assert refusals == {
        tmp_path: f"SUPERLINK_DATABASE {tmp_path} is a folder; give the state file's path, e.g. "
                  f"{tmp_path / 'superlink.db'}",
        tmp_path / "nope" / "state.db": f"SUPERLINK_DATABASE {tmp_path / 'nope' / 'state.db'}: "
                                        f"its folder {tmp_path / 'nope'} does not exist",
        garbage: f"SUPERLINK_DATABASE {garbage} is not an SQLite database (left as it is); give "
                 "the SuperLink's state file, or a new path"}
    assert garbage.read_bytes() == b"not a database\n"
    checks.check_settings({"SUPERLINK_DATABASE": str(tmp_path / "new.db")})


def superlink_sh_with(creds, tmp_path: Path, **settings: str) -> tuple[int, str]:
    """deploy/superlink.sh with ``settings`` over settings that would start it on free loopback
    ports: (status, output)."""
    env = flower_env(tmp_path / "home") | {
        "CERT_DIR": str(creds["ours"].ca_cert.parent), "SUPERLINK_HOST": "127.0.0.1",
        "SUPERLINK_PORT": str(free_port()), "CONTROL_PORT": str(free_port()),
        "RELEASE_PORT": str(free_port())} | settings
    code, out, err = superlink_sh(env)
    return code, out + err


@pytest.mark.parametrize("settings, refusal", [
    ({"SUPERLINK_HOTS": "127.0.0.1"}, "SUPERLINK_HOTS is not a setting of deploy/superlink.sh "
     "(did you mean SUPERLINK_HOST?)"),
    # not SUPERLINK_HOST: without the check, the test would listen on every interface
    ({"SUPERLINK_DATABASE": ""}, "SUPERLINK_DATABASE is set but empty; give it a value, or "
     "unset it for the default"),
    ({"SUPERLINK_PORT": "70000"}, "SUPERLINK_PORT must be a port in [1, 65535], got '70000'"),
    ({"FLEET_MAX_BODY_MIB": "abc"},
     "FLEET_MAX_BODY_MIB must be a number of MiB in [1, 1048576], got abc"),
])
def test_superlink_sh_refuses_a_setting_before_starting(creds, tmp_path, settings, refusal):
    assert superlink_sh_with(creds, tmp_path, **settings) == (2, f"superlink: {refusal}\n")


def test_superlink_sh_without_python_on_path_says_what_to_do(creds, tmp_path):
    """Found in review: ``superlink.sh: 36: exec: python: not found``."""
    (tmp_path / "bin").mkdir()
    code, output = superlink_sh_with(creds, tmp_path, PATH=str(tmp_path / "bin"))
    assert (code, output) == (2, "superlink: python is not on PATH; activate the virtual "
                              "environment fedintent is installed in (. .venv/bin/activate) and "
                              "start again\n")


def test_the_gateway_refuses_a_listen_port_out_of_range():
    result = subprocess.run(
        [sys.executable, str(GATEWAY), "--listen", "127.0.0.1:70000", "--upstream",
         "127.0.0.1:9", "--ca-cert", "x", "--certfile", "x", "--keyfile", "x",
         "--check-certificate"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2
    assert ("argument --listen: must be HOST:PORT with a port in [1, 65535], got "
            "'127.0.0.1:70000'") in result.stderr


def test_superlink_sh_leaves_a_database_it_refuses_unchanged(creds, tmp_path):
    garbage = tmp_path / "state.db"
    garbage.write_bytes(b"garbage\n" * 100)
    digest = hashlib.sha256(garbage.read_bytes()).hexdigest()
    code, output = superlink_sh_with(creds, tmp_path, SUPERLINK_DATABASE=str(garbage))
    assert code == 2 and "is not an SQLite database" in output
    assert hashlib.sha256(garbage.read_bytes()).hexdigest() == digest


# --- the names the certificate covers (review 122 M2, L1) -------------------------------------

def issued_for(creds, folder: Path, names: list[x509.GeneralName] | None,
               subject: x509.Name | None = None) -> Path:
    """The SuperLink's key certified by its CA for ``names`` (no subjectAltName for None), and
    ``subject`` where given, as ``folder/superlink.crt``."""
    ca_key = load_pem_private_key(creds.ca_key.read_bytes(), None)
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    current = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    builder = (x509.CertificateBuilder().subject_name(subject or current.subject)
               .issuer_name(ca.subject).public_key(current.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(current.not_valid_before_utc)
               .not_valid_after(current.not_valid_after_utc)
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if names is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    folder.mkdir(exist_ok=True)
    path = folder / "superlink.crt"
    path.write_bytes(builder.sign(ca_key, hashes.SHA384()).public_bytes(
        serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize("host, covered", [
    ("127.0.0.1", True), ("localhost", True), ("0.0.0.0", True), ("::", True),
    ("10.0.0.5", False), ("other.example", False), ("a.example.org", True),
    ("b.a.example.org", False), ("example.org", False)])
def test_a_certificate_not_valid_for_superlink_host_is_refused(checks, creds, tmp_path, host,
                                                               covered):
    """Review 122 M2: a certificate for other.example passed, and every site connecting to
    SUPERLINK_HOST then failed with "Hostname mismatch" (reported as a network problem);
    0.0.0.0 and :: name no one address, so any certificate passes there."""
    ours = creds["ours"]
    certificate = issued_for(ours, tmp_path, [
        x509.DNSName("localhost"), x509.DNSName("*.example.org"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    files = (str(certificate), str(ours.server_key), str(ours.ca_cert))
    if covered:
        assert checks.check_server_certificate(*files, host=host) is None
        return
    with pytest.raises(checks.CertificateRefused) as refused:
        checks.check_server_certificate(*files, host=host)
    assert str(refused.value) == (f"cannot use {certificate}: it is not valid for {host}, the "
                                  "address the sites connect to (SUPERLINK_HOST); it covers "
                                  "localhost, *.example.org, 127.0.0.1")


def check_certificate(ours, certificate: Path, host: str = "127.0.0.1") -> tuple[int, str]:
    """``fleet_gateway.py --check-certificate`` for ``certificate`` with ``ours``' key and CA,
    for sites connecting to ``host`` (nothing listens): (status, stdout)."""
    result = subprocess.run(
        [sys.executable, str(GATEWAY), "--listen", f"{host}:9093", "--upstream",
         "127.0.0.1:9", "--ca-cert", str(ours.ca_cert), "--certfile", str(certificate),
         "--keyfile", str(ours.server_key), "--check-certificate"], capture_output=True,
        text=True, timeout=120, check=False)
    return result.returncode, result.stdout


def test_check_certificate_prints_the_names_it_covers(creds):
    ours = creds["ours"]
    assert check_certificate(ours, ours.server_cert) == (
        0, f"superlink: {ours.server_cert} covers localhost, 127.0.0.1\n")


def test_a_certificate_without_subject_alt_name_gets_a_warning(creds, tmp_path):
    """Review 122 M2: Python falls back to the common name; not every TLS client does."""
    ours = creds["ours"]
    certificate = issued_for(ours, tmp_path, None, x509.Name(
        [x509.NameAttribute(x509.NameOID.COMMON_NAME, "localhost")]))
    assert check_certificate(ours, certificate, "localhost") == (
        0, f"superlink: warning: {certificate} has no subjectAltName: Python takes its common "
        "name instead, other TLS clients refuse it; reissue it with the SuperLink's address as "
        "a subjectAltName\n")


def test_superlink_sh_refuses_a_certificate_for_another_host(creds, tmp_path):
    """Review 122 M2: superlink.sh passes SUPERLINK_HOST to the check (as --listen)."""
    certs = cert_dir(creds["ours"], tmp_path / "certs")
    issued_for(creds["ours"], certs, [x509.DNSName("other.example")])
    code, output = superlink_sh_with(creds, tmp_path, CERT_DIR=str(certs))
    assert (code, output) == (2, f"superlink: cannot use {certs / 'superlink.crt'}: it is not "
                                 "valid for 127.0.0.1, the address the sites connect to "
                                 "(SUPERLINK_HOST); it covers other.example\n")


def test_a_ca_cert_holding_a_private_key_is_refused(checks, creds, tmp_path):
    """Review 122 L1: ca.crt with the CA's key appended passed, so the key sat on the
    SuperLink, against the guide."""
    ours = creds["ours"]
    ca = tmp_path / "ca.crt"
    ca.write_bytes(ours.ca_cert.read_bytes() + ours.ca_key.read_bytes())
    with pytest.raises(checks.CertificateRefused) as refused:
        checks.check_server_certificate(str(ours.server_cert), str(ours.server_key), str(ca))
    assert str(refused.value) == (f"cannot use {ca}: it holds a private key; give the CA's "
                                  "certificate alone and keep its key elsewhere")


# --- SUPERLINK_PUBLIC_NAME: the name the sites dial, behind NAT -------------------------------

@pytest.mark.parametrize("environ, refusal", [
    ({"SUPERLINK_PUBLIC_NAME": "https://link.example"}, "SUPERLINK_PUBLIC_NAME must be the DNS "
     "name or IP address the sites connect to, got 'https://link.example'"),
    ({"SUPERLINK_PUBLIC_NAME": "link.example:9093"}, "SUPERLINK_PUBLIC_NAME must be the DNS name "
     "or IP address the sites connect to, got 'link.example:9093' (give the name alone: a "
     "certificate covers no port)"),
    ({"SUPERLINK_PUBLIC_NAME": "link example"}, "got 'link example'"),
    ({"SUPERLINK_PUBLIC_NAME": "0.0.0.0"}, "got '0.0.0.0'"),
    ({"SUPERLINK_PUBLIC_NAME": "a..b"}, "got 'a..b' (not a valid host name)"),
    ({"SUPERLINK_PUBLIC_NAME": ""}, "SUPERLINK_PUBLIC_NAME is set but empty"),
    ({"SUPERLINK_PUBLC_NAME": "link.example"}, "SUPERLINK_PUBLC_NAME is not a setting of "
     "deploy/superlink.sh (did you mean SUPERLINK_PUBLIC_NAME?)"),
    ({"FEDINTENT_SUPERLINK_PUBLIC_NAME": "x"}, "did you mean SUPERLINK_PUBLIC_NAME?"),
])
def test_a_public_name_no_site_can_dial_is_refused(checks, environ, refusal):
    """The certificate would be checked against it, so a scheme, a port or no name at all
    would refuse a good certificate, or pass one for a name no site dials."""
    with pytest.raises(SettingRefused) as refused:
        checks.check_settings({"PATH": "/usr/bin"} | environ)
    assert refusal in str(refused.value)


def superlink_sh_without_superlink(creds, tmp_path: Path, **settings: str) -> tuple[int, str]:
    """``superlink_sh_with`` and a stand-in ``flower-superlink`` that exits at once: past its
    checks the script stops the gateway and exits 1; no SuperLink starts."""
    stand_ins = tmp_path / "bin"
    stand_ins.mkdir()
    (stand_ins / "flower-superlink").write_text("#!/bin/sh\nexit 0\n")
    (stand_ins / "flower-superlink").chmod(0o755)
    path = flower_env(tmp_path / "home")["PATH"]
    return superlink_sh_with(creds, tmp_path, PATH=f"{stand_ins}{os.pathsep}{path}", **settings)


def test_a_certificate_for_the_public_name_passes_with_a_local_superlink_host(creds, tmp_path):
    """Behind NAT the sites dial a name that is no address of this machine: the certificate
    is checked against SUPERLINK_PUBLIC_NAME (not resolved: .example resolves nowhere), and the
    gateway listens on SUPERLINK_HOST, which the certificate need not cover."""
    certs = cert_dir(creds["ours"], tmp_path / "certs")
    issued_for(creds["ours"], certs, [x509.DNSName("link.example")])
    code, output = superlink_sh_without_superlink(creds, tmp_path, CERT_DIR=str(certs),
                                                  SUPERLINK_PUBLIC_NAME="link.example")
    assert code == 1 and "flower-superlink stopped" in output, output
    assert f"superlink: {certs / 'superlink.crt'} covers link.example\n" in output


def test_superlink_sh_refuses_a_certificate_not_valid_for_the_public_name(creds, tmp_path):
    """A certificate for SUPERLINK_HOST (127.0.0.1) but not for the name the sites dial: every
    site would fail with "Hostname mismatch"."""
    certs = cert_dir(creds["ours"], tmp_path / "certs")
    code, output = superlink_sh_without_superlink(creds, tmp_path, CERT_DIR=str(certs),
                                                  SUPERLINK_PUBLIC_NAME="link.example")
    assert (code, output) == (2, f"superlink: cannot use {certs / 'superlink.crt'}: it is not "
                                 "valid for link.example, the address the sites connect to "
                                 "(SUPERLINK_PUBLIC_NAME); it covers localhost, 127.0.0.1\n")
