"""``audit verify`` (a hash-chained log: the server's audit log, or a site's deletion log, whose
MACs it checks with the site secret) and ``audit-privacy`` (an empirical membership-inference
audit of the federated model)."""

import argparse
import contextlib
import io
import stat
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from fedintent.commands import CliError, require_operator_extra
from fedintent.commands.options import parse_epsilons, path_argument, writable_folder

if TYPE_CHECKING:
    from fl_client.privacy_ledger import Ledger


def add_parsers(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit",
        help="check a run's audit log (OUT/audit.jsonl) or a site's deletion log",
        description="Check a hash-chained log: the server's audit log (OUT/audit.jsonl, see "
        "docs/FAULT_TOLERANCE.md) or a site's deletion log (STATE_DIR/deletions.jsonl, see "
        "docs/SITE_GUIDE.md), whose entries and head are also MACed with the site secret.",
    )
    audit_actions = audit.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    verify = audit_actions.add_parser(
        "verify",
        help="verify the hash chain and head: exit 0 intact, 1 broken, 2 unreadable",
        description="Print OK with the entry count, or the first line where the chain breaks "
        "(edited, deleted, reordered or truncated entries, or, in a site's keyed log, a MAC "
        "that does not match). A site's deletion log is also checked against the length its "
        "privacy ledger recorded, in its state folder or, as a backup copy, against "
        "--state-dir's ledger and deletion log: BROKEN where the site would refuse it or it "
        "lacks erasures the site's log holds. Exit 0 intact, 1 broken, 2 unreadable (or the "
        "site kept writing its state folder while it was read: try again).",
    )
    verify.set_defaults(handler=run_audit_verify)
    verify.add_argument("log", type=path_argument, metavar="LOG")
    verify.add_argument("--state-dir", type=path_argument,
                        help="a site's keyed log: the state folder holding the site secret "
                        "(default: the log's own folder), whose privacy ledger a copy of the "
                        "deletion log is checked against")

    privacy = commands.add_parser(
        "audit-privacy",
        help="empirical privacy audit: membership inference against the federated model",
        description="Train the federated model (in-process, the sites' own DP-SGD code, tuned "
        "settings per epsilon) with canary and natural audit utterances each included at "
        "random, plus shadow models, and measure how well a loss-threshold attack and LiRA tell "
        "members apart: ROC AUC, TPR at 0.1% and 1% FPR, and an empirical epsilon lower bound "
        "next to the accountant's epsilon. Resumable. See docs/PRIVACY_AUDIT.md.",
    )
    privacy.set_defaults(handler=run_audit_privacy)
    privacy.add_argument("--data", type=path_argument, required=True, metavar="CSV_DIR",
                         help="folder with train.csv and test.csv (partitioned into sites), or "
                         "a folder of site folders with labels.txt")
    privacy.add_argument("--out", type=path_argument, required=True,
                         help="audit folder (resumable)")
    privacy.add_argument("--sites", type=int, help="number of sites (default: 10 for CSV_DIR, "
                         "every site of a site folder)")
    privacy.add_argument("--alpha", type=float, default=0.5,
                         help="Dirichlet label-skew concentration (default: 0.5)")
    privacy.add_argument("--epsilons", default="1,8,inf",
                         help="comma-separated per-site epsilons; inf = no DP (default: 1,8,inf)")
    privacy.add_argument("--shadows", type=int, default=32,
                         help="shadow models per epsilon (default: 32)")
    privacy.add_argument("--canaries", type=int, default=500,
                         help="random-label canary utterances (default: 500)")
    privacy.add_argument("--natural", type=int,
                         help="natural audit utterances with their true label "
                         "(default: as many as --canaries; 0 = none)")
    privacy.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    privacy.add_argument("--rounds", type=int,
                         help="override every epsilon's tuned number of rounds (quick looks)")
    privacy.add_argument("--confidence", type=float, default=0.95,
                         help="confidence of the lower bound (default: 0.95)")
    privacy.add_argument("--workers", type=int, default=1,
                         help="processes training models in parallel (default: 1)")


READ_ATTEMPTS = 5
"""How many times ``audit verify`` reads a site's state folder before it asks to try again, when
the site wrote to it during every read."""


