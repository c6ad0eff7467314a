"""What ``deploy/superlink.sh`` refuses before it starts anything, each in one line naming the
file or the variable, exit status 2: Flower would start with them, and the sites report the
fault as a network problem, or it fails after the SuperLink has started, naming nothing.

:func:`check_settings` takes superlink.sh's environment: a misspelled, empty or out-of-range
setting, a host that is no address of this machine, a port in use.
:func:`check_server_certificate` takes the certificate and key the Fleet gateway serves
(unreadable, not PEM, not one pair, expired or not yet valid, a CA's own, not valid for the
sites' address) and a CA certificate that does not verify them; ``deploy/fleet_gateway.py``
runs it before serving, and with ``--check-certificate`` only it.

    usage: python deploy/superlink_checks.py   (checks the environment, as superlink.sh does)
"""

import argparse
import contextlib
import datetime
import ipaddress
import math
import os
import socket
import ssl
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from fedintent.launch.certificates import ca_file_problem, is_ca_certificate
from fl_protocol.settings import SettingRefused, check_names, port_setting
from fl_protocol.written_numbers import written_number

Checked = TypeVar("Checked")

SETTINGS = ("CERT_DIR", "SUPERLINK_HOST", "SUPERLINK_PUBLIC_NAME", "SUPERLINK_PORT",
            "CONTROL_PORT", "RELEASE_PORT", "SUPERLINK_DATABASE", "FLEET_MAX_BODY_MIB")
"""deploy/superlink.sh's environment settings."""

PREFIXED_SETTINGS = ("SUPERLINK_HOST", "SUPERLINK_PUBLIC_NAME", "SUPERLINK_PORT",
                     "SUPERLINK_DATABASE", "FLEET_MAX_BODY_MIB")
"""The settings whose name after ``OWN_PREFIX`` (``FEDINTENT_SUPERLINK_HOST``) is refused too;
not CERT_DIR (OpenSSL's ``SSL_CERT_DIR``) or the generic ``*_PORT`` names other tools set."""

OWN_PREFIX = "FEDINTENT_"
"""The one prefix taken for a misspelling: a setting after any other prefix is another
program's variable (``MY_APP_SUPERLINK_PORT``, Docker links' ``SUPERLINK_ENV_SUPERLINK_HOST``)."""

LOOPBACK = "127.0.0.1"
"""Where the SuperLink (CONTROL_PORT, its Fleet, Control and Runtime APIs on one port) and
deploy-run's release hand-over (RELEASE_PORT) listen; SUPERLINK_PORT is on SUPERLINK_HOST."""

WILDCARD_HOSTS = ("0.0.0.0", "::")
"""SUPERLINK_HOST values meaning every interface: no one name for the certificate to cover."""

MIN_BODY_MIB = 1
"""The smallest ``--max-body-mib`` (``FLEET_MAX_BODY_MIB``): 1e-9 had made a 0-byte limit, and
every request got 413 (found in review)."""

MAX_BODY_LIMIT_MIB = 2**20
"""The largest ``--max-body-mib`` (``FLEET_MAX_BODY_MIB``) accepted: 1 TiB, a limit in name only,
but a number."""

PORT_SETTINGS = ("SUPERLINK_PORT", "CONTROL_PORT", "RELEASE_PORT")

SQLITE_HEADER = b"SQLite format 3\0"

EXPIRY_WARNING_DAYS = 30
"""Warn at start when the SuperLink's certificate expires within this many days: past that date
every site and ``fedintent deploy-run`` refuses the SuperLink, and a site's Flower reports that
as a network problem."""


class CertificateRefused(Exception):
    """The SuperLink's certificate and key cannot be served; the message names both files."""


