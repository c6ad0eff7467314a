"""The site's SuperNode (``fedintent-supernode``) sends only to the SuperLink it was given: a
SuperLink answering with a redirect to another address gets an error, and that address nothing
(Flower's own client follows it, from https to plain http, with the site's signed headers).
And it runs only its image's own ClientApp: a bundle with code, or naming another ClientApp, is
refused even when the trusted key signed it."""

import hashlib
import http.server
import json
import shutil
import ssl
import threading
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.build import build_fab_from_disk
from flwr.proto.fleet_pb2 import PushMessagesRequest
from flwr.proto.node_pb2 import Node
from flwr.supercore.fab import Fab
from flwr.supercore.protobuf.client import ProtobufClient
from flwr.supernode import start_client_internal
from flwr.supernode.fleet_http_client import FleetHttpClient
from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

from fedintent.launch.certificates import signing_key_id, signing_key_pair, write_dev_credentials
from fedintent.launch.flower_cli import write_app
from fedintent.launch.releases import sign_release
from fl_client.site_secret import create_site_secret
from fl_client.supernode import (
    bind_runs_to_their_bundles,
    bundle_problem,
    cached_app_problem,
    refuse_foreign_bundles,
    refuse_redirects,
    run_problem,
)


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


def bundle(tmp_path, clientapp: str = "fl_client.client_app:app",
           extra: dict[str, str] | None = None) -> bytes:
    """The release's app bundle (``write_app``), its ClientApp or files changed."""
    app = write_app(tmp_path / f"app-{len(list(tmp_path.iterdir()))}")
    project = app / "pyproject.toml"
    project.write_text(project.read_text().replace('"fl_client.client_app:app"',
                                                   f'"{clientapp}"'))
    for name, text in (extra or {}).items():
        (app / name).parent.mkdir(parents=True, exist_ok=True)
        (app / name).write_text(text)
    return build_fab_from_disk(app)


def signed(content: bytes, key) -> Fab:
    """``content`` as the SuperNode receives it, with a valid signature by ``key``."""
    release = sign_release(content, key)
    verification = json.dumps({"signature": release.signature, "signed_at": release.signed_at})
    return Fab(hashlib.sha256(content).hexdigest(), content,
               {release.key_id: verification, "valid_license": "yes"})


def test_only_a_code_free_bundle_naming_the_sites_clientapp_may_run(tmp_path):
    assert bundle_problem(bundle(tmp_path)) == ""
    problem = bundle_problem(bundle(tmp_path, extra={"fl_client/client_app.py": "app = 1\n"}))
    assert "carries files besides its pyproject.toml: fl_client/client_app.py" in problem
    assert "carries files" in bundle_problem(bundle(tmp_path, extra={"sitecustomize.py": ""}))
    assert "not this site's" in bundle_problem(bundle(tmp_path, "fl_server.server_app:app"))
    assert "not a readable app bundle" in bundle_problem(b"not a zip")
    agent = bundle(tmp_path, 'fl_client.client_app:app"\nagentapp = "fl_server.server_app:app')
    assert "components besides a ServerApp and this ClientApp: ['agentapp']" in \
        bundle_problem(agent)


def test_the_site_supernode_refuses_code_the_operator_signed(tmp_path, monkeypatch):
    """Flower runs any bundle the trusted key signed, modules in it shadowing the image's own
    (the egress guard, the ledger); the site's SuperNode runs only its image's ClientApp."""
    private, public = signing_key_pair("operator")
    key = load_ssh_private_key(private, None)
    trusted = {signing_key_id(key.public_key()): public.decode().strip()}
    own = signed(bundle(tmp_path), key)
    foreign = signed(bundle(tmp_path, extra={"fl_client/egress_guard.py": "def check(*a): 0\n"}),
                     key)
    other_app = signed(bundle(tmp_path, "fl_server.server_app:app"), key)
    verify = start_client_internal._verify_fab
    assert verify(own, trusted) and verify(foreign, trusted) and verify(other_app, trusted)
    monkeypatch.setattr(start_client_internal, "_verify_fab", verify)  # restored after
    refuse_foreign_bundles()
    refuse_foreign_bundles()  # idempotent
    assert start_client_internal._verify_fab(own, trusted)
    assert not start_client_internal._verify_fab(foreign, trusted)
    assert not start_client_internal._verify_fab(other_app, trusted)
    unsigned = Fab(own.hash_str, own.content, {"valid_license": "yes"})
    assert not start_client_internal._verify_fab(unsigned, trusted)


