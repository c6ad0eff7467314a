"""The run configuration's checks, and the settings tuned per privacy budget.

Every key and its default is in the wire contract (``fl_protocol.wire.RUN_CONFIG_DEFAULTS``,
also the ``[tool.flwr.app.config]`` of ``pyproject.toml``), since the sites read the same keys.
"""

import math
import numbers
from collections.abc import Iterable

from fl_protocol.wire import (
    ACCOUNTANTS,
    CLIP_NORM_RANGE,
    EPSILON_RANGES,
    EVALUATION_POLICIES,
    LEARNING_RATE_RANGE,
    MIN_DELTA,
    PRIVACY_MODELS,
    PRIVACY_UNITS,
    ROUND_WHOLE_RANGES,
    RUN_CONFIG_DEFAULTS,
    run_name_problem,
)
from fl_server.secure_aggregation import incompatibility
from fl_server.strategy import STRATEGIES
from models import get_model_family

TUNED_SETTINGS: dict[float, dict[str, int | float]] = {
    1.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 8.0},
    3.0: {"num-rounds": 40, "local-epochs": 1, "batch-size": 4096, "learning-rate": 24.0},
    8.0: {"num-rounds": 40, "local-epochs": 1, "batch-size": 4096, "learning-rate": 48.0},
    math.inf: {"num-rounds": 40, "local-epochs": 3, "batch-size": 64, "learning-rate": 2.0},
}
"""Training settings per target epsilon, chosen on a validation split carved from BANKING77's
training rows (10 sites, Dirichlet alpha 0.5), never its test split; docs/BENCHMARKS.md has the
procedure. Under DP a site takes one full-batch step per round (``batch-size`` above any site's
size makes the Poisson sample rate 1): with per-site noise, the number of rounds and the step
size matter, not the batch. ``fedintent train`` uses the row for the largest tuned epsilon at or
below the requested one; the epsilon-8 row is also in ``RUN_CONFIG_DEFAULTS``."""

DISTRIBUTED_SETTINGS: dict[float, dict[str, int | float]] = {
    1.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 24.0,
          "server-momentum": 0.0},
    3.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 24.0,
          "server-momentum": 0.8},
    8.0: {"num-rounds": 30, "local-epochs": 1, "batch-size": 4096, "learning-rate": 48.0,
          "server-momentum": 0.8},
}
"""The same under ``privacy-model = distributed``: one full-batch gradient step over all sites'
data per round, with one noise instead of one per site, and heavy-ball momentum on the server's
step (FedAvgM) where it helped: 3 points of validation accuracy at epsilon 3 and 8, none at 1.
30 rounds keep a run near per-site DP's time (SecAgg+ costs four message exchanges a round); at
epsilon 1, 40 rounds scored 2.3 points lower. Chosen on validation rows (docs/BENCHMARKS.md);
batch-size and local-epochs do not apply (each round is one full-batch step)."""

TUNING_SITE_ROWS = 850
"""Mean training rows per site of the split both tables were tuned on: BANKING77's 10,003
training rows over 10 sites, less the 15% held out for validation."""
MIN_SITE_SIZE_SCALE = 0.25
"""The least ``site_size_scale`` gives: the smallest sites measured averaged 467 rows (0.55)."""


SITE_EPSILON_RANGE = (0.5, 10_000.0)
"""A finite ``site-max-epsilon`` (lifetime budget): below it the ledger's Rényi filter has no
budget at any order; above it a budget no longer limits anything (use inf)."""
DELTA_RANGE = (MIN_DELTA, 0.1)
"""A nonzero ``delta``: smaller breaks the accountants' floors above, larger is no guarantee."""
WHOLE_RANGES: dict[str, tuple[int, int]] = {
    **ROUND_WHOLE_RANGES,
    "min-sites": (1, 10_000),
    "seed": (0, 2**32 - 1),
    "stop-after-round": (0, 10_000),
}
"""Whole-number keys and their inclusive ranges (``seed``: numpy's ``RandomState`` range)."""
RETENTION_DAYS_RANGE = (0.01, 36_500.0)
"""``site-retention-days``, the simulated sites' stand-in for their retention policy: from about
a quarter of an hour to a hundred years, or inf."""
NUMBER_RANGES: dict[str, tuple[float, float]] = {
    "clip-norm": CLIP_NORM_RANGE,
    "learning-rate": LEARNING_RATE_RANGE,
    "server-learning-rate": (1e-8, 100.0),
    "reply-timeout": (1.0, 7 * 24 * 3600.0),
}
"""Finite number keys and their inclusive ranges: far outside them an update is noise or
overflows, and every site's update is rejected while the sites still spend their budget."""


class RunConfigError(ValueError):
    """A run configuration value is out of range; the message names the key."""


