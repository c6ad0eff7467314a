"""``deploy/flwr-connection.sh`` (review 120 H2, L2): it adds the connection "fedintent" to the
operator's ``FLWR_HOME/config.toml`` without losing the others, and refuses inputs that would
write a connection Flower cannot use, in one line, exit 2, before writing anything.
"""

import fcntl
import math
import os
import stat
import subprocess
import sys
import time
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
    assert sorted(path.name for path in home.iterdir()) == [".config.lock", "config.toml"]


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
    for address in ("127.0.0.1:65536", "host\x1b:9091", "host\x00:9091", "host/path:9091",
                    "127.0.0.1:\u00b2"):
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


def test_flwr_home_is_made_with_its_parents(creds, tmp_path):
    code, _, _ = connect(tmp_path / "a" / "b", "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0 and config(tmp_path / "a" / "b")["superlink"]["default"] == "fedintent"
# --- review 122 -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def module():
    return deploy_script("flwr_connection")


def test_a_linked_config_is_written_at_its_target_and_stays_a_link(creds, tmp_path):
    """M1: the link had been replaced by a regular file, and its target left stale."""
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "config.toml").write_text(OPERATORS)
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").symlink_to("../real/config.toml")
    code, out, _ = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0
    assert out.startswith(f"wrote {tmp_path / 'real' / 'config.toml'} (linked from "
                          f"{home / 'config.toml'})")
    assert (home / "config.toml").is_symlink()
    assert config(tmp_path / "real")["superlink"]["fedintent"]["address"] == "127.0.0.1:9091"
    assert [path.name for path in (tmp_path / "real").iterdir()] == ["config.toml"]


@pytest.mark.parametrize("case", ["the server's", "with the CA's key"])
def test_a_ca_cert_that_is_no_ca_or_holds_a_key_is_refused(creds, tmp_path, case):
    """L1: the SuperLink's own certificate was written as the CA, and a ca.crt with the CA's
    key appended passed."""
    given = tmp_path / "ca.crt"
    if case == "the server's":
        given.write_bytes(creds.server_cert.read_bytes())
        reason = ("is not a CA certificate (basicConstraints CA:FALSE or missing); give the "
                  "CA's, e.g. ca.crt, not the SuperLink's")
    else:
        given.write_bytes(creds.ca_cert.read_bytes() + creds.ca_key.read_bytes())
        reason = "holds a private key; give the CA's certificate alone and keep its key elsewhere"
    code, _, err = connect(tmp_path / "home", "127.0.0.1:9091", str(given))
    assert (code, err) == (2, f"flwr-connection: {given} {reason}\n")
    assert not (tmp_path / "home" / "config.toml").exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_a_rewrite_as_root_keeps_the_owner(creds, tmp_path):
    """L2: rewritten as root, the operator's file became root's, unreadable to them (0600)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text(OPERATORS)
    os.chown(home / "config.toml", 65534, 65534)
    (home / "config.toml").chmod(0o600)
    assert connect(home, "127.0.0.1:9091", str(creds.ca_cert))[0] == 0
    written = (home / "config.toml").stat()
    assert (written.st_uid, written.st_gid, stat.S_IMODE(written.st_mode)) == (65534, 65534,
                                                                               0o600)


@pytest.mark.parametrize("case", ["a FIFO", "a device", "too large"])
def test_a_config_that_is_no_regular_file_or_too_large_is_refused(creds, tmp_path, case):
    """L3: a FIFO hung the script, and a link to /dev/zero grew it until it was killed."""
    home = tmp_path / "home"
    home.mkdir()
    path = home / "config.toml"
    if case == "a FIFO":
        os.mkfifo(path)
    elif case == "a device":
        path.symlink_to("/dev/zero")
    else:
        path.write_text("# padding\n" * 110_000)
    reason = ("over 1048576 bytes, it is not a config file" if case == "too large" else
              "it is not a regular file")
    target = path.resolve()
    code, _, err = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert (code, err) == (2, f"flwr-connection: cannot read {target}: {reason}; nothing "
                              "written, move it first\n")


def test_the_dropped_keys_of_the_old_connection_are_named(creds, tmp_path):
    """L4: ``insecure`` and ``federation`` vanished without a word."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text('[superlink.fedintent]\naddress = "h:1"\ninsecure = true\n'
                                      'federation = "mine"\n')
    code, out, _ = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0
    assert out.endswith("the default connection is 'fedintent'; dropped from "
                        "[superlink.fedintent]: federation, insecure)\n")
    assert set(config(home)["superlink"]["fedintent"]) == {"address", "root-certificates"}


