"""Where a site's data and state live, and the lock that guards the state.

Deployment: the SuperNode's node config (set by the site, never by the server) holds
``data-path`` (the site's data folder) and ``state-dir`` (ledger, caches, egress log); its
privacy policy (``max-epsilon`` and the rest) is read in ``site_policy.py``.

Simulation (``site_policy.is_simulated``: Flower's simulation engine runs the ClientApp, its
node config holds only ``partition-id``): the site folder is that entry of the run's data
folder (in a simulation one engineer plays every site).

The state folder holds what the site derives from customer data (ledger, feature cache, egress
log): it is created owner-only (0700). Whatever reads and then rewrites a file in it holds
``state_lock``.
"""

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Context, Message

from fl_client.data_files import list_site_dirs
from fl_client.rows import SiteDataError
from fl_client.site_policy import is_simulated
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol.wire import CONFIG_KEY

STATE_FOLDER = ".fedintent-state"
"""A site's state folder's name where the site names none (``default_state_folders``)."""
LOCK_FILE = "state.lock"


def site_folders(msg: Message, context: Context,
                 secret_required: bool = True) -> tuple[Path, Path]:
    """(site data folder, site state folder), the state folder owner-only. A deployed site's
    state folder must hold its site secret already (``SecretError`` otherwise): it is set up
    once, on purpose (``fedintent init-site``), never here, since one lost, moved aside or not
    mounted would otherwise come back empty, with every unit's budget unspent (found in
    review). ``secret_required`` False (the egress guard, which logs even a refusal): a
    deployed site's folder as it is, never made. A simulated site's is made on first use: one
    engineer plays every site."""
    site_dir, state_dir = _locate(msg, context)
    if is_simulated(context):
        create_site_secret(state_dir)
    elif secret_required:
        site_secret(state_dir)
    state_dir.chmod(0o700)
    return site_dir, state_dir


def _locate(msg: Message, context: Context) -> tuple[Path, Path]:
    node = context.node_config
    if not is_simulated(context):
        if "data-path" not in node:
            raise SiteDataError("the site's node config has no 'data-path' (its data folder)")
        site_dir = Path(str(node["data-path"]))
        state_dir = Path(str(node.get("state-dir", default_state_folders(site_dir)[0])))
        return site_dir, state_dir
    data_dir = Path(str(msg.content[CONFIG_KEY]["sim-data-dir"]))
    sites = simulated_site_folders(data_dir, str(context.run_config.get("state-dir", "")))
    partition = int(node["partition-id"])
    if partition >= len(sites):
        raise SiteDataError(
            f"simulated site {partition} has no folder: {data_dir} holds {len(sites)} sites"
        )
    return sites[partition]


def default_state_folders(site_dir: Path) -> tuple[Path, Path]:
    """Where a site's state is when nothing names it: a deployed site's (its node config's
    default, inside its data folder), then a simulated site's (``simulated_site_folders``'s,
    beside the data folders), so that a site's commands find either from its data folder."""
    site_dir = Path(site_dir)
    return site_dir / STATE_FOLDER, site_dir.parent / STATE_FOLDER / site_dir.name


def simulated_site_folders(data_dir: Path, state_root: str = "") -> list[tuple[Path, Path]]:
    """(data folder, state folder) of each simulated site, in partition-id order: the site
    folders of ``data_dir``, each with its state under ``state_root`` (empty:
    ``data_dir/.fedintent-state``) in a folder of its own name. The launcher of a simulation
    reads them too (``fedintent.launch.simulated_sites``)."""
    root = Path(state_root or Path(data_dir) / STATE_FOLDER)
    return [(site_dir, root / site_dir.name) for site_dir in list_site_dirs(Path(data_dir))]


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """The state folder's one lock, held by whatever reads and then rewrites what is in it: a
    ledger charge (two rounds charged at once would each write the ledger they read, and one
    charge would vanish), a ClientApp's feature store, ``fedintent purge`` and ``forget``. Not
    reentrant: a holder must not take it again. A read-only state folder is an ``OSError``
    that names the folder, not the lock file the user never made (found in review). The
    folder is never made here: a state folder lost or not mounted must not come back empty."""
    state_dir = Path(state_dir)
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as err:
        if err.errno != errno.EROFS:
            raise
        raise OSError(err.errno, f"the state folder {state_dir} is read-only "
                      f"({err.strerror})") from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
