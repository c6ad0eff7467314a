"""Where a site's data and state live, and the site's own settings.

Deployment: the SuperNode's node config (set by the site, never by the server) holds
``data-path`` (the site's data folder), ``state-dir`` (ledger, caches, egress log) and
``max-epsilon`` (the site's lifetime privacy budget).

Simulation: node config holds only ``partition-id``; the site folder is that entry of the run's
data folder, and the run config's ``site-max-epsilon`` stands in for every simulated site's own
budget (in a simulation one engineer plays every site).
"""

from pathlib import Path

from flwr.app import Context, Message

from fl_client.site_data import SiteDataError, list_site_dirs

DEFAULT_MAX_EPSILON = 10.0


def site_folders(msg: Message, context: Context) -> tuple[Path, Path]:
    """(site data folder, site state folder)."""
    node = context.node_config
    if "data-path" in node:
        site_dir = Path(str(node["data-path"]))
        state_dir = Path(str(node.get("state-dir", site_dir / ".fedintent-state")))
        return site_dir, state_dir
    if "partition-id" not in node:
        raise SiteDataError("node config has neither 'data-path' (deployment) nor 'partition-id'")
    data_dir = Path(str(msg.content["config"]["sim-data-dir"]))
    sites = list_site_dirs(data_dir)
    partition = int(node["partition-id"])
    if partition >= len(sites):
        raise SiteDataError(
            f"simulated site {partition} has no folder: {data_dir} holds {len(sites)} sites"
        )
    site_dir = sites[partition]
    state_root = str(context.run_config.get("state-dir", "")) or str(data_dir / ".fedintent-state")
    return site_dir, Path(state_root) / site_dir.name


def site_max_epsilon(context: Context) -> float:
    """The site's lifetime budget: its node config, else (simulation) the run's stand-in."""
    if "max-epsilon" in context.node_config:
        value = float(context.node_config["max-epsilon"])
    elif "partition-id" in context.node_config:
        value = float(context.run_config.get("site-max-epsilon", DEFAULT_MAX_EPSILON))
    else:
        value = DEFAULT_MAX_EPSILON
    if not value > 0:
        raise ValueError(f"max-epsilon must be > 0, got {value}")
    return value
