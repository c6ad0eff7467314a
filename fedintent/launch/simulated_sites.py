"""The sites of a local simulation, as the engineer who plays all of them sees them.

In a simulation the operator owns every site's folders, so the launcher may read what in a
deployment only each site could: a site's folder name, its pseudonym (``site-...``, derived
from its secret) and its privacy ledger. It uses them to put folder names next to pseudonyms in
what it prints and records, and to say before round 1 which sites cannot spend the run's target
epsilon. Nothing here travels to the server or through Flower: a deployed site is only ever
known by its pseudonym.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fl_client.privacy_ledger import HEAD_FILE, LEDGER_FILE, LedgerError
from fl_client.privacy_report import SiteReport, site_privacy_report
from fl_client.site_data import SiteDataError, list_site_dirs, read_rows
from fl_client.site_folders import simulated_site_folders
from fl_client.site_policy import DEFAULT_MAX_NOISE_RATIO
from fl_client.site_secret import SecretError, site_key
from fl_protocol.durable_files import write_json_atomic
from fl_server.progress import format_epsilon
from fl_server.run_record import site_pseudonym


@dataclass(frozen=True)
class SimulatedSite:
    name: str
    """The site folder's name, e.g. ``site-00``."""
    state_dir: Path


def simulated_sites(run_config: dict, num_sites: int) -> list[SimulatedSite]:
    """The sites a simulation of ``num_sites`` plays: the first site folders of its data-dir,
    with their state folders, as the simulated ClientApp finds them."""
    folders = simulated_site_folders(Path(run_config["data-dir"]), str(run_config["state-dir"]))
    return [SimulatedSite(data.name, state) for data, state in folders[:num_sites]]


def site_names(sites: list[SimulatedSite], rounds: Iterable[dict]) -> dict[str, str]:
    """Site folder name by pseudonym, and by node id in ``rounds`` (``metrics.json`` entries),
    for every site that has a secret (has trained once)."""
    names = {}
    for site in sites:
        try:
            names[site_pseudonym(site_key(site.state_dir))] = site.name
        except SecretError:
            continue
    for entry in rounds:
        for key, fields in entry.get("sites", {}).items():
            if key in names:
                names[fields["node_id"]] = names[key]
    return names


def record_site_folders(metrics_path: Path, metrics: dict, names: dict[str, str]) -> dict:
    """``metrics`` of a completed simulation with ``site_folders``: each site of its final
    summary, by pseudonym, to its folder's name; written back atomically."""
    folders = {key: names[key] for key in metrics["final"]["sites"] if key in names}
    metrics = metrics | {"site_folders": folders}
    write_json_atomic(metrics_path, metrics)
    return metrics


def budget_warnings(sites: list[SimulatedSite], run_config: dict) -> list[str]:
    """One line for each site that cannot spend the run's target epsilon, saying why (its
    lifetime budget left, from its verified ledger) and what to do; none without DP."""
    target = float(run_config["target-epsilon"])
    if math.isinf(target):
        return []
    warnings = []
    for site in sites:
        if shortfall := _shortfall(site.state_dir, target, run_config):
            warnings.append(f"site {site.name}: {shortfall}")
    return warnings


def _shortfall(state_dir: Path, target: float, run_config: dict) -> str | None:
    """Why a site will spend less than ``target`` in this run, or None."""
    budget = float(run_config["site-max-epsilon"])
    if not any((state_dir / name).exists() for name in (LEDGER_FILE, HEAD_FILE)):
        if budget >= target:
            return None
        if target > DEFAULT_MAX_NOISE_RATIO * budget:
            return (f"will decline every round: its lifetime budget (--site-max-epsilon "
                    f"{budget:g}) is under 1/{DEFAULT_MAX_NOISE_RATIO:g} of the target epsilon "
                    f"{target:g}, so it would need more than {DEFAULT_MAX_NOISE_RATIO:g}x the "
                    "run's planned noise; raise --site-max-epsilon or lower --epsilon")
        return (f"its lifetime budget (--site-max-epsilon {budget:g}) is below the target "
                f"epsilon {target:g}, so this run spends at most {budget:g} there; raise "
                "--site-max-epsilon or lower --epsilon")
    try:
        report = site_privacy_report(state_dir, budget)
    except LedgerError as err:
        return f"will not train: {err}"
    if report.privacy_unit != run_config["privacy-unit"]:
        return (f"will not train: its ledger ({state_dir}) counts {report.privacy_unit} units "
                f"and this run asks for --privacy-unit {run_config['privacy-unit']}")
    if math.isinf(budget) or budget - report.largest_epsilon >= target:
        return None
    return _spent_warning(report, target)


def _spent_warning(report: SiteReport, target: float) -> str:
    """What earlier runs left of a site's lifetime budget, and the operator's two ways out."""
    left = max(report.max_epsilon - report.largest_epsilon, 0.0)
    return (
        f"will spend less than the target epsilon {target:g} on units that trained before: "
        f"earlier runs on its data took them up to epsilon {format_epsilon(report.largest_epsilon)}"
        f" of their lifetime budget {report.max_epsilon:g}, which leaves at most "
        f"{format_epsilon(left)} per {report.privacy_unit}; a unit sits out once at its budget, "
        f"and the site declines when no unit is left ({report.exhausted} of the "
        f"{report.units} units in its ledger are there already). To train them at the target: "
        f"raise --site-max-epsilon, if the data's owners allow a larger lifetime budget; or, for "
        f"synthetic or test data only, use a new --state-dir (it forgets what this data has "
        f"spent). fedintent privacy-report {report.state_dir} shows the spend"
    )


def mean_training_rows(data_dir: Path, num_sites: int | None = None) -> float | None:
    """The mean number of training rows (before any check) of the first ``num_sites`` site
    folders (``None``: all), the ones a simulation plays, to which the tuned learning rate is
    scaled (``run_config.site_size_rate``); ``None`` for data that does not read (the sites
    report the problem themselves)."""
    try:
        sites = list_site_dirs(data_dir)[:num_sites]
        counts = [len(read_rows(site, [])[0]) for site in sites]
    except (SiteDataError, OSError):
        return None
    return sum(counts) / len(counts) if counts else None
