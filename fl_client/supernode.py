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
  signed the bundle. Its signature is still checked, as before. Flower's ClientApp process
  loads the bundle from ``FLWR_HOME/apps/<publisher>.<name>.<version>.<8 hex of its hash>``,
  named from the SuperLink's run record, and reuses a folder already there (found in review: a
  run naming a cached folder with code, or a path, ran that code). So a run is refused unless
  its publisher, name, version and hash are its bundle's own (``run_problem``), and the
  SuperNode does not start while an installed app there holds anything but its
  ``pyproject.toml`` (``cached_app_problem``).

Everything else is ``flower-supernode``, with the same arguments (deploy/site-entrypoint.sh
passes them), started with torch's threads held to the container's CPU quota
(``fl_client.cpu_threads``), and only on a ``--node-config`` its ClientApp would answer rounds
with (``fl_client.start_checks``; found in review: a budget of -1 or a misspelled setting
started a site that reported healthy), whose policy it prints.
"""

import hashlib
import io
import os
import re
import sys
import tomllib
import zipfile
from collections.abc import Callable
from logging import ERROR
from pathlib import Path

from click import ClickException
from flwr.common.config import get_flwr_home, parse_config_args
from flwr.common.constant import APP_DIR
from flwr.common.logger import log
from flwr.supercore.fab import Fab
from flwr.supercore.protobuf import client as protobuf_client
from flwr.supernode import start_client_internal
from flwr.supernode.cli import flower_supernode
from flwr.supernode.cli.flower_supernode import _parse_args_run_supernode

from fl_client.cpu_threads import limit_threads_to_quota
from fl_client.site_policy import SiteConfigError
from fl_client.start_checks import (
    check_node_config,
    check_state_folder,
    policy_lines,
    policy_warnings,
)
from fl_protocol.wire import SITE_NUMBER_SPANS, loggable
from fl_protocol.written_numbers import written_number

SITE_CLIENTAPP = "fl_client.client_app:app"
"""The only ClientApp a site runs: the one installed in its image."""

BUNDLE_FILES = frozenset({"pyproject.toml", ".info/CONTENT"})
"""What ``flwr build`` puts in a bundle of only a ``pyproject.toml``: its file list."""

SETTING = re.compile(r"(\S+?)=('[^']*'|\"[^\"]*\"|\S+)")
"""A ``key=value`` of ``--node-config`` as Flower's parser finds them (``parse_config_args``),
which skips any other text without a word."""

REFUSED = ("fedintent-supernode: Flower's SuperNode is not the one this site was built for "
           "(flwr.supercore.protobuf.client.ProtobufClient, "
           "flwr.supernode.start_client_internal._verify_fab and _pull_and_store_message), so "
           "it cannot be made to refuse redirects and foreign code; refusing to start")


_UNREADABLE = (zipfile.BadZipFile, UnicodeDecodeError, tomllib.TOMLDecodeError)


def _read_bundle(content: bytes) -> tuple[set[str], dict]:
    """A bundle's file names and its parsed ``pyproject.toml`` ({} if it has none)."""
    with zipfile.ZipFile(io.BytesIO(content)) as bundle:
        names = set(bundle.namelist())
        text = bundle.read("pyproject.toml").decode("utf-8") if "pyproject.toml" in names else ""
    return names, tomllib.loads(text)


def bundle_problem(content: bytes) -> str:
    """Why an app bundle must not run at this site whoever signed it ("" if it may): it carries
    files besides its ``pyproject.toml``, or names a ClientApp other than ``SITE_CLIENTAPP``."""
    try:
        names, project = _read_bundle(content)
    except _UNREADABLE as err:
        return f"it is not a readable app bundle ({err})"
    if "pyproject.toml" not in names or not names <= BUNDLE_FILES:
        extra = sorted(names - BUNDLE_FILES)
        return f"it carries files besides its pyproject.toml: {', '.join(extra[:5])}"
    components = project
    for table in ("tool", "flwr", "app", "components"):  # a level that is no table names none
        components = components.get(table, {}) if isinstance(components, dict) else {}
    clientapp = components.get("clientapp") if isinstance(components, dict) else None
    if clientapp != SITE_CLIENTAPP:
        return f"its ClientApp is {clientapp!r}, not this site's {SITE_CLIENTAPP!r}"
    others = sorted(set(components) - {"clientapp", "serverapp"})
    if others:  # another kind of app (an AgentApp, ...) would name a module of the image
        return f"it names components besides a ServerApp and this ClientApp: {others}"
    return ""


def _identity(content: bytes) -> tuple[str, str] | None:
    """(``publisher/name``, version) from a bundle's ``pyproject.toml``; None if unreadable."""
    try:
        _, project = _read_bundle(content)
        return (f"{project['tool']['flwr']['app']['publisher']}/{project['project']['name']}",
                str(project["project"]["version"]))
    except (*_UNREADABLE, KeyError, TypeError):
        return None


def run_problem(fab_id: str, fab_version: str, fab_hash: str, content: bytes) -> str:
    """Why a run must not load this bundle ("" if it may): Flower's ClientApp process loads
    the folder the run's own publisher, name and version name, and a hash prefix, so they must
    be the bundle's, and the bundle the one whose hash the run names. What the bundle holds is
    ``bundle_problem``'s, checked with its signature."""
    if hashlib.sha256(content).hexdigest() != fab_hash:
        return "the run names another bundle's hash"
    identity = _identity(content)
    if identity != (fab_id, fab_version):
        return f"the run names app {fab_id!r} version {fab_version!r}, not the bundle's {identity}"
    return ""


