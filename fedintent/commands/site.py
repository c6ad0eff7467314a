"""``privacy-report``: what a site's privacy ledger says it has spent, verified."""

import argparse
from pathlib import Path

from fedintent.commands import CliError
from fl_protocol.wire import DEFAULT_MAX_EPSILON
from fl_server.progress import format_epsilon
from fl_server.run_record import site_pseudonym


def add_parsers(commands: argparse._SubParsersAction) -> None:
    report = commands.add_parser(
        "privacy-report",
        help="a site's privacy spend: per-unit lifetime epsilon, exhausted units, every run",
        description="Verify a site's privacy ledger and summarise it: how many privacy units "
        "have spent how much epsilon over all runs, how many are exhausted, and each run.",
    )
    report.set_defaults(handler=run_privacy_report)
    report.add_argument("state_dir", type=Path, metavar="STATE_DIR")
    report.add_argument("--max-epsilon", type=float, default=DEFAULT_MAX_EPSILON,
                        help="the site's max-epsilon (its node config, MAX_EPSILON in the "
                        "container), to count exhausted units (default: the site default, "
                        "%(default)s)")


def run_privacy_report(args: argparse.Namespace) -> int:
    from fl_client.privacy_ledger import LedgerError
    from fl_client.privacy_report import EXHAUSTED_SHARE, site_privacy_report

    if not args.max_epsilon > 0:
        raise CliError(f"--max-epsilon must be > 0, got {args.max_epsilon}")
    try:
        report = site_privacy_report(args.state_dir, args.max_epsilon)
    except (FileNotFoundError, LedgerError) as err:
        raise CliError(str(err)) from err
    print(f"site key {report.site_key} ({site_pseudonym(report.site_key)} in metrics.json); "
          "ledger verified")
    print(f"privacy unit: {report.privacy_unit}; {report.units} units have spent budget; "
          f"lifetime epsilon at delta {report.delta:g} (Rényi order {report.order:g})")
    for low, high, count in report.spend_bands:
        print(f"  epsilon {low:5.2f} to {high:5.2f}: {count} units")
    print(f"  exhausted (>= {EXHAUSTED_SHARE:.0%} of max-epsilon {report.max_epsilon:g}): "
          f"{report.exhausted} units")
    if report.non_private:
        print(f"  trained without DP (no guarantee): {report.non_private} units")
    print(f"  largest: {format_epsilon(report.largest_epsilon)}")
    if report.largest_epsilon_alone != report.largest_epsilon:
        print(f"  largest from this site's own noise alone (distributed DP, if every other "
              f"site colluded): at most {format_epsilon(report.largest_epsilon_alone)}")
    for run in report.runs:
        alone = ("" if run.privacy_model == "local" else
                 f" (distributed DP; alone {format_epsilon(run.epsilon_alone)})")
        print(f"run {run.run}: {run.rounds} rounds, {run.units} units, epsilon "
              f"{format_epsilon(run.epsilon)}{alone} at delta {run.delta:g}, noise multiplier "
              f"{run.noise_multiplier:.4g}, sample rate {run.sample_rate:.4g}, {run.steps} "
              f"steps/round, clip norm {run.clip_norm:g} ({run.first} .. {run.last})")
    return 0
