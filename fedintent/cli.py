"""The ``fedintent`` command line: a thin layer over the server, client and data packages.

Each command group lives in its own module under ``fedintent/commands``; this module wires
them into one parser and turns their errors into exit codes.
"""

import argparse
import os
import signal
import sys
from importlib import metadata
from typing import NoReturn

from fedintent.commands import CliError, audit, bench, data, deploy, predict, site, train
from fl_client.redaction import redact
from fl_client.rows import SiteDataError
from fl_protocol.file_owner import permission_denied
from fl_protocol.label_file import LabelFileError
from fl_server.run_config import RunConfigError

COMMAND_GROUPS = (train, data, site, deploy, bench, audit, predict)
SITE_COMMANDS = ("check-data", "privacy-report", "init-site", "purge", "forget", "audit")
"""The commands a site's administrator runs on the site's own folders."""


def main(argv: list[str] | None = None) -> int:
    args = parse_args(parser(), sys.argv[1:] if argv is None else argv)
    # SIGTERM (a supervisor, `timeout`) unwinds like Ctrl-C, so started processes are stopped.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        return args.handler(args)
    except (CliError, LabelFileError, RunConfigError, SiteDataError) as err:
        print(f"fedintent {args.command}: error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:  # found in review: a traceback, for a site's own folders
        site = args.command in SITE_COMMANDS  # found in review: `synth` named the SuperNode
        print(f"fedintent {args.command}: error: {permission_denied(err.filename, site)}",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedintent {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which has stopped reading: stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


class OneLineErrors(argparse.ArgumentParser):
    """A parser whose bad input is one line, naming where the help is, as every other error of
    the command line is (found in review: a bad number printed the 20-line usage first)."""

    def error(self, message: str) -> NoReturn:
        if message.endswith("expected one argument"):  # argparse took "-inf" for an option
            message += ", or one that starts with '-' written as --option=VALUE"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    """The whole command line: every command group's subcommands under one ``fedintent``."""
    top = OneLineErrors(
        prog="fedintent",
        description="Federated, differentially private intent classification for call centers.",
        epilog=data.DATA_FORMAT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(commands)
    for command in commands.choices.values():  # reports the command's leftover arguments
        command.set_defaults(command_parser=command)
    return top


def parse_args(top: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """``argv`` parsed. A command that sets ``intermixed`` (its own parser) takes its options
    before or after its positional arguments (``predict DIR --json TEXT``): argparse gives a
    ``nargs="*"`` positional nothing once an option follows it, so that command's arguments are
    parsed again, intermixed. Arguments left over are reported by the command's own parser,
    which names its help; only the unknown options among them when there are any (a text after
    one is no error of its own), and redacted, since they may be a customer's text."""
    args, rest = top.parse_known_args(argv)
    if rest and getattr(args, "intermixed", None):
        command = argparse.Namespace(command=args.command)
        args, rest = args.intermixed.parse_known_intermixed_args(argv[1:], command)
    if rest:
        unknown = [arg for arg in rest if arg.startswith("-")] or rest
        args.command_parser.error(f"unrecognized arguments: {redact(' '.join(unknown))}")
    return args


def package_version() -> str:
    """fedintent's installed version (``pip install -e .`` installs it from a checkout)."""
    try:
        return metadata.version("fedintent")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
