"""The sites of a local simulation, as the engineer who plays all of them sees them.

In a simulation the operator owns every site's folders, so the launcher may read what in a
deployment only each site could: a site's folder name, its pseudonym (``site-...``, derived
from its secret) and its privacy ledger. It uses them to put folder names next to pseudonyms in
what it prints and records, and to say before round 1 which sites cannot spend the run's target
epsilon. Nothing here travels to the server or through Flower: a deployed site is only ever
known by its pseudonym.
"""

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from fl_client.data_files import list_site_dirs
from fl_client.egress_guard import EGRESS_LOG, egress_entries
from fl_client.privacy_accounting import rdp_budget
from fl_client.privacy_ledger import (
    HEAD_FILE,
    LEDGER_FILE,
    Ledger,
    LedgerError,
    privacy_unit_key,
    read_ledger,
    unit_epsilons,
)
from fl_client.privacy_report import EXHAUSTED_SHARE, SiteReport, site_privacy_report
from fl_client.rows import RejectedRow, SiteDataError
from fl_client.shown import shown_unknown_label
from fl_client.site_data import read_rows
from fl_client.site_folders import simulated_site_folders
from fl_client.site_policy import DEFAULT_MAX_NOISE_RATIO
from fl_client.site_secret import SecretError, site_key, site_secret
from fl_protocol.durable_files import write_json_atomic
from fl_protocol.wire import Reason
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


def site_names(sites: list[SimulatedSite], rounds: Iterable[dict], run_name: str = "",
               since: datetime | None = None) -> dict[str, str]:
    """Site folder name by pseudonym, and by node id in ``rounds`` (``metrics.json`` entries
    of this simulation: node ids are new in each), for every site that has a secret (has
    trained once).

    A node id seen only failing is matched through the sites' egress logs (``run_name``, from
    ``since``, when this simulation started): to the one site that sent a training reply in this
    run, before or after a resume, and logged each of that node's failures since (its round and
    reason), once the other node ids have taken theirs. Found in review: after a resume every
    site declined, and the lines named node ids only, though each site had trained before it.
    """
    names = {}
    for site in sites:
        try:
            names[site_pseudonym(site_key(site.state_dir))] = site.name
        except SecretError:
            continue
    rounds = list(rounds)
    nodes = {}
    for entry in rounds:
        for key, fields in entry.get("sites", {}).items():
            if key in names:
                nodes[fields["node_id"]] = names[key]
    failed: dict[str, set[tuple[int, str]]] = {}
    for entry in rounds:
        for failure in entry.get("failures", []):
            if failure["node_id"] not in nodes:
                failed.setdefault(failure["node_id"], set()).add((entry["round"],
                                                                  failure["reason"]))
    if failed and run_name and since is not None:
        nodes |= _matched_by_egress(sites, failed, set(nodes.values()), run_name, since)
    return names | nodes


def _matched_by_egress(sites: list[SimulatedSite], failed: dict[str, set[tuple[int, str]]],
                       named: set[str], run_name: str,
                       since: datetime) -> dict[str, str]:
    """Folder name by node id, for the node ids in ``failed`` (each one's failures: round and
    reason) that one site's egress log alone accounts for; ``named``: folders already matched."""
    logged = {}
    for site in sites:
        if site.name in named:
            continue
        entries = [entry for entry in egress_entries(site.state_dir)
                   if entry and entry.get("run") == run_name and entry.get("message") == "train"]
        if any(entry.get("verdict") == "sent" and "error" not in entry for entry in entries):
            logged[site.name] = {(entry.get("round"), entry["error"].get("reason"))
                                 for entry in entries
                                 if isinstance(entry.get("error"), dict)
                                 and _logged_since(entry, since)}
    matched: dict[str, str] = {}
    progress = True
    while progress:
        progress = False
        for node, failures in failed.items():
            if node in matched:
                continue
            candidates = [name for name, seen in logged.items()
                          if name not in matched.values() and failures <= seen]
            if len(candidates) == 1:
                matched[node] = candidates[0]
                progress = True
    return matched


def _logged_since(entry: dict, since: datetime) -> bool:
    """Whether an egress-log entry was written at or after ``since`` (to the second, as
    logged)."""
    try:
        return datetime.fromisoformat(str(entry.get("time"))) >= since.replace(microsecond=0)
    except ValueError:
        return False


