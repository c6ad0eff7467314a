"""Add the TLS connection "fedintent" to ``FLWR_HOME/config.toml`` (``deploy/flwr-connection.sh``).

The connection is written into the operator's existing file, not over it: every other
connection and the ``default`` stay (found in review: the script had replaced the file, so an
operator following the guide with Flower's own home lost every other connection). Only
``[superlink.fedintent]`` is replaced, and ``default`` is set only where the file has none, or
with ``--default``. The file is parsed with ``tomllib`` and written with ``tomli_w`` (as Flower
itself writes it, so comments are not kept) to a temporary file renamed over the old one; a
config.toml that is a symbolic link is written at its target, and the link stays.

    usage: FLWR_HOME=DIR python deploy/flwr_connection.py [--default] HOST:PORT CA_CERT
"""

import argparse
import contextlib
import fcntl
import math
import os
import stat
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, NoReturn

import tomli_w
from cryptography import x509

from fedintent.launch.certificates import ca_file_problem
from fl_protocol.settings import host_and_port

NAME = "fedintent"
WRITTEN_KEYS = ("address", "root-certificates")
"""The keys of ``[superlink.fedintent]`` this script writes; any other is dropped, and named."""

MAX_CONFIG_BYTES = 2**20
"""The largest config.toml read: Flower's is a few hundred bytes, and a link to /dev/zero or a
huge file had grown the script's memory until it was killed (found in review)."""

LOCK_NAME = ".config.lock"
"""The file in FLWR_HOME locked around the read-modify-write, so two runs do not interleave."""

EMPTY_REREAD_S = 0.2
"""How long to wait before reading an empty config.toml again: Flower writes the file in place
(truncate, then write), so an empty one may be Flower half-way through writing it, and taking
it for an empty file had dropped every other connection (found in review)."""


class ConnectionRefused(Exception):
    """An input or an existing config.toml the connection is not written with."""


def superlink_address(text: str) -> str:
    """``HOST:PORT`` with a port in [1, 65535] and no scheme or spaces: a bare host, or a word
    as the port, had been written, and Flower refused the connection only when used."""
    if host_and_port(text) is None:
        raise ConnectionRefused(f"the SuperLink's address must be HOST:PORT with a port in "
                                f"[1, 65535], got {text!r}")
    return text


def ca_certificate(text: str) -> Path:
    """The absolute path (Flower requires one) of a readable regular file holding PEM CA
    certificates and no private key: a folder, a key or the SuperLink's own certificate had
    been written, and Flower failed only when used; a CA's key beside its certificate would
    travel wherever the file is copied."""
    path = Path(text).absolute()
    if not path.is_file():
        raise ConnectionRefused(f"{text} is not a file (the CA certificate, e.g. ca.crt)")
    try:
        data = path.read_bytes()
        certificates = x509.load_pem_x509_certificates(data)
    except OSError as err:
        raise ConnectionRefused(f"cannot read {text}: {err.strerror}") from None
    except ValueError:
        raise ConnectionRefused(f"{text} is not a PEM certificate (the CA certificate, e.g. "
                                "ca.crt)") from None
    problem = ca_file_problem(data, certificates)
    if problem:
        raise ConnectionRefused(f"{text} {problem}")
    return path


def merged(config: dict[str, Any], address: str, ca_cert: Path,
           make_default: bool) -> dict[str, Any]:
    """``config`` with ``[superlink.fedintent]`` replaced and everything else as it was;
    ``default`` set where there is none, or with ``make_default``. A ``default`` that names no
    connection (``default = 3``) is refused unless replaced: Flower cannot use it."""
    connection = {"address": address, "root-certificates": str(ca_cert)}
    superlink = config.get("superlink", {}) | {NAME: connection}
    if make_default or "default" not in superlink:
        superlink["default"] = NAME
    if not isinstance(superlink["default"], str):
        raise ConnectionRefused(f"its superlink.default is {superlink['default']!r}, not the "
                                "name of a connection; nothing written, fix it or pass "
                                "--default")
    return config | {"superlink": superlink}


def dropped_keys(config: dict[str, Any]) -> list[str]:
    """The keys of the old ``[superlink.fedintent]`` the new one does not keep (``insecure``,
    ``federation``, ...): they had vanished without a word (found in review)."""
    old = config.get("superlink", {}).get(NAME)
    return sorted(set(old) - set(WRITTEN_KEYS)) if isinstance(old, dict) else []


def flwr_home(environ: Mapping[str, str]) -> Path:
    """``FLWR_HOME`` as a folder (made where missing): unset or blank, the script had written
    ./config.toml or failed with a KeyError, and a file there was "File exists"."""
    text = environ.get("FLWR_HOME", "")
    if not text.strip():
        raise ConnectionRefused("set FLWR_HOME to the folder for this connection")
    home = Path(text)
    if home.exists() and not home.is_dir():
        raise ConnectionRefused(f"FLWR_HOME {text} is not a folder")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConnectionRefused(f"cannot make FLWR_HOME {text}: {err.strerror}") from None
    return home