def test_a_flwr_home_that_is_a_file_is_named(creds, tmp_path):
    """L5a: it was "cannot write notdir/config.toml: File exists"."""
    (tmp_path / "notdir").write_text("")
    code, _, err = connect(tmp_path / "notdir", "127.0.0.1:9091", str(creds.ca_cert))
    assert (code, err) == (2, f"flwr-connection: FLWR_HOME {tmp_path / 'notdir'} is not a "
                              "folder\n")


@pytest.mark.parametrize("home", [None, "", " "])
def test_the_python_entry_refuses_an_unset_or_blank_flwr_home(creds, tmp_path, home):
    """L5b: unset, it was a KeyError traceback; blank, it wrote ./config.toml."""
    env = {key: value for key, value in flower_env(tmp_path).items() if key != "FLWR_HOME"}
    if home is not None:
        env["FLWR_HOME"] = home
    result = subprocess.run([sys.executable, str(REPO / "deploy" / "flwr_connection.py"),
                             "127.0.0.1:9091", str(creds.ca_cert)], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False)
    assert (result.returncode, result.stderr) == (
        2, "flwr-connection: set FLWR_HOME to the folder for this connection\n")
    assert list(tmp_path.iterdir()) == []


def test_a_config_with_nan_is_written(creds, tmp_path):
    """L5c: a valid ``f = nan`` was refused as "would not read back as written"."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[tool]\nf = nan\nxs = [nan, 1.5]\n")
    code, _, err = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert (code, err) == (0, "")
    assert math.isnan(config(home)["tool"]["f"])


def test_a_default_that_names_no_connection_is_refused_unless_replaced(creds, tmp_path):
    """L5d: ``default = 3`` was kept, and printed as "the default connection is '3'"."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").write_text("[superlink]\ndefault = 3\n")
    code, _, err = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert (code, err) == (2, "flwr-connection: its superlink.default is 3, not the name of a "
                              "connection; nothing written, fix it or pass --default\n")
    code, out, _ = connect(home, "--default", "127.0.0.1:9091", str(creds.ca_cert))
    assert code == 0 and "the default connection is 'fedintent'" in out


def test_an_empty_config_is_read_again_before_it_counts_as_empty(module, tmp_path,
                                                                 monkeypatch):
    """L6: Flower writes config.toml in place, so an empty one may be half-written; taken for
    an empty file, the rename dropped every other connection."""
    path = tmp_path / "config.toml"
    path.write_text("")
    monkeypatch.setattr(time, "sleep", lambda _: path.write_text(OPERATORS))
    assert module.read_config(path) == tomllib.loads(OPERATORS)


def test_the_read_modify_write_holds_the_lock(module, creds, tmp_path, monkeypatch):
    """L6: another run of the script waits on FLWR_HOME/.config.lock until this one wrote."""
    home = tmp_path / "home"
    home.mkdir()
    held = []

    def write_config(path, written):
        with open(home / ".config.lock", "w") as other:
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(path)

    monkeypatch.setattr(module, "write_config", write_config)
    module.connect(home, "127.0.0.1:9091", creds.ca_cert, make_default=False)
    assert held == [(home / "config.toml").resolve()]


def test_a_config_link_in_a_loop_is_refused_naming_it(creds, tmp_path):
    """M1: a link that loops is named (Path.resolve raised RuntimeError, a traceback)."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.toml").symlink_to("config.toml")
    code, _, err = connect(home, "127.0.0.1:9091", str(creds.ca_cert))
    assert (code, err) == (2, f"flwr-connection: cannot read {home / 'config.toml'}: Too many "
                              "levels of symbolic links; nothing written\n")
