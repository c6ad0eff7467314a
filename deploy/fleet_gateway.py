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
(``superlink_checks.check_server_certificate``), with one line naming the files; with
``--check-certificate`` it does only that, so ``deploy/superlink.sh`` refuses before starting
anything. It warns when the certificate expires within
``superlink_checks.EXPIRY_WARNING_DAYS``.

    usage: python deploy/fleet_gateway.py --listen HOST:PORT --upstream 127.0.0.1:PORT \
        --ca-cert ca.crt --certfile superlink.crt --keyfile superlink.key [--public-name NAME] \
        [--max-body-mib N] [--check-certificate]
"""

import argparse
import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from superlink_checks import (
    body_limit_mib,
    check_server_certificate,
    client_context,
    names_line,
    refused_exits,
)

from fl_protocol.settings import SettingRefused, host_and_port

FLEET_CALL = re.compile(r"[a-z][a-z-]{0,63}")
# Headers that describe one hop, not the request; httpx sets its own.
HOP_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "keep-alive",
               "accept-encoding", "content-encoding", "upgrade", "te", "trailer"}
UPSTREAM_TIMEOUT_S = 120.0
MIB = 2**20

MAX_BODY_MIB = 64
"""The largest request body forwarded (``--max-body-mib``). A site's largest request pushes one
object of its model update: Flower cuts arrays into chunks of at most 5 MiB
(``FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE``), but a secure-aggregation round sends the whole masked
update as one record of 32-bit words: 6.9 MiB for ``minilm-finetune`` on BANKING77's 77 intents
(1.8 M weights), the largest family. 64 MiB is nine times that, enough for ``ngram`` (8192
weights per intent) with 2,000 intents; a larger taxonomy needs a larger limit."""

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
    context = client_context(ca_cert)
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



def listen_address(text: str) -> tuple[str, int]:
    """``--listen HOST:PORT`` as (host, port), with the port in [1, 65535] (a larger one had
    bound the port modulo 65536) and an IPv6 host's brackets taken off."""
    address = host_and_port(text)
    if address is None:
        raise argparse.ArgumentTypeError(f"must be HOST:PORT with a port in [1, 65535], got "
                                         f"{text!r}")
    return address[0].strip("[]"), address[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", type=listen_address)
    parser.add_argument("--upstream", required=True, metavar="127.0.0.1:PORT")
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    parser.add_argument("--public-name", metavar="NAME",
                        help="the DNS name or IP address the sites connect to, where it is not "
                             "--listen's host (behind NAT): the certificate is checked against "
                             "it (default: --listen's host)")
    parser.add_argument("--max-body-mib", default=str(MAX_BODY_MIB),
                        help="largest request body forwarded, in MiB (default: %(default)s)")
    parser.add_argument("--check-certificate", action="store_true",
                        help="only check --ca-cert, --certfile and --keyfile, as before "
                             "serving, and exit")
    args = parser.parse_args()
    try:
        max_body_mib = body_limit_mib(args.max_body_mib, "--max-body-mib")
    except SettingRefused as err:
        parser.error(str(err))
    host, port = args.listen
    name, setting = ((args.public_name.strip("[]"), "SUPERLINK_PUBLIC_NAME") if args.public_name
                     else (host, "SUPERLINK_HOST"))
    warning = refused_exits(lambda: check_server_certificate(
        args.certfile, args.keyfile, args.ca_cert, host=name, host_setting=setting))
    if args.check_certificate:
        print(f"superlink: {names_line(args.certfile)}")
        return  # the expiry warning comes once, when the gateway starts
    if warning:
        print(f"superlink: {warning}", file=sys.stderr)
    app = refused_exits(lambda: make_app(args.upstream, args.ca_cert, max_body_mib))
    uvicorn.run(app, host=host, port=port, ssl_certfile=args.certfile,
                ssl_keyfile=args.keyfile, log_level="warning")


if __name__ == "__main__":
    main()
