"""The ``fedintent`` commands, one module per group.

Each module has ``add_parsers(commands)``, which adds its subcommands and points each at its
``run_*`` function. A ``run_*`` function takes the parsed arguments and returns the exit code;
it raises :class:`CliError` for a problem with the user's input, which ``fedintent.cli`` prints
as one line with exit code 2.
"""

import importlib.util


class CliError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


def counted(count: int, thing: str) -> str:
    """``1 row``, ``2 rows``: a count as a sentence says it (found in review: "1 files")."""
    return f"{count} {thing}" if count == 1 else f"{count} {thing}s"


OPERATOR_MODULES = ("ray", "flwr_datasets", "datasets", "sklearn", "matplotlib", "scipy", "psutil")
"""What ``pip install '.[operator]'`` adds, by import name: Flower's simulation engine,
the dataset partitioners, the benchmark's and the privacy audit's statistics and plots, and
process control. A site's install (``pip install .``) leaves them out."""


def require_operator_extra() -> None:
    """Stop an operator's command on a site's lean install with the one line that fixes it,
    instead of an ImportError deep inside (or, for a simulation, in a child process)."""
    missing = [name for name in OPERATOR_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise CliError(f"this command needs the operator's packages, which a site install leaves "
                       f"out (missing: {', '.join(missing)}): install fedintent's operator "
                       f"extra, pip install '.[operator]' in its checkout")
