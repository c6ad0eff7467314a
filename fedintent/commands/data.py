"""``synth``, ``check-data`` and ``partition``: making and checking site data folders."""

import argparse
import math
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from data_synth import SYNTHETIC_SITE_SIZE
from data_synth.sites import MIN_SITE_SIZE
from fedintent.commands import CliError, counted, require_operator_extra
from fedintent.commands.options import (
    folder_made_whole,
    number_argument,
    path_argument,
    writable_folder,
)
from fl_protocol.label_file import read_labels
from fl_protocol.wire import DEFAULT_RETENTION_DAYS

DEFAULT_SYNTHETIC_SITES = 4

DATA_FORMAT_HELP = """\
site data format: a data folder holds one folder per site plus labels.txt (the intent
taxonomy, one label per line). A site folder holds train.jsonl/test.jsonl (one conversation
per line: conversation_id, customer_id, timestamp, channel, language, turns [{speaker, text}],
intent, and optionally intent_turn, the index of the customer turn that carries the intent;
default: the first customer turn) or train.csv/test.csv with a header 'text,label' (optional
customer_id). Without train.*, all *.jsonl/*.csv files are read and split 80/20 at the site.
See docs/DATA_FORMAT.md."""


def add_parsers(commands: argparse._SubParsersAction) -> None:
    synth = commands.add_parser(
        "synth",
        help="generate synthetic call-center site folders",
        description="Write synthetic, non-IID call-center sites (conversations with PII) plus "
        "labels.txt and manifest.json. Deterministic from --seed.",
    )
    synth.set_defaults(handler=run_synth)
    synth.add_argument("--sites", type=int, default=DEFAULT_SYNTHETIC_SITES,
                       help="number of sites (default: %(default)s)")
    synth.add_argument("--out", type=path_argument, required=True,
                       help="output folder (must be new)")
    synth.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    synth.add_argument("--lang", default="en", help="languages, comma-separated: en, zh or "
                       "en,zh (default: %(default)s)")
    synth.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of "
                       "each site's intent mix; smaller = more skewed (default: %(default)s)")
    synth.add_argument("--size", type=int, default=SYNTHETIC_SITE_SIZE,
                       help="mean conversations per site (default: %(default)s); each site's "
                       "size is drawn around it (lognormal, so sites differ as real ones do), "
                       f"at least {MIN_SITE_SIZE}")

    check = commands.add_parser(
        "check-data",
        help="validate a site folder: rows read, rejected rows with file:line, label counts",
        description="Validate one site folder the way training reads it. Without a taxonomy "
        "(a deployed site's bare folder) it counts every label found; with one it also names "
        "the labels the run does not know. Exit 0: the site has valid training rows; 1: it "
        "has none, and would decline to train; 2: the folder cannot be read.",
        epilog=DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.set_defaults(handler=run_check_data)
    check.add_argument("site_dir", type=path_argument, metavar="SITE_DIR")
    check.add_argument("--labels", type=path_argument,
                       help="the run's taxonomy, one label per line (default: "
                       "SITE_DIR/labels.txt, else SITE_DIR/../labels.txt, else none: every "
                       "label found is counted, none is called unknown)")
    check.add_argument("--retention-days", type=number_argument, metavar="DAYS",
                       help="apply the site's retention policy as training does: rows dated "
                       "more than DAYS days ago, undated and future-dated rows are counted "
                       "as not used (default: none applied; the rows' dates are summarised)")

    partition = commands.add_parser(
        "partition",
        help="split a labeled train.csv/test.csv dataset into site folders",
        description="Split a labeled dataset (CSV_DIR/train.csv and test.csv with text,label, "
        "or CSV_DIR's site folders, such as fedintent synth writes, pooled) into site folders "
        "plus labels.txt and manifest.json: Dirichlet label skew, "
        "optional quantity skew, or IID. Each site's test rows follow its own label mix. "
        "Deterministic from --seed. See docs/PARTITIONING.md.",
    )
    partition.set_defaults(handler=run_partition)
    partition.add_argument("csv_dir", type=path_argument, metavar="CSV_DIR")
    partition.add_argument("--sites", type=int, required=True, help="number of sites")
    partition.add_argument("--out", type=path_argument, required=True,
                           help="output folder (must be new)")
    partition.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    skew = partition.add_mutually_exclusive_group()
    skew.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of the "
                      "label skew; smaller = more skewed (default: %(default)s)")
    skew.add_argument("--iid", action="store_true", help="IID sites instead of label skew")
    partition.add_argument("--quantity-skew", type=float, metavar="Q",
                           help="make sites unequal in size: the largest is about Q times the "
                           "smallest")
    partition.add_argument("--min-site-size", type=int, default=10,
                           help="fewest training rows a site may get (default: %(default)s)")


