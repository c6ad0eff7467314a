"""A site's own commands: ``init-site`` (its state folder, once), ``privacy-report`` (what its
ledger says it has spent, verified), ``purge`` (its retention policy, applied to every derived
store) and ``forget`` (one customer's erasure). They read and write only the site's folders."""

import argparse
import math
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from fedintent.commands import CliError, counted
from fedintent.commands.options import number_argument, path_argument
from fl_protocol.file_owner import os_error_line, permission_denied
from fl_protocol.wire import DEFAULT_MAX_EPSILON, DEFAULT_RETENTION_DAYS
from fl_server.progress import format_epsilon
from fl_server.run_record import site_pseudonym

if TYPE_CHECKING:
    from fl_client.privacy_report import Evaluations, SiteReport
    from fl_client.retention import EarlierErasure


def add_parsers(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "privacy-report",
        help="a site's privacy spend: per-unit lifetime epsilon, exhausted units, every run",
        description="Verify a site's privacy ledger and summarise it: how many privacy units "
        "have spent how much epsilon over all runs, how many are exhausted, and each run. Exit "
        "0: verified; 1: the deletion log is not the one the ledger recorded (the site uses no "
        "data until it is restored); 2: the ledger does not verify or cannot be read.",
    )
    report.set_defaults(handler=run_privacy_report)
    report.add_argument("state_dir", type=path_argument, metavar="STATE_DIR")
    report.add_argument("--customer", metavar="ID",
                        help="also say how much budget this customer's data has spent, over "
                        "every run (read only: nothing is erased; needs --site)")
    report.add_argument("--site", type=path_argument, metavar="SITE_DIR",
                        help="the site's data folder, where --customer's rows are found")
    report.add_argument("--max-epsilon", type=number_argument, default=None,
                        help="the site's max-epsilon (its node config, MAX_EPSILON in the "
                        "container), to count exhausted units (default: as the site's newest "
                        f"training reply stated it, else the site default, "
                        f"{DEFAULT_MAX_EPSILON:g})")

    init = commands.add_parser(
        "init-site",
        help="set up a new site's state folder and its site secret, once, before its first run",
        description="Make a new site's state folder (owner-only) and its site secret, which "
        "seeds its DP noise and signs its privacy ledger. A deployed site's ClientApp never "
        "makes one: a state folder that was lost, moved aside or not mounted would come back "
        "empty, with every unit's spent budget starting again from zero. Run this once per "
        "site (the container: INIT_STATE=1); on a folder that holds a secret it changes "
        "nothing. See docs/SITE_GUIDE.md.",
    )
    init.set_defaults(handler=run_init_site)
    init.add_argument("--state-dir", type=path_argument, required=True,
                      help="the site's state folder (its node config's state-dir; the "
                      "container's STATE_DIR)")

    purge = commands.add_parser(
        "purge",
        help="apply the site's retention policy: purge expired and erased rows' derived data",
        description="Remove from the site's state folder (its feature store) every row the "
        "retention policy has expired or an erasure has ended, and record what was removed in "
        "the site's deletion log (STATE_DIR/deletions.jsonl). The ClientApp does the same "
        "before every training round; run this on a schedule (the site container does) for "
        "the time between runs. See docs/SITE_GUIDE.md.",
    )
    purge.set_defaults(handler=run_purge)
    purge.add_argument("site_dir", type=path_argument, metavar="SITE_DIR",
                       help="the site's data folder")
    _site_options(purge, retention="inf keeps rows without limit (default: the one the "
                  f"deletion log last recorded, else {DEFAULT_RETENTION_DAYS:g}; "
                  "--delete-from-data needs it given)",
                  delete="also remove from the data files the rows expired or erased, each "
                  "file rewritten atomically; by default the data folder is only read")

    forget = commands.add_parser(
        "forget",
        help="erase one customer at the site: every derived copy, logged; the ledger keeps "
        "their spend",
        description="Record an erasure request for one customer in the site's deletion log "
        "(as a keyed hash), so that no later run uses their rows dated up to now (plus a day "
        "of clock skew, or their newest row), and remove "
        "their rows from every derived store (and, with --delete-from-data, from the data "
        "folder). The privacy ledger keeps their spend: a customer who returns is not a fresh "
        "privacy unit. Exit 0: done; 3: recorded, but no row in SITE_DIR and no spend in the "
        "ledger carries this id (a mistyped id? an erasure queue should flag it); 2: refused, "
        "or done only in part (the message says which). See docs/SITE_GUIDE.md.",
    )
    forget.set_defaults(handler=run_forget)
    forget.add_argument("--site", type=path_argument, required=True, metavar="SITE_DIR",
                        help="the site's data folder")
    forget.add_argument("--customer", required=True, metavar="ID",
                        help="the customer's customer_id as in the data (case, character "
                        "width, invisible characters, dashes and digit scripts do not tell ids "
                        "apart; --delete-from-data removes only the rows in this case)")
    _site_options(forget, retention="decides only which other rows' cached features stay: "
                  "the customer's rows go whatever their age (default: the one the deletion "
                  f"log last recorded, else {DEFAULT_RETENTION_DAYS:g})",
                  delete="also remove the customer's rows from the data files, each file "
                  "rewritten atomically; by default the data folder is only read")


