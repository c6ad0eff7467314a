"""Add the TLS connection "fedintent" to ``FLWR_HOME/config.toml`` (``deploy/flwr-connection.sh``).

The connection is written into the operator's existing file, not over it: every other
connection and the ``default`` stay (found in review: the script had replaced the file, so an
operator following the guide with Flower's own home lost every other connection). Only
``[superlink.fedintent]`` is replaced, and ``default`` is set only where the file has none, or
with ``--default``. The file is parsed with ``tomllib`` and written with ``tomli_w`` (as Flower
itself writes it, so comments are not kept) to a temporary file renamed over the old one.

    usage: FLWR_HOME=DIR python deploy/flwr_connection.py [--default] HOST:PORT CA_CERT
"""

import argparse
import os
import stat
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, NoReturn

import tomli_w
from cryptography import x509

NAME = "fedintent"


class ConnectionRefused(Exception):
    """An input or an existing config.toml the connection is not written with."""


def superlink_address(text: str) -> str:
    """``HOST:PORT`` with a port in [1, 65535] and no scheme or spaces: a bare host, or a word
    as the port, had been written, and Flower refused the connection only when used."""
    host, _, port = text.rpartition(":")
    if (not host or "://" in text or any(c.isspace() or ord(c) < 32 for c in text)
            or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)):
        raise ConnectionRefused(f"the SuperLink's address must be HOST:PORT with a port in "
                                f"[1, 65535], got {text!r}")
    return text


def ca_certificate(text: str) -> Path:
    """The absolute path (Flower requires one) of a readable regular file holding a PEM
    certificate: a folder or a key had been written, and Flower failed only when used."""
    path = Path(text).absolute()
    if not path.is_file():
        raise ConnectionRefused(f"{text} is not a file (the CA certificate, e.g. ca.crt)")
    try:
        x509.load_pem_x509_certificates(path.read_bytes())
    except OSError as err:
        raise ConnectionRefused(f"cannot read {text}: {err.strerror}") from None
    except ValueError:
        raise ConnectionRefused(f"{text} is not a PEM certificate (the CA certificate, e.g. "
                                "ca.crt)") from None
    return path


def merged(config: dict[str, Any], address: str, ca_cert: Path,
           make_default: bool) -> dict[str, Any]:
    """``config`` with ``[superlink.fedintent]`` replaced and everything else as it was;
    ``default`` set where there is none, or with ``make_default``."""
    connection = {"address": address, "root-certificates": str(ca_cert)}
    superlink = config.get("superlink", {}) | {NAME: connection}
    if make_default or "default" not in superlink:
        superlink["default"] = NAME
    return config | {"superlink": superlink}


def read_config(path: Path) -> dict[str, Any]:
    """The existing config.toml, or an empty one where there is none; one that is not TOML, or
    whose ``superlink`` is not a table, is refused rather than replaced."""
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise ConnectionRefused(f"cannot read {path}: {err.strerror}; nothing written") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConnectionRefused(f"cannot read {path}: it is not TOML ({err}); nothing written, "
                                "fix or move it first") from None
    if not isinstance(config.get("superlink", {}), dict):
        raise ConnectionRefused(f"cannot read {path}: its 'superlink' is not a table; nothing "
                                "written, fix or move it first")
    return config


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Write ``config`` to a temporary file beside ``path`` and rename it over ``path``, with
    the old file's permissions: a failure leaves the old file as it was."""
    text = tomli_w.dumps(config)
    if tomllib.loads(text) != config:
        raise ConnectionRefused(f"{path} would not read back as written; nothing written")
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
    handle, tmp = tempfile.mkstemp(prefix=".config.toml.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refuse(message: str) -> NoReturn:
    """One line, exit status 2, as the other deploy scripts refuse."""
    print(f"flwr-connection: {message}", file=sys.stderr)
    sys.exit(2)


def main() -> None:
    parser = argparse.ArgumentParser(prog="flwr-connection", description=__doc__.splitlines()[0])
    parser.add_argument("--default", action="store_true",
                        help=f"make '{NAME}' the default connection even if another is")
    parser.add_argument("address", metavar="HOST:PORT")
    parser.add_argument("ca_cert", metavar="CA_CERT")
    args = parser.parse_args()
    path = Path(os.environ["FLWR_HOME"]) / "config.toml"
    try:
        address, ca_cert = superlink_address(args.address), ca_certificate(args.ca_cert)
        path.parent.mkdir(parents=True, exist_ok=True)
        config = merged(read_config(path), address, ca_cert, args.default)
        write_config(path, config)
    except ConnectionRefused as err:
        refuse(str(err))
    except OSError as err:
        refuse(f"cannot write {path}: {err.strerror}")
    default = config["superlink"]["default"]
    print(f"wrote {path} (connection '{NAME}' to {address}; the default connection is "
          f"'{default}')")


if __name__ == "__main__":
    main()
