"""The run configuration's checks, and the settings tuned per privacy budget.

Every key and its default is in the wire contract (``fl_protocol.wire.RUN_CONFIG_DEFAULTS``,
also the ``[tool.flwr.app.config]`` of ``pyproject.toml``), since the sites read the same keys.
"""

import math
from collections.abc import Iterable

from fl_protocol.wire import ACCOUNTANTS, PRIVACY_UNITS, RUN_CONFIG_DEFAULTS
from fl_server.secure_aggregation import incompatibility
from fl_server.strategy import STRATEGIES
from models import get_model_family

TUNED_SETTINGS: dict[float, dict[str, int | float]] = {
    1.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 16.0},
    3.0: {"num-rounds": 40, "local-epochs": 1, "batch-size": 4096, "learning-rate": 48.0},
    8.0: {"num-rounds": 40, "local-epochs": 1, "batch-size": 4096, "learning-rate": 96.0},
    math.inf: {"num-rounds": 40, "local-epochs": 3, "batch-size": 64, "learning-rate": 16.0},
}
"""Training settings per target epsilon, chosen on a validation split carved from BANKING77's
training rows (10 sites, Dirichlet alpha 0.5), never its test split; docs/BENCHMARKS.md has the
procedure. Under DP a site takes one full-batch step per round (``batch-size`` above any site's
size makes the Poisson sample rate 1): with per-site noise, the number of rounds and the step
size matter, not the batch. ``fedintent train`` uses the row for the largest tuned epsilon at or
below the requested one; the epsilon-8 row is also in ``RUN_CONFIG_DEFAULTS``."""

DISTRIBUTED_SETTINGS: dict[float, dict[str, int | float]] = {
    1.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 64.0,
          "server-momentum": 0.0},
    3.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 48.0,
          "server-momentum": 0.8},
    8.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 64.0,
          "server-momentum": 0.8},
}
"""The same under ``privacy-model = distributed``: one full-batch gradient step over all sites'
data per round, with one noise instead of one per site, and heavy-ball momentum on the server's
step (FedAvgM) where it helped: on validation it reached in 30 rounds what plain steps needed
80 for at epsilon 8. 30 rounds rather than 40 at epsilon 3 and 8 keep a run near per-site
DP's time (SecAgg+ costs four message exchanges a round) for 0.3 point of validation accuracy
at epsilon 3 (none at 8, with lr 64). Chosen on validation rows (docs/BENCHMARKS.md);
batch-size and local-epochs do not apply (each round is one full-batch step)."""



class RunConfigError(ValueError):
    """A run configuration value is out of range; the message names the key."""


def check_run_config(cfg: dict) -> dict:
    """Return ``cfg`` over the defaults, or raise naming the first bad key."""
    unknown = sorted(set(cfg) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise RunConfigError(f"unknown run config key(s): {', '.join(unknown)}")
    full = RUN_CONFIG_DEFAULTS | cfg
    epsilon = float(full["target-epsilon"])
    if math.isnan(epsilon) or epsilon <= 0:
        raise RunConfigError(
            f"target-epsilon must be > 0 (or inf for no DP), got {full['target-epsilon']}"
        )
    if not 0 <= float(full["delta"]) < 1:
        raise RunConfigError(f"delta must be in [0, 1) (0 = per-site default), got {full['delta']}")
    if "site-max-epsilon" not in cfg and math.isinf(epsilon):
        # The simulated sites' stand-in policy: a site accepts training without DP only when its
        # own budget is unlimited; an operator who asks for no DP in simulation plays sites that
        # agree. A deployed site decides this in its own node config (max-epsilon = inf).
        full["site-max-epsilon"] = math.inf
    if not float(full["site-max-epsilon"]) > 0:
        raise RunConfigError(f"site-max-epsilon must be > 0, got {full['site-max-epsilon']}")
    for key in ("num-rounds", "min-sites", "batch-size", "local-epochs"):
        if int(full[key]) < 1 or int(full[key]) != full[key]:
            raise RunConfigError(f"{key} must be a whole number >= 1, got {full[key]}")
    for key in ("clip-norm", "learning-rate", "server-learning-rate"):
        if not float(full[key]) > 0:
            raise RunConfigError(f"{key} must be > 0, got {full[key]}")
    if not 0 <= float(full["server-momentum"]) < 1:
        raise RunConfigError(f"server-momentum must be in [0, 1), got {full['server-momentum']}")
    if float(full["server-momentum"]) > 0 and full["strategy"] != "fedavg":
        raise RunConfigError(f"server-momentum applies to strategy fedavg (FedAvgM), not "
                             f"{full['strategy']!r}; set it to 0")
    if not float(full["reply-timeout"]) > 0:
        raise RunConfigError(f"reply-timeout must be > 0 seconds, got {full['reply-timeout']}")
    if not float(full["max-update-norm"]) >= 0:
        raise RunConfigError(
            f"max-update-norm must be >= 0 (0 = no bound), got {full['max-update-norm']}"
        )
    for key in ("resume", "secure-aggregation"):
        if not isinstance(full[key], bool):
            raise RunConfigError(f"{key} must be true or false, got {full[key]!r}")
    stop = full["stop-after-round"]
    if int(stop) < 0 or int(stop) != stop:
        raise RunConfigError(f"stop-after-round must be a whole number >= 0 (0 = off), got {stop}")
    try:
        full["model"] = get_model_family(str(full["model"])).name  # a folder: its absolute path
    except ValueError as err:
        raise RunConfigError(f"model: {err}") from None
    if full["model"] == "minilm-finetune" and full["privacy-unit"] == "customer":
        raise RunConfigError("privacy-unit customer is not supported with minilm-finetune (a "
                             "customer's utterances would need a second sequence dimension); "
                             "use minilm-head or ngram")
    choices = {
        "strategy": list(STRATEGIES),
        "accountant": list(ACCOUNTANTS),
        "privacy-unit": list(PRIVACY_UNITS),
    }
    for key, allowed in choices.items():
        if full[key] not in allowed:
            raise RunConfigError(f"{key} must be one of {', '.join(allowed)}, got {full[key]!r}")
    if problem := incompatibility(full):
        raise RunConfigError(problem)
    return full


def tuned_settings(epsilon: float, privacy_model: str = "local") -> dict[str, int | float]:
    """The tuned settings for ``epsilon`` (see ``tuned_epsilon``) under ``privacy_model``."""
    table = DISTRIBUTED_SETTINGS if privacy_model == "distributed" else TUNED_SETTINGS
    return dict(table[tuned_epsilon(epsilon, table)])


def tuned_epsilon(epsilon: float, tuned: Iterable[float]) -> float:
    """The largest tuned epsilon not above ``epsilon`` (settings tuned for more noise are the
    conservative fit), or the smallest tuned one below them all."""
    tuned = list(tuned)
    return max([value for value in tuned if value <= epsilon] or [min(tuned)])