def _site_options(command: argparse.ArgumentParser, retention: str, delete: str) -> None:
    command.add_argument("--state-dir", type=path_argument,
                         help="the site's state folder (its node config's state-dir; the "
                         "container's STATE_DIR; default: SITE_DIR/.fedintent-state, or where "
                         "fedintent train keeps a simulated site's, SITE_DIR/../.fedintent-state/"
                         "SITE, if only that one holds a site's state)")
    command.add_argument("--retention-days", type=number_argument,
                         help="the site's retention-days (node config; RETENTION_DAYS in the "
                         f"container); {retention}")
    command.add_argument("--delete-from-data", action="store_true", help=delete)


def run_init_site(args: argparse.Namespace) -> int:
    from fl_client.site_secret import create_site_secret

    if args.state_dir.is_file():  # found in review: "[Errno 17] File exists"
        raise CliError(f"--state-dir {args.state_dir} is a file, not a folder: give a new or "
                       "empty folder for the site's state")
    _a_folder_of_its_own(args.state_dir)
    with _state_errors():
        try:
            made = create_site_secret(args.state_dir)
        except OSError as err:
            raise CliError(f"cannot make the state folder {args.state_dir}: {err}") from err
    if made:
        print(f"made the state folder {args.state_dir} and its site secret; keep the folder "
              "persistent and back it up (docs/SITE_GUIDE.md)")
    else:
        print(f"{args.state_dir} already holds a site secret; nothing done")
    return 0


def run_purge(args: argparse.Namespace) -> int:
    from fl_client.retention import purge, who_deletes

    state_dir = _state_dir(args, args.site_dir)
    _as_the_sites_account(state_dir)
    with _state_errors():
        args.retention_days, source = _retention_days(args, state_dir)
        deletion = purge(args.site_dir, state_dir, args.retention_days,
                         who_deletes("fedintent purge"), delete_from_data=args.delete_from_data,
                         default_retention=source.startswith("the default"))
    policy = ("no retention limit" if math.isinf(args.retention_days)
              else f"retention {args.retention_days:g} days")
    policy += f", {source}" if source else ""
    print(f"purged {args.site_dir} ({policy}; state {state_dir})")
    _print_deletion(deletion, args.delete_from_data, state_dir)
    if deletion.ledger_problem:
        raise CliError(f"the purge above is done and logged, but the privacy ledger could not "
                       f"record the deletion log's new length: {deletion.ledger_problem}")
    return 0


UNKNOWN_CUSTOMER = 3
"""``forget``'s exit code for an erasure recorded under an id that no row and no spend carries."""