def test_a_run_may_load_only_the_bundle_it_names_under_that_bundles_own_name(tmp_path):
    """Flower's ClientApp process loads ``apps/<publisher>.<name>.<version>.<hash[:8]>`` from
    the run's record and reuses a folder already there (found in review: a run naming a cached
    folder with code, or a path as its version, loaded that code)."""
    content = bundle(tmp_path)
    digest = hashlib.sha256(content).hexdigest()
    assert run_problem("fedintent/fedintent", "0.1.0", digest, content) == ""
    assert "another bundle's hash" in run_problem("fedintent/fedintent", "0.1.0", "0" * 64,
                                                  content)
    for fab_id, version in [("evil/pkg", "0.1.0"), ("fedintent/fedintent", "9.9.9"),
                            ("fedintent/fedintent", "../../../../tmp/x")]:
        assert "not the bundle's" in run_problem(fab_id, version, digest, content)
    assert "not the bundle's None" in run_problem("fedintent/fedintent", "0.1.0",
                                                  hashlib.sha256(b"junk").hexdigest(), b"junk")


def test_the_supernode_does_not_start_beside_an_installed_app_with_code(tmp_path):
    apps = tmp_path / "apps"
    assert cached_app_problem(apps) == ""  # none installed yet
    own = apps / "fedintent.fedintent.0.1.0.f649a055"
    (own / ".info").mkdir(parents=True)
    (own / "pyproject.toml").write_text("")
    (own / ".info" / "CONTENT").write_text("")
    assert cached_app_problem(apps) == ""
    code = apps / "evil.pkg.9.9.9.f649a055" / "fl_client"
    code.mkdir(parents=True)
    (code / "client_app.py").write_text("")
    assert "evil.pkg.9.9.9.f649a055 holds files besides its pyproject.toml" in \
        cached_app_problem(apps)
    shutil.rmtree(code.parent)
    (own / "fl_client").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()  # found in review: a link to a folder was passed over
    assert "fedintent.fedintent.0.1.0.f649a055 holds files besides" in cached_app_problem(apps)


def test_the_supernode_withholds_the_signatures_of_a_bundle_its_run_does_not_name(
        tmp_path, monkeypatch):
    """Stands in for Flower's message pull: it reads the run, then its bundle, as Flower does;
    a bundle handed on without signatures fails Flower's own verification."""
    content = bundle(tmp_path)
    good = SimpleNamespace(run_id=1, fab_id="fedintent/fedintent", fab_version="0.1.0",
                           fab_hash=hashlib.sha256(content).hexdigest())
    renamed = SimpleNamespace(**vars(good) | {"run_id": 2, "fab_version": "../../x"})

    def flower_pull(*, get_run, get_fab, **rest):
        run = get_run(rest["run_id"])
        return get_fab(run.fab_hash, run.run_id)

    monkeypatch.setattr(start_client_internal, "_pull_and_store_message", flower_pull)
    bind_runs_to_their_bundles()
    bind_runs_to_their_bundles()  # idempotent
    runs = {1: good, 2: renamed}
    verifications = {"key": "signature", "valid_license": "yes"}
    for run_id, kept in [(1, verifications), (2, {})]:
        fab = start_client_internal._pull_and_store_message(
            get_run=runs.__getitem__, get_fab=lambda h, r: Fab(h, content, dict(verifications)),
            run_id=run_id)
        assert fab.content == content and fab.verifications == kept


