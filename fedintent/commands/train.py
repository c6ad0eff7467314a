"""``train``: federated training over simulated sites (Flower simulation, DP-SGD), and
``train --resume``, which continues an interrupted run."""

import argparse
import math
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from fedintent.commands import CliError, counted, require_operator_extra
from fedintent.commands.data import DATA_FORMAT_HELP, DEFAULT_SYNTHETIC_SITES
from fedintent.commands.options import (
    DEFAULT_OUT_ROOT,
    TUNED_HELP,
    as_typed,
    created_folder,
    finite_number_argument,
    new_out_dir,
    number_argument,
    path_argument,
    resumable_run,
    writable_folder,
)
from fedintent.commands.progress import print_round, print_summary, rounds_in_progress
from fl_client.data_checks import record_languages
from fl_client.data_files import list_site_dirs
from fl_client.rows import SiteDataError
from fl_protocol.label_file import read_labels
from fl_protocol.wire import (
    ACCOUNTANTS,
    EVALUATION_POLICIES,
    MAX_AUTO_DELTA,
    PRIVACY_MODELS,
    PRIVACY_UNITS,
    RUN_CONFIG_DEFAULTS,
)
from fl_server.run_config import (
    TUNING_SITE_ROWS,
    WHOLE_RANGES,
    check_run_config,
    check_whole,
    site_size_message,
    site_size_rate,
    tuned_settings,
)
from fl_server.strategy import STRATEGIES
from models import model_family_names

if TYPE_CHECKING:
    from fedintent.launch.simulated_sites import SimulatedSite

MULTILINGUAL_MODEL = "use-multilingual"


def data_languages(data: Path | None) -> set[str]:
    """The languages the simulated sites' JSONL conversations name (``language``, e.g. ``zh``
    for ``zh-TW``); none for CSV rows, generated English sites, or a folder that does not load
    (the data checks that follow report it)."""
    if data is None:
        return set()
    try:
        sites = list_site_dirs(data)
    except SiteDataError:
        return set()
    return set().union(*(record_languages(site) for site in sites))


def default_model(languages: set[str]) -> str:
    """``minilm-head`` reads English only (most Chinese characters are ``[UNK]`` to it); sites
    with any other language get ``use-multilingual``, which on Chinese sites beat ``ngram`` at
    epsilon 8 and trained English and Chinese in one federation as well as apart
    (docs/MODELS.md)."""
    return MULTILINGUAL_MODEL if languages - {"en"} else str(RUN_CONFIG_DEFAULTS["model"])


