"""The SuperLink's public address: forwards the sites' Fleet API and nothing else.

Flower 1.41 serves its Fleet API (sites), Control API (`flwr run`, `flwr supernode register`)
and Runtime API (the ServerApp) on one port, and the open-source SuperLink accepts Control API
requests from anyone who reaches that port. So `deploy/superlink.sh` binds the SuperLink to
127.0.0.1 and starts this gateway on the public address: it terminates TLS with the
SuperLink's certificate and forwards only `POST /v1/fleet/<call>` and `GET /health` to the
SuperLink. Anyone who wants to submit a run must first log in to the SuperLink's machine
(or open an SSH tunnel to it): that login is the operator's authentication.

The SuperLink authenticates a site only once the gateway has forwarded its request, so the
gateway holds request bodies from anyone: it refuses one over ``--max-body-mib`` (413) and
answers 503 while the bodies it holds together would pass ``BUFFERED_BODIES`` times that, or
one address's ``PEER_BODIES`` times; a body that stalls for ``BODY_IDLE_S`` gets 408.

Before serving, it refuses a certificate and key it cannot serve, or would serve in vain
(unreadable, not PEM, not one pair, expired or not yet valid, a CA's own), and a CA certificate
that does not verify them, with one line naming the files; with ``--check-certificate`` it does
only that, so ``deploy/superlink.sh`` refuses before starting anything. It warns when the
certificate expires within ``EXPIRY_WARNING_DAYS``.

With ``--check-settings`` alone it checks ``deploy/superlink.sh``'s environment instead
(:func:`check_settings`), so that a misspelled, empty or out-of-range setting is refused before
anything starts, naming the variable.

    usage: python deploy/fleet_gateway.py --listen HOST:PORT --upstream 127.0.0.1:PORT \
        --ca-cert ca.crt --certfile superlink.crt --keyfile superlink.key [--max-body-mib N] \
        [--check-certificate]
    usage: python deploy/fleet_gateway.py --check-settings
"""

import argparse
import asyncio
import contextlib
import datetime
import os
import re
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import uvicorn
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from fl_protocol.settings import SettingRefused, check_names, port_setting

FLEET_CALL = re.compile(r"[a-z][a-z-]{0,63}")
# Headers that describe one hop, not the request; httpx sets its own.
HOP_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "keep-alive",
               "accept-encoding", "content-encoding", "upgrade", "te", "trailer"}
UPSTREAM_TIMEOUT_S = 120.0
MIB = 2**20
Checked = TypeVar("Checked")

MAX_BODY_MIB = 64
"""The largest request body forwarded (``--max-body-mib``). A site's largest request pushes one
object of its model update: Flower cuts arrays into chunks of at most 5 MiB
(``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), but a secure-aggregation round sends the whole masked
update as one record of 32-bit words: 6.9 MiB for ``minilm-finetune`` on BANKING77's 77 intents
(1.8 M weights), the largest family. 64 MiB is nine times that, enough for ``ngram`` (8192
weights per intent) with 2,000 intents; a larger taxonomy needs a larger limit."""

MAX_BODY_LIMIT_MIB = 2**20
"""The largest ``--max-body-mib`` (``FLEET_MAX_BODY_MIB``) accepted: 1 TiB, a limit in name only,
but a number."""

BODY_IDLE_S = 30.0
"""The longest a request body may go without a new byte (408 after it): a stalled sender lets
go of what it held (found in review: eight senders stalling one byte short of the limit held the
whole budget, and every site got 503, for as long as they kept their sockets open)."""

PEER_BODIES = 2
"""Bodies of the largest size one client address may have held at once (503 past it), so that
one address cannot take the whole budget."""

BUFFERED_BODIES = 8
"""How many bodies of the largest size the gateway holds at once, all requests together: past
that it answers 503, which Flower's SuperNodes retry with backoff. Without it, many connections,
each within the limit, would add up to any amount of memory (found in review: one 1.5 GB upload
took the gateway from 42 MB to 2.8 GB, and the SuperLink stops when the gateway does)."""