class StubbornTransport:
    """An HTTP client whose ``follow_redirects`` cannot be turned off."""

    follow_redirects = property(lambda self: True, lambda self, value: None)

    def close(self) -> None:
        pass


class ClientWithoutTransport:
    """A Flower client built another way: no ``_client`` to make refuse redirects."""

    def __init__(self, address: str) -> None:
        self.address = address


class ClientThatKeepsFollowing:
    """A Flower client whose transport keeps following redirects whatever it is told."""

    def __init__(self, address: str) -> None:
        self._client = StubbornTransport()

    def close(self) -> None:
        self._client.close()


@pytest.mark.parametrize("client", [ClientWithoutTransport, ClientThatKeepsFollowing])
def test_a_flower_whose_client_cannot_be_made_to_refuse_redirects_does_not_start(client,
                                                                                 monkeypatch):
    """A Flower upgrade that builds its SuperLink client another way must stop the site's
    SuperNode, not let it start following redirects again. Found by stop 65's mutation pass:
    no test reached either refusal (each ``raise SystemExit`` removed survived)."""
    from flwr.supercore.protobuf import client as protobuf_client

    monkeypatch.setattr(protobuf_client, "ProtobufClient", client)
    with pytest.raises(SystemExit, match="refusing to start"):
        refuse_redirects()


@pytest.mark.parametrize("name", ["_verify_fab", "_pull_and_store_message"])
def test_a_flower_without_the_checks_the_site_wraps_does_not_start(name, monkeypatch):
    """A Flower whose SuperNode no longer has the bundle check or the message pull the site
    wraps cannot be made to refuse foreign bundles: it does not start. (Mutants: the missing
    check read as present, its ``raise`` removed.)"""
    monkeypatch.delattr(start_client_internal, name)
    wrap = {"_verify_fab": refuse_foreign_bundles,
            "_pull_and_store_message": bind_runs_to_their_bundles}[name]
    with pytest.raises(SystemExit, match="refusing to start"):
        wrap()


def test_a_bundle_fetched_for_a_run_never_read_goes_on_without_its_signatures(tmp_path,
                                                                              monkeypatch):
    """A pull that asks for a bundle before reading its run cannot be checked against the
    run, so the bundle goes on unsigned and Flower refuses it, rather than the pull failing.
    (Mutant: ``run is None`` as ``run is True``.)"""
    content = bundle(tmp_path)

    def flower_pull(*, get_run, get_fab, **rest):  # noqa: ANN001, ANN202 - Flower's
        return get_fab(hashlib.sha256(content).hexdigest(), rest["run_id"])

    monkeypatch.setattr(start_client_internal, "_pull_and_store_message", flower_pull)
    bind_runs_to_their_bundles()
    fab = start_client_internal._pull_and_store_message(
        get_run=lambda run_id: None,
        get_fab=lambda h, r: Fab(h, content, {"key": "signature", "valid_license": "yes"}),
        run_id=1)
    assert fab.content == content and fab.verifications == {}


