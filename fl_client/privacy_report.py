"""What a site's privacy ledger says: how much each privacy unit has spent, and every run.

Read-only: it verifies the ledger with the site secret (so a tampered or rolled-back ledger is
reported, not trusted) and recomputes epsilon with the same accountant code training uses. Next
to the spend it counts, from the egress log, the evaluate replies that left the site: exact
metrics of its test split, which no epsilon covers, apart from DP estimates, which the ledger
counts.
"""

import math
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from fl_client.deletion_log import RetentionError, deletion_log_check
from fl_client.egress_guard import egress_entries, sent_with_epsilon
from fl_client.privacy_accounting import delta_limit, rdp_epsilon
from fl_client.privacy_budget import run_epsilons
from fl_client.privacy_ledger import (
    LEDGER_FILE,
    LedgerError,
    Release,
    alone_spend,
    read_ledger,
    unit_epsilons,
)
from fl_client.site_folders import default_state_folders
from fl_client.site_secret import SecretError, holds_site_state, site_key, site_secret

EXHAUSTED_SHARE = 0.99
"""A unit within 1% of the budget is counted as exhausted: no useful release fits any more."""
NO_UNIT_YET = "none yet (no runs)"
"""The privacy unit of a site that has not trained: its first run fixes it."""


@dataclass(frozen=True)
class RunSummary:
    run: str
    rounds: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    units: int
    epsilon: float
    delta: float
    first: str
    last: str
    privacy_model: str = "local"
    epsilon_alone: float = 0.0
    """From the site's own noise only (distributed DP); equal to ``epsilon`` under local DP."""
    sent: int = 0
    """How many replies paid for by the run's releases the egress log shows sent: fewer than
    ``rounds`` where a reply was blocked, failed or cut off after its release was charged."""


@dataclass(frozen=True)
class Evaluations:
    """The evaluate requests the site's egress log records. ``sent``: replies that left with
    exact test-split metrics (no DP covers them, ``site_policy.evaluation_policy``), in
    ``runs`` runs; ``dp``: replies that left with DP estimates (they carry their ``epsilon``;
    each is a release in the ledger, its run named ``<run> (evaluation)``); ``declined``:
    requests answered with a reason only (``evaluation = "off"``, unusable data, no budget);
    ``unreadable``: log lines that are not an entry, counted, not guessed."""

    sent: int = 0
    runs: int = 0
    declined: int = 0
    unreadable: int = 0
    dp: int = 0


@dataclass(frozen=True)
class SiteReport:
    """A site's spend. ``spend_bands`` are (low, high, units) with lifetime epsilon in
    [low, high); ``exhausted`` units are at EXHAUSTED_SHARE of ``max_epsilon`` or more.
    ``trained`` is False for a site set up (its secret made) that has released nothing yet:
    it has no ledger, no unit has spent anything, and its first run fixes the privacy unit,
    order and delta (until then ``NO_UNIT_YET`` and NaN)."""

    state_dir: Path
    site_key: int
    privacy_unit: str
    order: float
    delta: float
    units: int
    largest_epsilon: float
    largest_epsilon_alone: float
    """An upper bound on any unit's lifetime epsilon from this site's own noise only."""
    spend_bands: list[tuple[float, float, int]]
    exhausted: int
    non_private: int
    max_epsilon: float
    runs: list[RunSummary]
    evaluations: Evaluations
    trained: bool = True
    deletion_log: str = ""
    """The deletion log's state, as the site checks it before it reads a row: how many entries
    verify, or why the site does not use its data (found in review: the report said "ledger
    verified" while the site refused to train over a broken log)."""
    deletion_log_ok: bool = True

    @property
    def delta_too_large(self) -> bool:
        """Whether the ledger's delta, fixed when the site's first round began, is no longer
        small next to 1 / units: the site has grown, and the probability that a unit's
        guarantee fails outright is no longer negligible for a site this size."""
        return self.units > 0 and self.delta >= delta_limit(self.units)