def run_audit_verify(args: argparse.Namespace) -> int:
    """Verify, printing the verdict of a read during which the site wrote nothing to its state
    folder. The site appends to its deletion log and records the log's length in its ledger
    while it runs (found in review: a scheduled purge between verify's reads made an intact log
    read as truncated, exit 1, or as one to restore from a backup, exit 2); verify takes no lock
    for that (found in review: a verify paused under the site's lock stalled every purge,
    erasure and round, and one run as root left a lock file the site could not open), but
    reads again when any file there changed during its read."""
    try:
        state_dir = _state_folder(args)
        for _ in range(READ_ATTEMPTS):
            before = _state_files(args, state_dir)
            verdict = io.StringIO()
            try:
                with contextlib.redirect_stdout(verdict):
                    code = _verify_or_missing(args, state_dir)
            except CliError:
                if _state_files(args, state_dir) == before:
                    raise
                continue
            if _state_files(args, state_dir) == before:
                sys.stdout.write(verdict.getvalue())
                return code
            time.sleep(0.2)
    except OSError as err:
        raise CliError(f"cannot read {err.filename or args.log}: {err.strerror or err}") from err
    raise CliError(f"the site wrote to its state folder {state_dir} during each of "
                   f"{READ_ATTEMPTS} reads (a training round, a purge or an erasure), and its "
                   "deletion log cannot be verified while it changes: try again later")


def _verify_or_missing(args: argparse.Namespace, state_dir: Path | None) -> int:
    from fl_protocol.hash_chain import head_path

    if (_is_a_state_folders_deletion_log(args) and not args.log.exists()
            and not head_path(args.log).exists()):
        return _verify_no_deletion_log(args)
    return _verify(args, state_dir)


def _state_files(args: argparse.Namespace,
                 state_dir: Path | None) -> dict[str, tuple[int, ...]] | None:
    """Which version of every file verify reads is there (inode, size, modification and change
    times of the log, its head and each file directly in the state folder, links not
    followed): the site replaces its ledger and heads by rename and appends to its logs, so any
    write changes one of them. Its subfolders are left out: verify reads nothing in them, and
    a round writes the feature cache there all the time it embeds (found in review: verify
    gave up within a second, asking to try again)."""
    from fl_protocol.hash_chain import head_path

    if state_dir is None:
        return None
    explicit = [args.log, head_path(args.log)]
    found = {}
    for path in [*explicit, *sorted(state_dir.iterdir())]:
        with contextlib.suppress(FileNotFoundError):
            info = path.lstat()  # found in review: a link loop or a stale mount's link failed
            if stat.S_ISDIR(info.st_mode) and path not in explicit:
                continue
            found[str(path)] = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
    return found


def _verify(args: argparse.Namespace, state_dir: Path | None) -> int:
    """Verify the log, then a site's against what its privacy ledger recorded: in its state
    folder as the site checks it, elsewhere (``--state-dir``) as a copy to restore."""
    from fl_protocol.hash_chain import NotALogError, verify_log_entries

    try:
        key = _site_key(args) if _is_site_log(args) else None
        result, entries = verify_log_entries(args.log, key)  # a head it may not open: OSError
    except NotALogError as err:
        raise CliError(str(err)) from err
    except OSError as err:
        raise CliError(f"cannot read {err.filename or args.log}: {err.strerror or err}") from err
    if not result.ok:
        verify = "verifies" if result.entries == 1 else "verify"
        print(f"BROKEN at line {result.broken_line}: {result.problem} "
              f"({_entries(result.entries)} {verify} before it; {args.log})")
        return 1
    intact = (f"OK: {_entries(result.entries)}, "
              f"{'hash chain, head and MACs' if key else 'hash chain and head'} intact")
    if state_dir is None or key is None:
        print(f"{intact} ({args.log})")
        return 0
    if not _is_a_state_folders_deletion_log(args):
        return _verify_a_copy(args, state_dir, key, entries, intact)
    if problem := _against_the_ledger(args, key, entries)[1]:
        print(f"BROKEN: {problem} ({args.log})")  # found in review: a rolled-back log was OK
        return 1
    print(f"{intact} ({args.log})")
    return 0