def run_forget(args: argparse.Namespace) -> int:
    from fl_client.privacy_ledger import LEDGER_FILE
    from fl_client.retention import forget, who_deletes
    from fl_client.site_secret import holds_site_state

    state_dir = _state_dir(args, args.site)
    if not args.customer.strip():
        raise CliError("--customer: the customer id is empty")
    try:
        args.customer.encode("utf-8")
    except UnicodeEncodeError as err:  # bytes the terminal's encoding could not decode
        raise CliError("--customer: the id is not valid UTF-8 text (the terminal or script "
                       "passed it in another encoding, such as Latin-1); data rows are read as "
                       "UTF-8, so pass it as UTF-8") from err
    if state_dir.is_file():
        raise CliError(f"--state-dir {state_dir} is a file, not a folder: give the site's state "
                       "folder, as its node config names it")
    if not holds_site_state(state_dir):
        # found in review: the erasure was recorded in a stray folder, and success printed
        raise CliError(f"{state_dir} holds no site secret, so it is not the state folder of a "
                       "site that has run: the erasure would bind nothing the site reads; give "
                       "--state-dir as the site's node config names it (a site that never ran "
                       "has no derived store: delete the customer's rows from its data files)")
    _as_the_sites_account(state_dir)
    with _state_errors():
        # the customer's rows go whatever their age: the retention decides only which other
        # rows' cached features stay
        args.retention_days, _ = _retention_days(args, state_dir, deletes_by_age=False)
        erasure = forget(args.site, state_dir, args.customer, args.retention_days,
                         who_deletes("fedintent forget"), delete_from_data=args.delete_from_data)
    forms = f" (their id written in {erasure.forms} forms)" if erasure.forms > 1 else ""
    print(f"erasure recorded: {erasure.rows_found} rows of this customer in {args.site}{forms}; "
          f"no run uses their rows dated up to "
          f"{erasure.erased_until.isoformat(timespec='seconds')} (now plus a day of clock skew, "
          "or their newest row) or undated")
    _print_deletion(erasure.deletion, args.delete_from_data, state_dir)
    if args.delete_from_data and erasure.other_case_rows:
        print(f"note: {erasure.other_case_rows} of those rows write the id in another case: no "
              "run uses them, but they stay in the data files, since a case-sensitive system "
              "may hold another customer under that id; if they are this customer's, run "
              "forget --delete-from-data again with the id as they write it")
    if erasure.deletion.ledger_problem:  # found in review: it was not said
        raise CliError(f"the erasure above is recorded and done, but the privacy ledger could "
                       f"not record the deletion log's new length, so the site does not train "
                       f"until it reads again: {erasure.deletion.ledger_problem}. If you "
                       "restore the state folder from a backup, run this forget again: the "
                       "backup's deletion log does not hold it")
    if erasure.ledger_problem:
        raise CliError(f"the erasure above is recorded and done, but the privacy ledger could "
                       f"not be read to report the spend it keeps of theirs: "
                       f"{erasure.ledger_problem}")
    if erasure.ledger_units:
        print(f"privacy ledger: keeps the spend of their {erasure.ledger_units} privacy unit(s) "
              f"(largest lifetime epsilon {erasure.ledger_epsilon:.3g} at delta "
              f"{erasure.ledger_delta:g}{_together(erasure.ledger_group_epsilon)}); a "
              "returning customer is not a fresh unit")
    elif erasure.earlier_erasure:
        print(f"privacy ledger: {_unnamed_spend(erasure.earlier_erasure)}")
    elif (state_dir / LEDGER_FILE).exists():
        print("privacy ledger: holds no spend of theirs (never trained on)")
    else:  # found in review: a wrong, initialised folder took the erasure, and exit 0 said done
        print(f"warning: {state_dir} holds no privacy ledger, so no site has trained with it: "
              "if this site has trained, its --state-dir is another folder (as its node config "
              "names it), where this erasure is not recorded; run forget again there",
              file=sys.stderr)
    if erasure.rejected_mentions:
        shown = ", ".join(erasure.rejected_mentions[:10])
        more = len(erasure.rejected_mentions) - 10
        where = f"{shown}{f' and {more} more' if more > 0 else ''}"
        if args.delete_from_data:
            raise CliError(f"the erasure above is recorded and done, but lines that failed "
                           f"validation name this customer and were left in the data folder "
                           f"(the loader cannot tell whose a broken row is): {where}; delete or "
                           "fix them by hand")
        print(f"note: lines that failed validation name this customer (never used, left as "
              f"they are): {where}")
    elif not erasure.rows_found and not erasure.ledger_units and not erasure.earlier_erasure:
        print(f"fedintent forget: warning: no row in {args.site} has this customer_id and the "
              "privacy ledger holds no spend under it: check the id (matched ignoring "
              "case, character width, invisible characters, dashes and digit scripts); the "
              "erasure is recorded all the same, so rows that arrive under it later are not "
              "used (exit 3)", file=sys.stderr)
        return UNKNOWN_CUSTOMER  # found in review: exit 0 told an erasure queue all was well
    return 0