def add_parsers(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train an intent classifier across simulated sites (Flower simulation, DP-SGD)",
        description="Train across simulated sites with DP-SGD at each site. Without --data, "
        "synthetic call-center sites are generated into OUT/data.",
        epilog=DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.set_defaults(handler=run_train)
    _add_train_options(train)


def _add_train_options(train: argparse.ArgumentParser) -> None:
    defaults = RUN_CONFIG_DEFAULTS
    train.add_argument("--data", type=path_argument,
                       help="folder of site folders (default: synthetic)")
    train.add_argument("--labels", type=path_argument, help="label file (default: DATA/labels.txt)")
    train.add_argument("--sites", type=int, help="number of sites "
                       f"(default: {DEFAULT_SYNTHETIC_SITES} synthetic, or every site in --data)")
    train.add_argument("--rounds", type=int,
                       help=f"federated rounds (default: {TUNED_HELP})")
    train.add_argument("--epsilon", type=number_argument, default=defaults["target-epsilon"],
                       help="per-site epsilon for the whole run; inf = no DP "
                       "(default: %(default)s)")
    train.add_argument("--delta", type=finite_number_argument, default=defaults["delta"],
                       help="per-site delta; 0 = each site's default, the largest power of "
                       "ten below 1/(10 x its units), at most 1e-5; a site refuses one above its "
                       "max-delta and lowers one at or above 1/(10 x its units) to its default "
                       "(default: %(default)s)")
    train.add_argument("--privacy-unit", default=defaults["privacy-unit"],
                       choices=PRIVACY_UNITS,
                       help="what one DP unit is: one utterance, or all of one customer's "
                       "utterances at a site (default: %(default)s)")
    train.add_argument("--site-max-epsilon", type=number_argument, default=None,
                       help="each simulated site's lifetime epsilon budget per privacy unit, over "
                       "all runs on its data; units at it sit out, sites with none left decline "
                       f"(default: {defaults['site-max-epsilon']:g}, inf with --epsilon inf)")
    train.add_argument("--site-max-epsilon-alone", type=number_argument,
                       default=defaults["site-max-epsilon-alone"], metavar="E",
                       help="distributed DP: the most epsilon each simulated site's own noise "
                       "shares may amount to, what it keeps if every other site colluded (a "
                       "deployed site's max-epsilon-alone); the share shrinks with the cohort, "
                       "so large cohorts at a high --epsilon need more (default: %(default)g)")
    train.add_argument("--site-retention-days", type=number_argument,
                       default=defaults["site-retention-days"], metavar="DAYS",
                       help="each simulated site's retention policy: rows dated more than DAYS "
                       "days ago, and undated rows, are not used (a deployed site's "
                       "retention-days; default: %(default)g, keep every row)")
    train.add_argument("--site-evaluation", default=defaults["site-evaluation"],
                       choices=EVALUATION_POLICIES,
                       help="what each simulated site answers evaluate messages with: exact "
                       "test-split metrics (outside DP), dp (accuracy and loss estimated from "
                       "one Gaussian release per round, charged to the site's ledger), or off "
                       "(a deployed site's evaluation, whose default is dp; default here: "
                       "%(default)s, so that a simulation reports exact accuracy and its test "
                       "units spend nothing)")
    train.add_argument("--site-evaluation-epsilon", type=finite_number_argument,
                       default=defaults["site-evaluation-epsilon"], metavar="E",
                       help="with --site-evaluation dp: what the run's evaluations may cost "
                       "each test unit, all rounds together (a deployed site's "
                       "evaluation-epsilon; default: %(default)g)")
    train.add_argument("--evaluate-every", type=int, default=defaults["evaluate-every"],
                       metavar="K",
                       help="the sites evaluate the global model every K rounds and after the "
                       "last; sites evaluating under DP spread their evaluation epsilon over "
                       "those evaluations only, so each carries about sqrt(K) times less noise "
                       "(default: %(default)s, every round)")
    train.add_argument("--model", metavar="MODEL",
                       help=f"model family: {', '.join(model_family_names())}, or the folder of "
                       "a local Hugging Face BERT checkpoint (frozen encoder + head); "
                       f"docs/MODELS.md compares them (default: {defaults['model']}, or "
                       f"{MULTILINGUAL_MODEL} when the sites' conversations are in any other "
                       "language)")
    train.add_argument("--strategy", default=defaults["strategy"], choices=STRATEGIES,
                       help="aggregation (default: %(default)s)")
    train.add_argument("--accountant", default=defaults["accountant"], choices=ACCOUNTANTS,
                       help="privacy accountant (default: %(default)s)")
    train.add_argument("--local-epochs", type=int,
                       help=f"local epochs per round (default: {TUNED_HELP})")
    train.add_argument("--batch-size", type=int,
                       help="expected DP-SGD batch size; above a site's size, every step uses "
                       f"all its data (default: {TUNED_HELP})")
    train.add_argument("--lr", type=finite_number_argument,
                       help=f"local learning rate (default: {TUNED_HELP}; with DP, scaled "
                       f"down for sites of fewer than {TUNING_SITE_ROWS} training rows on "
                       "average)")
    train.add_argument("--server-momentum", type=finite_number_argument,
                       help="heavy-ball momentum of the server's step, fedavg only (FedAvgM; "
                       f"default: {TUNED_HELP}, 0 = plain FedAvg)")
    train.add_argument("--clip-norm", type=finite_number_argument, default=defaults["clip-norm"],
                       help="per-example gradient clipping norm (default: %(default)s)")
    train.add_argument("--max-update-norm", type=number_argument,
                       default=defaults["max-update-norm"],
                       help="reject a site update whose L2 distance from the global model "
                       "exceeds this; 0 = the bound the run's DP settings allow (clip norm, "
                       "learning rate, noise; none without DP), inf = no bound "
                       "(default: %(default)s)")
    train.add_argument("--state-dir", type=path_argument,
                       help="root of the sites' state (ledger, caches); "
                       "default: DATA/.fedintent-state")
    train.add_argument("--out", type=path_argument,
                       help=f"output folder (default: {DEFAULT_OUT_ROOT}/run-DATE-TIME)")
    train.add_argument("--seed", type=int, default=defaults["seed"],
                       help="seed for data, model and sampling (default: %(default)s)")
    train.add_argument("--secure-aggregation", action="store_true",
                       help="sum the site updates with SecAgg+, so the server never sees one "
                       "site's update (needs 3+ sites; docs/PRIVACY.md)")
    train.add_argument("--privacy-model", default=defaults["privacy-model"],
                       choices=PRIVACY_MODELS,
                       help="who adds the DP noise: each site all of it for its own update "
                       "(local), or each site a share of it, with only the SecAgg+ sum leaving "
                       "(distributed; implies --secure-aggregation, docs/PRIVACY.md) "
                       "(default: %(default)s)")
    train.add_argument("--tolerated-sites", type=int, default=defaults["tolerated-sites"],
                       help="distributed DP: sites that may drop out of or collude in a round, "
                       "together, while the sum keeps the full noise (default: %(default)s)")
    train.add_argument("--resume", type=path_argument, metavar="OUT",
                       help="continue the interrupted run in OUT after its last checkpoint, with "
                       "the settings recorded in OUT/metrics.json (give no other option)")


RENAMED_OPTIONS = {"num-rounds": "--rounds", "target-epsilon": "--epsilon",
                   "learning-rate": "--lr", "min-sites": "--sites"}
"""The run-config keys train sets through an option named otherwise; each other hyphenated key
is its own option (single words, model or seed, read as the option already)."""


def run_train(args: argparse.Namespace) -> int:
    """Check every option, then make the output folder and run; a refused option leaves no
    folder behind, and one that fails while it is being set up is removed again."""
    require_operator_extra()
    from data_synth import write_run_sites
    from fedintent.launch.run_config import compose_run_config
    from fedintent.launch.simulated_sites import (
        budget_warnings,
        label_warnings,
        mean_rows,
        read_sites,
        simulated_sites,
        sites_that_cannot_train,
        unreadable_warnings,
    )

    if args.resume is not None:
        return run_resume(args)
    if args.sites is not None:
        check_whole("--sites", args.sites, 1, WHOLE_RANGES["min-sites"][1])
    tuned = tuned_settings(args.epsilon, args.privacy_model)
    if args.model is None:
        args.model = default_model(data_languages(args.data))
    args.rounds = tuned["num-rounds"] if args.rounds is None else args.rounds
    args.local_epochs = tuned["local-epochs"] if args.local_epochs is None else args.local_epochs
    args.batch_size = tuned["batch-size"] if args.batch_size is None else args.batch_size
    lr_tuned = args.lr is None
    args.lr = tuned["learning-rate"] if lr_tuned else args.lr
    if args.server_momentum is None:  # tuned for FedAvg's step only
        fedavg = args.strategy == "fedavg"
        args.server_momentum = tuned.get("server-momentum", 0.0) if fedavg else 0.0
    tunables = {
        "num-rounds": args.rounds,
        "target-epsilon": args.epsilon,
        "delta": args.delta,
        "privacy-unit": args.privacy_unit,
        "model": args.model,
        "strategy": args.strategy,
        "accountant": args.accountant,
        "clip-norm": args.clip_norm,
        "max-update-norm": args.max_update_norm,
        "batch-size": args.batch_size,
        "local-epochs": args.local_epochs,
        "learning-rate": args.lr,
        "server-momentum": args.server_momentum,
        "seed": args.seed,
        "site-retention-days": args.site_retention_days,
        "site-evaluation": args.site_evaluation,
        "site-evaluation-epsilon": args.site_evaluation_epsilon,
        "evaluate-every": args.evaluate_every,
        "site-max-epsilon-alone": args.site_max_epsilon_alone,
    }
    if args.privacy_model == "distributed":
        args.secure_aggregation = True
    secure = {"secure-aggregation": args.secure_aggregation,
              "privacy-model": args.privacy_model, "tolerated-sites": args.tolerated_sites}
    if args.site_max_epsilon is not None:
        tunables["site-max-epsilon"] = args.site_max_epsilon
    typed = {key: f"--{key}" for key in tunables | secure if "-" in key} | RENAMED_OPTIONS
    with as_typed(typed):
        check_run_config(tunables)
    out_dir = new_out_dir(args.out)
    if args.state_dir is not None:
        writable_folder("--state-dir", args.state_dir)
    if args.data is None:
        num_sites = args.sites or DEFAULT_SYNTHETIC_SITES
        data_dir = out_dir / "data"
    else:
        data_dir = args.data.resolve()
        if out_dir.is_relative_to(data_dir):  # found in review: its folders became sites
            raise CliError(f"--out {out_dir} is inside --data {data_dir}: the run's folders "
                           "(model, logs, checkpoints) would read as site folders in later "
                           "runs; choose an --out outside the data folder")
        available = len(list_site_dirs(data_dir))
        num_sites = args.sites or available
        if num_sites > available:
            raise CliError(f"--sites {num_sites} but {data_dir} holds only {available} sites")
    labels_file = args.labels or data_dir / "labels.txt"
    if args.data is not None or args.labels is not None:
        read_labels(labels_file)
    with as_typed(typed):
        run_config = compose_run_config(  # every key checked, before any folder is made
            tunables | secure,
            data_dir=data_dir, labels_file=labels_file, out_dir=out_dir, min_sites=num_sites,
            state_dir=args.state_dir,
        )
    with created_folder(out_dir):
        if args.data is None:
            print(f"generating {num_sites} synthetic sites into {data_dir}")
            write_run_sites(data_dir, num_sites, args.seed)
        labels = read_labels(labels_file)
        sites_rows, unreadable = read_sites(data_dir, num_sites)  # read once, for each use
        sites = simulated_sites(run_config, num_sites)
        if blocked := sites_that_cannot_train(sites, sites_rows, labels, run_config,
                                              unreadable):
            raise CliError("no site can train in this run, so it would only fail: "
                           + "; ".join(f"site {name}: {why}" for name, why in blocked.items())
                           + _way_out(list(blocked.values()), labels_file))
        warnings = (unreadable_warnings(unreadable, data_dir)
                    + label_warnings(sites_rows, labels, labels_file)
                    + budget_warnings(sites, run_config))
        mean_site_rows = mean_rows(sites_rows) if lr_tuned else None
    scaled = (args.lr if mean_site_rows is None
              else site_size_rate(args.lr, mean_site_rows, args.epsilon))
    if scaled != args.lr:
        args.lr = run_config["learning-rate"] = scaled
        print(site_size_message(args.lr, tuned["learning-rate"], mean_site_rows, "--lr"))
    delta = f"{args.delta:g}" if args.delta else f"each site its own, at most {MAX_AUTO_DELTA:g}"
    privacy = (
        f"DP-SGD, per-site target epsilon {args.epsilon:g} per {args.privacy_unit}, delta {delta}, "
        f"lifetime budget {run_config['site-max-epsilon']:g} per unit"
        if math.isfinite(args.epsilon)
        else "no DP (epsilon = inf: no privacy guarantee)"
    )
    print(
        f"training {args.model} on {num_sites} sites for {counted(int(args.rounds), 'round')} "
        f"({len(labels)} intents; {privacy}"
        f"{'; SecAgg+ secure aggregation' if args.secure_aggregation else ''}"
        f"{_distributed_note(args)}); output: {out_dir}"
    )
    for warning in warnings:
        print(f"fedintent train: warning: {warning}", file=sys.stderr, flush=True)
    return _simulate(run_config, num_sites, int(args.rounds))


def _way_out(reasons: list[str], labels_file: Path) -> str:
    """What to do when no site can train: the way out of each kind of reason given (found in
    review: budget advice where the label file was wrong)."""
    ways = []
    if any(why.startswith("none of its training rows") for why in reasons):
        ways.append(f"check that {labels_file} is the label file of this data (fedintent "
                    "check-data SITE_DIR --labels names the labels a site's rows carry)")
    if any(why.startswith("its data does not read") for why in reasons):
        ways.append("fix each site's data (fedintent check-data SITE_DIR names the problem)")
    if any("budget" in why for why in reasons):
        ways.append("where a budget is spent: raise --site-max-epsilon, if the data's owners "
                    "allow a larger lifetime budget; or, for synthetic or test data only, use a "
                    "new --state-dir (it forgets what this data has spent)")
    return "".join(f". {way[0].upper()}{way[1:]}" for way in ways)


def _distributed_note(args: argparse.Namespace) -> str:
    if args.privacy_model != "distributed":
        return ""
    return (f"; distributed DP: each site adds a share of the noise, the sum of all but "
            f"{args.tolerated_sites} sites carries all of it")


def run_resume(args: argparse.Namespace) -> int:
    """Continue an interrupted run with exactly the configuration it was started with.

    Everything is checked before any process starts: the record and the run configuration it
    holds, the audit log, the checkpoint it vouches for, and the data and label file.
    """
    from fedintent.launch.simulated_sites import (
        no_site_resumes,
        read_sites,
        resume_budget_warnings,
        simulated_sites,
    )
    from fl_server.provenance import provenance_changes, software_provenance
    from fl_server.run_record import DEPLOYMENT_FILE, way_on

    options = argparse.ArgumentParser()
    _add_train_options(options)
    defaults = vars(options.parse_args([]))
    given = sorted(f"--{key.replace('_', '-')}" for key, value in vars(args).items()
                   if key != "resume" and key in defaults and value != defaults[key])
    if given:
        raise CliError(f"--resume uses the settings recorded in OUT/metrics.json; "
                       f"drop {', '.join(given)}")
    out_dir = writable_folder("--resume", args.resume)
    if (out_dir / DEPLOYMENT_FILE).exists():  # found in review: it simulated the sites instead
        raise CliError(f"{out_dir} holds a run of fedintent deploy-run, whose sites are "
                       f"deployed; --resume simulates sites on this machine: "
                       f"{way_on(out_dir)}")
    doc, run_config, done, warnings = resumable_run(out_dir, {})
    list_site_dirs(Path(run_config["data-dir"]))
    labels_file = Path(run_config["labels-file"] or Path(run_config["data-dir"]) / "labels.txt")
    if read_labels(labels_file) != doc["labels"]:
        raise CliError(f"cannot resume: {labels_file} changed since the run started")
    last = (doc.get("resumes") or [doc])[-1].get("provenance", {})
    changed = provenance_changes(last, software_provenance())
    if changed:
        warnings.append(f"the code differs from the last that ran this run ({'; '.join(changed)}): "
                        f"rounds after {done} are trained by it, and metrics.json records both")
    sites = simulated_sites(run_config, int(run_config["min-sites"]))
    warnings += resume_budget_warnings(sites, run_config, done)
    for warning in warnings:
        print(f"fedintent train: warning: {warning}", file=sys.stderr)
    if no_site_resumes(sites, read_sites(Path(run_config["data-dir"]), len(sites))[0],
                       doc["labels"], run_config, done):
        raise CliError(f"no site has room within its lifetime budget for any of rounds "
                       f"{done + 1} to {run_config['num-rounds']}, so this resume would only run "
                       "rounds no site trains; the warnings above say what to do instead")
    num_rounds = int(run_config["num-rounds"])
    print(f"resuming run {run_config['run-name']} after round {done} of {num_rounds}; "
          f"output: {out_dir}")
    return _simulate(run_config, int(run_config["min-sites"]), num_rounds, reported_rounds=done)


def _simulate(run_config: dict, num_sites: int, num_rounds: int, reported_rounds: int = 0) -> int:
    """Run the simulation, printing each round as it completes and the summary at the end;
    sites are named by pseudonym and folder (``simulated_sites``). A resume's rounds are
    printed once the ServerApp has recorded the resume (``report_new_rounds``)."""
    from fedintent.launch.run_outcome import recorded_outcome, report_new_rounds
    from fedintent.launch.simulated_sites import simulated_sites, site_names
    from fedintent.launch.simulation import SimulationError, run_simulation
    from fl_server.run_record import METRICS_FILE

    out_dir = Path(run_config["out-dir"])
    metrics_path = out_dir / METRICS_FILE
    sites = simulated_sites(run_config, num_sites)
    rounds: list[dict] = []
    run_name, since = str(run_config["run-name"]), datetime.now(UTC)
    resumes = 0
    if run_config.get("resume"):
        resumes = len((recorded_outcome(metrics_path) or {}).get("resumes", [])) + 1

    def names() -> dict[str, str]:
        return site_names(sites, rounds, run_name, since)

    started = time.monotonic()
    try:
        with rounds_in_progress(reported_rounds + 1, num_rounds, out_dir) as round_done:
            def report(entry: dict) -> None:
                rounds.append(entry)
                round_done(int(entry["round"]))
                print_round(entry, num_rounds, names())

            metrics = run_simulation(
                run_config,
                num_sites=num_sites,
                metrics_path=metrics_path,
                log_path=out_dir / "logs" / "flower.log",
                on_round=report,
                reported_rounds=reported_rounds,
                resumes=resumes,
            )
    except SimulationError as err:
        print(f"fedintent train: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # every process is stopped by now (``run_simulation``)
        # rounds recorded since the last poll, printed before the way on (found in review:
        # the console's last round was 5 and the resume went on after round 6)
        report_new_rounds(metrics_path, rounds[-1]["round"] if rounds else reported_rounds,
                          lambda entry: rounds.append(entry) or print_round(entry, num_rounds,
                                                                            names()),
                          resumes)
        metrics = recorded_outcome(metrics_path)
        if metrics is None or metrics.get("status") != "completed":
            print(f"fedintent train: interrupted; {_how_to_continue(metrics, out_dir)}",
                  file=sys.stderr)
            return 130
        # found in review: the ServerApp finished while the launcher stopped it, and the
        # completed run was reported interrupted (exit 130, no summary)
        print("fedintent train: interrupted, but the run had completed all its rounds "
              "already: its summary follows", file=sys.stderr)
    _finish(metrics, metrics_path, sites, names(), time.monotonic() - started, since)
    return 0


def _how_to_continue(metrics: dict | None, out_dir: Path) -> str:
    """What an engineer whose run was interrupted can do next, and what it costs (found in
    review: the advice led to a run whose last round trained no site, said only on resume)."""
    if metrics is None:
        return (f"the run had not started (no {out_dir / 'metrics.json'}), so there is nothing "
                "to resume: start it again")
    return (f"continue with: fedintent train --resume {out_dir} (a round the sites trained "
            "after the last checkpoint was charged to their budget, and is charged again when "
            "the resume trains it: at the defaults they then decline the resumed run's last "
            "round; --resume warns per site before it starts; docs/FAULT_TOLERANCE.md)")


def _finish(metrics: dict, metrics_path: Path, sites: "list[SimulatedSite]",
            names: dict[str, str], seconds: float, since: datetime) -> None:
    """Record the sites' folders and the budget declines only their egress logs tie to them
    (``budget_declines``), then print the summary."""
    from fedintent.launch.simulated_sites import budget_declines, record_site_folders

    declines = budget_declines(sites, metrics["final"], str(metrics["config"]["run-name"]),
                               since)
    metrics = record_site_folders(metrics_path, metrics, names, declines)
    print_summary(metrics, seconds, names)