def _verify_a_copy(args: argparse.Namespace, state_dir: Path, key: bytes, entries: list[dict],
                   intact: str) -> int:
    """A site's keyed log outside its state folder (a backup to restore) against the ledger
    there, as the site checks a restored log before it reads a row: 1 where the site would
    refuse it (found in review: a copy older than the ledger recorded was OK, then refused)."""
    from fl_protocol.hash_chain import extends

    ledger = _ledger(args, state_dir, key)
    recorded = ledger.deletion_log if ledger else {}
    count = int(recorded.get("entries", 0))
    if not extends(entries, recorded):
        why = ("it lacks the purges and erasures made since (customers erased since would be "
               "used again)" if len(entries) < count else
               f"its entry {count} is not the one recorded (another history of the log)")
        print(f"BROKEN: this copy holds {_entries(len(entries))}, but the privacy ledger in "
              f"{state_dir} recorded {count} when the site's deletion log last grew: {why}, "
              f"and the site would refuse it restored; restore a copy that holds those "
              f"{count} ({args.log})")
        return 1
    live, problem = _against_the_live_log(state_dir, key, entries, recorded)
    if problem:
        print(f"BROKEN: {problem}: restored, it would use the customers erased in them again; "
              f"restore a copy that holds them ({args.log})")
        return 1
    if ledger is None:
        why = f"{state_dir} has no privacy ledger yet to tell whether it lacks later entries"
    elif not count:
        why = f"the privacy ledger in {state_dir} records no deletion log yet"
    else:
        why = f"it begins with the {_entries(count)} the privacy ledger in {state_dir} recorded"
    print(f"{intact}; the site would accept it restored: {why}{live} ({args.log})")
    return 0


def _against_the_live_log(state_dir: Path, key: bytes, entries: list[dict],
                          recorded: dict) -> tuple[str, str | None]:
    """(what the site's own deletion log in ``state_dir`` tells of a copy of it, verified
    ``entries``, as a clause of an OK verdict; why the copy lacks entries the site's log holds,
    or None). Found in review: with no ledger yet, or one restored too, a copy without the
    newest erasure was OK to restore, and un-erased it. Only a site log that verifies and is the
    one its ledger ``recorded`` (or a later one) is compared: a log that went its own way after
    a rollback is not one a copy could hold."""
    from fl_client.deletion_log import DELETION_LOG
    from fl_protocol.hash_chain import NotALogError, extends, head_path, verify_log_entries

    live_log = state_dir / DELETION_LOG
    if not live_log.exists():
        return ("; the site's own deletion log there is missing, so it cannot tell either"
                if head_path(live_log).exists() else ""), None
    try:
        result, live = verify_log_entries(live_log, key)
    except (NotALogError, OSError):
        result, live = None, []
    if result is None or not result.ok:
        return "; the site's own deletion log there does not verify, so it cannot tell either", None
    if not extends(live, recorded):
        return "; the site's own deletion log there is not the one its ledger recorded", None
    if extends(entries, {"entries": len(live), "hash": live[-1]["hash"]} if live else {}):
        return "", None
    how = "it lacks" if len(entries) < len(live) else "it is another history than"
    return "", (f"this copy holds {_entries(len(entries))}, and {how} the "
                f"{_entries(len(live))} of the site's deletion log in {state_dir}")


def _entries(count: int) -> str:
    return f"{count} {'entry' if count == 1 else 'entries'}"


def _is_a_state_folders_deletion_log(args: argparse.Namespace) -> bool:
    """Whether the log is the deletion log of a site's state folder (one holding a site
    secret), which the site's privacy ledger records the length of once it has trained."""
    from fl_client.deletion_log import DELETION_LOG
    from fl_client.site_secret import SECRET_FILE

    state_dir = args.state_dir or args.log.parent
    return (args.log.name == DELETION_LOG and args.log.parent.resolve() == state_dir.resolve()
            and (state_dir / SECRET_FILE).exists())


def _state_folder(args: argparse.Namespace) -> Path | None:
    """The site state folder whose privacy ledger the log is checked against (``--state-dir``,
    else the log's own folder, where it holds a site secret), or None (a run's audit log)."""
    from fl_client.site_secret import SECRET_FILE

    state_dir = args.state_dir or args.log.parent
    return state_dir if (state_dir / SECRET_FILE).exists() else None


def _ledger(args: argparse.Namespace, state_dir: Path, secret: bytes) -> "Ledger | None":
    """The site's privacy ledger, which records the deletion log's length; a ledger that cannot
    be read leaves the log's state unknown (exit 2)."""
    from fl_client.privacy_ledger import LedgerError, read_ledger

    try:
        return read_ledger(state_dir, secret)
    except LedgerError as err:
        raise CliError(f"{args.log}: the privacy ledger, which records the deletion log's "
                       f"length, cannot be read: {err}") from err


