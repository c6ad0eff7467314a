#!/usr/bin/env python3
"""Is this site's SuperNode up? The site container's HEALTHCHECK; also runs as is outside one.

Asks the SuperNode's gRPC health service (``flower-supernode --health-server-address``, which
``deploy/site-entrypoint.sh`` starts on 127.0.0.1:HEALTH_PORT) and exits 0 when it answers
SERVING, 1 otherwise, with one line saying which. SERVING means the SuperNode process is running;
whether it reaches the SuperLink shows in its log (docs/SITE_GUIDE.md, "Logs and health").

    site_healthcheck.py [HOST:PORT]     (default: 127.0.0.1:$HEALTH_PORT)
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 5.0


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        sys.exit("usage: site_healthcheck.py [HOST:PORT]")
    if argv:
        address = argv[0]
    elif os.environ.get("HEALTH_PORT"):
        address = f"127.0.0.1:{os.environ['HEALTH_PORT']}"
    else:
        sys.exit("site_healthcheck: set HEALTH_PORT (as site-entrypoint.sh got it) or pass "
                 "HOST:PORT")
    request = health_pb2.HealthCheckRequest()
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S)
        except grpc.RpcError as err:
            print(f"site_healthcheck: no answer from the SuperNode's health service at "
                  f"{address} ({err.code().name})", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"site_healthcheck: SuperNode at {address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