def _a_folder_of_its_own(state_dir: Path) -> None:
    """Refuse to make a state folder of one that holds other files (found in review: the data
    folder, or the current one, was made owner-only, locking out whoever writes there, with a
    site secret in it), or of another account's (whose site could not read the secret)."""
    from fl_client.site_folders import LOCK_FILE
    from fl_client.site_secret import KEYED_FILES, SECRET_FILE

    if not state_dir.is_dir() or (state_dir / SECRET_FILE).exists():
        return
    others = sorted(entry.name for entry in state_dir.iterdir()
                    if entry.name not in {LOCK_FILE, "lost+found", *KEYED_FILES})
    if others:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5
                                         else "")
        raise CliError(f"{state_dir} already holds other files ({shown}) and no site secret: a "
                       "state folder is a folder of its own, never the data folder or the "
                       "current one; give a new or empty folder")
    owner = state_dir.stat().st_uid
    if owner != os.geteuid():
        raise CliError(f"{state_dir} belongs to uid {owner}, and this command runs as uid "
                       f"{os.geteuid()}: the state folder, and the site secret made in it, must "
                       "be the account's the site runs as; run init-site as that account, on a "
                       "folder it owns (chown the folder to it first if it is not its)")


def _as_the_sites_account(state_dir: Path) -> None:
    """Refuse to rewrite a site's state as another account than the one that made its secret
    (found in review: ``forget`` run through sudo left the ledger and the deletion log's head
    root's, and the site, unable to read them, stopped training and using its data), or in a
    folder it cannot write (found in review: a purge removed cached features, then could not
    log it)."""
    from fl_client.site_secret import SECRET_FILE

    try:
        owner = (state_dir / SECRET_FILE).stat().st_uid
    except OSError:
        return  # no secret, or a folder this account cannot search: each is its own error
    if not os.access(state_dir, os.W_OK | os.X_OK):
        raise CliError(f"{state_dir} is not writable by this account (mounted read-only?): "
                       "nothing was removed or logged; run the command where the site's state "
                       "folder is writable")
    if owner != os.geteuid():
        raise CliError(f"{state_dir} is the site's state folder of uid {owner} (the owner of "
                       f"its site secret), and this command runs as uid {os.geteuid()}: the "
                       "files it rewrites (the privacy ledger, the deletion log's head) would "
                       "become this account's, which the site could not read, and it would "
                       f"stop; run it as the site's account (sudo -u '#{owner}' fedintent ...; "
                       "`docker exec` into the site container runs as it)")


@contextmanager
def _state_errors() -> Iterator[None]:
    """A state folder the site cannot use (its secret lost, its ledger damaged, its disk full)
    is an error message that says how to recover, not a traceback (found in review)."""
    from fl_client.privacy_ledger import LedgerError
    from fl_client.site_secret import SecretError

    try:
        yield
    except (SecretError, LedgerError) as err:
        raise CliError(str(err)) from err
    except PermissionError as err:
        raise CliError(f"{permission_denied(err.filename)}; the deletion log shows what was "
                       "done before it (`fedintent audit verify`)") from err
    except OSError as err:  # a full disk, a folder mounted read-only (found in review)
        raise CliError(f"{os_error_line(err)}; the deletion log shows what was done "
                       "before it (`fedintent audit verify`); run the command again once this "
                       "is fixed") from err