def _against_the_ledger(args: argparse.Namespace, secret: bytes,
                        entries: list[dict]) -> tuple[bool, str | None]:
    """(whether the site has a privacy ledger, why the deletion log of ``entries``, as verify
    read it, is not the one it recorded or a later one, or None), by the site's own rule;
    ``secret`` the site's, as the log's MACs were checked with."""
    from fl_client.deletion_log import deletion_log_problem

    ledger = _ledger(args, args.state_dir or args.log.parent, secret)
    return ledger is not None, deletion_log_problem(entries,
                                                    ledger.deletion_log if ledger else {})


def _verify_no_deletion_log(args: argparse.Namespace) -> int:
    """A state folder without a deletion log: 0 where the site's ledger shows none was ever
    written, 1 where it recorded one (deleted with its head: customers erased would be used
    again), 2 where the site has no ledger to tell (found in review: a site that erased before
    its first run and then lost the log read as one that never deleted anything)."""
    has_ledger, problem = _against_the_ledger(args, _site_key(args), [])
    if problem:
        print(f"BROKEN: {problem} ({args.log})")
        return 1
    if not has_ledger:
        raise CliError(f"{args.log} does not exist, and nothing here can tell whether it "
                       "should: the privacy ledger records the deletion log only once the site "
                       "has trained. If a purge or erasure ran here (the site container purges "
                       "at start), restore the log and its head from the backup; if none did, "
                       "there is nothing to verify yet")
    print(f"no deletion log yet (no purge or erasure has run, as the privacy ledger records): "
          f"{args.log}")
    return 0


def _is_site_log(args: argparse.Namespace) -> bool:
    """A site's log is checked with its secret whenever one is in play: a state folder named, a
    secret beside the log, or MACs in the log or its head (found in review: an emptied deletion
    log with a forged head lacking a MAC verified as an intact log without MACs)."""
    from fl_client.site_secret import SECRET_FILE
    from fl_protocol.hash_chain import is_keyed

    return (args.state_dir is not None or (args.log.parent / SECRET_FILE).exists()
            or is_keyed(args.log))


def _site_key(args: argparse.Namespace) -> bytes:
    """The site secret a keyed log's MACs are checked with."""
    from fl_client.site_secret import SecretError, site_secret

    try:
        return site_secret(args.state_dir or args.log.parent)
    except SecretError as err:
        raise CliError(f"{args.log} is a site's keyed log, and its MACs need the site secret: "
                       f"{err} (--state-dir names the site's state folder)") from err


def run_audit_privacy(args: argparse.Namespace) -> int:
    require_operator_extra()
    from fedintent.audit.run import AuditError, AuditSpec, BoundViolation, run_audit

    epsilons = parse_epsilons(args.epsilons)
    if args.shadows < 4:
        raise CliError(f"--shadows must be >= 4 (32 or more for a real audit), got {args.shadows}")
    natural = args.canaries if args.natural is None else args.natural
    if args.canaries < 0 or natural < 0 or max(args.canaries, natural) < 2:
        raise CliError("--canaries and --natural must be >= 0, and one of them >= 2")
    if (args.sites is not None and args.sites < 1) or args.workers < 1 or (
            args.rounds is not None and args.rounds < 1):
        raise CliError("--sites, --rounds and --workers must be >= 1")
    if not 0 < args.confidence < 1:
        raise CliError(f"--confidence must be between 0 and 1, got {args.confidence}")
    if not args.alpha > 0:
        raise CliError(f"--alpha must be > 0, got {args.alpha}")
    if not args.data.is_dir():
        raise CliError(f"--data {args.data}: not a folder")
    args.out = writable_folder("--out", args.out)
    is_csv = (args.data / "train.csv").is_file()
    spec = AuditSpec(
        data=str(args.data.resolve()), sites=args.sites or (10 if is_csv else None),
        alpha=args.alpha, epsilons=sorted(set(epsilons)), shadows=args.shadows,
        canaries=args.canaries, natural=natural, seed=args.seed, rounds=args.rounds,
        confidence=args.confidence,
    )
    started = time.monotonic()
    try:
        run_audit(spec, args.out, workers=args.workers,
                  progress=lambda line: print(line, flush=True))
    except AuditError as err:
        raise CliError(str(err)) from err
    except BoundViolation as err:
        print(f"fedintent audit-privacy: error: empirical epsilon above the accountant's: {err}",
              file=sys.stderr)
        return 1
    print(f"done in {time.monotonic() - started:.0f} s; results: {args.out / 'report.md'}, "
          f"{args.out / 'results.csv'}, {args.out / 'results.json'}, {args.out / 'roc.png'}")
    return 0