def budget_declines(sites: list[SimulatedSite], final: dict, run_name: str,
                    since: datetime) -> dict[str, int]:
    """Each site of ``final`` (``metrics.json``'s summary, by pseudonym) whose egress log shows
    it declined a round of ``run_name`` for its budget after the round its lifetime figure is
    from, since ``since``: the first such round, by pseudonym. A simulation's launcher knows
    this even where the server cannot tie the decline's node id to the site."""
    declines = {}
    for site in sites:
        try:
            key = site_pseudonym(site_key(site.state_dir))
        except SecretError:
            continue
        if key not in final["sites"]:
            continue
        after = final["sites"][key].get("epsilon_all_runs_round", 0)
        rounds = [entry["round"] for entry in egress_entries(site.state_dir)
                  if entry and entry.get("run") == run_name and entry.get("message") == "train"
                  and isinstance(entry.get("error"), dict)
                  and entry["error"].get("reason") == Reason.BUDGET_EXHAUSTED.value
                  and isinstance(entry.get("round"), int) and entry["round"] > after
                  and _logged_since(entry, since)]
        if rounds:
            declines[key] = min(rounds)
    return declines


def record_site_folders(metrics_path: Path, metrics: dict, names: dict[str, str],
                        declines: dict[str, int] | None = None) -> dict:
    """``metrics`` of a completed simulation with ``site_folders``: each site of its final
    summary, by pseudonym, to its folder's name, and with each site's
    ``declined_for_budget_round`` that the server could not tie to it (``budget_declines``);
    written back atomically."""
    folders = {key: names[key] for key in metrics["final"]["sites"] if key in names}
    sites = {key: site | {"declined_for_budget_round": declines[key]}
             if site.get("declined_for_budget_round") is None and key in (declines or {})
             else site for key, site in metrics["final"]["sites"].items()}
    metrics = metrics | {"site_folders": folders,
                         "final": metrics["final"] | {"sites": sites}}
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


def resume_budget_warnings(sites: list[SimulatedSite], run_config: dict,
                           done: int) -> list[str]:
    """One line for each site whose ledger has no room left, within its lifetime budget, for
    the rounds a resume after round ``done`` trains, saying what will happen and what to do.

    A round the server did not checkpoint (an interrupt mid-round, a fallback to an older
    checkpoint) was charged when the site trained it, and is charged again when it is trained
    again, with fresh noise; the run's noise was planned for its rounds once, so at the
    defaults (a lifetime budget equal to the run's target) those rounds do not fit, and the
    site declines them (found in review: every site declined, with no word before the resume).
    """
    if math.isinf(float(run_config["target-epsilon"])):
        return []
    warnings = []
    for site in sites:
        if shortfall := _resume_shortfall(site.state_dir, run_config, done):
            warnings.append(f"site {site.name}: {shortfall}")
    return warnings


def sites_that_cannot_train(sites: list[SimulatedSite], sites_rows: list[tuple[Path, list]],
                            labels: list[str], run_config: dict,
                            unreadable: dict[str, str] | None = None) -> dict[str, str]:
    """Why each site of ``sites`` will train no round of a DP run, when that is so of every
    one of them (``{}`` as soon as one may train): no training row with a label of the run, a
    lifetime budget under the run's noise limit, a ledger that does not verify or counts
    another unit, or every unit of its training rows exhausted in its ledger (within
    ``EXHAUSTED_SHARE`` of the budget: no useful release fits). Found in review: a second run on
    spent data warned, started, and failed after every round was declined. Rows the site's
    retention or erasures will leave out count as rows that may train, so the answer is never
    "none" where one could. A site whose data does not read (``unreadable``, from
    ``read_sites``) trains none."""
    if math.isinf(float(run_config["target-epsilon"])):
        return {}
    rows = {site_dir.name: site_rows for site_dir, site_rows in sites_rows}
    unreadable = unreadable or {}
    reasons = {}
    for site in sites:
        reason = (f"its data does not read ({unreadable[site.name]})" if site.name in unreadable
                  else _cannot_train(site.state_dir, rows.get(site.name, []), set(labels),
                                     run_config))
        if reason is None:
            return {}
        reasons[site.name] = reason
    return reasons


def _cannot_train(state_dir: Path, rows: list, labels: set[str], run_config: dict) -> str | None:
    """Why a site will train no round of a DP run, or None where it may."""
    usable = [row for row in rows if row.label in labels]
    if not usable:
        return "none of its training rows has a label of the run"
    budget, target = float(run_config["site-max-epsilon"]), float(run_config["target-epsilon"])
    ledger = None
    # the egress log too: beside one that shows a release, a missing ledger was deleted, and
    # the site refuses to train (found in review: this said nothing of it)
    if any((state_dir / name).exists() for name in (LEDGER_FILE, HEAD_FILE, EGRESS_LOG)):
        try:
            secret = site_secret(state_dir)
            ledger = read_ledger(state_dir, secret)
        except (SecretError, LedgerError) as err:
            return f"its ledger does not verify: {err}"
    if ledger is None:  # a new site's, or one whose egress log holds only exact evaluations
        return (None if target <= DEFAULT_MAX_NOISE_RATIO * budget else
                _shortfall(state_dir, target, run_config))
    if math.isinf(budget):
        return None
    unit = run_config["privacy-unit"]
    if ledger.privacy_unit != unit:
        return _other_unit(state_dir, ledger.privacy_unit, unit)
    keys = list(_unit_keys(secret, unit, usable))
    if any(key not in ledger.spend for key in keys):
        return None
    if min(unit_epsilons(ledger, keys)) < EXHAUSTED_SHARE * budget:
        return None
    return (f"every one of the {len(keys)} {unit} units of its training rows has spent its "
            f"lifetime budget {budget:g} in earlier runs (fedintent privacy-report {state_dir} "
            "shows the spend)")