SETTINGS = ("CERT_DIR", "SUPERLINK_HOST", "SUPERLINK_PORT", "CONTROL_PORT", "RELEASE_PORT",
            "SUPERLINK_DATABASE", "FLEET_MAX_BODY_MIB")
"""deploy/superlink.sh's environment settings."""

PREFIXED_SETTINGS = ("SUPERLINK_HOST", "SUPERLINK_PORT", "SUPERLINK_DATABASE",
                     "FLEET_MAX_BODY_MIB")
"""The settings whose name after a prefix (``FEDINTENT_SUPERLINK_HOST``) is refused too; not
CERT_DIR (OpenSSL's ``SSL_CERT_DIR``) or the generic ``*_PORT`` names other tools set."""

PORT_SETTINGS = ("SUPERLINK_PORT", "CONTROL_PORT", "RELEASE_PORT")

SQLITE_HEADER = b"SQLite format 3\0"

EXPIRY_WARNING_DAYS = 30
"""Warn at start when the SuperLink's certificate expires within this many days: past that date
every site and ``fedintent deploy-run`` refuses the SuperLink, and a site's Flower reports that
as a network problem."""


class CertificateRefused(Exception):
    """The SuperLink's certificate and key cannot be served; the message names both files."""


class BodyRefused(Exception):
    """A request body the gateway does not hold: ``status`` and ``detail`` are the answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass
class BodyBudget:
    """Bytes of request bodies held now (``held``; ``peers``: by client address), against one
    body's ``limit``, all bodies' ``total`` and ``PEER_BODIES`` bodies per address, each body
    read with at most ``idle_s`` between its bytes; one event loop updates it, so it needs no
    lock."""

    limit: int
    total: int
    idle_s: float = BODY_IDLE_S
    held: int = 0
    peers: dict[str, int] = field(default_factory=dict)


def make_app(upstream: str, ca_cert: str, max_body_mib: float = MAX_BODY_MIB,
             body_idle_s: float = BODY_IDLE_S) -> Starlette:
    """The gateway: Fleet calls and the health check go to ``upstream``; all else gets 404."""
    context = _client_context(ca_cert)
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=context,
                               timeout=UPSTREAM_TIMEOUT_S)
    limit = int(max_body_mib * MIB)
    budget = BodyBudget(limit=limit, total=BUFFERED_BODIES * limit, idle_s=body_idle_s)

    async def fleet(request: Request) -> Response:
        call = request.path_params["call"]
        if not FLEET_CALL.fullmatch(call):
            return _not_here()
        return await _forward(client, "POST", f"/v1/fleet/{call}", request, budget)

    async def health(request: Request) -> Response:
        return await _forward(client, "GET", "/health", request, budget)

    async def refuse(request: Request) -> Response:
        return _not_here()

    routes = [
        Route("/v1/fleet/{call}", fleet, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        Route("/{path:path}", refuse, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
    ]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client:
            yield

    return Starlette(routes=routes, lifespan=lifespan)


async def _forward(client: httpx.AsyncClient, method: str, path: str, request: Request,
                   budget: BodyBudget) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    try:
        async with _held_body(request, budget) as body:
            reply = await client.request(method, path, headers=headers, content=body)
    except BodyRefused as refused:
        return JSONResponse({"detail": refused.detail}, status_code=refused.status)
    except httpx.HTTPError:
        return JSONResponse({"detail": "the SuperLink is not reachable"}, status_code=502)
    reply_headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
    return Response(reply.content, status_code=reply.status_code, headers=reply_headers)


@contextlib.asynccontextmanager
async def _held_body(request: Request, budget: BodyBudget) -> AsyncIterator[bytes]:
    """The request's body, read as it arrives and counted in ``budget`` while it is held:
    refused (:class:`BodyRefused`) as soon as it passes the limit, whatever its
    ``Content-Length`` says (413), when it stalls for ``budget.idle_s`` (408), or while all
    held bodies, or its address's, would pass their share (503)."""
    declared = request.headers.get("content-length", "")
    if declared.isdecimal() and int(declared) > budget.limit:
        raise _too_large(budget)
    peer = request.client.host if request.client else ""
    chunks: list[bytes] = []
    size = 0
    stream = aiter(request.stream())
    try:
        while True:
            try:
                async with asyncio.timeout(budget.idle_s):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise BodyRefused(408, f"no byte of the request body for {budget.idle_s:g} "
                                  "s") from None
            size += len(chunk)
            budget.held += len(chunk)
            budget.peers[peer] = budget.peers.get(peer, 0) + len(chunk)
            if size > budget.limit:
                raise _too_large(budget)
            if budget.held > budget.total or budget.peers[peer] > PEER_BODIES * budget.limit:
                raise BodyRefused(503, "the gateway holds too many request bodies; retry later")
            chunks.append(chunk)
        body = b"".join(chunks)
        chunks.clear()
        yield body
    finally:
        budget.held -= size
        budget.peers[peer] = budget.peers.get(peer, 0) - size
        if budget.peers[peer] <= 0:
            del budget.peers[peer]


