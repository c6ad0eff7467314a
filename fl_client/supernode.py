"""The site's Flower SuperNode (``fedintent-supernode``): Flower's own, refusing HTTP redirects.

Flower 1.41's SuperNode talks to the SuperLink through one ``httpx`` client that follows
redirects, from https to plain http included, re-sending the request body and the site's signed
login headers (found in review: a SuperLink answering 307 had the site POST its messages in
clear text to any host, inside the site's network too, and its headers could be replayed as the
site for minutes). A site must not need to trust the server, so every connection it makes goes
to the SUPERLINK it was given, over TLS, and a redirect is an error. Everything else is
``flower-supernode``, with the same arguments (deploy/site-entrypoint.sh passes them).
"""

import sys

from flwr.supercore.protobuf import client as protobuf_client
from flwr.supernode.cli import flower_supernode

REFUSED = ("fedintent-supernode: Flower's SuperNode HTTP client "
           "(flwr.supercore.protobuf.client.ProtobufClient) is not the one this site was "
           "built for, so its redirects cannot be turned off; refusing to start")


def refuse_redirects() -> None:
    """Make every SuperLink client Flower creates refuse redirects; ``SystemExit`` if Flower's
    client no longer has the shape this relies on. tests/test_site_supernode.py checks that a
    redirect is really refused, so a Flower upgrade that sends another way fails there."""
    client_class = protobuf_client.ProtobufClient
    original = client_class.__init__
    if getattr(original, "refuses_redirects", False):
        return

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        self._client.follow_redirects = False

    init.refuses_redirects = True
    client_class.__init__ = init
    try:
        probe = client_class("https://127.0.0.1:1")
    except AttributeError as err:
        raise SystemExit(f"{REFUSED} ({err})") from None
    try:
        if probe._client.follow_redirects is not False:
            raise SystemExit(REFUSED)
    finally:
        probe.close()


def main() -> None:
    refuse_redirects()
    sys.exit(flower_supernode())