def no_site_resumes(sites: list[SimulatedSite], sites_rows: list[tuple[Path, list]],
                    labels: list[str], run_config: dict, done: int) -> bool:
    """Whether every site has room for none of the rounds a resume after ``done`` trains, so
    that the resume would only run empty rounds (found in review: it ran 15 of them, exit 0,
    where a new run in that state is refused). A site with a training unit its ledger has not
    seen (a row added since) has room; a resume with no round left to train (one that only
    exports the model) is never refused."""
    if math.isinf(float(run_config["target-epsilon"])) or done >= int(run_config["num-rounds"]):
        return False
    rows = {site_dir.name: site_rows for site_dir, site_rows in sites_rows}
    return bool(sites) and all(
        _has_no_room(site.state_dir, rows.get(site.name, []), set(labels), run_config)
        for site in sites)


def _has_no_room(state_dir: Path, rows: list, labels: set[str], run_config: dict) -> bool:
    """Whether the site's ledger bounds this run and has room for none of its rounds, and every
    training row of the run's labels belongs to a unit it holds spend of (a unit new to it
    trains at the full budget); false where the ledger does not read (the site reports that
    itself). The ledger is read once."""
    read = _site_ledger(state_dir)
    if read is None:
        return False
    secret, ledger = read
    room = _resume_room(ledger, run_config)
    unit = str(run_config["privacy-unit"])
    return room is not None and room[0] == 0 and _unit_keys(
        secret, unit, [row for row in rows if row.label in labels]) <= ledger.spend.keys()


def _site_ledger(state_dir: Path) -> tuple[bytes, Ledger] | None:
    """The site's secret and ledger; None where it has none yet or it does not verify (the
    site says so itself)."""
    try:
        secret = site_secret(state_dir)
        ledger = read_ledger(state_dir, secret)
    except (SecretError, LedgerError):
        return None
    return None if ledger is None else (secret, ledger)


def _unit_keys(secret: bytes, unit: str, rows: list) -> set[str]:
    """The ledger keys of ``rows``' privacy units."""
    return {privacy_unit_key(secret, unit, row.unit_under(unit)) for row in rows}


def _resume_room(ledger: Ledger, run_config: dict) -> tuple[int, int] | None:
    """(how many more rounds of this run a site's ledger has room for, how many it charged
    already), or None where it does not bound them (never trained in this run, no budget). The
    room is counted at this run's last release's cost, for its least spent unit: the site
    trains a round while any unit fits (the others sit out)."""
    run, budget = str(run_config["run-name"]), float(run_config["site-max-epsilon"])
    releases = [release for release in ledger.releases if release.run == run]
    if not releases or math.isinf(budget) or not ledger.spend or releases[-1].rdp <= 0:
        return None
    room = rdp_budget(budget, ledger.delta, ledger.order) - min(ledger.spend.values())
    return max(0, math.floor(room / releases[-1].rdp + 1e-9)), len(releases)


def _resume_shortfall(state_dir: Path, run_config: dict, done: int) -> str | None:
    """Why a site will decline rounds of a resume after round ``done``, or None."""
    num_rounds, budget = int(run_config["num-rounds"]), float(run_config["site-max-epsilon"])
    read = _site_ledger(state_dir)
    fits, charged = (read and _resume_room(read[1], run_config)) or (num_rounds, 0)
    to_train = num_rounds - done
    if fits >= to_train:
        return None
    first = done + fits + 1
    declined = f"round {first}" if first == num_rounds else f"rounds {first} to {num_rounds}"
    return (
        f"its ledger charged {charged} rounds of this run already, planned for "
        f"{num_rounds}, and this resume trains {to_train} more (rounds {done + 1} to "
        f"{num_rounds}; a round trained again is charged again, with fresh noise); its units "
        f"have room within their lifetime budget {budget:g} for {fits} of them, so it will "
        f"decline {declined} ({Reason.BUDGET_EXHAUSTED.value}); a round no site trains "
        "leaves the model as it was. To train them instead, start a new run: with "
        "--site-max-epsilon raised, if the data's owners allow a larger lifetime budget, or, for "
        f"synthetic or test data only, with a new --state-dir. fedintent privacy-report "
        f"{state_dir} shows the spend"
    )


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
        return "will not train: " + _other_unit(state_dir, report.privacy_unit,
                                                run_config["privacy-unit"])
    if math.isinf(budget) or budget - report.largest_epsilon >= target:
        return None
    return _spent_warning(report, target)