def run_synth(args: argparse.Namespace) -> int:
    from data_synth import write_sites

    languages = [lang.strip() for lang in args.lang.split(",") if lang.strip()]
    if not languages or not set(languages) <= {"en", "zh"}:
        raise CliError(f"--lang must be en, zh or en,zh; got {args.lang!r}")
    if args.sites < 1:
        raise CliError(f"--sites must be >= 1, got {args.sites}")
    if not (args.alpha > 0 and math.isfinite(args.alpha)):  # found in review: inf crashed
        raise CliError(f"--alpha must be a finite number > 0, got {args.alpha}")
    if args.seed < 0:
        raise CliError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.size < 1:
        raise CliError(f"--size must be >= 1, got {args.size}")
    out = new_data_folder(args.out)
    with folder_made_whole(out) as folder:
        manifest = write_sites(folder, n_sites=args.sites, seed=args.seed, languages=languages,
                               alpha=args.alpha, size=args.size)
    print(f"wrote {len(manifest['sites'])} sites, {len(manifest['labels'])} intents "
          f"to {args.out}")
    for name, site in manifest["sites"].items():
        langs = ", ".join(f"{k} {v}" for k, v in sorted(site["languages"].items()))
        print(f"  {name}: {site['train']} train, {site['test']} test conversations ({langs})")
    return 0


def new_data_folder(requested: Path) -> Path:
    """``--out`` of synth and partition, absolute: a folder that is new or empty, where this
    process may write (found in review: a file, or a path under one, gave a traceback)."""
    out = writable_folder("--out", requested)
    if out.is_dir() and any(out.iterdir()):
        raise CliError(f"--out {requested} already exists and is not empty")
    return out


def run_check_data(args: argparse.Namespace) -> int:
    from fl_client.data_checks import empty_data_files
    from fl_client.redaction import find_pii
    from fl_client.retention import RowPolicy, retention_window
    from fl_client.shown import rejection_lines, shown, shown_unknown_label
    from fl_client.site_data import load_site, one_row_per_id

    site_dir = args.site_dir
    if args.retention_days is not None and not args.retention_days > 0:
        raise CliError(f"--retention-days must be > 0 (inf: no limit), got {args.retention_days}")
    labels_file = args.labels
    if labels_file is None:
        candidates = [site_dir / "labels.txt", site_dir.parent / "labels.txt"]
        labels_file = next((p for p in candidates if p.is_file()), None)
    if labels_file is None:
        # A deployed site's folder holds no taxonomy (the run brings it): every label the
        # rows carry is taken as known, so rows, rejects and label counts are still checked.
        labels = sorted(load_site(site_dir, [], redact_pii=False).unknown_labels)
    else:
        labels = read_labels(labels_file)
    times: list = []
    policy = (None if args.retention_days is None
              else RowPolicy(*retention_window(args.retention_days)))

    def keep(customers: tuple[str, ...], when) -> str | None:
        times.append(when)
        return None if policy is None else policy(customers, when)

    site = load_site(site_dir, labels, redact_pii=False, keep=keep)
    first, duplicates = one_row_per_id(site.train)  # training uses one row per id
    train_texts = [site.train.texts[index] for index in first]
    train_labels = [site.train.labels[index] for index in first]
    valid = len(first) + len(site.test)
    summary = (f"{site_dir}: {counted(site.rows_read, 'row')} read, {valid} valid "
               f"({len(first)} train, {len(site.test)} test), {len(site.rejected)} rejected")
    if duplicates:
        summary += f", {len(duplicates)} with a duplicated id (used once)"
    if labels_file is None:
        found = f"{len(labels)} label{'' if len(labels) == 1 else 's'} found"
        print(f"{summary}; no taxonomy given, {found}")
        print("  to see which labels the run does not know, pass --labels with the run's "
              "labels.txt (from the operator; docs/SITE_GUIDE.md)")
    else:
        print(f"{summary}, {sum(site.unknown_labels.values())} with a label not in "
              f"{labels_file}")
    for name in empty_data_files(site_dir):
        print(f"  {name} is empty (no rows)")
    if first and not len(site.test):  # found in review: "0 test" said no more
        print("  no valid test rows: this site has nothing to answer evaluate requests with "
              "(a test.jsonl or test.csv beside the training file gives it some)")
    for line in rejection_lines(site.rejected):
        print(f"  rejected {line}")
    for row in duplicates:
        print(f"  skipped {row}")
    for label, count in site.unknown_labels.most_common():
        print(f"  unknown label {shown_unknown_label(label, labels)}: {counted(count, 'row')}")
    _print_timestamps(times, site.excluded, args.retention_days, any_valid=valid > 0)
    _print_customers(site_dir, [site.train.customers[index] is not None for index in first],
                     [customer is not None for customer in site.test.customers])
    _print_customer_spellings([customer for split in (site.train, site.test)
                               for customer in split.customers if customer is not None])
    _print_customers_in_both_splits(site.train.customers, site.test.customers)
    pii = Counter(span.kind for text in train_texts + site.test.texts
                  for span in find_pii(text))
    if pii:
        found = ", ".join(f"{kind} {n}" for kind, n in pii.most_common())
        print(f"PII found (redacted before training): {found}; not found by the redactor: "
              "English names and street addresses (docs/REDACTION.md)")
    print("label distribution (train / test):")
    train_counts = Counter(labels[i] for i in train_labels)
    test_counts = Counter(labels[i] for i in site.test.labels)
    names = {label: label if labels_file else shown(label)  # read from the rows
             for label in labels if train_counts[label] or test_counts[label]}
    width = max([40, *map(len, names.values())])  # found in review: longer ones went askew
    for label, name in names.items():
        print(f"  {name:<{width}} {train_counts[label]:>6} / {test_counts[label]:<6}")
    if len(site.train) == 0:
        unknown = sum(site.unknown_labels.values())
        print(f"error: {site_dir} has no valid training rows ({site.rows_read} read: "
              f"{len(site.rejected)} rejected, {unknown} with an unknown label, "
              f"{sum(site.excluded.values())} not used under the retention policy); this site "
              "would decline to train", file=sys.stderr)
        return 1
    return 0