@contextlib.contextmanager
def locked(home: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``home/.config.lock``, so that another run of this script
    reads config.toml only after this one has written it."""
    handle = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)


def config_text(path: Path) -> str | None:
    """The text of ``path``, or None where there is none. Opened without blocking and checked
    before reading: a FIFO had hung the script, and a device or a huge file had grown it until
    it was killed (found in review)."""
    try:
        handle = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(handle, "rb") as file:
        if not stat.S_ISREG(os.fstat(handle).st_mode):
            raise ConnectionRefused(f"cannot read {path}: it is not a regular file; nothing "
                                    "written, move it first")
        data = file.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ConnectionRefused(f"cannot read {path}: over {MAX_CONFIG_BYTES} bytes, it is not "
                                "a config file; nothing written, move it first")
    return data.decode("utf-8")


def read_config(path: Path) -> dict[str, Any]:
    """The existing config.toml, or an empty one where there is none; one that is not TOML, or
    whose ``superlink`` is not a table, is refused rather than replaced. An empty one is read
    again once, after ``EMPTY_REREAD_S``: it may be Flower writing it in place."""
    try:
        text = config_text(path)
        if text == "":
            time.sleep(EMPTY_REREAD_S)
            text = config_text(path)
        config = tomllib.loads(text or "")
    except OSError as err:
        raise ConnectionRefused(f"cannot read {path}: {err.strerror}; nothing written") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConnectionRefused(f"cannot read {path}: it is not TOML ({err}); nothing written, "
                                "fix or move it first") from None
    if not isinstance(config.get("superlink", {}), dict):
        raise ConnectionRefused(f"cannot read {path}: its 'superlink' is not a table; nothing "
                                "written, fix or move it first")
    return config


def same(read: Any, written: Any) -> bool:
    """Whether ``read`` back equals ``written``, with nan equal to nan (a valid ``f = nan`` had
    been refused as "would not read back as written")."""
    if isinstance(read, float) and isinstance(written, float):
        return read == written or (math.isnan(read) and math.isnan(written))
    if isinstance(read, dict) and isinstance(written, dict):
        return read.keys() == written.keys() and all(same(read[k], written[k]) for k in read)
    if isinstance(read, list) and isinstance(written, list):
        return len(read) == len(written) and all(map(same, read, written))
    return read == written


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write ``config`` to a temporary file beside ``path`` and rename it over ``path``, with
    the old file's permissions, and its owner when run as root (``sudo -E`` had left the
    operator's file owned by root, unreadable to them): a failure leaves the old file as it
    was. ``path`` is the file itself, not a link to it, so the rename keeps the link."""
    text = tomli_w.dumps(config)
    if not same(tomllib.loads(text), config):
        raise ConnectionRefused(f"{path} would not read back as written; nothing written")
    old = path.stat() if path.exists() else None
    handle, tmp = tempfile.mkstemp(prefix=".config.toml.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, stat.S_IMODE(old.st_mode) if old else 0o600)
        if old and os.geteuid() == 0:
            os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse(message: str) -> NoReturn:
    """One line, exit status 2, as the other deploy scripts refuse."""
    print(f"flwr-connection: {message}", file=sys.stderr)
    sys.exit(2)


def connect(home: Path, address: str, ca_cert: Path, make_default: bool) -> str:
    """Write the connection into ``home/config.toml``, at a link's target, holding the lock;
    the line that says what was written."""
    link = home / "config.toml"
    path = Path(os.path.realpath(link))
    try:
        with locked(home):
            old = read_config(path)
            config = merged(old, address, ca_cert, make_default)
            write_config(path, config)
    except OSError as err:
        raise ConnectionRefused(f"cannot write {path}: {err.strerror}") from None
    where = f"{path} (linked from {link})" if link.is_symlink() else f"{link}"
    dropped = dropped_keys(old)
    replaced = f"; dropped from [superlink.{NAME}]: {', '.join(dropped)}" if dropped else ""
    return (f"wrote {where} (connection '{NAME}' to {address}; the default connection is "
            f"'{config['superlink']['default']}'{replaced})")


def main() -> None:
    parser = argparse.ArgumentParser(prog="flwr-connection", description=__doc__.splitlines()[0])
    parser.add_argument("--default", action="store_true",
                        help=f"make '{NAME}' the default connection even if another is")
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("ca_cert", metavar="CA_CERT")
    args = parser.parse_args()
    try:
        address, ca_cert = superlink_address(args.address), ca_certificate(args.ca_cert)
        home = flwr_home(os.environ)
        print(connect(home, address, ca_cert, args.default))
    except ConnectionRefused as err:
        refuse(str(err))


if __name__ == "__main__":
    main()
