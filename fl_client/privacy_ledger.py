"""The site's privacy ledger: every DP release, and every privacy unit's lifetime spend.

One ledger per site (``privacy-ledger.json`` in its state folder), whatever its data looks like
today: appending a day of conversations, fixing a row, reordering or renaming files changes
nothing for the units already in it. It holds

* ``releases``: every round the site has sent an update for (run, round, noise multiplier,
  sample rate, steps, how many units took part, and the Rényi DP each of them was charged);
* ``spend``: for every privacy unit that ever took part, its cumulative Rényi DP at the ledger's
  fixed ``order`` (``privacy_accounting``'s lifetime filter), keyed by ``unit_key``: a keyed hash
  of the unit's stable identity (customer id, or conversation id and turn);
* ``recorded``: the same spend under the unit's other identities (its conversation, its customer
  and text, its customer id's other written forms and canonical form:
  ``privacy_units.unit_aliases``), each with the unit that recorded it, so that a unit whose rows
  come back written another way (conversations exported as CSV, ids added, a customer id in
  another case) is found with its spend, and the units it was are told apart from the names of
  one unit (``privacy_budget.charge_round``);
* ``aliases``: such spends recorded before the ledger recorded who recorded them (format 5 and
  older), each under its name alone; a name is moved to ``recorded`` when a unit records there;
* ``alone``: for every unit in ``spend``, its cumulative Rényi DP counting only the site's own
  noise (under distributed DP, what the site's noise share alone costs it; under local DP the
  same as ``spend``): what ``max-epsilon-alone`` bounds;
* ``deletion_log``: how long the site's deletion log was when it last grew (its entry count and
  last hash; recorded at every charge, purge and erasure), so that a deletion log deleted or
  restored from an older copy, which would use erased customers' rows again, stops the site as
  a rolled-back ledger does;
* ``version``: how many times the ledger was written.
The ledger holds no text and nothing the server sends or could recompute.

Integrity: each release carries a MAC chained to the one before it, and the document a MAC over
the release count, the version, the settings and a digest of ``spend``, all keyed with the site
secret (``site_secret.py``): an edited, deleted, reordered or appended release, or an edited
spend, no longer verifies. Rollback: the release count, version and document MAC are mirrored in
``privacy-ledger.head`` beside it, so restoring an older copy of the ledger, or deleting it, is
detected (a head one write behind is a crash or a full disk between the two writes, and is
brought up to date before the next write, so it never falls two behind); and the ledger must
hold at least as many DP releases as the site's egress log shows DP updates sent (each is
charged before it leaves), and every release the log records a reply paid for (its number and
nonce), so restoring an older ledger together with its head is detected too, even behind
releases that were charged but never sent. Every such case stops the site with ``LedgerError``;
nothing is reset silently. What this cannot stop: someone who can write the state folder
restoring the ledger, its head and the egress log together (docs/PRIVACY.md, "A site operator
editing its files").

Files are written atomically, fsync'd, owner-only (0600), *before* the update they pay for leaves.
"""

import hashlib
import hmac
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path

from fl_client.egress_guard import egress_entries, sent_with_epsilon
from fl_client.privacy_accounting import SkellamRelease, rdp_epsilon
from fl_client.site_secret import ledger_mac
from fl_protocol.durable_files import write_bytes_atomic
from fl_protocol.file_owner import permission_denied

FORMAT = "fedintent-privacy-ledger/8"
READ_FORMATS = ("fedintent-privacy-ledger/3", "fedintent-privacy-ledger/4",
                "fedintent-privacy-ledger/5", "fedintent-privacy-ledger/6",
                "fedintent-privacy-ledger/7", FORMAT)
"""Version 3 had no ``aliases`` and no deletion log's length; version 4 added them (and, from
ceb9819, the ``version`` its MAC covers); version 5 is version 4 under a name that a release
which cannot verify a ``version`` refuses as a newer format rather than as an edited ledger;
version 6 adds ``recorded``, version 7 ``alone`` (a release that would drop it, and so
under-count a customer's epsilon alone, refuses the ledger as a newer format), version 8 a
release's record of its run's plan (``RUN_PLAN_FIELDS``: a release before it, reading a release
that holds them, would call the ledger corrupt instead of newer, found in review; a version 7
ledger whose releases hold four of its five plan fields, no ``plan_delta``, was written only
by commits between 1b0e7ea and 933161c, which never left development, and reads as corrupt:
review 105). Every older
version is read and written back as the current one: a unit it holds starts its ``alone`` from
its spend plus what every distributed release added without the other sites' shares, the bound
those versions used."""
LEDGER_FILE = "privacy-ledger.json"
HEAD_FILE = "privacy-ledger.head"
PRIVATE_FILE_MODE = 0o600