def check_server_certificate(certfile: str, keyfile: str, ca_cert: str,
                             now: datetime.datetime | None = None,
                             host: str | None = None,
                             host_setting: str = "SUPERLINK_HOST") -> str | None:
    """Refuse (:class:`CertificateRefused`) a certificate and key that are unreadable, not PEM,
    not one pair, a CA's own, expired or not yet valid at ``now``, not valid for ``host`` (the
    address the sites connect to, given as ``host_setting``, unless every interface), and a
    ``ca_cert`` that does not verify them; return a warning when the certificate expires within
    ``EXPIRY_WARNING_DAYS``. uvicorn had refused the first with a traceback naming neither file
    (``PEM lib``, ``KEY_VALUES_MISMATCH``), and served an expired one, one from another CA, for
    another name, or the CA's own pair (its key then on the SuperLink, against the guide)
    without a word: every site then reported a network problem (found in review)."""
    pair = f"cannot use {certfile} and {keyfile}"
    try:
        cert = _leaf_certificate(Path(certfile))
        public_key = _public_key(Path(keyfile))
    except CertificateRefused as err:
        raise CertificateRefused(f"{pair}: {err}") from None
    if _spki(cert.public_key()) != public_key:
        raise CertificateRefused(f"{pair}: the key is not the certificate's (their public keys "
                                 "differ)")
    if is_ca_certificate(cert):
        raise CertificateRefused(f"cannot use {certfile}: it is a CA certificate "
                                 "(basicConstraints CA:TRUE); the SuperLink needs its own "
                                 "certificate, issued by the CA, and the CA's key kept away")
    now = now or datetime.datetime.now(datetime.UTC)
    starts, expires = cert.not_valid_before_utc, cert.not_valid_after_utc
    if starts > now:
        raise CertificateRefused(f"cannot use {certfile}: it is not valid before "
                                 f"{starts:%Y-%m-%d %H:%M} UTC; check this machine's clock, or "
                                 "issue one valid now")
    if expires <= now:
        raise CertificateRefused(f"cannot use {certfile}: it expired on {expires:%Y-%m-%d %H:%M} "
                                 "UTC; renew it and start the SuperLink again")
    _check_ca_certificate(Path(ca_cert), certfile, keyfile)
    if host and host not in WILDCARD_HOSTS:
        _check_host(host, host_setting, ca_cert, certfile, keyfile)
    if expires - now <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return (f"warning: {certfile} expires on {expires:%Y-%m-%d %H:%M} UTC, in "
                f"{(expires - now).days} days: renew it and restart the SuperLink before then")
    return None


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses in ``cert``'s subjectAltName, the names a site may
    connect to (none where it has no subjectAltName)."""
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [*names.get_values_for_type(x509.DNSName),
            *map(str, names.get_values_for_type(x509.IPAddress))]


def names_line(certfile: str) -> str:
    """The line that says which names ``certfile`` covers, so the operator sees what the sites
    must connect to; a warning where it has no subjectAltName (Python falls back to the common
    name, and the check passed; not every TLS client does)."""
    names = certificate_names(_leaf_certificate(Path(certfile)))
    return (f"{certfile} covers {', '.join(names)}" if names else
            f"warning: {certfile} has no subjectAltName: Python takes its common name instead, "
            "other TLS clients refuse it; reissue it with the SuperLink's address as a "
            "subjectAltName")


def _check_host(host: str, host_setting: str, ca_cert: str, certfile: str, keyfile: str) -> None:
    """Refuse a certificate not valid for ``host``, checked as a site's TLS client checks it
    (OpenSSL's name matching: IP addresses, DNS names, wildcards): a site then failed with
    "Hostname mismatch", which it reports as a network problem (found in review)."""
    reason = _verify_message(ca_cert, certfile, keyfile, host)
    if reason:
        names = certificate_names(_leaf_certificate(Path(certfile))) or ["no subjectAltName"]
        raise CertificateRefused(f"cannot use {certfile}: it is not valid for {host}, the "
                                 f"address the sites connect to ({host_setting}); it covers "
                                 f"{', '.join(names)}")


def _check_ca_certificate(path: Path, certfile: str, keyfile: str) -> None:
    """Refuse a ``ca.crt`` that is unreadable, holds no PEM certificate, one that is not a CA's
    or a private key (the CA's would then sit on the SuperLink), or does not verify
    ``certfile`` as a site would: the gateway verifies the SuperLink against it, so with the
    wrong file every forwarded request got 502, and the sites reported a network problem
    (found in review)."""
    refused = f"cannot use {path}"
    try:
        data = path.read_bytes()
    except OSError as err:
        raise CertificateRefused(f"{refused}: cannot read it: {err.strerror}") from None
    if not data.strip():
        raise CertificateRefused(f"{refused}: it is empty")
    try:
        authorities = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateRefused(f"{refused}: it is not a PEM certificate") from None
    problem = ca_file_problem(data, authorities)
    if problem:
        raise CertificateRefused(f"{refused}: it {problem}")
    reason = _verify_message(str(path), certfile, keyfile)
    if reason:
        raise CertificateRefused(f"{refused}: it does not verify {certfile} ({reason})")


def _verify_message(ca_cert: str, certfile: str, keyfile: str,
                    host: str | None = None) -> str | None:
    """OpenSSL's reason ("unable to get local issuer certificate", "Hostname mismatch", ...)
    for refusing the server ``certfile`` when trusting ``ca_cert`` alone, and connecting to
    ``host`` where given, as the sites and the gateway do, or None: one TLS handshake in
    memory, so a chain in either file counts as it does on the wire. A pair no client can
    connect to at all (a DSA key: no shared cipher) is refused naming the pair."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    context = client_context(ca_cert)
    context.check_hostname = host is not None
    client = context.wrap_bio(client_in, client_out, server_hostname=host)
    served = server.wrap_bio(server_in, server_out, server_side=True)
    try:
        for _ in range(8):  # a TLS 1.3 handshake takes two round trips
            with contextlib.suppress(ssl.SSLWantReadError):
                client.do_handshake()
                return None
            server_in.write(client_out.read())
            with contextlib.suppress(ssl.SSLWantReadError):
                served.do_handshake()
            client_in.write(server_out.read())
    except ssl.SSLCertVerificationError as err:
        return err.verify_message
    except ssl.SSLError as err:
        raise CertificateRefused(f"cannot use {certfile} and {keyfile}: a TLS client cannot "
                                 f"connect with them ({err.reason or err})") from None
    raise CertificateRefused(f"cannot use {certfile} and {keyfile}: a TLS handshake with them "
                             "did not finish")


def client_context(ca_cert: str) -> ssl.SSLContext:
    """A client context trusting ``ca_cert`` alone; the SuperLink on loopback is verified
    against the CA, not by name: its certificate names the public address, which need not
    include 127.0.0.1. A file it cannot use is refused naming it (it had been a traceback)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    try:
        context.load_verify_locations(cafile=ca_cert)
    except ssl.SSLError as err:
        raise CertificateRefused(f"cannot use {ca_cert}: it is not a PEM CA certificate "
                                 f"({err.reason or err})") from None
    except OSError as err:
        raise CertificateRefused(f"cannot use {ca_cert}: cannot read it: {err.strerror}"
                                 ) from None
    return context


def _leaf_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file: the SuperLink's own (a chain may follow it)."""
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())[0]
    except OSError as err:
        raise CertificateRefused(f"cannot read {path}: {err.strerror}") from None
    except ValueError:
        raise CertificateRefused("the certificate is not a PEM certificate") from None


def _public_key(path: Path) -> bytes:
    """The public half of a PEM private key file, as SubjectPublicKeyInfo bytes."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as err:
        raise CertificateRefused(f"cannot read {path}: {err.strerror}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):  # TypeError: it has a passphrase
        raise CertificateRefused("the key is not a PEM private key without a passphrase"
                                 ) from None
    return _spki(key.public_key())


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def check_settings(environ: Mapping[str, str]) -> None:
    """Refuse (:class:`~fl_protocol.settings.SettingRefused`, naming the variable) what
    deploy/superlink.sh would otherwise start with in vain or against the operator's intent: a
    misspelled or empty setting, a ``SUPERLINK_HOST`` that is no host name or address of this
    machine, a ``SUPERLINK_PUBLIC_NAME`` that is no name to connect to, a port outside
    [1, 65535], shared by two settings on one address, or in use now, a body limit that is not
    a number of MiB, and a ``SUPERLINK_DATABASE`` Flower cannot open (each had been a traceback
    after start, or a silent fallback; found in review)."""
    check_names({name: value for name, value in environ.items() if not _other_program(name)},
                SETTINGS, PREFIXED_SETTINGS, "deploy/superlink.sh")
    if "SUPERLINK_HOST" in environ:
        _check_host_setting(environ["SUPERLINK_HOST"])
    if "SUPERLINK_PUBLIC_NAME" in environ:
        _check_public_name(environ["SUPERLINK_PUBLIC_NAME"])
    addresses = _port_addresses(environ)
    _check_distinct_ports(addresses)
    for name, (host, port) in addresses.items():
        _check_bindable(name, host, port)
    if "FLEET_MAX_BODY_MIB" in environ:
        body_limit_mib(environ["FLEET_MAX_BODY_MIB"], "FLEET_MAX_BODY_MIB")
    if "SUPERLINK_DATABASE" in environ:
        _check_database(environ["SUPERLINK_DATABASE"])


def _other_program(name: str) -> bool:
    """Whether ``name`` is another program's variable that only contains a setting's name: it
    extends one (``SUPERLINK_HOSTNAME``, ``SUPERLINK_HOST_IP``, ``SUPERLINK_PORTS``) or ends with
    one after a prefix other than ``OWN_PREFIX`` (``MY_APP_SUPERLINK_PORT``, Docker links'
    ``SUPERLINK_ENV_SUPERLINK_HOST``); each had been refused as a misspelling (found in
    review)."""
    upper = name.upper()
    return any(upper.startswith(setting) and upper != setting
               or upper.endswith(f"_{setting}") and not upper.startswith(OWN_PREFIX)
               for setting in SETTINGS)


def _check_host_setting(value: str) -> None:
    """Refuse a ``SUPERLINK_HOST`` with a scheme, a ``:PORT`` (outside an IPv6 address),
    whitespace or control characters, or that getaddrinfo cannot resolve: the gateway had
    failed with "Name or service not known" after the SuperLink had started, naming nothing."""
    refused = f"SUPERLINK_HOST must be a host name or an address of this machine, got {value!r}"
    host = _host_form(value, refused, "set the port in SUPERLINK_PORT")
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise SettingRefused(f"SUPERLINK_HOST {value} cannot be resolved ({err.strerror})"
                             ) from None
    except UnicodeError:  # idna: a label too long, or empty
        raise SettingRefused(f"{refused} (not a valid host name)") from None


def _check_public_name(value: str) -> None:
    """Refuse a ``SUPERLINK_PUBLIC_NAME`` with a scheme, a ``:PORT`` (outside an IPv6 address),
    whitespace or control characters, every interface's address, or that is no valid host
    name: the certificate would be checked against a name no site dials. It is never resolved
    or bound here: behind NAT it names the router, and may resolve only outside."""
    refused = ("SUPERLINK_PUBLIC_NAME must be the DNS name or IP address the sites connect to, "
               f"got {value!r}")
    host = _host_form(value, refused, "give the name alone: a certificate covers no port")
    if host in WILDCARD_HOSTS:
        raise SettingRefused(refused)
    try:
        host.encode("idna")
    except UnicodeError:  # a label too long, or empty
        raise SettingRefused(f"{refused} (not a valid host name)") from None


def _host_form(value: str, refused: str, port_hint: str) -> str:
    """``value`` without an IPv6 address's brackets; refused (``refused``) with a scheme,
    whitespace or control characters, or a ``:PORT`` outside an IPv6 address (``port_hint``
    added)."""
    host = _bare_host(value)
    if "://" in value or any(c.isspace() or not c.isprintable() for c in value):
        raise SettingRefused(refused)
    if ":" in host and not _is_ipv6(host):
        raise SettingRefused(f"{refused} ({port_hint})")
    return host


def _bare_host(value: str) -> str:
    """``value`` without the brackets of an IPv6 address (``[::1]``), as ``--listen`` takes it."""
    return value[1:-1] if value.startswith("[") and value.endswith("]") else value


def _is_ipv6(host: str) -> bool:
    """Whether ``host`` is an IPv6 address, whose colons are no ``:PORT``."""
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _port_addresses(environ: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Each port setting in ``environ`` with the address it is bound on: SUPERLINK_PORT on
    SUPERLINK_HOST (0.0.0.0 where unset, as superlink.sh defaults it), the others on
    ``LOOPBACK``."""
    host = _bare_host(environ.get("SUPERLINK_HOST", "0.0.0.0"))
    return {name: (host if name == "SUPERLINK_PORT" else LOOPBACK, port_setting(environ, name))
            for name in PORT_SETTINGS if name in environ}


def _check_distinct_ports(addresses: Mapping[str, tuple[str, int]]) -> None:
    """Refuse two settings with one port on overlapping addresses: CONTROL_PORT and RELEASE_PORT
    always (both on ``LOOPBACK``), SUPERLINK_PORT with them only where SUPERLINK_HOST takes in
    ``LOOPBACK`` (every interface, or loopback itself): on another address the same number is
    another socket (found in review: 10.0.0.5 with 9091 and CONTROL_PORT 9091 was refused)."""
    seen: dict[int, tuple[str, str]] = {}
    for name, (host, port) in addresses.items():
        if port in seen and _overlap(seen[port][1], host):
            raise SettingRefused(f"{seen[port][0]} and {name} are both {port}; each needs its "
                                 "own port")
        seen[port] = (name, host)


def _overlap(first: str, second: str) -> bool:
    """Whether sockets bound on hosts ``first`` and ``second`` would take the same address:
    equal, or one is ``LOOPBACK`` and the other takes it in too."""
    return first == second or any(one == LOOPBACK and _takes_loopback(other)
                                  for one, other in ((first, second), (second, first)))


def _takes_loopback(host: str) -> bool:
    """Whether a socket bound on ``host`` takes ``LOOPBACK`` in: every interface, or a name
    for it (``localhost``)."""
    return host in WILDCARD_HOSTS or LOOPBACK in _resolved(host)


def _resolved(host: str) -> set[str]:
    """The addresses ``host`` resolves to (checked resolvable already)."""
    return {info[4][0] for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}


def _check_bindable(name: str, host: str, port: int) -> None:
    """Refuse a port that cannot be bound on ``host`` now (in use, or ``host`` not an address of
    this machine): the gateway or the SuperLink had failed with "address already in use" or
    "Cannot assign requested address" after the other had started (found in review). The
    socket is bound and closed, never listened on; SO_REUSEADDR as the servers set it, so a
    closed connection's TIME_WAIT does not count."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            where = f"{host} (SUPERLINK_HOST)" if name == "SUPERLINK_PORT" else host
            raise SettingRefused(f"{name} {port} cannot be bound on {where} now: "
                                 f"{err.strerror}") from None


def body_limit_mib(text: str, name: str) -> float:
    """``text`` as a body limit in MiB, in [``MIN_BODY_MIB``, ``MAX_BODY_LIMIT_MIB``], written
    in ASCII digits (``float`` had read full-width digits and ``1_0``); the error names
    ``name``, the setting or option the operator wrote."""
    try:
        mib = written_number(name, text)
    except ValueError:
        mib = math.nan
    if not MIN_BODY_MIB <= mib <= MAX_BODY_LIMIT_MIB:
        raise SettingRefused(f"{name} must be a number of MiB in [{MIN_BODY_MIB}, "
                             f"{MAX_BODY_LIMIT_MIB}], got {text}")
    return mib


def _check_database(value: str) -> None:
    """Refuse a ``SUPERLINK_DATABASE`` file path that is a folder, lies in a folder that does
    not exist, or is a file other than an SQLite database (read, never changed); Flower's own
    names (``:memory:``, ``sqlite://...``) are left to it."""
    if value.startswith(":") or "://" in value:
        return
    path, refused = Path(value), f"SUPERLINK_DATABASE {value}"
    if path.is_dir():
        raise SettingRefused(f"{refused} is a folder; give the state file's path, e.g. "
                             f"{path / 'superlink.db'}")
    if not path.parent.is_dir():
        raise SettingRefused(f"{refused}: its folder {path.parent} does not exist")
    if not path.exists():
        return
    try:
        with path.open("rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except OSError as err:
        raise SettingRefused(f"{refused}: cannot read it: {err.strerror}") from None
    if header and header != SQLITE_HEADER:
        raise SettingRefused(f"{refused} is not an SQLite database (left as it is); give the "
                             "SuperLink's state file, or a new path")


def refused_exits(check: Callable[[], Checked]) -> Checked:
    """``check()``'s result; a refusal is one line and exit status 2."""
    try:
        return check()
    except (CertificateRefused, SettingRefused) as err:
        print(f"superlink: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    """Check the environment superlink.sh exports, before it starts anything."""
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    refused_exits(lambda: check_settings(os.environ))


if __name__ == "__main__":
    main()
