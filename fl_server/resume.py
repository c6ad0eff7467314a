"""Which run configuration a resumed run uses: the one recorded in ``metrics.json``.

A resumed run must train exactly as the interrupted one would have: same data, model, seeds,
privacy settings, and the same ``run-name``, so that each site's privacy ledger charges the new
rounds to the same run and keeps planning its noise for ``num-rounds`` rounds in total. Only
keys that change how the server waits, not what is trained, may differ (and ``out-dir``: a run
folder may have been moved).
"""

import json
import math
from pathlib import Path

from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_config import RunConfigError

MAY_CHANGE_ON_RESUME = frozenset(
    {"resume", "stop-after-round", "reply-timeout", "min-sites", "out-dir"}
)
"""How long to wait, for how many sites, and where the (possibly moved) run folder is."""
FILLED_FROM_RECORD = ("run-name", "data-dir")
"""Keys whose empty value means "as recorded" on resume (they default to per-run values)."""


def read_metrics(path: Path) -> dict:
    """The ``metrics.json`` of an earlier run, or ``RunConfigError`` saying why it cannot be."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunConfigError(f"cannot resume: {path} is missing or unreadable ({err})") from err
    if not (isinstance(doc, dict) and isinstance(doc.get("config"), dict)
            and isinstance(doc.get("rounds"), list)):
        raise RunConfigError(f"cannot resume: {path} is not a fedintent metrics.json")
    return doc


def recorded_run_config(doc: dict) -> dict:
    """The run configuration recorded in ``metrics.json`` (null floats were infinite)."""
    config = {}
    for key, value in doc["config"].items():
        if key not in RUN_CONFIG_DEFAULTS:
            continue
        if value is None and isinstance(RUN_CONFIG_DEFAULTS[key], float):
            value = math.inf
        config[key] = value
    return config


def resumed_run_config(run_config: dict, doc: dict) -> dict:
    """``run_config`` completed from the record; ``RunConfigError`` naming any key that differs."""
    if doc.get("status") == "completed":
        raise RunConfigError("cannot resume: the run completed all its rounds already")
    recorded = recorded_run_config(doc)
    config = dict(run_config)
    for key in FILLED_FROM_RECORD:
        if not str(config.get(key, "")):
            config[key] = recorded.get(key, "")
    differing = sorted(
        key for key, value in recorded.items()
        if key not in MAY_CHANGE_ON_RESUME and config.get(key) != value
    )
    if differing:
        changes = ", ".join(f"{k}={config.get(k)!r} (recorded {recorded[k]!r})" for k in differing)
        raise RunConfigError(f"cannot resume with a different configuration: {changes}")
    return config