class LedgerError(RuntimeError):
    """The ledger is unreadable, inconsistent or rolled back; the site must not train."""


@dataclass(frozen=True)
class Release:
    """One round's DP release: the mechanism, and what each unit in it was charged."""

    run: str
    server_round: int
    num_rounds: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    delta: float
    accountant: str
    units: int
    rdp: float
    time: str
    privacy_model: str = "local"
    skellam_mu: float = 0.0
    """Distributed DP: the Skellam noise the guarantee counts on (the sum of the shares of the
    sites that are neither missing nor colluding), in the integer units of the sum."""
    skellam_mu_share: float = 0.0
    """Distributed DP: the share this site added itself."""
    l1: float = 0.0
    l2: float = 0.0
    """Distributed DP: one unit's L1 and L2 sensitivity in the integer sum."""
    rdp_alone: float = 0.0
    """Distributed DP: the Rényi DP of this site's own share alone, at the ledger's order."""
    likely_l1: float = 0.0
    likely_l2: float = 0.0
    rounding_failure: float = 0.0
    """Distributed DP: one unit's sensitivity except with probability ``rounding_failure`` over
    the round's rounding draws (the Gaussian-DP account's). A release recorded before these
    existed reads them as ``l1``, ``l2`` and 0."""
    nonce: str = ""
    """Fresh randomness in the release's noise seed (``site_secret.release_nonce``), so that a
    state folder restored from a backup, whose release numbers repeat, never draws the same
    noise twice. Empty in a release recorded before it existed."""
    target_epsilon: float = 0.0
    batch_size: int = 0
    local_epochs: int = 0
    tolerated_sites: int = 0
    plan_delta: float = 0.0
    """The run's plan as its round asked for it (``RUN_PLAN_FIELDS``; ``plan_delta`` the delta
    the run asked for, ``MAX_AUTO_DELTA`` where it left it to the sites, not the site's own
    ``delta`` above, which a growing site lowers): every round of one run must ask for the same,
    since its noise was planned for it. A release recorded before they existed has none of them
    (read as 0, batch size 0 meaning unrecorded)."""

    @property
    def mechanism(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)

    @property
    def skellam(self) -> SkellamRelease:
        """A distributed release as the Skellam accounts read it, counting every site's noise."""
        return SkellamRelease(self.skellam_mu, self.l1, self.l2, self.likely_l1, self.likely_l2,
                              self.rounding_failure)

    @property
    def distributed(self) -> bool:
        return self.privacy_model == "distributed"


@dataclass
class Ledger:
    """A site's whole privacy history.

    privacy_unit: what one unit is (``utterance`` or ``customer``); fixed for the site's life,
        since spends in one unit say nothing sound about the other.
    order: the Rényi order the lifetime filter composes at, both accounts; fixed when the ledger
        is created (``privacy_budget.ledger_order``).
    delta: the delta a unit's lifetime (epsilon, delta) guarantee is stated at; fixed likewise,
        except that it is lowered, never raised, when the site outgrows it
        (``privacy_budget._tighten_delta``).
    """

    privacy_unit: str
    order: float
    delta: float
    releases: list[Release] = field(default_factory=list)
    spend: dict[str, float] = field(default_factory=dict)
    recorded: dict[str, dict[str, float]] = field(default_factory=dict)
    """name -> {the key of the unit that recorded its spend there: that spend}."""
    aliases: dict[str, float] = field(default_factory=dict)
    """name -> a spend recorded there by a unit the ledger did not name (format 5 and older)."""
    alone: dict[str, float] = field(default_factory=dict)
    """unit key -> its Rényi DP from this site's own noise only, at ``order``: charged each
    distributed release's ``rdp_alone`` (each local one's ``rdp``) and carried over like
    ``spend`` (``privacy_budget._carry_over``), so never below it. The guarantee left when the
    server lies about the cohort or sites collude with it, which ``max-epsilon-alone`` bounds."""
    deletion_log: dict[str, int | str] = field(default_factory=dict)
    """``{"entries": n, "hash": h}`` of the deletion log when it last grew; empty before any."""
    version: int = 0
    """How many times the ledger was written (0: never); ``write_ledger`` adds one. Every write
    before versions were recorded added a release, so a ledger without one is at its release
    count."""


