"""The one place a launcher composes a run's configuration: ``fedintent train``,
``fedintent deploy-run`` and the benchmark's federated cells.

Paths are made absolute, since the ServerApp runs in another working directory; the run name
gets a random suffix, since the sites' privacy ledgers tell runs apart by name and a second run
into a folder of the same name must not look like the first one resumed (the folder's name cut
to fit ``wire.MAX_RUN_NAME``, its unprintable characters replaced).
"""

import uuid
from pathlib import Path

from fl_protocol.wire import MAX_RUN_NAME
from fl_server.run_config import check_run_config


def compose_run_config(
    settings: dict,
    *,
    data_dir: Path,
    labels_file: Path,
    out_dir: Path,
    min_sites: int,
    name: str | None = None,
    state_dir: Path | None = None,
) -> dict:
    """``settings`` over the defaults, plus where the run reads and writes, checked.

    ``name`` starts the run name (default: the output folder's name); without ``state_dir``,
    the state-dir of ``settings`` (or its default) stays.
    """
    where = {
        "data-dir": str(Path(data_dir).resolve()),
        "labels-file": str(Path(labels_file).resolve()),
        "out-dir": str(Path(out_dir).resolve()),
        "run-name": f"{_printable(name or Path(out_dir).name)}-{uuid.uuid4().hex[:8]}",
        "min-sites": min_sites,
    }
    if state_dir is not None:
        where["state-dir"] = str(Path(state_dir).resolve())
    return check_run_config(settings | where)


def _printable(name: str) -> str:
    """``name`` as a run name may start: cut to leave room for the suffix, each character a
    run name may not hold (``wire.run_name_problem``: an ideographic space in a folder's name)
    as ``_`` (found in review: a run named after such a folder was refused)."""
    return "".join(char if char.isprintable() else "_" for char in name[:MAX_RUN_NAME - 9])