def _print_customers(site_dir: Path, train: list[bool], test: list[bool]) -> None:
    """The rows without a ``customer_id`` and the columns that look like one but are not read:
    under privacy-unit customer each such row is a unit of its own, protected per utterance
    only, and a site with no customer_id at all declines (docs/DATA_FORMAT.md)."""
    from fl_client.data_checks import unread_customer_keys

    missing = train.count(False) + test.count(False)
    unread = unread_customer_keys(site_dir)
    if not missing and not unread:
        return
    print(f"customer_id: {counted(missing, 'row')} without one (each its own privacy unit under "
          "privacy-unit customer)")
    for name, key in unread:
        print(f"  {name}: {key!r} looks like a customer key but is not read: only "
              "'customer_id' names a customer")
    for rows, split, declined in ((train, "training", "to train"),
                                  (test, "test", "a DP evaluation")):
        if rows and not any(rows):
            print(f"  under privacy-unit customer this site would decline {declined}: no "
                  f"{split} row has a customer_id")


def _print_customer_spellings(customers: list[str]) -> None:
    """How many customers are written in more than one form that the site takes for one id
    (``customer_ids.canonical_customer``: case, character width, invisible characters, dashes,
    digit scripts). The site trains and charges them as one customer, but splits rows into
    train and test by the id as written, so one customer's rows can land in both
    (docs/DATA_FORMAT.md). Counts only: the ids are not shown."""
    from fl_client.customer_ids import canonical_customer

    forms: dict[str, set[str]] = {}
    for customer in customers:
        forms.setdefault(canonical_customer(customer), set()).add(customer)
    spelled = [len(names) for names in forms.values() if len(names) > 1]
    if spelled:
        people = "1 customer is" if len(spelled) == 1 else f"{len(spelled)} customers are"
        print(f"customer_id: {people} written in more than one form (case, character width, "
              f"invisible characters, dashes or digits; up to {max(spelled)}): trained and "
              "charged as one customer each, but split into train and test by the id as "
              "written, so one customer's rows can be in both; write one form per customer")


