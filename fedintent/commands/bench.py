"""``bench``: accuracy against epsilon, federated DP training versus baselines, over seeds."""

import argparse
from pathlib import Path

from fedintent.commands import CliError
from fedintent.commands.options import parse_epsilons


def add_parsers(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="accuracy against epsilon: federated DP training versus baselines, over seeds",
        description="Partition a labeled dataset (train.csv + test.csv) into sites, then for "
        "every epsilon and seed run federated training (Flower simulation) and the baselines "
        "(central non-private, central DP, local-only, TF-IDF). Test accuracy is measured on the "
        "dataset's held-out test split. Resumable: finished cells in OUT are kept.",
    )
    bench.set_defaults(handler=run_bench)
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


def run_bench(args: argparse.Namespace) -> int:
    from fedintent.bench import sweep
    from fedintent.launch.simulation import SimulationError

    epsilons = parse_epsilons(args.epsilons)
    if args.seeds < 1 or args.sites < 1 or (args.rounds is not None and args.rounds < 1):
        raise CliError("--seeds, --sites and --rounds must be >= 1")
    for name in ("train.csv", "test.csv"):
        if not (args.data / name).is_file():
            raise CliError(f"{args.data / name}: not found (bench needs train.csv and test.csv)")
    spec = sweep.BenchSpec(
        data=str(args.data.resolve()), sites=args.sites, alpha=args.alpha,
        epsilons=sorted(set(epsilons)), seeds=args.seeds, partition_seed=args.partition_seed,
        rounds=args.rounds,
    )
    try:
        sweep.run_bench(spec, args.out)
    except (ValueError, SimulationError) as err:
        raise CliError(str(err)) from err
    print(f"results: {args.out / 'report.md'}, {args.out / 'results.csv'}, "
          f"{args.out / 'accuracy_vs_epsilon.png'}")
    return 0
