"""``deploy/flwr-connection.sh`` (review 120 H2, L2): it adds the connection "fedintent" to the
operator's ``FLWR_HOME/config.toml`` without losing the others, and refuses inputs that would
write a connection Flower cannot use, in one line, exit 2, before writing anything.
"""

import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
from test_operator_side import deploy_script

from fedintent.launch.certificates import site_names, write_dev_credentials
from fedintent.launch.flower_cli import flower_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "deploy" / "flwr-connection.sh"
OPERATORS = """# the operator's own connections
[superlink]
default = "prod"

[superlink.prod]
address = "10.0.0.5:9091"
root-certificates = "/etc/prod/ca.crt"

[superlink.local]
options.num-supernodes = 3
"""


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return write_dev_credentials(tmp_path_factory.mktemp("connection") / "creds",
                                 site_names(1), ["127.0.0.1"], ["localhost"])


def connect(home: Path, *args: str) -> tuple[int, str, str]:
    """deploy/flwr-connection.sh ``args`` with FLWR_HOME=``home``: (status, stdout, stderr)."""
    result = subprocess.run([str(SCRIPT), *args], env=flower_env(home), capture_output=True,
                            text=True, timeout=120, check=False)
    return result.returncode, result.stdout, result.stderr


def config(home: Path) -> dict:
    return tomllib.loads((home / "config.toml").read_text())


def test_a_new_config_gets_the_connection_as_its_default(creds, tmp_path):
    home = tmp_path / "home"
    code, out, _ = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0 and "the default connection is 'fedintent'" in out
    assert config(home) == {"superlink": {"default": "fedintent", "fedintent": {
        "address": "127.0.0.1:9091", "root-certificates": str(creds.ca_cert.absolute())}}}