def _too_large(budget: BodyBudget) -> BodyRefused:
    return BodyRefused(413, f"request body over the gateway's limit of {budget.limit} bytes "
                       f"(fleet_gateway.py --max-body-mib)")


def _not_here() -> Response:
    return JSONResponse({"detail": "only the Fleet API is served on this address; the "
                         "operator submits runs on the SuperLink's machine"}, status_code=404)


def check_server_certificate(certfile: str, keyfile: str, ca_cert: str,
                             now: datetime.datetime | None = None) -> str | None:
    """Refuse (:class:`CertificateRefused`) a certificate and key that are unreadable, not PEM,
    not one pair, a CA's own, expired or not yet valid at ``now``, and a ``ca_cert`` that does
    not verify them; return a warning when the certificate expires within
    ``EXPIRY_WARNING_DAYS``. uvicorn had refused the first with a traceback naming neither file
    (``PEM lib``, ``KEY_VALUES_MISMATCH``), and served an expired one, one from another CA, or
    the CA's own pair (its key then on the SuperLink, against the guide) without a word: every
    site then reported a network problem (found in review)."""
    pair = f"cannot use {certfile} and {keyfile}"
    try:
        cert = _leaf_certificate(Path(certfile))
        public_key = _public_key(Path(keyfile))
    except CertificateRefused as err:
        raise CertificateRefused(f"{pair}: {err}") from None
    if _spki(cert.public_key()) != public_key:
        raise CertificateRefused(f"{pair}: the key is not the certificate's (their public keys "
                                 "differ)")
    if _is_ca(cert):
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
    if expires - now <= datetime.timedelta(days=EXPIRY_WARNING_DAYS):
        return (f"warning: {certfile} expires on {expires:%Y-%m-%d %H:%M} UTC, in "
                f"{(expires - now).days} days: renew it and restart the SuperLink before then")
    return None