def cached_app_problem(apps: Path) -> str:
    """Why the SuperNode must not start with this apps folder ("" if it may): an installed app
    holding more than its ``pyproject.toml`` would be loaded by a run naming it."""
    for app in sorted(apps.iterdir()) if apps.is_dir() else []:
        files = {f.relative_to(app).as_posix() for f in app.rglob("*")
                 if not f.is_dir() or f.is_symlink()}  # a link to a folder too (found in review)
        if not app.is_dir() or files - BUNDLE_FILES:
            return (f"{app} holds files besides its pyproject.toml (an app bundle installed "
                    "before this site refused code in bundles); remove it: an app is installed "
                    "again from its verified bundle when a run needs it")
    return ""


def refuse_redirects() -> None:
    """Make every SuperLink client Flower creates refuse redirects. tests/test_site_supernode.py
    checks that a redirect is really refused, so a Flower upgrade that sends another way fails
    there."""
    client_class = protobuf_client.ProtobufClient
    original = client_class.__init__
    if getattr(original, "refuses_redirects", False):
        return

    def init(self, *args, **kwargs) -> None:  # noqa: ANN001 - Flower's client, wrapped
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

    def verify(fab: Fab, trusted_entities: dict[str, str]) -> bool:
        problem = bundle_problem(fab.content)
        if problem:
            log(ERROR, "This site runs only the ClientApp installed in its image; refusing the "
                "run's app bundle: %s", loggable(problem))
            return False
        return original(fab, trusted_entities)

    verify.refuses_foreign_bundles = True
    start_client_internal._verify_fab = verify


def bind_runs_to_their_bundles() -> None:
    """Make the SuperNode hand a run's bundle on only if the run names it (``run_problem``);
    otherwise the bundle goes on without its signatures, so Flower's own check refuses the run
    with its verification error and nothing of it runs."""
    original = getattr(start_client_internal, "_pull_and_store_message", None)
    if original is None:
        raise SystemExit(REFUSED)
    if getattr(original, "binds_runs", False):
        return

    def pull(*, get_run: Callable, get_fab: Callable, **rest):  # noqa: ANN202 - Flower's
        runs = {}

        def remembered(run_id: int):
            runs[run_id] = get_run(run_id)
            return runs[run_id]

        def checked(fab_hash: str, run_id: int) -> Fab:
            fab = get_fab(fab_hash, run_id)
            run = runs.get(run_id)
            problem = ("its run was not read first" if run is None else
                       run_problem(run.fab_id, run.fab_version, run.fab_hash, fab.content))
            if problem:
                log(ERROR, "This site runs only the ClientApp installed in its image; refusing "
                    "run %s: %s", run_id, loggable(problem))
                return Fab(fab.hash_str, fab.content, {})
            return fab

        return original(get_run=remembered, get_fab=checked, **rest)

    pull.binds_runs = True
    start_client_internal._pull_and_store_message = pull


def checked_node_config(arguments: list[str]) -> dict:
    """The ``--node-config`` among Flower's ``arguments``, read by Flower's own parsers as its
    ClientApp will have it, checked (``SystemExit`` naming the setting otherwise)."""
    given = _parse_args_run_supernode().parse_known_args(arguments)[0].node_config or ""
    settings = [] if given.endswith(".toml") else SETTING.findall(given)
    skipped = [] if given.endswith(".toml") else SETTING.sub(" ", given).split()
    if skipped:
        raise SystemExit(f"fedintent-supernode: --node-config: {' '.join(skipped)!r} is not "
                         "key=value (no space around '='), and Flower would skip it")
    try:
        node_config = parse_config_args([given])
        for key, text in settings:  # TOML reads 1_5 as 15, 0x10 as 16 and 1e400 as inf
            if isinstance(node_config.get(key), int | float) and not isinstance(
                    node_config[key], bool):
                written_number(key, text, SITE_NUMBER_SPANS.get(key))
    except (OSError, ValueError, ClickException) as err:
        raise SystemExit(f"fedintent-supernode: --node-config cannot be read: "
                         f"{' '.join(str(err).split())}") from None
    try:
        check_node_config(node_config)
        check_state_folder(node_config)
    except SiteConfigError as err:
        raise SystemExit(f"fedintent-supernode: the site would decline every round: {err}") \
            from None
    return node_config


def main() -> None:
    limit_threads_to_quota(os.environ)  # before Flower starts: its ClientApps inherit it
    problem = cached_app_problem(get_flwr_home() / APP_DIR)
    if problem:
        raise SystemExit(f"fedintent-supernode: {problem}")
    if not {"-h", "--help", "-V", "--version"} & set(sys.argv[1:]):
        node_config = checked_node_config(sys.argv[1:])
        print("fedintent-supernode: this site's settings (its node config), every run held to "
              "them:", flush=True)
        for line in policy_lines(node_config):
            print(f"  {line}", flush=True)
        for line in policy_warnings(node_config):
            print(f"fedintent-supernode: warning: {line}", flush=True)
    refuse_redirects()
    refuse_foreign_bundles()
    bind_runs_to_their_bundles()
    sys.exit(flower_supernode())
