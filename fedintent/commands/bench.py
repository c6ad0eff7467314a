"""``bench``: accuracy against epsilon, federated DP training versus baselines, over seeds."""

import argparse
import sys

from fedintent.commands import CliError, require_operator_extra
from fedintent.commands.options import as_typed, parse_epsilons, path_argument, writable_folder
from fl_protocol.file_owner import not_a_file
from fl_protocol.wire import PRIVACY_MODELS, RUN_CONFIG_DEFAULTS
from fl_server.run_config import WHOLE_RANGES, check_number, check_whole

MAX_SEEDS = 1_000
ALPHA_RANGE = (1e-3, 1e3)
"""Dirichlet concentrations from nearly one label per site to nearly IID."""


def add_parsers(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="accuracy against epsilon: federated DP training versus baselines, over seeds",
        description="Partition a labeled dataset (train.csv + test.csv) into sites, then for "
        "every epsilon and seed run federated training (Flower simulation; local DP, and with "
        "--privacy-model local,distributed also distributed DP over SecAgg+) and the baselines "
        "(central non-private, central DP, local-only, TF-IDF). Test accuracy is measured on the "
        "dataset's held-out test split. Resumable: finished cells in OUT are kept.",
    )
    bench.set_defaults(handler=run_bench)
    bench.add_argument("--data", type=path_argument, required=True, metavar="DATA_DIR",
                       help="folder with train.csv and test.csv (columns text,label), or site "
                       "folders such as fedintent synth writes (their rows pooled, then "
                       "partitioned into --sites sites like a CSV's)")
    bench.add_argument("--out", type=path_argument, required=True, help="sweep folder (resumable)")
    bench.add_argument("--sites", type=int, default=10, help="number of sites (default: 10)")
    bench.add_argument("--alpha", type=float, default=0.5,
                       help="Dirichlet label-skew concentration (default: 0.5)")
    bench.add_argument("--epsilons", default="1,3,8,inf",
                       help="comma-separated per-site epsilons; inf = no DP (default: 1,3,8,inf)")
    bench.add_argument("--seeds", type=int, default=3, help="training seeds (default: 3)")
    bench.add_argument("--partition-seed", type=int, default=0,
                       help="seed of the site partition (default: 0)")
    bench.add_argument("--model", default=RUN_CONFIG_DEFAULTS["model"], metavar="FAMILY",
                       help="model family of every method (fedintent models), or a local "
                       "checkpoint folder; the federated runs use the settings tuned for the "
                       "default family (default: %(default)s)")
    bench.add_argument("--rounds", type=int,
                       help="override every epsilon's tuned number of rounds (quick looks)")
    bench.add_argument("--privacy-model", default="local", metavar="MODELS",
                       help="comma-separated privacy models of the federated runs: local (each "
                       "site adds all the noise for its own update) and/or distributed (each "
                       "site adds a share of it and only the SecAgg+ sum leaves; finite epsilons "
                       "only; docs/PRIVACY.md) (default: %(default)s)")
    bench.add_argument("--tolerated-sites", type=int,
                       default=RUN_CONFIG_DEFAULTS["tolerated-sites"],
                       help="distributed DP: sites that may drop out of or collude in a round, "
                       "together, while the sum keeps the full noise (default: %(default)s)")