def _retention_days(args: argparse.Namespace, state_dir: Path,
                    deletes_by_age: bool = True) -> tuple[float, str]:
    """(``--retention-days``, or the site's as its deletion log last recorded it, and where it
    came from when not given): only a retention given on this command line decides which rows
    are deleted from the data folder (found in review: a one-off ``--retention-days 1``,
    recorded, then deleted every row of a 365-day site on the next run without the flag)."""
    from fl_client.deletion_log import recorded_retention_days

    if args.retention_days is not None:
        return args.retention_days, ""
    if args.delete_from_data and deletes_by_age:
        raise CliError("--delete-from-data needs --retention-days: give the site's "
                       "retention-days (node config; RETENTION_DAYS in the container), so that "
                       "no row is deleted from the data folder under a default or under an "
                       "earlier purge's retention")
    recorded = recorded_retention_days(state_dir) if state_dir.is_dir() else None
    if recorded is not None:
        return recorded, "as the site last applied it"
    return DEFAULT_RETENTION_DAYS, "the default: the deletion log records none yet"


def _state_dir(args: argparse.Namespace, site_dir: Path) -> Path:
    from fl_client.data_files import check_site_folder
    from fl_client.site_folders import default_state_folders
    from fl_client.site_secret import holds_site_state

    if args.retention_days is not None and not args.retention_days > 0:
        raise CliError(f"--retention-days must be > 0 (inf: no limit), got {args.retention_days}")
    with suppress(PermissionError):  # reported where it is read; forget records the erasure
        check_site_folder(site_dir)  # first (found in review: it recorded nothing)
    if args.state_dir is not None:
        return args.state_dir
    own, simulated = default_state_folders(site_dir)
    if not holds_site_state(own) and holds_site_state(simulated):
        # found in review: a site fedintent train had played was looked for in the first, and
        # the error then suggested making a ledger inside the data folder
        print(f"state folder: {simulated} (where fedintent train keeps a simulated site's; "
              "--state-dir names another)")
        return simulated
    return own


def _print_deletion(deletion, delete_from_data: bool, state_dir: Path) -> None:
    not_used = ", ".join(f"{count} {reason}" for reason, count in
                         sorted(deletion.not_used.items())) or "none"
    # the whole site's, not one customer's (found in review: read as the customer's counts)
    print(f"  rows not used under the policy, whole site: {not_used}")
    print(f"  removed, whole site: {counted(deletion.feature_rows, 'cached feature row')}, "
          f"{counted(deletion.files, 'file')} from the feature store")
    if delete_from_data:
        print(f"  removed from the data folder: {counted(deletion.data_rows, 'row')}")
    else:
        print("  data folder: only read (--delete-from-data removes expired and erased rows "
              "from it)")
    print(f"  logged: entry {deletion.log_entry} of {state_dir / 'deletions.jsonl'} (check it "
          "with `fedintent audit verify`)")


UNTRAINED = ("no runs yet: no privacy ledger, and no unit has spent any budget (if this site has "
             "trained, its state folder was lost: restore it from the backup)")


def run_privacy_report(args: argparse.Namespace) -> int:
    from fl_client.data_files import check_site_folder
    from fl_client.privacy_ledger import LedgerError
    from fl_client.privacy_report import site_privacy_report, stated_max_epsilon
    from fl_client.rows import SiteDataError

    source = ""
    if args.max_epsilon is None:
        stated = stated_max_epsilon(args.state_dir) if args.state_dir.is_dir() else None
        args.max_epsilon = DEFAULT_MAX_EPSILON if stated is None else stated
        source = ("the site default: no training reply in the egress log states one"
                  if stated is None else "as the site's newest training reply stated it")
    if not args.max_epsilon > 0:
        raise CliError(f"--max-epsilon must be > 0, got {args.max_epsilon}")
    if (args.customer is None) != (args.site is None):
        raise CliError("--customer and --site go together: the customer's rows are found in "
                       "the site's data folder")
    if args.customer is not None and not args.customer.strip():
        raise CliError("--customer: the customer id is empty")
    if args.site is not None:  # found in review: a wrong one failed after the whole report
        try:
            check_site_folder(args.site)
        except SiteDataError as err:
            raise CliError(f"--site {args.site}: {err}") from err
    try:
        report = site_privacy_report(args.state_dir, args.max_epsilon)
    except (FileNotFoundError, LedgerError) as err:
        raise CliError(str(err)) from err
    print(f"site key {report.site_key} ({site_pseudonym(report.site_key)} in metrics.json); "
          f"{_verified(report) if report.trained else UNTRAINED}")
    print(f"deletion log: {report.deletion_log}")
    if report.trained:
        _print_spend(report, source)
    _print_evaluations(report.evaluations)
    if args.customer is not None:
        _print_customer_spend(args.site, args.state_dir, args.customer)
    return 0 if report.deletion_log_ok else 1