def check_run_config(cfg: dict) -> dict:
    """Return ``cfg`` over the defaults, or raise naming the first bad key, its value and the
    allowed range. The one check of every key: ``fedintent train``, ``deploy-run``, bench and
    the ServerApp (``flwr run -c``) all call it before anything starts or is written."""
    unknown = sorted(set(cfg) - set(RUN_CONFIG_DEFAULTS))
    if unknown:
        raise RunConfigError(f"unknown run config key(s): {', '.join(unknown)}")
    full = RUN_CONFIG_DEFAULTS | cfg
    _check_types(full)
    if problem := run_name_problem(str(full["run-name"])):  # the sites refuse it too
        raise RunConfigError(f"run-name {full['run-name']!r:.60} {problem}")
    choices = {
        "strategy": list(STRATEGIES),
        "accountant": list(ACCOUNTANTS),
        "privacy-unit": list(PRIVACY_UNITS),
        "privacy-model": list(PRIVACY_MODELS),
        "site-evaluation": list(EVALUATION_POLICIES),
    }
    for key, allowed in choices.items():
        if full[key] not in allowed:
            raise RunConfigError(f"{key} must be one of {', '.join(allowed)}, got {full[key]!r}")
    for key, (low, high) in WHOLE_RANGES.items():
        full[key] = check_whole(key, full[key], low, high)
    for key, (low, high) in NUMBER_RANGES.items():
        full[key] = check_number(key, full[key], low, high)
    full["target-epsilon"] = check_epsilon("target-epsilon", full["target-epsilon"],
                                           str(full["accountant"]))
    full["delta"] = float(full["delta"])
    low, high = DELTA_RANGE
    if full["delta"] != 0 and not low <= full["delta"] <= high:
        raise RunConfigError(f"delta must be 0 (each site's default) or in [{low:g}, {high:g}], "
                             f"got {full['delta']!r}")
    if "site-max-epsilon" not in cfg and math.isinf(full["target-epsilon"]):
        # The simulated sites' stand-in policy: a site accepts training without DP only when its
        # own budget is unlimited; an operator who asks for no DP in simulation plays sites that
        # agree. A deployed site decides this in its own node config (max-epsilon = inf).
        full["site-max-epsilon"] = math.inf
    full["site-max-epsilon"] = float(full["site-max-epsilon"])
    low, high = SITE_EPSILON_RANGE
    if not (full["site-max-epsilon"] == math.inf or low <= full["site-max-epsilon"] <= high):
        raise RunConfigError(f"site-max-epsilon must be inf (no limit) or in [{low:g}, "
                             f"{high:g}], got {full['site-max-epsilon']!r}")
    full["site-max-epsilon-alone"] = float(full["site-max-epsilon-alone"])
    if not (full["site-max-epsilon-alone"] == math.inf
            or low <= full["site-max-epsilon-alone"] <= high):
        raise RunConfigError(f"site-max-epsilon-alone must be inf (no limit) or in [{low:g}, "
                             f"{high:g}], got {full['site-max-epsilon-alone']!r}")
    full["site-retention-days"] = float(full["site-retention-days"])
    if not (full["site-retention-days"] == math.inf
            or RETENTION_DAYS_RANGE[0] <= full["site-retention-days"] <= RETENTION_DAYS_RANGE[1]):
        raise RunConfigError(f"site-retention-days must be inf (keep without limit) or in "
                             f"[{RETENTION_DAYS_RANGE[0]:g}, {RETENTION_DAYS_RANGE[1]:g}], got "
                             f"{full['site-retention-days']!r}")
    full["site-evaluation-epsilon"] = float(full["site-evaluation-epsilon"])
    low, high = EPSILON_RANGES[str(full["accountant"])]  # the sites plan it like a run's target
    if not low <= full["site-evaluation-epsilon"] <= high:
        raise RunConfigError(f"site-evaluation-epsilon must be in [{low:g}, {high:g}] with "
                             f"accountant {full['accountant']}, got "
                             f"{full['site-evaluation-epsilon']!r}")
    full["server-momentum"] = float(full["server-momentum"])
    if not 0 <= full["server-momentum"] < 1:
        raise RunConfigError(f"server-momentum must be in [0, 1), got {full['server-momentum']}")
    if full["server-momentum"] > 0 and full["strategy"] != "fedavg":
        raise RunConfigError(f"server-momentum applies to strategy fedavg (FedAvgM), not "
                             f"{full['strategy']!r}; set it to 0")
    if not float(full["max-update-norm"]) >= 0:
        raise RunConfigError(f"max-update-norm must be >= 0 (0 = derived from the DP settings, "
                             f"inf = no bound), got {full['max-update-norm']}")
    try:
        full["model"] = get_model_family(str(full["model"])).name  # a folder: its absolute path
    except ValueError as err:
        raise RunConfigError(f"model: {err}") from None
    if full["model"] == "minilm-finetune" and full["privacy-unit"] == "customer":
        raise RunConfigError("privacy-unit customer is not supported with minilm-finetune (a "
                             "customer's utterances would need a second sequence dimension); "
                             "use minilm-head or ngram")
    if problem := incompatibility(full):
        raise RunConfigError(problem)
    return full