def run_bench(args: argparse.Namespace) -> int:
    require_operator_extra()
    epsilons = parse_epsilons(args.epsilons)
    privacy_models = parse_privacy_models(args.privacy_model)
    if args.tolerated_sites < 0:
        raise CliError(f"--tolerated-sites must be >= 0, got {args.tolerated_sites}")
    if args.seeds < 1 or args.sites < 1 or (args.rounds is not None and args.rounds < 1):
        raise CliError("--seeds, --sites and --rounds must be >= 1")
    check_bench_numbers(args)
    model = checked_model(args.model)
    writable_folder("--out", args.out)
    if not args.data.is_dir():  # found in review: "DATA/train.csv/train.csv: not found"
        what = "is a file, not a folder" if args.data.is_file() else "folder not found"
        raise CliError(f"--data {args.data}: {what}: give the folder that holds train.csv and "
                       "test.csv (or site folders as fedintent synth writes them)")
    sites = any(path.is_dir() and not path.name.startswith(".") for path in args.data.iterdir())
    if (args.data / "train.csv").exists() or not sites:  # a CSV dataset: both splits
        for path in (args.data / "train.csv", args.data / "test.csv"):
            if not path.is_file():
                raise CliError(not_a_file(path, "a CSV file (columns text,label)") or
                               f"{path}: not found (bench needs train.csv and test.csv, or "
                               "site folders as fedintent synth writes them)")
    from fedintent.bench import sweep  # torch and Flower: only once the arguments are good
    from fedintent.launch.simulation import SimulationError

    spec = sweep.BenchSpec(
        data=str(args.data.resolve()), sites=args.sites, alpha=args.alpha,
        epsilons=sorted(set(epsilons)), seeds=args.seeds, partition_seed=args.partition_seed,
        model=model,
        rounds=args.rounds, privacy_models=privacy_models, tolerated_sites=args.tolerated_sites,
    )
    try:
        with as_typed({"min-sites": "--sites", "num-rounds": "--rounds",
                       "tolerated-sites": "--tolerated-sites",
                       "privacy-model": "--privacy-model"}):
            sweep.run_bench(spec, args.out)
    except (ValueError, SimulationError) as err:
        raise CliError(str(err)) from err
    except KeyboardInterrupt:  # found in review: "interrupted" said nothing of how to go on
        print(f"fedintent bench: interrupted; every finished cell is kept in "
              f"{args.out / 'cells'}: re-run the same command to resume (it computes only the "
              "missing cells)", file=sys.stderr)
        return 130
    print(f"results: {args.out / 'report.md'}, {args.out / 'results.csv'}, "
          f"{args.out / 'accuracy_vs_epsilon.png'}")
    return 0


def checked_model(name: str) -> str:
    """``--model`` as the run config records it (a checkpoint folder: its absolute path), or a
    one-line error naming the known families, before any cell runs."""
    from models import get_model_family

    try:
        return get_model_family(name).name
    except ValueError as err:
        raise CliError(f"--model: {err}") from None


def check_bench_numbers(args: argparse.Namespace) -> None:
    """Every number option within the range its run-config key (or the partition) takes, so
    that no cell fails on it hours into a sweep."""
    check_whole("--sites", args.sites, *WHOLE_RANGES["min-sites"])
    check_whole("--seeds", args.seeds, 1, MAX_SEEDS)
    check_whole("--partition-seed", args.partition_seed, *WHOLE_RANGES["seed"])
    check_whole("--tolerated-sites", args.tolerated_sites, *WHOLE_RANGES["tolerated-sites"])
    if args.rounds is not None:
        check_whole("--rounds", args.rounds, *WHOLE_RANGES["num-rounds"])
    check_number("--alpha", args.alpha, *ALPHA_RANGE)


def parse_privacy_models(text: str) -> tuple[str, ...]:
    """``--privacy-model``: a comma list of local and distributed, in canonical order, so that
    the same choice always records the same spec in a sweep folder."""
    chosen = {value.strip() for value in text.split(",") if value.strip()}
    unknown = sorted(chosen - set(PRIVACY_MODELS))
    if unknown:
        raise CliError(f"--privacy-model: unknown {', '.join(map(repr, unknown))} "
                       f"(choose from {', '.join(PRIVACY_MODELS)})")
    if not chosen:
        raise CliError(f"--privacy-model needs one of {', '.join(PRIVACY_MODELS)}, got {text!r}")
    return tuple(model for model in PRIVACY_MODELS if model in chosen)