def _state_hint(folder: Path) -> str:
    """Where the state of the site whose data folder ``folder`` may be is, when it is where a
    site keeps it by default (found in review: a site's data folder given for its state folder
    was only "not a site's state folder")."""
    for state in default_state_folders(folder):
        if holds_site_state(state):
            return f"; {folder} looks like a site's data folder, whose state folder is {state}"
    return ""


def site_privacy_report(state_dir: Path, max_epsilon: float, bands: int = 4) -> SiteReport:
    """The verified report of the ledger in a site's state folder; an empty one for a site
    that is set up but has released nothing yet (found in review: the site guide's own check
    after ``init-site`` failed), never for one whose ledger was deleted."""
    state_dir = Path(state_dir)
    if state_dir.is_file():  # found in review: it was "not found"
        raise FileNotFoundError(f"state folder {state_dir} is a file, not a folder: give the "
                                "site's state folder (its --state-dir)")
    if not state_dir.is_dir():
        raise FileNotFoundError(f"state folder not found: {state_dir}")
    if not holds_site_state(state_dir):
        raise LedgerError(f"{state_dir}: no privacy ledger ({LEDGER_FILE}): this is not a site's "
                          f"state folder, or the site has never trained{_state_hint(state_dir)}")
    try:
        secret = site_secret(state_dir)
    except SecretError as err:
        raise LedgerError(f"cannot verify the ledger: {err}") from err
    ledger = read_ledger(state_dir, secret)
    deletion_log, deletion_log_ok = _deletion_log_state(state_dir, secret,
                                                        ledger.deletion_log if ledger else {})
    if ledger is None:  # read_ledger has refused a deleted one
        return replace(_untrained_report(state_dir, max_epsilon, bands),
                       deletion_log=deletion_log, deletion_log_ok=deletion_log_ok)
    epsilons = unit_epsilons(ledger)
    finite = [e for e in epsilons if math.isfinite(e)]
    runs: dict[str, list[Release]] = {}
    for release in ledger.releases:
        runs.setdefault(release.run, []).append(release)
    sent = replies_sent(state_dir)
    return SiteReport(
        state_dir=state_dir,
        site_key=site_key(state_dir),
        privacy_unit=ledger.privacy_unit,
        order=ledger.order,
        delta=ledger.delta,
        units=len(epsilons),
        largest_epsilon=max(epsilons, default=0.0),
        largest_epsilon_alone=rdp_epsilon(alone_spend(ledger), ledger.order, ledger.delta),
        spend_bands=_spend_bands(finite, max_epsilon, bands),
        exhausted=sum(1 for e in finite if e >= EXHAUSTED_SHARE * max_epsilon),
        non_private=len(epsilons) - len(finite),
        max_epsilon=max_epsilon,
        runs=[replace(_run_summary(name, run), sent=sent[name]) for name, run in runs.items()],
        evaluations=evaluations_sent(state_dir),
        deletion_log=deletion_log,
        deletion_log_ok=deletion_log_ok,
    )


def _deletion_log_state(state_dir: Path, secret: bytes, recorded: dict) -> tuple[str, bool]:
    """(what the deletion log is, whether the site uses its data over it)."""
    try:
        now, problem = deletion_log_check(state_dir, secret, recorded)
    except RetentionError as err:  # "deletion log: ...", said once where it is printed
        return str(err).removeprefix("deletion log: "), False
    if problem:
        return (f"{problem}; the site does not use its data until the log and its head are "
                "restored from the newest copy (docs/SITE_GUIDE.md)"), False
    if not now:
        return "none yet (no purge or erasure recorded)", True
    entries = now["entries"]
    return (f"{entries} {'entry' if entries == 1 else 'entries'}, verified"
            f"{', as the ledger recorded' if recorded else ''}"), True