def check_whole(key: str, value: object, low: int, high: int) -> int:
    """``value`` as an int in ``[low, high]``, or ``RunConfigError`` naming ``key`` and the
    range (a bool or a float is not a whole number, even 3.0: the key is typed)."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral)
            or not low <= value <= high):
        raise RunConfigError(f"{key} must be a whole number >= {low} and <= {high}, "
                             f"got {value!r}")
    return int(value)


def check_number(key: str, value: object, low: float, high: float) -> float:
    """``value`` as a finite float in ``[low, high]``, or ``RunConfigError`` naming ``key``."""
    if not _is_number(value) or not low <= value <= high:
        raise RunConfigError(f"{key} must be a finite number in [{low:g}, {high:g}], "
                             f"got {value!r}")
    return float(value)


def check_epsilon(key: str, value: object, accountant: str = "prv") -> float:
    """A target epsilon: inf (no DP), or where ``accountant`` can plan its noise
    (``EPSILON_RANGES``); ``key`` names the option or key in the message."""
    low, high = EPSILON_RANGES[accountant]
    if not _is_number(value) or not (value == math.inf or low <= value <= high):
        raise RunConfigError(f"{key} must be inf (no DP) or in [{low:g}, {high:g}] with "
                             f"accountant {accountant}, got {value!r}")
    return float(value)


def _check_types(full: dict) -> None:
    """Each value of the type of its key's default: text, true/false, or a number (the keys
    with a range are typed where their range is checked, so that the message gives it)."""
    for key, default in RUN_CONFIG_DEFAULTS.items():
        value = full[key]
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise RunConfigError(f"{key} must be true or false, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise RunConfigError(f"{key} must be text, got {value!r}")
        elif key not in WHOLE_RANGES | NUMBER_RANGES and not _is_number(value):
            raise RunConfigError(f"{key} must be a number, got {value!r}")


def _is_number(value: object) -> bool:
    """A real number (int or float; NaN included, which every range refuses), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def tuned_settings(epsilon: float, privacy_model: str = "local") -> dict[str, int | float]:
    """The tuned settings for ``epsilon`` (see ``tuned_epsilon``) under ``privacy_model``."""
    table = DISTRIBUTED_SETTINGS if privacy_model == "distributed" else TUNED_SETTINGS
    return dict(table[tuned_epsilon(epsilon, table)])


def site_size_scale(mean_site_rows: float, epsilon: float) -> float:
    """The share of a tuned DP learning rate that suits sites of ``mean_site_rows`` training rows.

    A full-batch DP step moves a site's model by the learning rate times its mean clipped
    gradient plus noise of standard deviation ``noise-multiplier x clip-norm / rows``: smaller
    sites take noisier steps, and the best learning rate falls with their size. Measured on
    validation rows of 10 synthetic sites averaging 467 rows (0.55 of ``TUNING_SITE_ROWS``),
    half the tuned rate beat it at epsilon 3 and 8, per-site and distributed DP alike, for
    ``use-multilingual`` on Chinese sites and ``minilm-head`` on English ones; on BANKING77's
    sites the two rates scored level. So the rate scales in proportion, down only (nothing was
    measured above the tuning's size) and not below ``MIN_SITE_SIZE_SCALE``; 1 without DP,
    where no noise is added."""
    if not math.isfinite(epsilon):
        return 1.0
    return min(1.0, max(MIN_SITE_SIZE_SCALE, mean_site_rows / TUNING_SITE_ROWS))


def site_size_rate(learning_rate: float, mean_site_rows: float, epsilon: float) -> float:
    """A tuned learning rate scaled by ``site_size_scale``, as ``fedintent train`` and
    ``fedintent bench`` both run it."""
    return round(learning_rate * site_size_scale(mean_site_rows, epsilon), 4)


def site_size_message(scaled: float, tuned: float, mean_site_rows: float, override: str) -> str:
    """What ``fedintent train`` and ``deploy-run`` print when they scale the tuned rate, naming
    the option (``override``) that sets it outright."""
    return (f"learning rate {scaled:g}: the tuned {tuned:g} scaled to sites of "
            f"{mean_site_rows:.0f} training rows on average (tuned on {TUNING_SITE_ROWS}; "
            f"smaller sites take noisier steps; {override} sets it)")


def tuned_epsilon(epsilon: float, tuned: Iterable[float]) -> float:
    """The largest tuned epsilon not above ``epsilon`` (settings tuned for more noise are the
    conservative fit), or the smallest tuned one below them all."""
    tuned = list(tuned)
    return max([value for value in tuned if value <= epsilon] or [min(tuned)])
