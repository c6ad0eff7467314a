"""The run configuration: every key, its default, and its check.

These defaults are also the ``[tool.flwr.app.config]`` of ``pyproject.toml`` (a test keeps the
two equal), so ``flwr run .`` and ``fedintent train`` start from the same values.
"""

import math
from pathlib import Path

from fl_client.privacy_accounting import ACCOUNTANTS
from fl_client.privacy_units import PRIVACY_UNITS
from fl_server.strategy import STRATEGIES
from models import model_family_names

DEFAULTS: dict[str, str | int | float | bool] = {
    "data-dir": "",
    "labels-file": "",
    "out-dir": "",
    "run-name": "",
    "state-dir": "",
    "num-rounds": 10,
    "model": "minilm-head",
    "strategy": "fedavg",
    "server-learning-rate": 0.05,
    "min-sites": 2,
    "target-epsilon": 8.0,
    "delta": 0.0,
    "privacy-unit": "utterance",
    "site-max-epsilon": 10.0,
    "accountant": "prv",
    "clip-norm": 1.0,
    "batch-size": 64,
    "local-epochs": 3,
    "learning-rate": 8.0,
    "seed": 0,
    "reply-timeout": 3600.0,
    "max-update-norm": 0.0,
    "resume": False,
    "stop-after-round": 0,
}

SYNTHETIC_SITE_SIZE = 600
"""Mean conversations per generated site when a run is given no data."""


class RunConfigError(ValueError):
    """A run configuration value is out of range; the message names the key."""


def check_run_config(cfg: dict) -> dict:
    """Return ``cfg`` over the defaults, or raise naming the first bad key."""
    unknown = sorted(set(cfg) - set(DEFAULTS))
    if unknown:
        raise RunConfigError(f"unknown run config key(s): {', '.join(unknown)}")
    full = DEFAULTS | cfg
    epsilon = float(full["target-epsilon"])
    if math.isnan(epsilon) or epsilon <= 0:
        raise RunConfigError(
            f"target-epsilon must be > 0 (or inf for no DP), got {full['target-epsilon']}"
        )
    if not 0 <= float(full["delta"]) < 1:
        raise RunConfigError(f"delta must be in [0, 1) (0 = per-site default), got {full['delta']}")
    if not float(full["site-max-epsilon"]) > 0:
        raise RunConfigError(f"site-max-epsilon must be > 0, got {full['site-max-epsilon']}")
    for key in ("num-rounds", "min-sites", "batch-size", "local-epochs"):
        if int(full[key]) < 1 or int(full[key]) != full[key]:
            raise RunConfigError(f"{key} must be a whole number >= 1, got {full[key]}")
    for key in ("clip-norm", "learning-rate", "server-learning-rate"):
        if not float(full[key]) > 0:
            raise RunConfigError(f"{key} must be > 0, got {full[key]}")
    if not float(full["reply-timeout"]) > 0:
        raise RunConfigError(f"reply-timeout must be > 0 seconds, got {full['reply-timeout']}")
    if not float(full["max-update-norm"]) >= 0:
        raise RunConfigError(
            f"max-update-norm must be >= 0 (0 = no bound), got {full['max-update-norm']}"
        )
    if not isinstance(full["resume"], bool):
        raise RunConfigError(f"resume must be true or false, got {full['resume']!r}")
    stop = full["stop-after-round"]
    if int(stop) < 0 or int(stop) != stop:
        raise RunConfigError(f"stop-after-round must be a whole number >= 0 (0 = off), got {stop}")
    choices = {
        "model": model_family_names(),
        "strategy": list(STRATEGIES),
        "accountant": list(ACCOUNTANTS),
        "privacy-unit": list(PRIVACY_UNITS),
    }
    for key, allowed in choices.items():
        if full[key] not in allowed:
            raise RunConfigError(f"{key} must be one of {', '.join(allowed)}, got {full[key]!r}")
    return full


def toml_value(value: str | int | float | Path) -> str:
    """A run-config value in the TOML syntax that ``flwr run -c`` expects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "inf" if math.isinf(value) else repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'
