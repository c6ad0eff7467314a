"""The ``fedintent`` command line: a thin layer over the server, client and data packages.

Each command group lives in its own module under ``fedintent/commands``; this module wires
them into one parser and turns their errors into exit codes.
"""

import argparse
import os
import signal
import sys

from fedintent.commands import CliError, audit, bench, data, deploy, predict, site, train
from fl_client.site_data import SiteDataError
from fl_protocol.label_file import LabelFileError
from fl_server.run_config import RunConfigError

COMMAND_GROUPS = (train, data, site, deploy, bench, audit, predict)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    # SIGTERM (a supervisor, `timeout`) unwinds like Ctrl-C, so started processes are stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.handler(args)
    except (CliError, LabelFileError, RunConfigError, SiteDataError) as err:
        print(f"fedintent {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedintent {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which has stopped reading: stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def parser() -> argparse.ArgumentParser:
    """The whole command line: every command group's subcommands under one ``fedintent``."""
    top = argparse.ArgumentParser(
        prog="fedintent",
        description="Federated, differentially private intent classification for call centers.",
        epilog=data.DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    return top


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