def test_the_operators_other_connections_and_default_are_kept(creds, tmp_path):
    """Found in review: the script replaced the file, so the operator's 'prod' connection and
    default were gone."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(OPERATORS)
    before = tomllib.loads(OPERATORS)["superlink"]
    fedintent = {"address": "127.0.0.1:9091", "root-certificates": str(creds.ca_cert)}

    code, out, _ = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0 and "the default connection is 'prod'" in out
    assert config(home) == {"superlink": before | {"fedintent": fedintent}}

    code, _, _ = connect(home, "10.0.0.9:9091", str(creds.ca_cert))  # replaced, not added
    assert code == 0
    assert config(home) == {"superlink": before | {"fedintent": fedintent | {
        "address": "10.0.0.9:9091"}}}

    code, out, _ = connect(home, "--default", "10.0.0.9:9091", str(creds.ca_cert))
    assert code == 0 and "the default connection is 'fedintent'" in out
    assert config(home)["superlink"]["default"] == "fedintent"
    assert config(home)["superlink"]["prod"] == before["prod"]


def test_a_config_that_is_not_toml_is_left_alone(creds, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[superlink\n")
    code, _, err = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 2
    assert err.startswith(f"flwr-connection: cannot read {home / 'config.toml'}: it is not TOML")
    assert (home / "config.toml").read_text() == "[superlink\n"
    assert [path.name for path in home.iterdir()] == ["config.toml"]


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.1:70000", "127.0.0.1:0", "host:abc",
                                     "http://127.0.0.1:9091", ":9091",
                                     '127.0.0.1:9091"\ninsecure = true\nx = "'])
def test_an_address_that_is_not_host_port_is_refused(creds, tmp_path, address):
    """Found in review: a bare host was written, and a quote in the address wrote
    ``insecure = true`` into the TOML."""
    code, _, err = connect(tmp_path / "home", address, str(creds.ca_cert))
    assert (code, err) == (2, "flwr-connection: the SuperLink's address must be HOST:PORT with "
                              f"a port in [1, 65535], got {address!r}\n")
    assert not (tmp_path / "home" / "config.toml").exists()


@pytest.mark.parametrize("case", ["a folder", "a key", "missing"])
def test_a_ca_cert_that_is_not_a_pem_certificate_is_refused(creds, tmp_path, case):
    """Found in review: a folder and a private key were each written as the CA."""
    given = {"a folder": creds.ca_cert.parent, "a key": creds.server_key,
             "missing": tmp_path / "nope.crt"}[case]
    reason = "is not a PEM certificate" if case == "a key" else "is not a file"
    code, _, err = connect(tmp_path / "home", "127.0.0.1:9091", str(given))
    assert (code, err) == (2, f"flwr-connection: {given} {reason} (the CA certificate, e.g. "
                              "ca.crt)\n")
    assert not (tmp_path / "home" / "config.toml").exists()


def test_a_ca_path_with_quotes_and_backslashes_is_written_quoted(creds, tmp_path):
    folder = tmp_path / 'we"ird\\name'
    folder.mkdir()
    (folder / "ca.crt").write_bytes(creds.ca_cert.read_bytes())
    code, _, _ = connect(tmp_path / "home", "[::1]:9091", str(folder / "ca.crt"))
    assert code == 0
    assert config(tmp_path / "home")["superlink"]["fedintent"] == {
        "address": "[::1]:9091", "root-certificates": str(folder / "ca.crt")}


# --- each check at its edges, in process (the script's functions) ----------------------------

@pytest.fixture(scope="module")
def connection():
    return deploy_script("flwr_connection")


def test_an_address_is_taken_up_to_its_ends_and_no_control_character(connection):
    for address in ("127.0.0.1:1", "127.0.0.1:65535"):
        assert connection.superlink_address(address) == address
    for address in ("127.0.0.1:65536", "host\x1b:9091", "host\x00:9091"):
        with pytest.raises(connection.ConnectionRefused, match="must be HOST:PORT"):
            connection.superlink_address(address)


def test_a_config_that_cannot_be_read_or_has_no_superlink_table_is_refused(connection,
                                                                           tmp_path):
    with pytest.raises(connection.ConnectionRefused, match="Is a directory; nothing written"):
        connection.read_config(tmp_path)
    (tmp_path / "config.toml").write_text("superlink = 3\n")
    with pytest.raises(connection.ConnectionRefused, match="'superlink' is not a table"):
        connection.read_config(tmp_path / "config.toml")


def test_an_unreadable_ca_cert_is_refused(connection, creds, monkeypatch):
    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    with pytest.raises(connection.ConnectionRefused,
                       match=f"cannot read {creds.ca_cert}: Permission denied"):
        connection.ca_certificate(str(creds.ca_cert))


def test_a_written_config_keeps_the_old_files_mode_and_a_new_one_is_owner_only(connection,
                                                                              tmp_path):
    new, old = tmp_path / "new.toml", tmp_path / "old.toml"
    old.write_text("")
    old.chmod(0o644)
    for path in (new, old):
        connection.write_config(path, {"superlink": {}})
    assert stat.S_IMODE(new.stat().st_mode) == 0o600
    assert stat.S_IMODE(old.stat().st_mode) == 0o644


def test_a_failed_write_raises_and_leaves_no_temporary_file(connection, tmp_path):
    (tmp_path / "config.toml").mkdir()  # os.replace cannot put a file there
    with pytest.raises(OSError):
        connection.write_config(tmp_path / "config.toml", {"superlink": {}})
    assert [path.name for path in tmp_path.iterdir()] == ["config.toml"]


def test_flwr_home_is_made_with_its_parents_and_one_that_is_a_file_is_refused(creds, tmp_path):
    code, _, _ = connect(tmp_path / "a" / "b", "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0 and config(tmp_path / "a" / "b")["superlink"]["default"] == "fedintent"
    (tmp_path / "file").write_text("")
    code, _, err = connect(tmp_path / "file", "127.0.0.1:9091", str(creds.ca_cert))
    assert (code, err) == (2, f"flwr-connection: cannot write {tmp_path / 'file' / 'config.toml'}"
                              ": File exists\n")