def _verified(report: "SiteReport") -> str:
    """The verified ledger's length and newest release, for the operator to hold against their
    own records: a whole folder restored from an older backup verifies too, and only they can
    tell it is shorter (found in review: restored so, it was accepted without a word)."""
    releases = sum(run.rounds for run in report.runs)
    newest = max(run.last for run in report.runs)
    return (f"ledger verified: {counted(releases, 'release')}, the newest at {newest} (a state "
            "folder restored from an older backup holds fewer: hold this against your records, "
            "docs/SITE_GUIDE.md, \"Back up and restore\")")


def _print_evaluations(evaluations: "Evaluations") -> None:
    """What the egress log shows of the site's evaluate replies, a line for each kind there
    was (found in review: "0 in 0 runs, each with ...; declined: 0" was hard to read)."""
    lines = []
    if evaluations.sent:
        lines.append(f"{evaluations.sent} in {counted(evaluations.runs, 'run')} with the test "
                     "split's exact metrics, which no epsilon above covers; node config "
                     "evaluation = \"dp\" "
                     "(EVALUATION=dp in the site container) sends DP estimates instead, "
                     "\"off\" none")
    if evaluations.dp:
        lines.append(f"{evaluations.dp} with DP estimates, counted above as the runs named "
                     "'(evaluation)'")
    if evaluations.declined:
        lines.append(f"{evaluations.declined} declined")
    print("evaluate replies (egress log):" + ("" if lines else " none sent or declined"))
    for line in lines:
        print(f"  {line}")
    if evaluations.unreadable:
        print(f"  {evaluations.unreadable} egress log lines unreadable, not counted")


def _unnamed_spend(earlier: "EarlierErasure") -> str:
    """What the ledger holds of a customer whose erasure removed every row of theirs (found in
    review: "never trained on", which the ledger, keeping their spend, contradicts)."""
    asked = earlier.asked_at.isoformat(timespec="seconds")
    found = (f"found the spend of {earlier.ledger_units} privacy unit(s) of theirs in the "
             "ledger, which keeps it" if earlier.ledger_units is not None else
             "found rows of theirs (it did not count their spend: an earlier release's, or the "
             "ledger unreadable then); if they were trained on, the ledger keeps that spend")
    return (f"an erasure of theirs asked for at {asked} {found}; no row of theirs is left to "
            "name those units (their utterances), so it cannot be looked up again (the "
            "customer privacy unit keys it by the id)")


def _print_customer_spend(site_dir: Path, state_dir: Path, customer: str) -> None:
    """One customer's spend, as ``forget`` reports it, without erasing them."""
    from fl_client.retention import customer_spend
    from fl_client.rows import SiteDataError

    try:
        spend = customer_spend(site_dir, state_dir, customer)
    except (OSError, SiteDataError) as err:
        raise CliError(f"--site {site_dir}: {err}") from err
    found = (f"{spend.rows_found} rows in {site_dir} (any written form of the id)"
             if spend.rows_found else f"no row in {site_dir} has this customer_id")
    if spend.earlier_erasure:
        print(f"customer: {found}; {_unnamed_spend(spend.earlier_erasure)}")
        return
    if not spend.units:
        print(f"customer: {found}; the ledger holds no spend of theirs (never trained on "
              "with this state folder)")
        return
    alone = (f" (from this site's own noise alone: {format_epsilon(spend.epsilon_alone)})"
             if spend.epsilon_alone != spend.epsilon else "")
    print(f"customer: {found}; the ledger holds the spend of {spend.units} privacy unit(s) of "
          f"theirs, largest lifetime epsilon {format_epsilon(spend.epsilon)}{alone} at delta "
          f"{spend.delta:g}{_together(spend.group_epsilon)}")


