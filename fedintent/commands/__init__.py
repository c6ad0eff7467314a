"""The ``fedintent`` commands, one module per group.

Each module has ``add_parsers(commands)``, which adds its subcommands and points each at its
``run_*`` function. A ``run_*`` function takes the parsed arguments and returns the exit code;
it raises :class:`CliError` for a problem with the user's input, which ``fedintent.cli`` prints
as one line with exit code 2.
"""


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""
