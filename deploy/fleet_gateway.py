"""The SuperLink's public address: forwards the sites' Fleet API and nothing else.

Flower 1.41 serves its Fleet API (sites), Control API (`flwr run`, `flwr supernode register`)
and Runtime API (the ServerApp) on one port, and the open-source SuperLink accepts Control API
requests from anyone who reaches that port. So `deploy/superlink.sh` binds the SuperLink to
127.0.0.1 and starts this gateway on the public address: it terminates TLS with the
SuperLink's certificate and forwards only `POST /v1/fleet/<call>` and `GET /health` to the
SuperLink. Anyone who wants to submit a run must first log in to the SuperLink's machine
(or open an SSH tunnel to it): that login is the operator's authentication.

    usage: python deploy/fleet_gateway.py --listen HOST:PORT --upstream 127.0.0.1:PORT \
        --ca-cert ca.crt --certfile superlink.crt --keyfile superlink.key
"""

import argparse
import contextlib
import re
import ssl
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

FLEET_CALL = re.compile(r"[a-z][a-z-]{0,63}")
# Headers that describe one hop, not the request; httpx sets its own.
HOP_HEADERS = {"host", "connection", "content-length", "transfer-encoding", "keep-alive",
               "accept-encoding", "content-encoding", "upgrade", "te", "trailer"}
UPSTREAM_TIMEOUT_S = 120.0


def make_app(upstream: str, ca_cert: str) -> Starlette:
    """The gateway: Fleet calls and the health check go to ``upstream``; all else gets 404."""
    # The SuperLink on loopback is verified against the CA, not by name: its certificate names
    # the public address, which need not include 127.0.0.1.
    context = ssl.create_default_context(cafile=ca_cert)
    context.check_hostname = False
    client = httpx.AsyncClient(base_url=f"https://{upstream}", verify=context,
                               timeout=UPSTREAM_TIMEOUT_S)

    async def fleet(request: Request) -> Response:
        call = request.path_params["call"]
        if not FLEET_CALL.fullmatch(call):
            return _not_here()
        return await _forward(client, "POST", f"/v1/fleet/{call}", request)

    async def health(request: Request) -> Response:
        return await _forward(client, "GET", "/health", request)

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


async def _forward(client: httpx.AsyncClient, method: str, path: str,
                   request: Request) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
    try:
        reply = await client.request(method, path, headers=headers,
                                     content=await request.body())
    except httpx.HTTPError:
        return JSONResponse({"detail": "the SuperLink is not reachable"}, status_code=502)
    reply_headers = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_HEADERS}
    return Response(reply.content, status_code=reply.status_code, headers=reply_headers)


def _not_here() -> Response:
    return JSONResponse({"detail": "only the Fleet API is served on this address; the "
                         "operator submits runs on the SuperLink's machine"}, status_code=404)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, metavar="HOST:PORT")
    parser.add_argument("--upstream", required=True, metavar="127.0.0.1:PORT")
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    uvicorn.run(make_app(args.upstream, args.ca_cert), host=host.strip("[]"), port=int(port),
                ssl_certfile=args.certfile, ssl_keyfile=args.keyfile, log_level="warning")


if __name__ == "__main__":
    main()