def _print_customers_in_both_splits(train: Sequence[str | None],
                                    test: Sequence[str | None]) -> None:
    """How many customers have rows in both splits: under privacy-unit customer one lifetime
    budget pays for their training and for the DP evaluations of their test rows, and at the
    defaults one run's evaluations spend all of it (found in review: every such customer sat
    out training after the first evaluation, unannounced). Counts only."""
    from fl_client.customer_ids import canonical_customer

    tested = {canonical_customer(customer) for customer in test if customer is not None}
    both = len({canonical_customer(customer) for customer in train if customer is not None}
               & tested)
    if both:
        people = "1 customer has" if both == 1 else f"{both} customers have"
        print(f"customer_id: {people} rows in both train and test: under privacy-unit customer "
              "one lifetime budget pays for their training and for the DP evaluations of their "
              "test rows, and at the defaults (evaluation-epsilon and max-epsilon both 8) one "
              "run's evaluations spend all of it, so they sit out training from then on; keep "
              "each customer in one split, or see evaluation-epsilon in docs/SITE_GUIDE.md")


def _print_timestamps(times: list, excluded: Counter, retention_days: float | None,
                      any_valid: bool) -> None:
    """The rows' dates, and what a retention policy leaves of them (docs/SITE_GUIDE.md); no
    hint about the default policy when no row is valid, since it would keep nothing anyway."""
    from fl_client.retention import RowPolicy, retention_window

    dated = [when for when in times if when is not None]
    span = f" ({min(dated):%Y-%m-%d} to {max(dated):%Y-%m-%d})" if dated else ""
    print(f"timestamps: {counted(len(dated), 'row')} dated{span}, "
          f"{len(times) - len(dated)} undated")
    if retention_days is None and any_valid:
        default = RowPolicy(*retention_window(DEFAULT_RETENTION_DAYS))
        usable = sum(default(None, when) is None for when in times)
        these = "this" if len(times) == 1 else "these"
        print(f"  a site at the default retention-days ({DEFAULT_RETENTION_DAYS:g}) would use "
              f"{usable} of {these} {counted(len(times), 'row')}; --retention-days DAYS applies "
              "your policy")
        if not usable:  # found in review: exit 0 and "valid" for a site that would train none
            # found in review: the undated clause was said of sites with every row dated
            why = ("undated rows are not used under a limit): give each row its conversation's "
                   "timestamp, or set" if len(dated) < len(times) else
                   f"each is dated more than {DEFAULT_RETENTION_DAYS:g} days ago, or in the "
                   "future): set")
            print(f"warning: a deployed site at its default retention-days "
                  f"({DEFAULT_RETENTION_DAYS:g}) would use none of these rows ({why} the site's "
                  "retention-days (RETENTION_DAYS in the container; inf: no limit)",
                  file=sys.stderr)
    for reason, count in sorted(excluded.items()):
        print(f"  not used under retention-days {retention_days:g}: {counted(count, 'row')} "
              f"{reason}")


PARTITION_OPTIONS = {"n_sites": "--sites", "seed": "--seed", "alpha": "--alpha", "iid": "--iid",
                     "min_site_size": "--min-site-size", "quantity_skew": "--quantity-skew"}
"""partition's option for each argument of ``plan_partition``, which its errors name
(found in review: ``n_sites must be >= 1`` for ``--sites 0``)."""


def run_partition(args: argparse.Namespace) -> int:
    require_operator_extra()
    from fedintent.partition import plan_partition, write_partition

    out = new_data_folder(args.out)
    if not args.csv_dir.is_dir():  # found in review: "CSV_DIR/train.csv: file not found"
        what = "is a file, not a folder" if args.csv_dir.is_file() else "folder not found"
        raise CliError(f"{args.csv_dir}: {what}: give the folder that holds train.csv and "
                       "test.csv (or site folders)")
    try:
        partition = plan_partition(
            args.csv_dir, n_sites=args.sites, seed=args.seed,
            alpha=None if args.iid else args.alpha, min_site_size=args.min_site_size,
            quantity_skew=args.quantity_skew, names=PARTITION_OPTIONS,
        )
    except (ValueError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    with folder_made_whole(out) as folder:
        manifest = write_partition(partition, folder)
    scheme = "IID" if args.iid else f"Dirichlet alpha {args.alpha:g}"
    print(f"wrote {len(manifest['sites'])} sites ({scheme}), {len(manifest['labels'])} labels "
          f"to {args.out}")
    for name, site in manifest["sites"].items():
        print(f"  {name}: {site['train']} train, {site['test']} test rows, "
              f"{len(site['label_counts'])} labels")
    return 0
