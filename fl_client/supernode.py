"""The site's Flower SuperNode (``fedintent-supernode``): Flower's own, with two refusals.

* **No redirects.** Flower 1.41's SuperNode talks to the SuperLink through one ``httpx`` client
  that follows redirects, from https to plain http included, re-sending the request body and
  the site's signed login headers (found in review: a SuperLink answering 307 had the site POST
  its messages in clear text to any host, inside the site's network too, and its headers could
  be replayed as the site for minutes). Every connection goes to the SUPERLINK it was given,
  over TLS; a redirect is an error.
* **Only this site's own code.** Flower runs any app bundle signed by a key in the site's
  trusted-entities file, and a bundle may carry Python modules, which would shadow the image's
  (``fl_client`` included: the egress guard, the ledger). The signing key is the operator's, and
  a site must not need to trust the operator with its data, so a bundle runs here only if it
  holds nothing but its ``pyproject.toml`` and names this image's ClientApp
  (``SITE_CLIENTAPP``): the code that runs is the code installed in the site's image, whoever
  signed the bundle. Its signature is still checked, as before.

Everything else is ``flower-supernode``, with the same arguments (deploy/site-entrypoint.sh
passes them).
"""

import io
import sys
import tomllib
import zipfile
from logging import ERROR

from flwr.common.logger import log
from flwr.supercore.protobuf import client as protobuf_client
from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode

SITE_CLIENTAPP = "fl_client.client_app:app"
"""The only ClientApp a site runs: the one installed in its image."""

BUNDLE_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
"""What ``flwr build`` puts in a bundle of only a ``pyproject.toml``: its file list."""

REFUSED = ("fedintent-supernode: Flower's SuperNode is not the one this site was built for "
           "(flwr.supercore.protobuf.client.ProtobufClient, "
           "flwr.supernode.start_client_internal._verify_fab), so it cannot be made to refuse "
           "redirects and foreign code; refusing to start")


def bundle_problem(content: bytes) -> str:
    """Why an app bundle must not run at this site whoever signed it ("" if it may): it carries
    files besides its ``pyproject.toml``, or names a ClientApp other than ``SITE_CLIENTAPP``."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as bundle:
            names = set(bundle.namelist())
            if "pyproject.toml" not in names or not names <= BUNDLE_FILES:
                extra = sorted(names - BUNDLE_FILES)
                return f"it carries files besides its pyproject.toml: {', '.join(extra[:5])}"
            project = tomllib.loads(bundle.read("pyproject.toml").decode("utf-8"))
    except (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        return f"it is not a readable app bundle ({err})"
    components = project.get("tool", {}).get("flwr", {}).get("app", {}).get("components", {})
    clientapp = components.get("clientapp") if isinstance(components, dict) else None
    if clientapp != SITE_CLIENTAPP:
        return f"its ClientApp is {clientapp!r}, not this site's {SITE_CLIENTAPP!r}"
    return ""


def refuse_redirects() -> None:
    """Make every SuperLink client Flower creates refuse redirects. tests/test_site_supernode.py
    checks that a redirect is really refused, so a Flower upgrade that sends another way fails
    there."""
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


def refuse_foreign_bundles() -> None:
    """Make the SuperNode's check of a run's app bundle also refuse one with code of its own or
    another ClientApp (``bundle_problem``), signed or not: the run gets Flower's verification
    error and the site runs nothing of it."""
    original = getattr(start_client_internal, "_verify_fab", None)
    if original is None:
        raise SystemExit(REFUSED)
    if getattr(original, "refuses_foreign_bundles", False):
        return

    def verify(fab, trusted_entities: dict[str, str]) -> bool:
        problem = bundle_problem(fab.content)
        if problem:
            log(ERROR, "This site runs only the ClientApp installed in its image; refusing the "
                "run's app bundle: %s", problem)
            return False
        return original(fab, trusted_entities)

    verify.refuses_foreign_bundles = True
    start_client_internal._verify_fab = verify


def main() -> None:
    refuse_redirects()
    refuse_foreign_bundles()
    sys.exit(flower_supernode())