def _check_ca_certificate(path: Path, certfile: str, keyfile: str) -> None:
    """Refuse a ``ca.crt`` that is unreadable, holds no PEM certificate or one that is not a
    CA's, or does not verify ``certfile`` as a site would: the gateway verifies the SuperLink
    against it, so with the wrong file every forwarded request got 502, and the sites reported
    a network problem (found in review)."""
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
    if not all(_is_ca(authority) for authority in authorities):
        raise CertificateRefused(f"{refused}: it is not a CA certificate (basicConstraints "
                                 "CA:FALSE or missing)")
    reason = _verify_message(str(path), certfile, keyfile)
    if reason:
        raise CertificateRefused(f"{refused}: it does not verify {certfile} ({reason})")


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _verify_message(ca_cert: str, certfile: str, keyfile: str) -> str | None:
    """OpenSSL's reason ("unable to get local issuer certificate", ...) for refusing the server
    ``certfile`` when trusting ``ca_cert`` alone, as the sites and the gateway do, or None: one
    TLS handshake in memory, so a chain in either file counts as it does on the wire. A pair no
    client can connect to at all (a DSA key: no shared cipher) is refused naming the pair."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(certfile, keyfile)
    client_in, client_out, server_in, server_out = (ssl.MemoryBIO() for _ in range(4))
    client = _client_context(ca_cert).wrap_bio(client_in, client_out)
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


def _client_context(ca_cert: str) -> ssl.SSLContext:
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
    misspelled or empty setting, a port outside [1, 65535] or shared by two settings, a body
    limit that is not a number of MiB, and a ``SUPERLINK_DATABASE`` Flower cannot open (each
    had been a traceback after start, or a silent fallback; found in review)."""
    check_names(environ, SETTINGS, PREFIXED_SETTINGS, "deploy/superlink.sh")
    ports: dict[int, str] = {}
    for name in (name for name in PORT_SETTINGS if name in environ):
        port = port_setting(environ, name)
        if port in ports:
            raise SettingRefused(f"{ports[port]} and {name} are both {port}; each needs its own "
                                 "port")
        ports[port] = name
    if "FLEET_MAX_BODY_MIB" in environ:
        _max_body_mib(environ["FLEET_MAX_BODY_MIB"], "FLEET_MAX_BODY_MIB")
    if "SUPERLINK_DATABASE" in environ:
        _check_database(environ["SUPERLINK_DATABASE"])


def _max_body_mib(text: str, name: str) -> float:
    """``text`` as a body limit in MiB, in (0, ``MAX_BODY_LIMIT_MIB``]; the error names
    ``name``, the setting or option the operator wrote."""
    try:
        mib = float(text)
    except ValueError:
        mib = float("nan")
    if not 0 < mib <= MAX_BODY_LIMIT_MIB:
        raise SettingRefused(f"{name} must be a number of MiB in (0, {MAX_BODY_LIMIT_MIB}], "
                             f"got {text}")
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


def listen_address(text: str) -> tuple[str, int]:
    """``--listen HOST:PORT`` as (host, port), with the port in [1, 65535]: a larger one had
    bound the port modulo 65536."""
    host, _, port = text.rpartition(":")
    if not host or not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        raise argparse.ArgumentTypeError(f"must be HOST:PORT with a port in [1, 65535], got "
                                         f"{text!r}")
    return host.strip("[]"), int(port)


def _refused_exits(check: Callable[[], Checked]) -> Checked:
    """``check()``'s result; a refusal is one line and exit status 2."""
    try:
        return check()
    except (CertificateRefused, SettingRefused) as err:
        print(f"superlink: {err}", file=sys.stderr)
        sys.exit(2)


def main() -> None:
    if sys.argv[1:] == ["--check-settings"]:
        _refused_exits(lambda: check_settings(os.environ))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", type=listen_address)
    parser.add_argument("--upstream", required=True, metavar="127.0.0.1:PORT")
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--max-body-mib", default=str(MAX_BODY_MIB),
                        help="largest request body forwarded, in MiB (default: %(default)s)")
    parser.add_argument("--check-certificate", action="store_true",
                        help="only check --ca-cert, --certfile and --keyfile, as before "
                             "serving, and exit")
    args = parser.parse_args()
    try:
        max_body_mib = _max_body_mib(args.max_body_mib, "--max-body-mib")
    except SettingRefused as err:
        parser.error(str(err))
    warning = _refused_exits(lambda: check_server_certificate(args.certfile, args.keyfile,
                                                              args.ca_cert))
    if args.check_certificate:
        return  # the warning comes once, when the gateway starts
    if warning:
        print(f"superlink: {warning}", file=sys.stderr)
    app = _refused_exits(lambda: make_app(args.upstream, args.ca_cert, max_body_mib))
    host, port = args.listen
    uvicorn.run(app, host=host, port=port, ssl_certfile=args.certfile,
                ssl_keyfile=args.keyfile, log_level="warning")


if __name__ == "__main__":
    main()