def unit_key(secret: bytes, identity: str) -> str:
    """The ledger's name for a unit: 96 bits of a keyed hash, so the ledger holds no customer
    or conversation ids, and nobody without the site secret can match a key to a person."""
    return hmac.new(secret, b"unit\0" + identity.encode(), hashlib.sha256).hexdigest()[:24]


def privacy_unit_key(secret: bytes, privacy_unit: str, identity: str) -> str:
    """The ledger's key of the unit ``identity`` names under ``privacy_unit`` (an utterance's
    row identity, or a customer id): what every charge, report and check looks a unit up by."""
    return unit_key(secret, f"{privacy_unit}\0{identity}")


def read_ledger(state_dir: Path, secret: bytes) -> Ledger | None:
    """The site's verified ledger; ``None`` only for a site that has never released anything."""
    path = Path(state_dir) / LEDGER_FILE
    head = _read_head(Path(state_dir))
    if not path.exists():
        _refuse_a_deleted_ledger(Path(state_dir))
        return None
    try:
        document = json.loads(_read_text(path))
        if not isinstance(document, dict) or document.get("format") not in READ_FORMATS:
            raise LedgerError(_unknown_format(path, document))
        if document["format"] == READ_FORMATS[0] and ("aliases" in document
                                                      or "deletion_log" in document):
            raise LedgerError(f"{path}: a version 3 ledger cannot hold aliases or a deletion "
                              "log's length (edited)")
        written = int(document["format"].rsplit("/", 1)[1])
        for name, since, what in (("recorded", 6, "who recorded its aliases"),
                                  ("alone", 7, "its units' own-noise spends")):
            if written < since and name in document:
                raise LedgerError(f"{path}: a ledger of format {document['format']!r} cannot "
                                  f"hold {what} (edited)")
        records = document["releases"]
        releases = [_release_from(record) for record in records]
        version = document.get("version", len(releases))
        if not (type(version) is int and version >= len(releases)):
            raise ValueError(f"version {version!r} with {len(releases)} releases")
        ledger = Ledger(
            privacy_unit=str(document["privacy_unit"]),
            order=_order(document["order"]),
            delta=float(document["delta"]),
            releases=releases,
            spend={str(k): float(v) for k, v in dict(document["spend"]).items()},
            recorded={str(name): {str(k): float(v) for k, v in dict(by).items()}
                      for name, by in dict(document.get("recorded", {})).items()},
            aliases={str(k): float(v) for k, v in dict(document.get("aliases", {})).items()},
            alone={str(k): float(v) for k, v in dict(document.get("alone", {})).items()},
            deletion_log=_deletion_log_from(document.get("deletion_log", {})),
            version=version,
        )
    except LedgerError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
        raise LedgerError(
            f"{path}: privacy ledger is corrupt ({err}); the site does not train until it is "
            "restored from a backup: deleting it would forget privacy budget already spent."
        ) from err
    previous = ""
    for number, (release, record) in enumerate(zip(releases, records, strict=True), start=1):
        expected = ledger_mac(secret, previous, _canonical(_stored(release)))
        if not hmac.compare_digest(expected, str(record.get("mac", ""))):
            secret_hint = (" (or site-secret is not the one that signed it: a secret restored "
                           "from another site or from another copy than the ledger; restore "
                           "the two from one copy)" if number == 1 else "")
            raise LedgerError(
                f"{path}: release {number} does not verify (edited, reordered or inserted)"
                f"{secret_hint}; the site does not train until the ledger is restored from a "
                "backup"
            )
        previous = expected
    document_mac = _document_mac(secret, ledger, previous)
    if not hmac.compare_digest(document_mac, str(document.get("mac", ""))):
        raise LedgerError(f"{path}: ledger was edited, truncated or extended; the site does not "
                          "train until it is restored from a backup")
    _check_head(path, head, ledger, document_mac)
    sent, paid = _egress_record(Path(state_dir))
    charged = sum(1 for release in releases if release.noise_multiplier > 0)
    if sent > charged:
        raise LedgerError(
            f"{path}: the ledger holds {charged} DP releases but the site's egress log shows "
            f"{sent} DP updates sent: the ledger and its head were restored from an older copy; "
            "the site does not train until the newest copy is restored (docs/SITE_GUIDE.md)"
        )
    for number, nonce in paid:
        if not (1 <= number <= len(releases) and releases[number - 1].nonce == nonce):
            raise LedgerError(
                f"{path}: the site's egress log records a reply paid for by release {number}, "
                f"which this ledger does not hold: the ledger and its head were restored from an "
                "older copy; the site does not train until the newest copy is restored "
                "(docs/SITE_GUIDE.md)"
            )
    for release in releases:
        if not (release.noise_multiplier >= 0 and 0 < release.sample_rate <= 1
                and release.steps > 0 and release.rdp > 0
                and (not release.distributed or release.rdp_alone >= release.rdp > 0)):
            raise LedgerError(f"{path}: invalid release in ledger: {release}")
    extra = own_noise_extra(releases)
    for key, spend in ledger.spend.items():  # a unit charged before format 7 kept no ``alone``
        ledger.alone.setdefault(key, spend + extra)
        if not ledger.alone[key] >= spend:
            raise LedgerError(f"{path}: a unit's own-noise spend is below its spend (edited); "
                              "the site does not train until the ledger is restored from a "
                              "backup")
    return ledger