def _other_unit(state_dir: Path, counted: str, asked: str) -> str:
    """Why a site whose ledger counts ``counted`` units trains no round of a run asking for
    ``asked`` (``privacy_budget`` refuses to mix units on one site)."""
    return (f"its ledger ({state_dir}) counts {counted} units and this run asks for "
            f"--privacy-unit {asked}")


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


def read_sites(data_dir: Path,
               num_sites: int | None = None) -> tuple[list[tuple[Path, list]], dict[str, str]]:
    """Each of the first ``num_sites`` site folders (``None``: all), the ones a simulation
    plays, with its training rows as read (no check; none for a folder whose data does not
    read), and why each such folder does not read, by name: read once for ``label_warnings``,
    ``sites_that_cannot_train`` and ``mean_rows``. Found in review: one folder that did not read
    (a ``notes/`` folder, a CSV without a label column) switched every check off for all."""
    try:
        site_dirs = list_site_dirs(data_dir)[:num_sites]
    except (SiteDataError, OSError):
        return [], {}
    sites, unreadable = [], {}
    for site_dir in site_dirs:
        rejected: list[RejectedRow] = []
        try:
            rows = read_rows(site_dir, rejected)[0]
        except (SiteDataError, OSError) as err:
            rows, unreadable[site_dir.name] = [], str(err)
        if not rows and rejected and site_dir.name not in unreadable:  # a bad CSV header, say
            unreadable[site_dir.name] = (f"no training row reads; {len(rejected)} rows of its "
                                         f"files rejected, the first: {rejected[0]}")
        sites.append((site_dir, rows))
    return sites, unreadable


def training_rows(data_dir: Path, num_sites: int | None = None) -> list[tuple[Path, list]]:
    """``read_sites``' rows alone."""
    return read_sites(data_dir, num_sites)[0]


def unreadable_warnings(unreadable: dict[str, str], data_dir: Path) -> list[str]:
    """One line for each site folder whose data does not read: it will not train."""
    return [f"site {name}: its data does not read, so it will not train ({problem}); "
            f"fedintent check-data {Path(data_dir) / name} says more"
            for name, problem in unreadable.items()]


def mean_rows(sites: list[tuple[Path, list]]) -> float | None:
    """The mean number of training rows (before any check) of the ``sites`` (``read_sites``)
    that hold any, to which the tuned learning rate is scaled (``run_config.site_size_rate``);
    ``None`` where none does. A site without rows trains no round, so it does not pull the
    rate down (found in review: two empty folders made it 20 rows where the sites had 34)."""
    counts = [len(rows) for _, rows in sites if rows]
    return sum(counts) / len(counts) if counts else None


def mean_training_rows(data_dir: Path, num_sites: int | None = None) -> float | None:
    """``mean_rows`` of the first ``num_sites`` site folders of ``data_dir``."""
    return mean_rows(training_rows(data_dir, num_sites))


def label_warnings(sites: list[tuple[Path, list]], labels: list[str],
                   labels_file: Path) -> list[str]:
    """One line for each site folder of ``sites`` (``training_rows``) whose training rows carry
    labels outside the run's label set, with how many, an example (as ``check-data`` may name
    it) and what happens to them: such rows are skipped, and a site left with none does not
    train (found in review: a site whose labels were written in another case lost a third of
    its rows, or all of them, with no word before the run, and then showed up as a node id that
    "did not train")."""
    known, warnings = set(labels), []
    for site_dir, rows in sites:
        unknown = Counter(row.label for row in rows if row.label not in known)
        if not unknown:
            continue
        count, example = sum(unknown.values()), unknown.most_common(1)[0][0]
        outcome = ("none is left, so the site will not train" if count == len(rows)
                   else "they are not used")
        most = unknown[example]
        warnings.append(f"site {site_dir.name}: {count} of its {len(rows)} training rows "
                        f"{'has' if count == 1 else 'have'} a label not in {labels_file} (the "
                        f"most common: {shown_unknown_label(example, labels)}, {most} "
                        f"row{'' if most == 1 else 's'}): {outcome}; fedintent check-data "
                        f"{site_dir} --labels {labels_file} lists them")
    return warnings
