"""The ``fedintent`` command line: a thin layer over the server, client and data packages."""

import argparse
import math
import os
import signal
import sys
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

from fl_client.privacy_accounting import ACCOUNTANTS
from fl_client.privacy_units import PRIVACY_UNITS
from fl_client.site_data import SiteDataError, list_site_dirs, read_labels
from fl_server.run_config import (
    DEFAULTS,
    SYNTHETIC_SITE_SIZE,
    RunConfigError,
    check_run_config,
    tuned_settings,
)
from fl_server.strategy import STRATEGIES
from models import model_family_names

DEFAULT_SYNTHETIC_SITES = 4
TUNED_HELP = "tuned for the epsilon, see docs/BENCHMARKS.md"
DEFAULT_OUT_ROOT = Path("fedintent-out")

DATA_FORMAT_HELP = """\
site data format: a data folder holds one folder per site plus labels.txt (the intent
taxonomy, one label per line). A site folder holds train.jsonl/test.jsonl (one conversation
per line: conversation_id, customer_id, timestamp, channel, language, turns [{speaker, text}],
intent, and optionally intent_turn, the index of the customer turn that carries the intent;
default: the first customer turn) or train.csv/test.csv with a header 'text,label' (optional
customer_id). Without train.*, all *.jsonl/*.csv files are read and split 80/20 at the site.
See docs/DATA_FORMAT.md."""


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # SIGTERM (a supervisor, `timeout`) unwinds like Ctrl-C, so started processes are stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.handler(args)
    except (CliError, RunConfigError, SiteDataError) as err:
        print(f"fedintent {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedintent {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which has stopped reading: stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedintent",
        description="Federated, differentially private intent classification for call centers.",
        epilog=DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train an intent classifier across simulated sites (Flower simulation, DP-SGD)",
        description="Train across simulated sites with DP-SGD at each site. Without --data, "
        "synthetic call-center sites are generated into OUT/data.",
        epilog=DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--data", type=Path, help="folder of site folders (default: synthetic)")
    train.add_argument("--labels", type=Path, help="label file (default: DATA/labels.txt)")
    train.add_argument("--sites", type=int, help="number of sites "
                       f"(default: {DEFAULT_SYNTHETIC_SITES} synthetic, or every site in --data)")
    train.add_argument("--rounds", type=int,
                       help=f"federated rounds (default: {TUNED_HELP})")
    train.add_argument("--epsilon", type=float, default=DEFAULTS["target-epsilon"],
                       help="per-site epsilon for the whole run; inf = no DP "
                       "(default: %(default)s)")
    train.add_argument("--delta", type=float, default=DEFAULTS["delta"],
                       help="per-site delta; 0 = each site's default, min(1e-5, "
                       "1/(10 x its units)) (default: %(default)s)")
    train.add_argument("--privacy-unit", default=DEFAULTS["privacy-unit"],
                       choices=PRIVACY_UNITS,
                       help="what one DP unit is: one utterance, or all of one customer's "
                       "utterances at a site (default: %(default)s)")
    train.add_argument("--site-max-epsilon", type=float, default=None,
                       help="each simulated site's lifetime epsilon budget per privacy unit, over "
                       "all runs on its data; units at it sit out, sites with none left decline "
                       f"(default: {DEFAULTS['site-max-epsilon']:g}, inf with --epsilon inf)")
    train.add_argument("--model", default=DEFAULTS["model"], metavar="MODEL",
                       help=f"model family: {', '.join(model_family_names())}, or the folder of "
                       "a local Hugging Face BERT checkpoint (frozen encoder + head); "
                       "docs/MODELS.md compares them (default: %(default)s)")
    train.add_argument("--strategy", default=DEFAULTS["strategy"], choices=STRATEGIES,
                       help="aggregation (default: %(default)s)")
    train.add_argument("--accountant", default=DEFAULTS["accountant"], choices=ACCOUNTANTS,
                       help="privacy accountant (default: %(default)s)")
    train.add_argument("--local-epochs", type=int,
                       help=f"local epochs per round (default: {TUNED_HELP})")
    train.add_argument("--batch-size", type=int,
                       help="expected DP-SGD batch size; above a site's size, every step uses "
                       f"all its data (default: {TUNED_HELP})")
    train.add_argument("--lr", type=float,
                       help=f"local learning rate (default: {TUNED_HELP})")
    train.add_argument("--clip-norm", type=float, default=DEFAULTS["clip-norm"],
                       help="per-example gradient clipping norm (default: %(default)s)")
    train.add_argument("--state-dir", type=Path,
                       help="root of the sites' state (ledger, caches); "
                       "default: DATA/.fedintent-state")
    train.add_argument("--out", type=Path,
                       help=f"output folder (default: {DEFAULT_OUT_ROOT}/run-DATE-TIME)")
    train.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                       help="seed for data, model and sampling (default: %(default)s)")
    train.add_argument("--secure-aggregation", action="store_true",
                       help="sum the site updates with SecAgg+, so the server never sees one "
                       "site's update (needs 3+ sites; docs/PRIVACY.md)")
    train.add_argument("--resume", type=Path, metavar="OUT",
                       help="continue the interrupted run in OUT after its last checkpoint, with "
                       "the settings recorded in OUT/metrics.json (give no other option)")
    train.set_defaults(handler=_train)

    audit = commands.add_parser(
        "audit",
        help="check a run's audit log (OUT/audit.jsonl)",
        description="Check the server's hash-chained audit log. See docs/FAULT_TOLERANCE.md.",
    )
    audit_actions = audit.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    verify = audit_actions.add_parser(
        "verify",
        help="verify the hash chain and head: exit 0 intact, 1 broken, 2 unreadable",
        description="Print OK with the entry count, or the first line where the chain breaks "
        "(edited, deleted, reordered or truncated entries). Exit 0 intact, 1 broken, "
        "2 unreadable.",
    )
    verify.add_argument("log", type=Path, metavar="LOG")
    verify.set_defaults(handler=_audit_verify)

    synth = commands.add_parser(
        "synth",
        help="generate synthetic call-center site folders",
        description="Write synthetic, non-IID call-center sites (conversations with PII) plus "
        "labels.txt and manifest.json. Deterministic from --seed.",
    )
    synth.add_argument("--sites", type=int, default=DEFAULT_SYNTHETIC_SITES,
                       help="number of sites (default: %(default)s)")
    synth.add_argument("--out", type=Path, required=True, help="output folder (must be new)")
    synth.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    synth.add_argument("--lang", default="en", help="languages, comma-separated: en, zh or "
                       "en,zh (default: %(default)s)")
    synth.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration of "
                       "each site's intent mix; smaller = more skewed (default: %(default)s)")
    synth.add_argument("--size", type=int, default=SYNTHETIC_SITE_SIZE,
                       help="mean conversations per site (default: %(default)s)")
    synth.set_defaults(handler=_synth)

    check = commands.add_parser(
        "check-data",
        help="validate a site folder: rows read, rejected rows with file:line, label counts",
        description="Validate one site folder the way training reads it.",
        epilog=DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("site_dir", type=Path, metavar="SITE_DIR")
    check.add_argument("--labels", type=Path,
                       help="label file (default: SITE_DIR/labels.txt, "
                       "else SITE_DIR/../labels.txt)")
    check.set_defaults(handler=_check_data)

    partition = commands.add_parser(
        "partition",
        help="split a labeled train.csv/test.csv dataset into site folders",
        description="Split a real labeled dataset (CSV_DIR/train.csv and test.csv with "
        "text,label) into site folders plus labels.txt and manifest.json: Dirichlet label skew, "
        "optional quantity skew, or IID. Each site's test rows follow its own label mix. "
        "Deterministic from --seed. See docs/PARTITIONING.md.",
    )
    partition.add_argument("csv_dir", type=Path, metavar="CSV_DIR")
    partition.add_argument("--sites", type=int, required=True, help="number of sites")
    partition.add_argument("--out", type=Path, required=True, help="output folder (must be new)")
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
    partition.set_defaults(handler=_partition)

    report = commands.add_parser(
        "privacy-report",
        help="a site's privacy spend: per-unit lifetime epsilon, exhausted units, every run",
        description="Verify a site's privacy ledger and summarise it: how many privacy units "
        "have spent how much epsilon over all runs, how many are exhausted, and each run.",
    )
    report.add_argument("state_dir", type=Path, metavar="STATE_DIR")
    report.add_argument("--max-epsilon", type=float, default=DEFAULTS["site-max-epsilon"],
                        help="the site's max-epsilon (its node config), to count exhausted units "
                        "(default: %(default)s)")
    report.set_defaults(handler=_privacy_report)
    _add_deployment_commands(commands)
    _add_bench_command(commands)
    _add_audit_command(commands)
    _add_predict_command(commands)
    families = commands.add_parser(
        "models", help="list the model families: what each reads, trains and uploads",
        description="The model families for --model (docs/MODELS.md). A local Hugging Face "
        "BERT checkpoint folder can also be given by path.")
    families.set_defaults(handler=_list_models)
    return parser


def _partition(args: argparse.Namespace) -> int:
    from data_synth.partition import partition_csv_dataset

    if args.out.exists() and any(args.out.iterdir()):
        raise CliError(f"--out {args.out} already exists and is not empty")
    try:
        manifest = partition_csv_dataset(
            args.csv_dir, args.out, n_sites=args.sites, seed=args.seed,
            alpha=None if args.iid else args.alpha, min_site_size=args.min_site_size,
            quantity_skew=args.quantity_skew,
        )
    except (ValueError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    scheme = "IID" if args.iid else f"Dirichlet alpha {args.alpha:g}"
    print(f"wrote {len(manifest['sites'])} sites ({scheme}), {len(manifest['labels'])} labels "
          f"to {args.out}")
    for name, site in manifest["sites"].items():
        print(f"  {name}: {site['train']} train, {site['test']} test rows, "
              f"{len(site['label_counts'])} labels")
    return 0


def _privacy_report(args: argparse.Namespace) -> int:
    from fl_client.privacy_ledger import LedgerError
    from fl_client.privacy_report import EXHAUSTED_SHARE, site_privacy_report

    if not args.max_epsilon > 0:
        raise CliError(f"--max-epsilon must be > 0, got {args.max_epsilon}")
    try:
        report = site_privacy_report(args.state_dir, args.max_epsilon)
    except (FileNotFoundError, LedgerError) as err:
        raise CliError(str(err)) from err
    print(f"site key {report.site_key} (as metrics.json shows it); ledger verified")
    print(f"privacy unit: {report.privacy_unit}; {report.units} units have spent budget; "
          f"lifetime epsilon at delta {report.delta:g} (Rényi order {report.order:g})")
    for low, high, count in report.spend_bands:
        print(f"  epsilon {low:5.2f} to {high:5.2f}: {count} units")
    print(f"  exhausted (>= {EXHAUSTED_SHARE:.0%} of max-epsilon {report.max_epsilon:g}): "
          f"{report.exhausted} units")
    if report.non_private:
        print(f"  trained without DP (no guarantee): {report.non_private} units")
    print(f"  largest: {_fmt_epsilon(report.largest_epsilon)}")
    for run in report.runs:
        print(f"run {run.run}: {run.rounds} rounds, {run.units} units, epsilon "
              f"{_fmt_epsilon(run.epsilon)} at delta {run.delta:g}, noise multiplier "
              f"{run.noise_multiplier:.4g}, sample rate {run.sample_rate:.4g}, {run.steps} "
              f"steps/round, clip norm {run.clip_norm:g} ({run.first} .. {run.last})")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from data_synth import write_sites

    languages = [lang.strip() for lang in args.lang.split(",") if lang.strip()]
    if not languages or not set(languages) <= {"en", "zh"}:
        raise CliError(f"--lang must be en, zh or en,zh; got {args.lang!r}")
    if args.sites < 1:
        raise CliError(f"--sites must be >= 1, got {args.sites}")
    if not args.alpha > 0:
        raise CliError(f"--alpha must be > 0, got {args.alpha}")
    if args.size < 1:
        raise CliError(f"--size must be >= 1, got {args.size}")
    if args.out.exists() and any(args.out.iterdir()):
        raise CliError(f"--out {args.out} already exists and is not empty")
    manifest = write_sites(args.out, n_sites=args.sites, seed=args.seed, languages=languages,
                           alpha=args.alpha, size=args.size)
    print(f"wrote {len(manifest['sites'])} sites, {len(manifest['labels'])} intents "
          f"to {args.out}")
    for name, site in manifest["sites"].items():
        langs = ", ".join(f"{k} {v}" for k, v in sorted(site["languages"].items()))
        print(f"  {name}: {site['train']} train, {site['test']} test conversations ({langs})")
    return 0


def _check_data(args: argparse.Namespace) -> int:
    from fl_client.redaction import find_pii
    from fl_client.site_data import load_site

    site_dir = args.site_dir
    labels_file = args.labels
    if labels_file is None:
        candidates = [site_dir / "labels.txt", site_dir.parent / "labels.txt"]
        labels_file = next((p for p in candidates if p.is_file()), None)
        if labels_file is None:
            raise CliError(f"no labels.txt in {site_dir} or its parent; pass --labels FILE")
    labels = read_labels(labels_file)
    site = load_site(site_dir, labels, redact_pii=False)
    valid = len(site.train) + len(site.test)
    print(f"{site_dir}: {site.rows_read} rows read, {valid} valid "
          f"({len(site.train)} train, {len(site.test)} test), {len(site.rejected)} rejected, "
          f"{sum(site.unknown_labels.values())} with a label not in {labels_file}")
    for row in site.rejected:
        print(f"  rejected {row}")
    for label, count in site.unknown_labels.most_common():
        print(f"  unknown label {label!r}: {count} rows")
    pii = Counter(span.kind for text in site.train.texts + site.test.texts
                  for span in find_pii(text))
    if pii:
        found = ", ".join(f"{kind} {n}" for kind, n in pii.most_common())
        print(f"PII found (redacted before training): {found}")
    print("label distribution (train / test):")
    train_counts = Counter(labels[i] for i in site.train.labels)
    test_counts = Counter(labels[i] for i in site.test.labels)
    for label in labels:
        if train_counts[label] or test_counts[label]:
            print(f"  {label:<40} {train_counts[label]:>6} / {test_counts[label]:<6}")
    if len(site.train) == 0:
        print(f"error: {site_dir} has no valid training rows; this site would decline to train",
              file=sys.stderr)
        return 1
    return 0


def _train(args: argparse.Namespace) -> int:
    from fl_server.local_simulation import SimulationError, run_simulation

    if args.resume is not None:
        return _resume_train(args)
    if args.sites is not None and args.sites < 1:
        raise CliError(f"--sites must be >= 1, got {args.sites}")
    tuned = tuned_settings(args.epsilon)
    args.rounds = tuned["num-rounds"] if args.rounds is None else args.rounds
    args.local_epochs = tuned["local-epochs"] if args.local_epochs is None else args.local_epochs
    args.batch_size = tuned["batch-size"] if args.batch_size is None else args.batch_size
    args.lr = tuned["learning-rate"] if args.lr is None else args.lr
    tunables = {
        "num-rounds": args.rounds,
        "target-epsilon": args.epsilon,
        "delta": args.delta,
        "privacy-unit": args.privacy_unit,
        "model": args.model,
        "strategy": args.strategy,
        "accountant": args.accountant,
        "clip-norm": args.clip_norm,
        "batch-size": args.batch_size,
        "local-epochs": args.local_epochs,
        "learning-rate": args.lr,
        "seed": args.seed,
    }
    if args.site_max_epsilon is not None:
        tunables["site-max-epsilon"] = args.site_max_epsilon
    check_run_config(tunables)
    if args.data is not None:
        list_site_dirs(args.data)
    if args.secure_aggregation:  # refused before any data is written; every site must train
        sites = args.sites or (len(list_site_dirs(args.data)) if args.data is not None
                               else DEFAULT_SYNTHETIC_SITES)
        check_run_config(tunables | {"secure-aggregation": True, "min-sites": sites})
    out_dir = _fresh_out_dir(args.out)
    if args.data is None:
        from data_synth import write_sites

        num_sites = args.sites or DEFAULT_SYNTHETIC_SITES
        data_dir = out_dir / "data"
        print(f"generating {num_sites} synthetic sites into {data_dir}")
        write_sites(data_dir, n_sites=num_sites, seed=args.seed, size=SYNTHETIC_SITE_SIZE)
    else:
        data_dir = args.data.resolve()
        available = len(list_site_dirs(data_dir))
        num_sites = args.sites or available
        if num_sites > available:
            raise CliError(f"--sites {num_sites} but {data_dir} holds only {available} sites")
    labels_file = (args.labels or data_dir / "labels.txt").resolve()
    labels = read_labels(labels_file)

    run_config = check_run_config(
        {
            "data-dir": str(data_dir),
            "labels-file": str(labels_file),
            "out-dir": str(out_dir),
            "run-name": f"{out_dir.name}-{uuid.uuid4().hex[:8]}",
            "state-dir": str(args.state_dir.resolve()) if args.state_dir else "",
            "min-sites": num_sites,
            "secure-aggregation": args.secure_aggregation,
        }
        | tunables
    )
    privacy = (
        f"DP-SGD, per-site target epsilon {args.epsilon:g} per {args.privacy_unit}, "
        f"delta {args.delta:g}{' (per-site default)' if args.delta == 0 else ''}, "
        f"lifetime budget {run_config['site-max-epsilon']:g} per unit"
        if math.isfinite(args.epsilon)
        else "no DP (epsilon = inf: no privacy guarantee)"
    )
    print(
        f"training {args.model} on {num_sites} sites for {args.rounds} rounds "
        f"({len(labels)} intents; {privacy}"
        f"{'; SecAgg+ secure aggregation' if args.secure_aggregation else ''}); output: {out_dir}"
    )
    started = time.monotonic()
    try:
        metrics = run_simulation(
            run_config,
            num_sites=num_sites,
            metrics_path=out_dir / "metrics.json",
            log_path=out_dir / "logs" / "flower.log",
            on_round=lambda entry: _print_round(entry, args.rounds),
        )
    except SimulationError as err:
        print(f"fedintent train: error: {err}", file=sys.stderr)
        return 1
    _print_summary(metrics, time.monotonic() - started)
    return 0


def _resume_train(args: argparse.Namespace) -> int:
    """Continue an interrupted run with exactly the configuration it was started with."""
    from fl_server.audit_log import AuditLogError, check_extendable
    from fl_server.checkpoints import CheckpointError, latest_checkpoint
    from fl_server.local_simulation import SimulationError, run_simulation
    from fl_server.resume import read_metrics, recorded_run_config, resumed_run_config

    defaults = vars(_parser().parse_args(["train"]))
    given = sorted(f"--{key.replace('_', '-')}" for key, value in vars(args).items()
                   if key != "resume" and value != defaults.get(key))
    if given:
        raise CliError(f"--resume uses the settings recorded in OUT/metrics.json; "
                       f"drop {', '.join(given)}")
    out_dir = args.resume.resolve()
    doc = read_metrics(out_dir / "metrics.json")
    run_config = check_run_config(resumed_run_config(
        recorded_run_config(doc) | {"out-dir": str(out_dir), "resume": True,
                                    "stop-after-round": 0},
        doc,
    ))
    try:
        checkpoint, warnings = latest_checkpoint(out_dir / "checkpoints")
        check_extendable(out_dir / "audit.jsonl")
    except (CheckpointError, AuditLogError) as err:
        raise CliError(str(err)) from err
    for warning in warnings:
        print(f"fedintent train: warning: {warning}", file=sys.stderr)
    done = checkpoint.server_round if checkpoint else 0
    num_rounds = int(run_config["num-rounds"])
    print(f"resuming run {run_config['run-name']} after round {done} of {num_rounds}; "
          f"output: {out_dir}")
    started = time.monotonic()
    try:
        metrics = run_simulation(
            run_config,
            num_sites=int(run_config["min-sites"]),
            metrics_path=out_dir / "metrics.json",
            log_path=out_dir / "logs" / "flower.log",
            on_round=lambda entry: _print_round(entry, num_rounds),
            reported_rounds=done,
        )
    except SimulationError as err:
        print(f"fedintent train: error: {err}", file=sys.stderr)
        return 1
    _print_summary(metrics, time.monotonic() - started)
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    from fl_server.audit_log import verify_log

    try:
        result = verify_log(args.log)
    except OSError as err:
        raise CliError(f"cannot read {args.log}: {err.strerror or err}") from err
    if result.ok:
        print(f"OK: {result.entries} entries, hash chain and head intact ({args.log})")
        return 0
    print(f"BROKEN at line {result.broken_line}: {result.problem} "
          f"({result.entries} entries verify before it; {args.log})")
    return 1


def _fresh_out_dir(requested: Path | None) -> Path:
    if requested is None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        requested = DEFAULT_OUT_ROOT / f"run-{stamp}"
    out_dir = requested.resolve()
    if (out_dir / "metrics.json").exists():
        raise CliError(f"{out_dir} already holds a run (metrics.json); choose another --out")
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"--out {out_dir} exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def _fmt_epsilon(value: float | None) -> str:
    return "inf" if value is None else f"{value:.3f}"


def _print_round(entry: dict, num_rounds: int) -> None:
    trained = entry.get("sites_trained", 0)
    asked = trained + entry.get("sites_failed", 0)
    accuracy = entry.get("accuracy")
    accuracy_text = "n/a" if accuracy is None else f"{accuracy:.4f}"
    upload = entry.get("upload_bytes_per_site")
    upload_text = "" if upload is None else f"  upload {upload / 1e3:.1f} kB/site"
    print(
        f"round {entry['round']:>3}/{num_rounds}  sites trained {trained}/{asked}  "
        f"eval accuracy {accuracy_text}  max epsilon {_fmt_epsilon(entry.get('max_epsilon'))}"
        f"{upload_text}",
        flush=True,
    )
    for failure in entry.get("failures", []):
        print(f"  site {failure['node_id']} did not train: {failure['reason']}", flush=True)


def _print_summary(metrics: dict, seconds: float) -> None:
    final = metrics["final"]
    accuracy = final.get("accuracy")
    print(f"\nfinished in {seconds:.0f}s: {final['rounds_completed']} rounds")
    print(f"final accuracy (example-weighted over the sites' test splits): "
          f"{'n/a' if accuracy is None else f'{accuracy:.4f}'}")
    print("privacy per site (epsilon: this run, all its rounds; lifetime: every run on the "
          "site's data):")
    for key, site in sorted(final["sites"].items()):
        if site.get("epsilon") is None:
            print(f"  {key}: no DP (no privacy guarantee), {site['rounds_trained']} rounds, "
                  f"{site['num_examples']} training examples")
            continue
        print(
            f"  {key}: epsilon {_fmt_epsilon(site['epsilon'])} per {site['privacy_unit']} at "
            f"delta {site['delta']:g} (lifetime {_fmt_epsilon(site['epsilon_all_runs'])} of "
            f"budget {site['max_epsilon_budget']:g}); noise multiplier "
            f"{site['noise_multiplier']:.3g}, clip norm {site['clip_norm']:g}, "
            f"{site['rounds_trained']} rounds, {site['num_examples']} training examples"
        )
    out_dir = Path(metrics["config"]["out-dir"])
    print(f"metrics: {out_dir / 'metrics.json'}")
    print(f"model:   {final['model_dir']}")


# --- Deployment: credentials and runs on a real SuperLink (docs/DEPLOYMENT.md) ---------------


def _add_deployment_commands(commands: argparse._SubParsersAction) -> None:
    certs = commands.add_parser(
        "certs",
        help="make development TLS credentials and site keys for a deployment",
        description="Write a development CA, a SuperLink TLS certificate signed by it, the "
        "operator's Ed25519 release-signing key with the trusted-entities.yaml every site pins, "
        "and an EC key pair (OpenSSH format) per site for SuperNode authentication. Private "
        "keys are mode 0600; existing files are never overwritten. For production certificates "
        "see docs/DEPLOYMENT.md.",
    )
    certs.add_argument("--out", type=Path, required=True, help="credentials folder")
    certs.add_argument("--sites", type=int, required=True,
                       help="number of site key pairs (site-00, site-01, ...)")
    certs.add_argument("--host", action="append", metavar="IP",
                       help="an IP address the SuperLink is reached at; repeatable "
                       "(default: 127.0.0.1)")
    certs.add_argument("--dns", action="append", metavar="NAME",
                       help="a DNS name the SuperLink is reached at; repeatable "
                       "(default: localhost)")
    certs.set_defaults(handler=_certs)

    release = commands.add_parser(
        "release",
        help="build the fedintent app bundle and sign it with the operator's release key",
        description="Write fedintent.fab (the app bundle the sites run) and "
        "fedintent.fab.sig.json (its Ed25519 signature) to --out. Sites run a bundle only if "
        "a key in their trusted-entities.yaml signed it. Keep the key off the SuperLink's "
        "machine; `fedintent deploy-run --release` needs only the release folder.",
    )
    release.add_argument("--signing-key", type=Path, required=True,
                         help="the operator's Ed25519 private key, OpenSSH format "
                         "(release-signing.key from `fedintent certs`, or ssh-keygen -t ed25519)")
    release.add_argument("--out", type=Path, required=True, help="release folder")
    release.set_defaults(handler=_release)

    deploy_run = commands.add_parser(
        "deploy-run",
        help="train on a deployed TLS SuperLink with real sites, and follow the run",
        description="Submit a training run to a running SuperLink (TLS, authenticated sites) "
        "and follow it like `fedintent train`. Run it on the SuperLink's machine: the ServerApp "
        "reads --labels and writes --out there. Sites use their own data and budget "
        "(node config). See docs/DEPLOYMENT.md.",
    )
    deploy_run.add_argument("--superlink", required=True, metavar="HOST:PORT",
                            help="the SuperLink's control address on this machine "
                            "(127.0.0.1:CONTROL_PORT of deploy/superlink.sh)")
    deploy_run.add_argument("--release", type=Path, required=True, metavar="DIR",
                            help="the signed release to run (`fedintent release`)")
    deploy_run.add_argument("--release-port", type=int, default=9095,
                            help="the SuperLink's RELEASE_PORT, on 127.0.0.1, where the release "
                            "is handed over (default: %(default)s)")
    deploy_run.add_argument("--ca-cert", type=Path, required=True,
                            help="the CA certificate that signed the SuperLink's certificate")
    deploy_run.add_argument("--labels", type=Path, required=True,
                            help="the intent taxonomy, one label per line")
    deploy_run.add_argument("--min-sites", type=int, required=True,
                            help="sites that must be connected before a round starts")
    deploy_run.add_argument("--rounds", type=int,
                            help=f"federated rounds (default: {TUNED_HELP})")
    deploy_run.add_argument("--epsilon", type=float, default=DEFAULTS["target-epsilon"],
                            help="per-site epsilon for the whole run; inf = no DP "
                            "(default: %(default)s)")
    deploy_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                            help="any other run-config key (README, 'Run configuration'), "
                            "value in TOML syntax; repeatable")
    deploy_run.add_argument("--out", type=Path,
                            help=f"output folder (default: {DEFAULT_OUT_ROOT}/run-DATE-TIME)")
    deploy_run.set_defaults(handler=_deploy_run)


def _certs(args: argparse.Namespace) -> int:
    import ipaddress

    from fl_server.certificates import CredentialsExistError, site_names, write_dev_credentials

    if args.sites < 1:
        raise CliError(f"--sites must be >= 1, got {args.sites}")
    hosts = args.host or ["127.0.0.1"]
    dns_names = args.dns or ["localhost"]
    for host in hosts:
        try:
            ipaddress.ip_address(host)
        except ValueError as err:
            raise CliError(f"--host takes an IP address, got {host!r}; use --dns for names") \
                from err
    try:
        paths = write_dev_credentials(args.out, site_names(args.sites), hosts, dns_names)
    except CredentialsExistError as err:
        raise CliError(str(err)) from err
    names = ", ".join([f"IP:{h}" for h in hosts] + [f"DNS:{d}" for d in dns_names])
    print(f"wrote development credentials to {args.out}:")
    print(f"  {paths.ca_cert.name:<22} CA certificate: give it to every site and to flwr users")
    print(f"  {paths.ca_key.name:<22} CA private key (0600): keep it offline")
    print(f"  {paths.server_cert.name:<22} SuperLink TLS certificate for {names}")
    print(f"  {paths.server_key.name:<22} SuperLink TLS private key (0600)")
    print(f"  {paths.signing_key.name:<22} release-signing key (0600): the operator's only; "
          f"`fedintent release --signing-key` signs bundles with it")
    print(f"  {paths.trusted_entities.name:<22} the release key as sites pin it: give it to "
          f"every site (TRUSTED_ENTITIES)")
    for site, key in paths.site_keys.items():
        print(f"  {key.name:<22} {site}'s private key (0600): give it to {site} only")
        print(f"  {paths.site_public_keys[site].name:<22} {site}'s public key: register it with "
              f"`flwr supernode register`")
    return 0


def _release(args: argparse.Namespace) -> int:
    import hashlib

    from fl_server import deployment

    try:
        release = deployment.write_release(args.out, args.signing_key)
    except deployment.DeploymentError as err:
        raise CliError(str(err)) from err
    print(f"wrote {release.app_spec} to {args.out}: {deployment.RELEASE_FAB} (sha256 "
          f"{hashlib.sha256(release.fab).hexdigest()[:16]}...), {deployment.RELEASE_SIGNATURE} "
          f"(signed by {release.key_id})")
    return 0


def _deploy_run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import tempfile
    import tomllib

    from fl_server import deployment

    if args.min_sites < 1:
        raise CliError(f"--min-sites must be >= 1, got {args.min_sites}")
    if not args.ca_cert.is_file():
        raise CliError(f"--ca-cert {args.ca_cert} is not a file")
    try:
        release = deployment.read_release(args.release)
    except deployment.DeploymentError as err:
        raise CliError(str(err)) from err
    overrides = {}
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise CliError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            overrides[key.strip()] = text
    tuned = tuned_settings(args.epsilon)
    if args.rounds is None:
        args.rounds = int(overrides.get("num-rounds", tuned["num-rounds"]))
    labels_file = args.labels.resolve()
    labels = read_labels(labels_file)
    out_dir = _fresh_out_dir(args.out)
    run_config = check_run_config(
        tuned
        | overrides
        | {
            # data-dir is simulation-only; pointing it at the labels' folder keeps the ServerApp
            # from generating synthetic sites that no deployed site would read.
            "data-dir": str(labels_file.parent),
            "labels-file": str(labels_file),
            "out-dir": str(out_dir),
            "run-name": f"{out_dir.name}-{uuid.uuid4().hex[:8]}",
            "min-sites": args.min_sites,
            "num-rounds": args.rounds,
            "target-epsilon": args.epsilon,
        }
    )
    flwr_home = Path(tempfile.mkdtemp(prefix="fedintent-deploy-"))
    try:
        connection = deployment.write_connection(
            flwr_home, "fedintent-deployment", args.superlink, args.ca_cert
        )
        started = time.monotonic()
        try:
            with deployment.serve_release(release, args.release_port):
                run_id = deployment.submit_release_run(release, connection, run_config)
        except OSError as err:
            raise CliError(f"cannot hand over the release on 127.0.0.1:{args.release_port}: "
                           f"{err.strerror}") from err
        print(f"run {run_id} of {release.app_spec} (signed by {release.key_id}) submitted to "
              f"{args.superlink}: {args.rounds} rounds, at least "
              f"{args.min_sites} sites, {len(labels)} intents; output: {out_dir}", flush=True)
        try:
            status = deployment.follow_run(
                connection, run_id, out_dir / "metrics.json",
                on_round=lambda entry: _print_round(entry, args.rounds),
            )
        except KeyboardInterrupt:
            deployment.stop_run(connection, run_id)
            raise
    except deployment.DeploymentError as err:
        print(f"fedintent deploy-run: error: {err}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(flwr_home, ignore_errors=True)
    metrics_path = out_dir / "metrics.json"
    if not metrics_path.exists():
        print(f"fedintent deploy-run: error: run {run_id} ended {status} and wrote no "
              f"{metrics_path} (is this the SuperLink's machine?)", file=sys.stderr)
        return 1
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    if status != "finished:completed" or metrics.get("status") != "completed":
        reason = metrics.get("error") or f"run status {status}"
        print(f"fedintent deploy-run: error: the run failed: {reason}", file=sys.stderr)
        return 1
    _print_summary(metrics, time.monotonic() - started)
    return 0



def _add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="accuracy against epsilon: federated DP training versus baselines, over seeds",
        description="Partition a labeled dataset (train.csv + test.csv) into sites, then for "
        "every epsilon and seed run federated training (Flower simulation) and the baselines "
        "(central non-private, central DP, local-only, TF-IDF). Test accuracy is measured on the "
        "dataset's held-out test split. Resumable: finished cells in OUT are kept.",
    )
    bench.add_argument("--data", type=Path, required=True, metavar="CSV_DIR",
                       help="folder with train.csv and test.csv (columns text,label)")
    bench.add_argument("--out", type=Path, required=True, help="sweep folder (resumable)")
    bench.add_argument("--sites", type=int, default=10, help="number of sites (default: 10)")
    bench.add_argument("--alpha", type=float, default=0.5,
                       help="Dirichlet label-skew concentration (default: 0.5)")
    bench.add_argument("--epsilons", default="1,3,8,inf",
                       help="comma-separated per-site epsilons; inf = no DP (default: 1,3,8,inf)")
    bench.add_argument("--seeds", type=int, default=3, help="training seeds (default: 3)")
    bench.add_argument("--partition-seed", type=int, default=0,
                       help="seed of the site partition (default: 0)")
    bench.add_argument("--rounds", type=int,
                       help="override every epsilon's tuned number of rounds (quick looks)")
    bench.set_defaults(handler=_bench)


def _parse_epsilons(text: str) -> list[float]:
    """``--epsilons`` of bench and audit-privacy: comma-separated numbers > 0, inf = no DP."""
    try:
        epsilons = [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise CliError(f"--epsilons must be numbers or inf, got {text!r}") from None
    if not epsilons or any(not eps > 0 for eps in epsilons):
        raise CliError(f"--epsilons must be > 0 (inf = no DP), got {text!r}")
    return epsilons


def _bench(args: argparse.Namespace) -> int:
    from fedintent.bench.sweep import BenchSpec, run_bench
    from fl_server.local_simulation import SimulationError

    epsilons = _parse_epsilons(args.epsilons)
    if args.seeds < 1 or args.sites < 1 or (args.rounds is not None and args.rounds < 1):
        raise CliError("--seeds, --sites and --rounds must be >= 1")
    for name in ("train.csv", "test.csv"):
        if not (args.data / name).is_file():
            raise CliError(f"{args.data / name}: not found (bench needs train.csv and test.csv)")
    spec = BenchSpec(
        data=str(args.data.resolve()), sites=args.sites, alpha=args.alpha,
        epsilons=sorted(set(epsilons)), seeds=args.seeds, partition_seed=args.partition_seed,
        rounds=args.rounds,
    )
    try:
        run_bench(spec, args.out)
    except (ValueError, SimulationError) as err:
        raise CliError(str(err)) from err
    print(f"results: {args.out / 'report.md'}, {args.out / 'results.csv'}, "
          f"{args.out / 'accuracy_vs_epsilon.png'}")
    return 0


def _add_audit_command(commands: argparse._SubParsersAction) -> None:
    audit = commands.add_parser(
        "audit-privacy",
        help="empirical privacy audit: membership inference against the federated model",
        description="Train the federated model (in-process, the sites' own DP-SGD code, tuned "
        "settings per epsilon) with canary and natural audit utterances each included at "
        "random, plus shadow models, and measure how well a loss-threshold attack and LiRA tell "
        "members apart: ROC AUC, TPR at 0.1% and 1% FPR, and an empirical epsilon lower bound "
        "next to the accountant's epsilon. Resumable. See docs/PRIVACY_AUDIT.md.",
    )
    audit.add_argument("--data", type=Path, required=True, metavar="CSV_DIR",
                       help="folder with train.csv and test.csv (partitioned into sites), or a "
                       "folder of site folders with labels.txt")
    audit.add_argument("--out", type=Path, required=True, help="audit folder (resumable)")
    audit.add_argument("--sites", type=int, help="number of sites (default: 10 for CSV_DIR, "
                       "every site of a site folder)")
    audit.add_argument("--alpha", type=float, default=0.5,
                       help="Dirichlet label-skew concentration (default: 0.5)")
    audit.add_argument("--epsilons", default="1,8,inf",
                       help="comma-separated per-site epsilons; inf = no DP (default: 1,8,inf)")
    audit.add_argument("--shadows", type=int, default=32,
                       help="shadow models per epsilon (default: 32)")
    audit.add_argument("--canaries", type=int, default=500,
                       help="random-label canary utterances (default: 500)")
    audit.add_argument("--natural", type=int,
                       help="natural audit utterances with their true label "
                       "(default: as many as --canaries; 0 = none)")
    audit.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    audit.add_argument("--rounds", type=int,
                       help="override every epsilon's tuned number of rounds (quick looks)")
    audit.add_argument("--confidence", type=float, default=0.95,
                       help="confidence of the lower bound (default: 0.95)")
    audit.add_argument("--workers", type=int, default=1,
                       help="processes training models in parallel (default: 1)")
    audit.set_defaults(handler=_audit_privacy)


def _audit_privacy(args: argparse.Namespace) -> int:
    from fedintent.audit.run import AuditError, AuditSpec, BoundViolation, run_audit

    epsilons = _parse_epsilons(args.epsilons)
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


def _add_predict_command(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="classify texts with an exported model (OUT/model of fedintent train)",
        description="Classify texts with a model folder written by fedintent train (OUT/model; "
        "docs/EXPORT.md). Each text is first PII-redacted exactly as sites redact their "
        "training text (fl_client/redaction.py: phone numbers, IDs, card numbers, e-mail and "
        "IP addresses, URLs become [PHONE], [ID], ...), so the model sees what it was trained "
        "on. Prints one line per text: label, confidence (softmax probability), redacted text.",
    )
    predict.add_argument("model_dir", type=Path, metavar="MODEL_DIR")
    predict.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    predict.add_argument("--file", type=Path,
                         help="more texts: one per line (blank lines skipped), or a .csv file "
                         "whose first row is a header: its 'text' column, else its first column")
    predict.add_argument("--json", action="store_true",
                         help="print JSON lines {text, label, confidence} instead")
    predict.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    import json

    from fl_client.redaction import redact
    from models.export import load_exported

    texts = list(args.texts) + (_read_predict_file(args.file) if args.file else [])
    if not texts:
        raise CliError("no texts given: pass TEXT arguments or --file PATH")
    try:
        model = load_exported(args.model_dir)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from err
    redacted = [redact(text) for text in texts]
    for text, (label, confidence) in zip(redacted, model.predict(redacted), strict=True):
        if args.json:
            print(json.dumps({"text": text, "label": label, "confidence": confidence},
                             ensure_ascii=False))
        else:
            print(f"{label}\t{confidence:.4f}\t{' '.join(text.split())}")
    return 0


def _list_models(args: argparse.Namespace) -> int:
    from models import get_model_family

    for name in model_family_names():
        family = get_model_family(name)
        print(f"{name}{' (default)' if name == DEFAULTS['model'] else ''}\n"
              f"  {family.description}\n  reads: {family.languages}\n"
              f"  trained and uploaded each round: {family.exchanged}")
    print("PATH\n  a local Hugging Face BERT checkpoint folder: frozen encoder + trainable "
          "linear head, as minilm-head")
    return 0


def _read_predict_file(path: Path) -> list[str]:
    """Texts of a plain text file (one per line) or a CSV file's 'text' (else first) column."""
    import csv

    try:
        content = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise CliError(f"--file {path}: cannot read: {err}") from err
    if path.suffix.lower() != ".csv":
        return [line.strip() for line in content.splitlines() if line.strip()]
    rows = csv.reader(content.splitlines(keepends=True))
    header = next(rows, None)
    if not header:
        raise CliError(f"{path}: empty CSV file (it needs a header row)")
    names = [name.strip().lower() for name in header]
    column = names.index("text") if "text" in names else 0
    texts = []
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        if column >= len(row):
            raise CliError(f"{path}:{rows.line_num}: no value in column {column + 1} "
                           f"({header[column]!r})")
        if row[column].strip():
            texts.append(row[column].strip())
    return texts


if __name__ == "__main__":
    sys.exit(main())