def own_noise_extra(releases: list[Release]) -> float:
    """What the ledger's distributed releases add to a unit's Rényi DP, together, when only the
    site's own noise share counts (each one's ``rdp_alone`` less its ``rdp``): the most a unit
    can have lost alone beyond its spend, for a unit charged before ``alone`` was kept."""
    return sum(r.rdp_alone - r.rdp for r in releases if r.distributed)


def _unknown_format(path: Path, document: object) -> str:
    """Name another release's ledger as such: an image rolled back after a newer one wrote the
    ledger must say so, not that the ledger is damaged. (The format is not MACed: relabelling
    a ledger changes only which refusal is given, never what is accepted.)"""
    found = document.get("format") if isinstance(document, dict) else None
    prefix, current = FORMAT.rsplit("/", 1)
    number = found.removeprefix(prefix + "/") if isinstance(found, str) else ""
    if not (number.isascii() and number.isdigit()) or number != str(int(number)):
        return f"{path}: not a fedintent privacy ledger (format {FORMAT!r})"
    if int(number) > int(current):
        return (f"{path}: privacy ledger format {found!r} was written by a newer fedintent "
                f"release; this one reads up to {FORMAT!r}. Run that release again (an image "
                "rolled back after it ran cannot read its ledger): until then the site does "
                "not train")
    return (f"{path}: privacy ledger format {found!r} is older than this release reads "
            f"({', '.join(map(repr, READ_FORMATS))}); the site does not train on it")


def write_ledger(state_dir: Path, ledger: Ledger, secret: bytes) -> None:
    """Durably replace the ledger (then its head) with ``ledger``, one version on from the one
    read. The caller holds ``site_folders.state_lock`` and read the ledger under it."""
    state_dir = Path(state_dir)
    _catch_up_head(state_dir)
    ledger.version = max(ledger.version + 1, len(ledger.releases))  # never below its releases
    records, previous = [], ""
    for release in ledger.releases:
        previous = ledger_mac(secret, previous, _canonical(_stored(release)))
        records.append(_stored(release) | {"mac": previous})
    document_mac = _document_mac(secret, ledger, previous)
    document = {
        "format": FORMAT,
        "privacy_unit": ledger.privacy_unit,
        "order": ledger.order,
        "delta": ledger.delta,
        "releases": records,
        "spend": ledger.spend,
        "recorded": ledger.recorded,
        "aliases": ledger.aliases,
        "alone": ledger.alone,
        "deletion_log": ledger.deletion_log,
        "version": ledger.version,
        "mac": document_mac,
    }
    write_bytes_atomic(state_dir / LEDGER_FILE, _ledger_text(document).encode("utf-8"),
                       mode=PRIVATE_FILE_MODE)
    _write_head(state_dir, len(ledger.releases), ledger.version, document_mac)


def _ledger_text(document: dict) -> str:
    """The ledger as JSON, a field a line and a release a line: ``json.dumps``' ``indent`` runs
    Python's pure-Python encoder, most of a long ledger's write (benchmarks/ledger_size.py)."""
    fields_text = []
    for name, value in document.items():
        if name == "releases" and value:
            text = "[\n" + ",\n".join(f"  {json.dumps(record)}" for record in value) + "\n ]"
        else:
            text = json.dumps(value)
        fields_text.append(f" {json.dumps(name)}: {text}")
    return "{\n" + ",\n".join(fields_text) + "\n}\n"