def test_the_site_supernode_starts_flower_only_with_its_refusals_in_place(
        tmp_path, monkeypatch, redirecting_superlink):
    """``fedintent-supernode`` itself: by the time Flower's SuperNode starts, a redirect is
    refused, a signed bundle with code is refused and a run naming another bundle gets it
    unsigned. Found by stop 65's mutation pass: the one test of ``main`` stubbed the three
    refusals, so removing any of their calls passed."""
    import fl_client.supernode as supernode

    address, ca, received = redirecting_superlink
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))  # no app installed there
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # main sets it from the CPU quota
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "lost my card", "label": "a"}\n')
    create_site_secret(tmp_path / "data" / ".fedintent-state")
    monkeypatch.setattr("sys.argv", ["fedintent-supernode", "--node-config",
                                     f"data-path='{tmp_path / 'data'}'"])
    monkeypatch.setattr(ProtobufClient, "__init__", ProtobufClient.__init__)  # restored after
    monkeypatch.setattr(start_client_internal, "_verify_fab", start_client_internal._verify_fab)
    private, public = signing_key_pair("operator")
    key = load_ssh_private_key(private, None)
    trusted = {signing_key_id(key.public_key()): public.decode().strip()}
    foreign = signed(bundle(tmp_path, extra={"fl_client/egress_guard.py": ""}), key)
    content = bundle(tmp_path)
    renamed = SimpleNamespace(run_id=2, fab_id="evil/pkg", fab_version="0.1.0",
                              fab_hash=hashlib.sha256(content).hexdigest())

    def flower_pull(*, get_run, get_fab, **rest):  # noqa: ANN001, ANN202 - Flower's
        run = get_run(rest["run_id"])
        return get_fab(run.fab_hash, run.run_id)

    monkeypatch.setattr(start_client_internal, "_pull_and_store_message", flower_pull)
    seen = {}

    def flower_supernode() -> int:
        seen["redirect"] = push(address, ca)
        seen["foreign bundle"] = start_client_internal._verify_fab(foreign, trusted)
        seen["renamed run"] = start_client_internal._pull_and_store_message(
            get_run=lambda run_id: renamed,
            get_fab=lambda h, r: Fab(h, content, {"key": "signature"}), run_id=2).verifications
        return 0

    monkeypatch.setattr(supernode, "flower_supernode", flower_supernode)
    with pytest.raises(SystemExit) as exited:
        supernode.main()
    assert exited.value.code == 0
    assert seen["redirect"] is not None and "307" in str(seen["redirect"]) and received == []
    assert not seen["foreign bundle"] and seen["renamed run"] == {}


def test_the_site_supernode_does_not_start_beside_an_installed_app_with_code(tmp_path,
                                                                              monkeypatch):
    """``fedintent-supernode`` refuses to start, naming the app, while Flower's apps folder
    holds an app with code; Flower never starts. (Mutant: ``main``'s ``raise`` removed.)"""
    import fl_client.supernode as supernode

    home = tmp_path / "flwr-home"
    code = home / "apps" / "evil.pkg.9.9.9.f649a055" / "fl_client"
    code.mkdir(parents=True)
    (code / "client_app.py").write_text("")
    monkeypatch.setenv("FLWR_HOME", str(home))
    started = []
    monkeypatch.setattr(supernode, "flower_supernode", lambda: started.append(1) or 0)
    for name in ("refuse_redirects", "refuse_foreign_bundles", "bind_runs_to_their_bundles"):
        monkeypatch.setattr(supernode, name, lambda: None)
    with pytest.raises(SystemExit, match="evil.pkg.9.9.9.f649a055 holds files besides"):
        supernode.main()
    assert started == []


@pytest.mark.parametrize("project", ['tool = 1\n', '[tool]\nflwr = "x"\n',
                                     '[tool.flwr]\napp = 3\n', '[tool.flwr.app]\ncomponents = 3\n'])
def test_a_bundle_whose_app_tables_are_not_tables_is_refused_not_raised(project):
    """The check runs before the signature's, on whatever a SuperLink sends: a bundle whose
    ``tool``, ``tool.flwr`` or ``tool.flwr.app`` is a value rather than a table names no
    ClientApp and is refused like one (found by stop 65's mutation pass: it raised
    ``AttributeError`` out of Flower's message pull, which ends the SuperNode)."""
    import io
    import zipfile

    content = io.BytesIO()
    with zipfile.ZipFile(content, "w") as fab:
        fab.writestr("pyproject.toml", project)
    assert bundle_problem(content.getvalue()) == (
        "its ClientApp is None, not this site's 'fl_client.client_app:app'")