def _together(group_epsilon: float | None) -> str:
    """Under the utterance unit, what a customer's several units are together: a unit's epsilon
    is one utterance's, and a customer's k utterances lose about k**2 times as much Rényi DP,
    not k times the epsilon (review 126: read as the customer's, the largest unit's figure
    understated them)."""
    if group_epsilon is None:
        return ""
    if math.isinf(group_epsilon):
        return ("; under privacy-unit utterance that is one utterance's, and after a sampled "
                "release the ledger bounds none of their utterances together: only "
                "privacy-unit customer protects a customer as one")
    return ("; under privacy-unit utterance that is one utterance's: all of theirs together at "
            f"most {format_epsilon(group_epsilon)}")


def _print_spend(report: "SiteReport", source: str = "") -> None:
    """What the ledger holds: the units' spend in bands, the largest, and each run; ``source``:
    where max-epsilon came from when not given."""
    from fl_client.privacy_report import EXHAUSTED_SHARE

    print(f"privacy unit: {report.privacy_unit}; {report.units} units have spent budget; "
          f"lifetime epsilon at delta {report.delta:g} (Rényi order {report.order:g})")
    if report.delta_too_large:
        print(f"  warning: delta {report.delta:g} was fixed when this ledger began; with "
              f"{report.units} units it is not small next to 1/{report.units}, so each unit's "
              "guarantee may fail outright with that probability; a site whose data rolls over "
              "sets max-delta for its lifetime's units (docs/PRIVACY.md, \"The lifetime "
              "delta\")")
    for low, high, count in report.spend_bands:
        print(f"  epsilon {low:5.2f} to {high:5.2f}: {count} units")
    given = f"; {source}" if source else ""
    print(f"  exhausted (>= {EXHAUSTED_SHARE:.0%} of max-epsilon {report.max_epsilon:g}"
          f"{given}): {report.exhausted} units")
    if report.non_private:
        print(f"  trained without DP (no guarantee): {report.non_private} units")
    print(f"  largest: {format_epsilon(report.largest_epsilon)}")
    if report.largest_epsilon > report.max_epsilon:
        print(f"  (above max-epsilon {report.max_epsilon:g}: the site's budget was larger when "
              "those units trained, or a customer that was several units was counted as the "
              "group; such units sit out: docs/PRIVACY.md)")
    if report.runs:
        print("  (a unit's lifetime epsilon composes all its releases in the site's Rényi DP "
              "filter, which adds a run's releases less tightly than the run's own accountant: "
              "one run can read below the lifetime it leaves; docs/PRIVACY.md, \"What the Rényi "
              "filter costs\")")
    if report.largest_epsilon_alone != report.largest_epsilon:
        print(f"  largest from this site's own noise alone (distributed DP, if every other "
              f"site colluded): at most {format_epsilon(report.largest_epsilon_alone)}")
    for run in report.runs:
        alone = ("" if run.privacy_model == "local" else
                 f" (distributed DP; alone {format_epsilon(run.epsilon_alone)})")
        print(f"run {run.run}: {counted(run.rounds, 'round')}, {run.units} units, epsilon "
              f"{format_epsilon(run.epsilon)}{alone} at delta {run.delta:g}, noise multiplier "
              f"{run.noise_multiplier:.4g}, sample rate {run.sample_rate:.4g}, {run.steps} "
              f"steps/round, clip norm {run.clip_norm:g} ({run.first} .. {run.last})")
        if run.sent < run.rounds:
            print(f"  {run.rounds - run.sent} of its {counted(run.rounds, 'release')} left no "
                  "reply the egress log shows sent (blocked, failed or cut off after the "
                  "charge): charged all the same")