def _write_head(state_dir: Path, releases: int, version: int, document_mac: str) -> None:
    head = {"releases": releases, "version": version, "mac": document_mac}
    write_bytes_atomic(state_dir / HEAD_FILE, json.dumps(head).encode("utf-8"),
                       mode=PRIVATE_FILE_MODE)


def _catch_up_head(state_dir: Path) -> None:
    """Bring a head one write behind its ledger (the last head write failed: a crash, a full
    disk) up to the ledger before it is replaced, so that another failure leaves the head one
    behind again, not two (found in review: two failed head writes stopped the site for good,
    with a message that blamed an edited ledger). The ledger was verified under the same lock."""
    path = state_dir / LEDGER_FILE
    if not path.exists():
        return
    head = _read_head(state_dir)
    document = json.loads(_read_text(path))
    releases = len(document["releases"])
    version = document.get("version", releases)
    if head is None or version == head["version"] + 1:
        _write_head(state_dir, releases, version, document["mac"])


def unit_epsilons(ledger: Ledger, keys: list[str] | None = None) -> list[float]:
    """Each unit's lifetime epsilon at the ledger's delta (all units, or those in ``keys``)."""
    spends = ledger.spend.values() if keys is None else (ledger.spend.get(k, 0.0) for k in keys)
    return [rdp_epsilon(s, ledger.order, ledger.delta) for s in spends]


def group_rdp(spends: Iterable[float]) -> float:
    """The Rényi DP of one person who was the units with these spends, in releases without
    sampling (full batch, an evaluation, a Skellam sum): ``n`` such units move a release by up to
    ``n`` clip norms, and over the releases the triangle inequality bounds the group's Rényi DP
    by the square of the sum of the square roots of the units' spends. Not ``n`` times a unit's
    epsilon: the loss grows like ``n**2`` (review 126: at the defaults, 17.7 for 2 utterances
    where "2 x epsilon" said 14.9)."""
    return sum(math.sqrt(spend) for spend in spends) ** 2


def full_batch_only(ledger: Ledger) -> bool:
    """Whether every release in ``ledger`` was unsampled, where ``group_rdp`` bounds a group."""
    return all(release.sample_rate == 1 for release in ledger.releases)


def group_epsilon(ledger: Ledger, keys: list[str]) -> float:
    """The lifetime epsilon at the ledger's delta of one person who is all the units ``keys``
    (a customer's utterances under the utterance unit): ``group_rdp`` of their spends, and
    ``inf`` once the ledger holds a sampled release, for which that bound is not proven."""
    if not full_batch_only(ledger):
        return math.inf
    return rdp_epsilon(group_rdp(ledger.spend.get(key, 0.0) for key in keys), ledger.order,
                       ledger.delta)


def alone_spend(ledger: Ledger, keys: Iterable[str] | None = None) -> float:
    """The largest Rényi DP any of ``keys`` has lost counting only this site's own noise
    (``Ledger.alone``; ``keys`` None: every unit in the ledger)."""
    units = ledger.alone if keys is None else keys
    return max((ledger.alone.get(key, 0.0) for key in units), default=0.0)


def _read_head(state_dir: Path) -> dict | None:
    path = state_dir / HEAD_FILE
    if not path.exists():
        return None
    try:
        head = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(head, dict) and isinstance(head.get("releases"), int)
                and isinstance(head.setdefault("version", head["releases"]), int)
                and isinstance(head.get("mac"), str)):
            raise ValueError("expected releases, version and mac")
    except PermissionError as err:
        raise LedgerError(f"{permission_denied(path)}; the site does not train until it can "
                          "read it") from err
    except (OSError, ValueError, RecursionError) as err:
        raise LedgerError(f"{path}: unreadable ledger head ({err}); the site does not train "
                          "until it is restored from a backup") from err
    return head


