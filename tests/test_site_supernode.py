"""The site's SuperNode (``fedintent-supernode``) sends only to the SuperLink it was given: a
SuperLink answering with a redirect to another address gets an error, and that address nothing
(Flower's own client follows it, from https to plain http, with the site's signed headers)."""

import http.server
import ssl
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.proto.fleet_pb2 import PushMessagesRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.protobuf.client import ProtobufClient
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from fedintent.launch.certificates import write_dev_credentials
from fl_client.supernode import refuse_redirects


def serve(handler: type, context: ssl.SSLContext | None = None) -> http.server.HTTPServer:
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    if context:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def redirecting_superlink(tmp_path):
    """A SuperLink with the site's trusted certificate whose every answer is a 307 to a
    plain-http server on this machine; yields (its address, the CA, what the other got)."""
    creds = write_dev_credentials(tmp_path / "creds", ["site-00"], ["127.0.0.1"], [])
    received: list[tuple[str, dict]] = []

    class Elsewhere(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            received.append((self.path, dict(self.headers)))
            self.send_response(500)
            self.end_headers()

        def log_message(self, *args):
            pass

    elsewhere = serve(Elsewhere)

    class Redirecting(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(307)
            self.send_header("Location",
                             f"http://127.0.0.1:{elsewhere.server_port}/internal/admin")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(creds.server_cert, creds.server_key)
    superlink = serve(Redirecting, tls)
    try:
        yield f"127.0.0.1:{superlink.server_port}", creds.ca_cert.read_bytes(), received
    finally:
        superlink.shutdown()
        elsewhere.shutdown()


def push(address: str, ca: bytes) -> Exception | None:
    key = ec.generate_private_key(ec.SECP384R1())
    with FleetHttpClient.from_server_address(
            address, False, ca, interceptors=[NodeAuthHttpInterceptor(key, key.public_key())],
    ) as client:
        try:
            client.PushMessages(PushMessagesRequest(node=Node(node_id=42)))
        except Exception as err:  # noqa: BLE001 - what the SuperNode would see
            return err
    return None


def test_the_site_supernode_refuses_a_redirect_that_flower_would_follow(redirecting_superlink,
                                                                         monkeypatch):
    address, ca, received = redirecting_superlink
    monkeypatch.setattr(ProtobufClient, "__init__", ProtobufClient.__init__)  # restored after
    push(address, ca)  # Flower's client as it comes: follows the redirect
    assert [path for path, _ in received] == ["/internal/admin"]
    assert "flwr-signature" in received[0][1]
    received.clear()
    refuse_redirects()
    refuse_redirects()  # idempotent
    error = push(address, ca)
    assert error is not None and "307" in str(error)
    assert received == []