def _untrained_report(state_dir: Path, max_epsilon: float, bands: int) -> SiteReport:
    """The report of a site with no ledger yet: nothing spent, no runs."""
    return SiteReport(
        state_dir=state_dir, site_key=site_key(state_dir), privacy_unit=NO_UNIT_YET,
        order=math.nan, delta=math.nan, units=0, largest_epsilon=0.0,
        largest_epsilon_alone=0.0, spend_bands=_spend_bands([], max_epsilon, bands),
        exhausted=0, non_private=0, max_epsilon=max_epsilon, runs=[],
        evaluations=evaluations_sent(state_dir), trained=False,
    )


def _spend_bands(finite: list[float], max_epsilon: float,
                 bands: int) -> list[tuple[float, float, int]]:
    """Bands of the budget up to ``max_epsilon`` (exhausted units counted apart); without a
    limit (``inf``), bands up to the largest spend, which the last one holds (found in review:
    bands of an infinite budget read "nan to inf", every unit in none)."""
    if math.isfinite(max_epsilon):
        width = max_epsilon / bands
        return [(i * width, (i + 1) * width,
                 sum(1 for e in finite if i * width <= e < (i + 1) * width
                     and e < EXHAUSTED_SHARE * max_epsilon))
                for i in range(bands)]
    width = max(finite, default=0.0) / bands or 1.0 / bands
    return [(i * width, (i + 1) * width,
             sum(1 for e in finite if i * width <= e < (i + 1) * width
                 or (i == bands - 1 and e >= (i + 1) * width)))
            for i in range(bands)]


def replies_sent(state_dir: Path) -> Counter[str]:
    """Per run, as the ledger names it, the replies the egress log shows sent that a release
    paid for (found in review: a run whose every update the egress guard blocked was listed as
    if it had left). One per release: a training update (with SecAgg+, the masked vector's) or
    a DP evaluation, whose run the ledger names ``<run> (evaluation)``."""
    sent: Counter[str] = Counter()
    for entry in egress_entries(state_dir):
        if sent_with_epsilon(entry):
            run = str(entry.get("run", ""))
            sent[f"{run} (evaluation)" if entry.get("message") == "evaluate" else run] += 1
    return sent


def evaluations_sent(state_dir: Path) -> Evaluations:
    """What the egress log says left the site in answer to evaluate requests."""
    sent = declined = unreadable = dp = 0
    runs: set[str] = set()
    for entry in egress_entries(state_dir):
        if entry is None or "message" not in entry:
            unreadable += 1
        elif entry["message"] != "evaluate":
            continue
        elif "error" in entry:
            declined += 1
        elif entry.get("verdict") != "sent":
            continue
        elif sent_with_epsilon(entry):
            dp += 1
        else:
            sent += 1
            runs.add(str(entry.get("run", "")))
    return Evaluations(sent=sent, runs=len(runs), declined=declined, unreadable=unreadable,
                       dp=dp)


def _run_summary(name: str, releases: list[Release]) -> RunSummary:
    """A run as its first release planned it (every round of a run plans the same noise), with
    the epsilon of all its rounds composed."""
    first = releases[0]
    epsilon, alone = run_epsilons(releases, first.delta)
    planned = {key: getattr(first, key) for key in (
        "noise_multiplier", "sample_rate", "steps", "clip_norm", "delta", "privacy_model")}
    return RunSummary(run=name, rounds=len(releases), units=max(r.units for r in releases),
                      epsilon=epsilon, epsilon_alone=alone, first=first.time,
                      last=releases[-1].time, **planned)


def stated_max_epsilon(state_dir: Path) -> float | None:
    """The max-epsilon the site's newest training reply sent stated (its node config then), from
    its egress log, or None: what ``fedintent privacy-report`` counts exhausted units against
    when not told (found in review: it counted against the default 8 a site whose replies all
    said 16, and showed "largest 14.374" beside it unexplained)."""
    stated = None
    for entry in egress_entries(state_dir):
        if entry is None or entry.get("verdict") != "sent" or entry.get("message") != "train":
            continue
        value = (entry.get("metrics") or {}).get("max-epsilon")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            stated = float(value)
        elif value is None and "max-epsilon" in (entry.get("metrics") or {}):
            stated = math.inf  # JSON's null: no limit
    return stated