def _check_head(path: Path, head: dict | None, ledger: Ledger, document_mac: str) -> None:
    """The ledger must be the one the head last recorded, or (a crash between the two writes)
    exactly one version newer."""
    count, version = len(ledger.releases), ledger.version
    if head is None:
        if version > 1:
            raise LedgerError(f"{path}: {HEAD_FILE} is missing; the ledger cannot be shown to be "
                              "the latest. Restore the state folder from a backup")
        return
    if count < head["releases"] or version < head["version"] or (
            version == head["version"] and not hmac.compare_digest(head["mac"], document_mac)):
        raise LedgerError(
            f"{path}: the ledger holds {count} releases (version {version}) but the site last "
            f"recorded {head['releases']} (version {head['version']}): it was rolled back to an "
            "older copy; the site does not train until the newest copy is restored "
            "(docs/SITE_GUIDE.md)"
        )
    if version > head["version"] + 1:
        raise LedgerError(f"{path}: {HEAD_FILE} is older than the ledger by "
                          f"{version - head['version']} writes; the site does not train until "
                          "both are restored from a backup")


def _refuse_a_deleted_ledger(state_dir: Path) -> None:
    """``LedgerError`` for a missing ledger that existed: beside its head (written only after a
    ledger, even one with no release, which still records the deletion log's length), or where
    the egress log shows a reply left with an epsilon (each charged in the ledger first, one
    without DP too). Otherwise the site would start a new ledger, every unit's spend at zero,
    and a report would show a site that has spent nothing."""
    path = state_dir / LEDGER_FILE
    if (state_dir / HEAD_FILE).exists():
        raise LedgerError(f"{path} is missing but {HEAD_FILE} exists: the ledger was deleted. "
                          "Restore the state folder from a backup (docs/SITE_GUIDE.md)")
    try:
        sent = any(sent_with_epsilon(entry) for entry in egress_entries(state_dir))
    except OSError as err:
        raise LedgerError(f"{state_dir}: the egress log is unreadable ({err}); it shows whether "
                          "the ledger was deleted, so the site does not train") from err
    if sent:
        raise LedgerError(f"{path} is missing but the egress log shows releases sent, each "
                          "charged in it first: the ledger was deleted. Restore the state "
                          "folder from a backup (docs/SITE_GUIDE.md)")


def _egress_record(state_dir: Path) -> tuple[int, list[tuple[int, str]]]:
    """What the egress log shows of the ledger: how many DP replies it records sent (a finite
    epsilon; each was charged before it left), and the (number, nonce) of every release a
    reply recorded it paid for (``egress_guard.PAID_RELEASE``; none in a simulation or before
    the nonce existed), which the ledger must still hold: a count alone would miss a restore
    hidden behind releases charged but never sent."""
    sent, paid = 0, []
    try:
        for entry in egress_entries(state_dir):
            release = entry.get("release") if isinstance(entry, dict) else None
            if (isinstance(release, dict) and isinstance(release.get("number"), int)
                    and isinstance(release.get("nonce"), str) and release["nonce"]):
                paid.append((release["number"], release["nonce"]))
            try:
                epsilon = entry["metrics"]["epsilon"]
            except (KeyError, TypeError):
                continue
            if entry.get("verdict") == "sent" and isinstance(epsilon, int | float) \
                    and math.isfinite(epsilon):
                sent += 1
    except OSError as err:
        raise LedgerError(f"{state_dir}: the egress log is unreadable ({err}); it shows whether "
                          "the ledger was rolled back, so the site does not train") from err
    return sent, paid


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except PermissionError as err:
        raise LedgerError(f"{permission_denied(path)}; the site does not train until it can "
                          "read it") from err
    except OSError as err:
        raise LedgerError(f"{path}: privacy ledger is unreadable ({err.strerror or err}); "
                          "the site does not train until it can be read") from err


def _order(value: object) -> float:
    """The ledger's Rényi order as it was written and MACed: a float, or the int an order from
    11 up was fixed as before they were all floats (read as a float, its MAC never verified)."""
    if type(value) not in (int, float) or not value > 1:
        raise ValueError(f"order {value!r} is not a number above 1")
    return value


def _deletion_log_from(record: object) -> dict[str, int | str]:
    if record == {}:
        return {}
    if not (isinstance(record, dict) and set(record) == {"entries", "hash"}
            and isinstance(record["entries"], int) and record["entries"] > 0
            and isinstance(record["hash"], str)):
        raise ValueError(f"deletion_log {record!r} is not an entry count and a hash")
    return {"entries": record["entries"], "hash": record["hash"]}


def _stored(release: Release) -> dict:
    """A release as the ledger stores (and MACs) it: a local release without the distributed-DP
    fields, a distributed release without a rounding failure (one recorded before the likely
    sensitivities existed) without those, and one without a nonce without it, so older ledgers
    verify unchanged. A shallow copy (every field is a number or a string): ``asdict``'s deep
    copy was two thirds of a 20,000-release ledger's read and write, which every message pays."""
    record = {name: getattr(release, name) for name in _RELEASE_FIELDS}
    omitted = (_DISTRIBUTED_FIELDS if not release.distributed
               else _LIKELY_FIELDS if release.rounding_failure == 0 else ())
    for name in (*omitted, *(() if release.nonce else ("nonce",)),
                 *(() if release.batch_size else RUN_PLAN_FIELDS)):
        del record[name]
    return record


_RELEASE_FIELDS = tuple(f.name for f in fields(Release))
_LIKELY_FIELDS = ("likely_l1", "likely_l2", "rounding_failure")
RUN_PLAN_FIELDS = ("target_epsilon", "batch_size", "local_epochs", "tolerated_sites",
                   "plan_delta")
"""A release's record of the run's plan; absent from a release recorded before it existed."""
_DISTRIBUTED_FIELDS = ("privacy_model", "skellam_mu", "skellam_mu_share", "l1", "l2", "rdp_alone",
                       *_LIKELY_FIELDS)


def _record_forms(distributed: bool) -> frozenset[frozenset[str]]:
    """The field sets a stored release of either privacy model may have: with or without the
    likely sensitivities (a distributed release recorded before them), the nonce and the run's
    plan, each with its MAC."""
    expected = set(_RELEASE_FIELDS) - (set() if distributed else set(_DISTRIBUTED_FIELDS))
    older = expected - set(_LIKELY_FIELDS)
    forms = [form | {"mac"} for form in (expected, older)]
    forms += [form - {"nonce"} for form in forms]
    return frozenset(frozenset(form) for form in forms + [form - set(RUN_PLAN_FIELDS)
                                                          for form in forms])


_RECORD_FORMS = {distributed: _record_forms(distributed) for distributed in (False, True)}


def _release_from(record: dict) -> Release:
    if not isinstance(record, dict):
        raise ValueError(f"release is a {type(record).__name__}, not an object")
    distributed = record.get("privacy_model") == "distributed"
    if frozenset(record) not in _RECORD_FORMS[distributed]:
        raise ValueError(f"release with fields {sorted(record)}")
    if "batch_size" in record and not (type(record["batch_size"]) is int
                                       and record["batch_size"] > 0):
        raise ValueError("release with a plan of no batch size")  # not MAC'd
    if distributed and "likely_l2" in record and record["rounding_failure"] == 0:
        raise ValueError("release with likely sensitivities that never fail")  # not MAC'd
    if "nonce" in record and not (isinstance(record["nonce"], str) and record["nonce"]):
        raise ValueError("release with an empty nonce")  # not MAC'd
    if distributed and "likely_l2" not in record:
        record = {**record, "likely_l1": record["l1"], "likely_l2": record["l2"],
                  "rounding_failure": 0.0}
    return Release(**{k: v for k, v in record.items() if k != "mac"})


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _document_mac(secret: bytes, ledger: Ledger, last_release_mac: str) -> str:
    """A MAC over the ledger's settings and a digest of its spends; with the aliases' digest
    once it has any (a version 3 ledger, which has none, verifies unchanged; deleting a version
    4 ledger's aliases changes the MAC), the recorded aliases' and the own-noise spends likewise,
    and its version once that is not its release count (a ledger written before versions
    verifies unchanged; deleting the field changes the MAC)."""
    spend_digest = hashlib.sha256(_canonical(ledger.spend).encode()).hexdigest()
    summary = {"count": len(ledger.releases), "privacy_unit": ledger.privacy_unit,
               "order": ledger.order, "delta": ledger.delta, "spend": spend_digest}
    if ledger.aliases:
        summary["aliases"] = hashlib.sha256(_canonical(ledger.aliases).encode()).hexdigest()
    if ledger.recorded:
        summary["recorded"] = hashlib.sha256(_canonical(ledger.recorded).encode()).hexdigest()
    if ledger.alone:
        summary["alone"] = hashlib.sha256(_canonical(ledger.alone).encode()).hexdigest()
    if ledger.deletion_log:
        summary["deletion_log"] = ledger.deletion_log
    if ledger.version != len(ledger.releases):
        summary["version"] = ledger.version
    return ledger_mac(secret, last_release_mac, _canonical(summary))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
