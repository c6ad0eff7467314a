"""The site's own privacy policy, and the check of every privacy setting the server asks for.

A site never takes the server's word for anything that weakens its guarantee. Its policy comes
from its own node config (``flower-supernode --node-config``, set by the site's IT team); the
server's run config only *asks*. Each round, before any data is read, ``check_request`` holds
what the server asks against the policy and refuses what would weaken it:

=====================  ==========================================  ============================
server asks (run)      site's policy (node config)                 refused when
=====================  ==========================================  ============================
target-epsilon         ``max-epsilon`` (default 8): each unit's    outside ``EPSILON_RANGES``
                       lifetime budget; ``inf`` allows no DP       (its noise search would not
                                                                   end); ``inf`` (no DP) unless
                                                                   max-epsilon is inf
delta                  ``max-delta`` (default 1e-5), and below     above max-delta (at or above
                       1 / (10 x the site's units)                 the other, lowered to the
                                                                   site's own default instead)
privacy-unit           ``privacy-unit`` (optional), and the unit   differs from either
                       the site's ledger was started with
num-rounds, round      the run's first round in the ledger         a round beyond num-rounds,
                                                                   or num-rounds changed
clip-norm,             the wire contract's ``CLIP_NORM_RANGE`` and  outside them (far outside,
learning-rate          ``LEARNING_RATE_RANGE``                     float32 loses the noise or
                                                                   overflows after the charge)
batch-size,            (none: any positive value keeps the         outside the wire contract's
local-epochs,          guarantee, since noise scales with clip)    ``ROUND_WHOLE_RANGES`` (far
num-rounds                                                         outside, the noise search
                                                                   would not end)
accountant             (prv or rdp: both sound)                    anything else
privacy-model          ``privacy-models`` (default both): the      not in the list
                       models the site takes part in
tolerated-sites        ``min-tolerated-sites`` (default 1): sites  below it, or leaving no
(distributed)          missing or colluding the guarantee must     site to add the noise
                       survive
the secure sum's       (distributed) sum over exactly the cohort   threshold below cohort -
setup (distributed)    the noise share was planned for             tolerated-sites, or another
                                                                   cohort (``secure_aggregation``)
epsilon alone          ``max-epsilon-alone`` (default 50): the     above it over the run for a
(distributed)          epsilon of the site's own noise share,      unit new to the site; a
                       if all other sites collude, per unit        unit at it sits out
target-epsilon vs the  ``max-noise-ratio`` (default 2): the most   the noise the budget needs
site's budget          noise the site adds relative to the run's   is above it (the round would
                       plan for its target-epsilon                 be mostly noise)
the model's values     (none: any finite values)                   NaN or infinity
=====================  ==========================================  ============================

The rounds, unit and noise checks against the ledger happen where the ledger is read
(``privacy_budget.charge_round``), before anything is charged. Simulation: one operator plays
every site, so the run config's ``site-max-epsilon``, ``site-max-epsilon-alone`` (and
``privacy-unit``) stand in for each simulated site's node config.

Evaluation is the site's policy too: its node config ``evaluation`` (``dp`` by default,
``exact`` or ``off``, ``EVALUATION_POLICIES``) says whether it answers evaluate messages and
how. Under ``dp``
the epsilon is the site's own ``evaluation-epsilon``, never the server's, and the rest of the
request (delta, accountant, privacy unit, round) is checked as for training
(``evaluation_request``).

So is the run's ``model`` when it is not one of fedintent's named families but a folder path:
the site would load whatever checkpoint that path holds on its own machine. It answers only for a
folder its node config ``local-models`` lists (``check_model``).

So is the label set. Rows with a label outside the run's are not used, and every count the site
sends (``num-examples``, ``privacy-units``) then counts only the rest: a server choosing the
label set would learn, run by run, how many of the site's rows carry each intent. A site whose
node config names ``labels-file`` (its taxonomy, one label per line) answers only runs whose
label set is exactly that one (``check_labels``), in training and evaluation alike.

The site's retention policy (``retention-days``, default 30; simulation: ``site-retention-days``,
default inf) is read here with the rest of its node config and applied where its data are read
(``retention.py``): the server never asks for it, and nothing about it is sent.
"""

import difflib
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context, Message

from fl_client.data_checks import record_languages
from fl_client.privacy_accounting import check_accountant
from fl_protocol.label_file import LabelFileError, label_list_problem, read_labels
from fl_protocol.wire import (
    ARRAYS_KEY,
    CLIP_NORM_RANGE,
    CONFIG_KEY,
    DEFAULT_EVALUATION_EPSILON,
    DEFAULT_MAX_EPSILON,
    DEFAULT_MAX_EPSILON_ALONE,
    DEFAULT_RETENTION_DAYS,
    EPSILON_RANGES,
    EVALUATION_EPSILON_RANGE,
    EVALUATION_POLICIES,
    LANGUAGES,
    LEARNING_RATE_RANGE,
    MAX_AUTO_DELTA,
    MAX_SECURE_SITES,
    MIN_DELTA,
    PRIVACY_MODELS,
    PRIVACY_UNITS,
    ROUND_CONFIG_KEYS,
    ROUND_WHOLE_RANGES,
    SITE_NUMBER_SPANS,
    Reason,
    evaluation_count,
    evaluation_number,
    run_name_problem,
)
from fl_protocol.written_numbers import too_large, written_number, written_whole_number
from models import model_family_names

DEFAULT_MAX_DELTA = 1e-5
"""A site's ``max-delta`` when its node config sets none: the largest delta it accepts, for a
run's ask (``check_request``) and for its own (``privacy_budget.lifetime_delta``). The same value
as ``wire.MAX_AUTO_DELTA`` but another role: that one is the most a site picks itself when the
run leaves delta to the sites, and then the most the server accepts in a reply; this one is
what a site agrees to, which its operator may lower or raise."""
DEFAULT_MIN_TOLERATED_SITES = 1
"""A site's ``min-tolerated-sites`` when its node config sets none: under distributed DP, the
fewest sites a run must let be missing from the secure sum or collude with the server while the
sum still carries its full planned noise (``check_request``); with 1, one site missing or
colluding leaves the planned guarantee whole."""
DEFAULT_MAX_NOISE_RATIO = 2.0
"""The most a site's noise (its standard deviation, the noise multiplier) may exceed the noise the
run planned for its target-epsilon before the site declines the round. The lifetime filter
raises the noise above the plan when the site's budget is below what the run asks: a little at
the defaults (its Rényi account is looser than a PRV plan: 4.04 vs 3.81, 1.06x), about
target-epsilon / max-epsilon for a smaller budget, and without bound as the budget left tends to
nothing. Such an update soon costs the model more than it brings: in an average of n equal
sites with the same expected update, a site whose noise is r times the others' lowers the
average's noise only while r**2 < (2n - 1) / (n - 1) (r < 1.73 for two sites, towards 1.41 for
many), and the run's learning rate was chosen for the planned noise. 2 leaves room for a site
whose data differ from the others' (worth more than that count says) and for budgets down to
about half the run's target; beyond it the round is declined and charged nothing, so the budget
is kept for a run that plans for it. Node config ``max-noise-ratio`` (>= 1; inf: never decline)
overrides it."""


class PolicyRefusal(Exception):
    """The server asked for something the site's policy does not allow; ``reason`` is sent."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class SiteConfigError(ValueError):
    """The site's own node config is invalid; the site must be fixed by its operator."""


NODE_CONFIG_KEYS = ("data-path", "state-dir", "max-epsilon", "max-delta", "privacy-unit",
                    "privacy-models", "min-tolerated-sites", "max-epsilon-alone",
                    "max-noise-ratio", "languages", "retention-days", "evaluation",
                    "evaluation-epsilon", "labels-file", "local-models")
"""Every setting a deployed site's node config may hold (docs/SITE_GUIDE.md). Any other key is
refused, at start (``fl_client.start_checks``) and with every message: a misspelled one
(``max-epsilion=2``, ``privacy_unit``) would leave its setting at the default, a looser budget
or policy than the site chose, without a word (found in review)."""

SIMULATION_NODE_KEYS = ("num-partitions", "partition-id")
"""What Flower's simulation engine puts in a simulated site's node config (``is_simulated``)."""


@dataclass(frozen=True)
class SitePolicy:
    """What the site allows, from its own node config.

    max_epsilon: the most epsilon any one privacy unit (utterance or customer) of this site may
        ever lose, over every run and every version of its data, at the ledger's delta. Units
        that reach it are left out of training from then on. ``inf`` means the site accepts
        training without DP (and so no guarantee at all).
    max_delta: the largest delta (probability that the epsilon bound fails) the site accepts.
    privacy_unit: the unit the site insists on; ``None`` accepts the run's, after which the
        ledger pins it.
    privacy_models: the privacy models the site takes part in (``local``: it adds all the
        noise itself; ``distributed``: it adds a share and relies on the secure sum).
    min_tolerated_sites: under distributed DP, the fewest sites the run must allow to be
        missing from the sum or colluding with the server while the sum still carries the full
        planned noise; a run that tolerates fewer is refused.
    max_epsilon_alone: under distributed DP, the most epsilon the site's own noise shares may
        amount to for any one unit over the site's whole history: the guarantee it keeps if
        every other site colludes with the server (or the server lies about the cohort). Each
        unit is held to it by the lifetime filter before every distributed release, and every
        local one once the site has made a distributed one, as to ``max_epsilon``; a run whose
        share would take a unit new to the site past it is refused. Below ``max_epsilon`` it
        is the bound a unit meets first, and a new ledger fixes its Rényi order for it
        (``privacy_budget.ledger_order``).
    max_noise_ratio: the most the noise the site's budget needs may exceed the run's planned
        noise (both as standard deviations) before the site declines the round, charging nothing
        (``DEFAULT_MAX_NOISE_RATIO``).
    """

    max_epsilon: float
    max_delta: float
    privacy_unit: str | None
    privacy_models: tuple[str, ...] = PRIVACY_MODELS
    min_tolerated_sites: int = DEFAULT_MIN_TOLERATED_SITES
    max_epsilon_alone: float = DEFAULT_MAX_EPSILON_ALONE
    max_noise_ratio: float = DEFAULT_MAX_NOISE_RATIO

    @property
    def alone_bound(self) -> float:
        """max-epsilon-alone where the site takes part in distributed DP, else ``inf``: a
        local-only site holds no unit to it."""
        return self.max_epsilon_alone if "distributed" in self.privacy_models else math.inf


@dataclass(frozen=True)
class RoundRequest:
    """What the server asks of the site this round, held to the site's policy by
    ``check_request``. Every field is the server's ask, except ``delta``, which the site replaces
    with its own before the charge, and the fields of a DP evaluation that
    ``evaluation_request`` sets itself (its run of the site's own: name, round and rounds,
    epsilon, clip norm, batch, epochs). Enforced where each line says; ``charge_round`` plans
    and charges the release from all of them.

    num_rounds: the run's planned rounds, over which its noise is planned; ``check_request``
        and the ledger refuse a round beyond them.
    target_epsilon: the most the run may spend per privacy unit over all its rounds, at
        ``delta`` (inf: no DP, no guarantee). Server asks (a DP evaluation: the site's
        ``evaluation-epsilon``); ``check_request`` holds it to the accountant's range; the noise
        is planned for it (``privacy_accounting.plan_run_noise``).
    delta: the probability that the epsilon bound fails. Server asks (0: the site's own), within
        the site's max-delta (``check_request``); the site replaces it with its own before the
        charge (``privacy_budget.site_delta``, ``evaluation_delta``); the run's epsilons are
        stated at it (``Charge.delta_this_run``).
    accountant: how the run's releases compose into its epsilon. Server asks; ``check_request``
        refuses one it does not know.
    privacy_unit: what one unit is, so what the guarantee protects (``privacy_units.py``).
        Server asks; ``check_request`` refuses one other than the site's policy names, and the
        ledger one other than it began with.
    clip_norm: the bound on each unit's gradient, its sensitivity. Server asks (a DP evaluation:
        1); ``check_request`` holds it to ``CLIP_NORM_RANGE``; Opacus clips to it in
        ``dp_training.train_locally`` (distributed DP: ``distributed_dp.noisy_integer_sum``).
    batch_size: the expected Poisson batch, so the sample rate charged. Server asks (a DP
        evaluation: the site's count of test units, ``privacy_budget.charge_evaluation``);
        training refuses any rate other than the one charged (``TrainingPlan.charged``).
    local_epochs: passes over the units per round, so the steps charged. Server asks (a DP
        evaluation: 1); training refuses any step count other than the one charged.
    privacy_model: ``local`` (the site adds all the noise) or ``distributed`` (a share, inside a
        secure sum). Server asks; ``check_request`` holds it to the site's privacy-models, and
        the ClientApp refuses distributed DP outside a SecAgg+ round.
    tolerated_sites: distributed DP: how many sites may be missing from the sum or collude with
        the server while it still carries the full planned noise (each site adds ``mu /
        (cohort_size - tolerated_sites)``). Server asks; ``check_request`` holds it to the
        site's min-tolerated-sites.
    """

    run_name: str
    server_round: int
    num_rounds: int
    target_epsilon: float
    delta: float
    accountant: str
    privacy_unit: str
    clip_norm: float
    batch_size: int
    local_epochs: int
    privacy_model: str = "local"
    tolerated_sites: int = 0
    cohort_size: int = 0
    """Distributed DP: the sites the round's secure sum is set up for (0 in a local round)."""
    plan_delta: float = 0.0
    """Distributed DP: the delta the sum's common noise is planned at, the same at every site
    (the run's delta, or ``MAX_AUTO_DELTA`` when the run leaves it to the sites), so that each
    site can count on the others adding at least that noise; ``delta`` is the site's own."""

    @property
    def private(self) -> bool:
        return math.isfinite(self.target_epsilon)

    @property
    def distributed(self) -> bool:
        return self.privacy_model == "distributed"


EVALUATION_RUN = " (evaluation)"
"""How the ledger names a run's DP evaluations: the run's name with this after it. No run the
server asks the site to train may be named so."""


def is_simulated(context: Context) -> bool:
    """Whether this site is played by a simulation, so that the run config's ``site-*`` keys
    stand in for its node config and the message names its data folder: Flower's simulation
    engine gives it a ``partition-id`` and no ``data-path``, and runs it in one of its Ray
    actors (``in_simulation_engine``). A SuperNode given the same node config (Flower's own
    example's ``partition-id=0 num-partitions=N``) is a deployed site whose node config names
    no data folder, refused (found in review: the run's server set its policy and data)."""
    node = context.node_config
    return "partition-id" in node and "data-path" not in node and in_simulation_engine()


def in_simulation_engine() -> bool:
    """Whether this process is an actor of a Ray cluster: Flower's simulation engine runs each
    simulated site's ClientApp in one, a SuperNode never (its ClientApp runs in its own
    process, or in the SuperNode's, and a site's install holds no Ray at all). Read from the
    process, which no node config and no message can set."""
    ray = sys.modules.get("ray")
    return (ray is not None and ray.is_initialized()
            and ray.get_runtime_context().get_actor_id() is not None)


def _setting(context: Context, name: str, default: object,
             simulated_default: object = None) -> tuple[str, object]:
    """(the key as its operator sets it, its value): the node config's ``name``, or in a
    simulation the run config's stand-in ``site-<name>``; unset, ``default`` (in a simulation
    ``simulated_default``, where one is given)."""
    if is_simulated(context):
        key = f"site-{name}"
        return key, context.run_config.get(
            key, default if simulated_default is None else simulated_default)
    return name, context.node_config.get(name, default)


def site_policy(context: Context) -> SitePolicy:
    """The site's policy: its node config, or (simulation only) the run config's stand-in."""
    node = context.node_config
    check_known_settings(context)
    source = context.run_config if is_simulated(context) else node  # privacy-unit's stand-in
    epsilon_key, epsilon = _setting(context, "max-epsilon", DEFAULT_MAX_EPSILON)
    max_epsilon = own_number(epsilon_key, epsilon)
    # below max-delta's span, a delta would fix the ledger's order for good
    max_delta = own_number("max-delta", node.get("max-delta", DEFAULT_MAX_DELTA))
    unit = source.get("privacy-unit")
    if unit is not None and str(unit) not in PRIVACY_UNITS:
        raise SiteConfigError(f"privacy-unit must be one of {PRIVACY_UNITS}, got {unit!r}")
    models = tuple(m.strip() for m in str(node.get("privacy-models", ",".join(PRIVACY_MODELS)))
                   .split(",") if m.strip())
    if not models or set(models) - set(PRIVACY_MODELS):
        raise SiteConfigError(f"privacy-models must be a comma-separated list of "
                              f"{PRIVACY_MODELS}, got {node.get('privacy-models')!r}")
    tolerated = node.get("min-tolerated-sites", DEFAULT_MIN_TOLERATED_SITES)
    alone_key, alone = _setting(context, "max-epsilon-alone", DEFAULT_MAX_EPSILON_ALONE)
    max_alone = own_number(alone_key, alone)
    max_noise_ratio = own_number("max-noise-ratio",
                                 node.get("max-noise-ratio", DEFAULT_MAX_NOISE_RATIO))
    if isinstance(tolerated, str):
        try:
            tolerated = written_whole_number("min-tolerated-sites", tolerated)
        except ValueError as err:
            raise SiteConfigError(f"node config: {err}") from None
    if isinstance(tolerated, bool) or not (isinstance(tolerated, int) or isinstance(
            tolerated, float) and tolerated.is_integer()):
        raise SiteConfigError(f"node config: min-tolerated-sites must be a whole number, got "
                              f"{tolerated!r}")
    if int(tolerated) < 0:
        raise SiteConfigError(f"min-tolerated-sites must be >= 0, got {tolerated}")
    return SitePolicy(max_epsilon=max_epsilon, max_delta=max_delta,
                      privacy_unit=None if unit is None else str(unit),
                      privacy_models=models, min_tolerated_sites=int(tolerated),
                      max_epsilon_alone=max_alone, max_noise_ratio=max_noise_ratio)


def check_known_settings(context: Context) -> None:
    """Refuse (``SiteConfigError``) a deployed site's node config holding a key outside
    ``NODE_CONFIG_KEYS``: read first by every message's handler (``site_policy`` for training,
    ``evaluation_policy`` for evaluation), so that no reply is computed under a default its
    operator misspelled."""
    if not is_simulated(context):
        problem = unknown_setting_problem(context.node_config)
        if problem:
            raise SiteConfigError(f"node config: {problem}")


def unknown_setting_problem(node_config: Mapping[str, object]) -> str:
    """Why ``node_config`` is not a deployed site's (empty if it is): a key outside
    ``NODE_CONFIG_KEYS``, named with the setting it is likely a misspelling of."""
    unknown = sorted(set(node_config) - set(NODE_CONFIG_KEYS))
    if not unknown:
        return ""
    if unknown[0] in SIMULATION_NODE_KEYS:
        return (f"{unknown[0]!r} is a key Flower's simulation engine sets, and no simulation "
                "runs this site" + ("" if "data-path" in node_config
                                    else ": name its data folder with data-path"))
    close = difflib.get_close_matches(unknown[0].lower().replace("_", "-"), NODE_CONFIG_KEYS, n=1)
    return (f"{unknown[0]!r} is not a setting of the site"
            + (f" (did you mean {close[0]}?)" if close else "")
            + f"; its settings are {', '.join(NODE_CONFIG_KEYS)}")


def own_number(key: str, value: object, why: str = "") -> float:
    """A number the site's operator set: an int, a float, or a number's text as
    ``written_number`` reads it (ASCII only; ``inf``, no limit, only when written so). A bool
    is refused (``SiteConfigError``), not read as 1 (found in review), and so is one outside the
    setting's span (``SITE_NUMBER_SPANS``, a simulation's ``site-`` stand-in as the node
    config's own; ``why`` says why, where the span alone does not). Both messages come from
    the span, so that a number too large to read is told to write inf only where the setting
    takes it (found in review: max-delta 1e400 was, and then refused inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise SiteConfigError(f"{key} must be a number, not {value!r}")
    span = SITE_NUMBER_SPANS[key.removeprefix("site-")]
    try:
        number = written_number(key, value, span) if isinstance(value, str) else float(value)
    except OverflowError:  # an int of hundreds of digits
        raise SiteConfigError(too_large(key, "", span)) from None
    except ValueError as err:
        raise SiteConfigError(str(err)) from None
    if number not in span:
        raise SiteConfigError(f"{key} must be {span}{why}, got {number}")
    return number


def retention_days(context: Context) -> float:
    """How long the site may use a conversation after its timestamp: its ``retention-days``
    (simulation: the run config's ``site-retention-days``; ``inf``: without limit). Older rows
    are never used, for training or evaluation, and are purged from every derived store
    (``retention.py``). Not a DP parameter: it bounds how long data is kept, not what a release
    reveals; so it is read apart from ``site_policy``, and evaluation needs only it."""
    key, value = _setting(context, "retention-days", DEFAULT_RETENTION_DAYS, math.inf)
    return own_number(key, value, " (inf: keep without limit)")


def evaluation_policy(context: Context) -> str:
    """The site's ``evaluation`` node config (``EVALUATION_POLICIES``; default ``dp``, so that a
    site need not trust the server with its test rows); simulation: the run config's
    ``site-evaluation`` (default ``exact``: one operator plays every site and the server).

    * ``dp`` answers with accuracy, loss and unit count estimated from one Gaussian release of
      the test split per round (``dp_evaluation.py``), charged to the ledger for the site's
      ``evaluation-epsilon`` over the run's rounds: the oracle is bounded like training is.
    * ``exact`` answers every evaluate message with exact metrics of its test split (example
      count, loss, accuracy, macro-F1), which no DP covers. A hostile server can use them as an
      oracle: it chooses the model, and each reply counts the test rows that model gets right,
      so crafted models, one message after another, can learn the test rows' labels and, query
      by query, where their features lie. For a server the site trusts with that.
    * ``off`` declines every evaluate message before any data is read: only DP-protected
      training updates leave the site.
    """
    check_known_settings(context)
    key, value = _setting(context, "evaluation", "dp", "exact")
    policy = str(value).strip().lower()
    if policy not in EVALUATION_POLICIES:
        raise SiteConfigError(f"node config: {key}: {policy!r} is not one of "
                              f"{', '.join(EVALUATION_POLICIES)}")
    return policy


def evaluation_epsilon(context: Context, max_epsilon: float) -> float:
    """The site's ``evaluation-epsilon`` (simulation: the run config's
    ``site-evaluation-epsilon``): what one run's DP evaluations may cost a test unit, all its
    rounds together (``DEFAULT_EVALUATION_EPSILON``), set within ``EVALUATION_EPSILON_RANGE``;
    never more than the site's lifetime ``max_epsilon`` (max-epsilon, or max-epsilon-alone
    where that is smaller and the site takes part in distributed DP), which no unit can spend
    past (found in review: a site that lowered max-epsilon to 2 under the default 8 declined
    every evaluation, its lifetime budget needing 3.6 times the noise of the run's plan)."""
    key, value = _setting(context, "evaluation-epsilon", DEFAULT_EVALUATION_EPSILON)
    epsilon = own_number(key, value, " (where the accountants can plan a DP evaluation)")
    return min(epsilon, max_epsilon)


def evaluation_request(msg: Message, context: Context, policy: SitePolicy) -> RoundRequest:
    """A DP evaluation as the round of a run of its own, ``<run> (evaluation)``: the site's
    ``evaluation-epsilon`` over the run's planned evaluations (its rounds, every
    ``evaluate-every``-th and the last: ``wire.evaluation_number``; any other round is declined),
    one Gaussian release of the test split per evaluation (sample rate 1, one step, sensitivity
    1: ``dp_evaluation.py``; its batch size is set to the test units once they are read). The
    run's delta, accountant, privacy unit and rounds are the server's asks, checked here as for
    training; the noise is all the site's own, so it is a local release whatever the run's
    privacy model."""
    asked = round_request(msg, context)
    every = _whole(context.run_config, "evaluate-every")
    low, high = ROUND_WHOLE_RANGES["evaluate-every"]
    if not low <= every <= high:
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"evaluate-every {every} is outside "
                            f"[{low}, {high}]")
    number = evaluation_number(asked.server_round, asked.num_rounds, every)
    if number is None:
        raise PolicyRefusal(Reason.ROUND_REFUSED,
                            f"round {asked.server_round} of {asked.num_rounds} is not an "
                            f"evaluation round of the run (every {every} and the last)")
    epsilon = evaluation_epsilon(context, min(policy.max_epsilon, policy.alone_bound))
    low, high = EPSILON_RANGES.get(asked.accountant, EVALUATION_EPSILON_RANGE)
    if not low <= epsilon <= high:
        raise PolicyRefusal(Reason.EVALUATION_REFUSED,
                            f"the epsilon this site's evaluations may spend, {epsilon:g} (its "
                            "evaluation-epsilon, at most its max-epsilon and max-epsilon-alone), "
                            f"is outside [{low:g}, {high:g}], where accountant "
                            f"{asked.accountant} can plan it")
    request = RoundRequest(
        run_name=f"{asked.run_name}{EVALUATION_RUN}", server_round=number,
        num_rounds=evaluation_count(asked.num_rounds, every),
        target_epsilon=epsilon,
        delta=asked.delta, accountant=asked.accountant, privacy_unit=asked.privacy_unit,
        clip_norm=1.0, batch_size=1, local_epochs=1,
    )
    check_request(replace(policy, privacy_models=("local",)), request)
    return request


def check_model(context: Context) -> None:
    """Refuse (``PolicyRefusal``) a run whose ``model`` is a folder the site's node config
    ``local-models`` (comma-separated folders) does not list, before anything is loaded; a named
    family is always allowed, and a simulation takes any (its operator chose the model)."""
    name = str(_sent(context.run_config, "model"))
    if name in model_family_names() or is_simulated(context):
        return
    listed = {str(folder.resolve()) for folder in local_model_folders(context.node_config)}
    if _folder(name) not in listed:
        raise PolicyRefusal(Reason.MODEL_FOLDER_REFUSED,
                            f"the run's model {name!r} is not a fedintent model family and not "
                            f"a folder this site's local-models lists ({sorted(listed)})")


def local_model_folders(node_config: Mapping[str, object]) -> list[Path]:
    """The checkpoint folders the node config's ``local-models`` lists (comma-separated), as
    given: read by ``check_model`` each run, and checked to be folders at start."""
    return [Path(path.strip()).expanduser()
            for path in str(node_config.get("local-models", "")).split(",") if path.strip()]


def _folder(path: str) -> str:
    return str(Path(path.strip()).expanduser().resolve())


def check_parameters(msg: Message) -> None:
    """Refuse (``PolicyRefusal``) a model whose parameters hold NaN or infinity, before anything
    is read: training on it could only send back non-finite numbers, whatever the data
    (``dp_training`` keeps a unit's non-finite gradient out of the sum, so this is a clear
    error, not the guarantee's defence)."""
    arrays = msg.content.array_records.get(ARRAYS_KEY)
    if arrays is None:
        raise PolicyRefusal(Reason.PARAMETERS_REFUSED, "the message carries no model")
    for name, array in arrays.items():
        try:
            values = array.numpy()
        except Exception as err:  # bytes that are no array: the server's, not the site's data
            raise PolicyRefusal(Reason.PARAMETERS_REFUSED,
                                f"the model's {name!r} is not an array ({err})") from err
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise PolicyRefusal(Reason.PARAMETERS_REFUSED,
                                f"the model's {name!r} holds NaN or infinity")


def check_labels(context: Context, msg: Message) -> None:
    """Refuse (``PolicyRefusal``) a message whose label set is not the site's node config
    ``labels-file``, read each message, before any data is read: a subset of it would make the
    counts the site sends count chosen intents only. Without the setting any label set is
    answered; a simulation answers any (one operator plays every site and chooses the labels).
    A label named twice is refused whatever the setting (found in review: the model got a head
    row for each, and the site's counts an unread column), as are fewer than two labels."""
    labels = round_config(msg).get("labels")
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise PolicyRefusal(Reason.LABELS_REFUSED, "the run's labels are not a list of names")
    problem = label_list_problem(labels)
    if problem:
        raise PolicyRefusal(Reason.LABELS_REFUSED, f"the run's labels: {problem}")
    path = context.node_config.get("labels-file")
    if path is None or is_simulated(context):
        return
    try:
        taxonomy = frozenset(read_labels(Path(str(path))))
    except LabelFileError as err:
        raise SiteConfigError(f"node config: labels-file: {err}") from err
    if set(labels) != taxonomy:  # the file's labels not quoted: a file given for it may be
        extra = sorted(set(labels) - taxonomy)  # a key or data rows (found in review)
        raise PolicyRefusal(Reason.LABELS_REFUSED,
                            f"the run's {len(labels)} labels are not the {len(taxonomy)} of the "
                            f"site's labels-file: it leaves out {len(taxonomy - set(labels))} "
                            f"of them, and names {len(extra)} others {extra[:5]}")


def site_languages(context: Context, site_dir: Path) -> tuple[str, ...]:
    """The languages the site declares its conversations are in, sent with each update so the
    model card can name the training languages: its node config ``languages`` (comma-separated
    codes from ``wire.LANGUAGES``; none set: nothing declared, nothing sent). The operator's
    statement, never measured from the text. Simulation: the ``language`` its own conversation
    records name, the synthetic data's stand-in for that statement."""
    node = context.node_config
    if is_simulated(context):
        return tuple(sorted(record_languages(site_dir) & set(LANGUAGES)))
    codes = {code.strip().lower() for code in str(node.get("languages", "")).split(",")}
    codes.discard("")
    if codes - set(LANGUAGES):
        raise SiteConfigError(f"languages: {', '.join(sorted(codes - set(LANGUAGES)))} not "
                              f"among {', '.join(LANGUAGES)}")
    return tuple(sorted(codes))


def round_config(msg: Message) -> ConfigRecord:
    """The message's round settings; a message without them is refused, not an internal error
    (found in review)."""
    config = msg.content.config_records.get(CONFIG_KEY)
    if config is None:
        raise PolicyRefusal(Reason.SETTING_REFUSED, "the message carries no round settings")
    return config


def round_request(msg: Message, context: Context) -> RoundRequest:
    """The server's asks for this round, typed; a malformed value is refused, not guessed, and
    so is a setting the site does not know (a server of another release may mean by it what
    this site cannot honour, and a round run as if it were absent would not be what it asked)."""
    cfg, config = context.run_config, round_config(msg)
    unknown = sorted(set(config) - set(ROUND_CONFIG_KEYS))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"round settings this site does not know: "
                            f"{names[:200]}; known: {', '.join(ROUND_CONFIG_KEYS)}")
    run_name = str(config.get("run-name", ""))
    if problem := run_name_problem(run_name):
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"run-name {run_name!r:.60} {problem}")
    if run_name.endswith(EVALUATION_RUN):
        # found in review: a training round named as a run's evaluations was held to their
        # releases, whose batch is the test split's count: a refusal, charging nothing, said
        # whether a batch size was that count
        raise PolicyRefusal(Reason.SETTING_REFUSED,
                            f"run-name {run_name!r:.200} ends in "
                            f"{EVALUATION_RUN!r}, which names the ledger's record of a run's "
                            "evaluations")
    try:
        return RoundRequest(
            run_name=str(config["run-name"]),
            server_round=_whole(config, "server-round"),
            num_rounds=_whole(config, "num-rounds"),
            target_epsilon=_real(cfg, "target-epsilon"),
            delta=_real(cfg, "delta"),
            accountant=str(cfg["accountant"]),
            privacy_unit=str(cfg["privacy-unit"]),
            clip_norm=_real(cfg, "clip-norm"),
            batch_size=_whole(cfg, "batch-size"),
            local_epochs=_whole(cfg, "local-epochs"),
            privacy_model=str(cfg["privacy-model"]),
            tolerated_sites=_whole(cfg, "tolerated-sites"),
            cohort_size=_whole(config, "cohort-size") if "cohort-size" in config else 0,
            plan_delta=_real(cfg, "delta") or MAX_AUTO_DELTA,
        )
    except (KeyError, TypeError, ValueError, OverflowError) as err:
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"malformed privacy setting: {err}") from err


def _whole(settings: Mapping[str, object], key: str) -> int:
    """A whole-number setting the server sent: an int, or a float without a fraction. A bool, a
    string, a fraction or an infinity is refused (``PolicyRefusal``), never read as some other
    number (found in review: batch-size 2.9 trained as 2, round 1.9 as round 1, True as 1)."""
    value = _sent(settings, key)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise PolicyRefusal(Reason.SETTING_REFUSED, f"{key} must be a whole number, got {value!r}")


def _real(settings: Mapping[str, object], key: str) -> float:
    """A real-number setting: an int or a float. A bool or a string is refused, not read as
    another number (found in review: True as 1, " 4_0 " as 40, an Arabic-Indic digit as 4)."""
    value = _sent(settings, key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"{key} must be a number, got {value!r}")
    return float(value)


def _sent(settings: Mapping[str, object], key: str) -> object:
    """A setting's value; one missing is refused (``PolicyRefusal``), not a ``KeyError``."""
    if key not in settings:
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"the setting {key} is missing")
    return settings[key]


def learning_rate(context: Context) -> float:
    """The run's local step size. Not a privacy setting (DP-SGD's guarantee holds at any rate),
    but read with the round's asks, before anything is charged: a malformed one is refused, not
    paid for with a release the site then cannot train."""
    rate = _real(context.run_config, "learning-rate")
    low, high = LEARNING_RATE_RANGE
    if not low <= rate <= high:
        raise PolicyRefusal(Reason.SETTING_REFUSED, f"learning-rate {rate} is outside "
                            f"[{low:g}, {high:g}]")
    return rate


def check_request(policy: SitePolicy, request: RoundRequest) -> None:
    """Refuse (``PolicyRefusal``) anything in ``request`` that weakens ``policy``."""
    if not request.target_epsilon > 0:
        raise PolicyRefusal(Reason.SETTING_REFUSED,
                            f"target-epsilon {request.target_epsilon} is not > 0")
    if not request.private and math.isfinite(policy.max_epsilon):
        raise PolicyRefusal(Reason.NO_DP_REFUSED,
                            f"the server asked for training without DP; this site's max-epsilon "
                            f"is {policy.max_epsilon:g} (set it to inf to allow no DP)")
    if request.privacy_unit not in PRIVACY_UNITS:
        raise PolicyRefusal(Reason.UNIT_REFUSED, f"unknown privacy unit {request.privacy_unit!r}")
    if policy.privacy_unit is not None and request.privacy_unit != policy.privacy_unit:
        raise PolicyRefusal(Reason.UNIT_REFUSED,
                            f"the server asked for privacy-unit {request.privacy_unit}; this "
                            f"site's policy is {policy.privacy_unit}")
    if not 1 <= request.server_round <= request.num_rounds:
        raise PolicyRefusal(Reason.ROUND_REFUSED,
                            f"round {request.server_round} of {request.num_rounds}")
    if not CLIP_NORM_RANGE[0] <= request.clip_norm <= CLIP_NORM_RANGE[1]:
        raise PolicyRefusal(Reason.SETTING_REFUSED,
                            f"clip-norm {request.clip_norm} is outside [{CLIP_NORM_RANGE[0]:g}, "
                            f"{CLIP_NORM_RANGE[1]:g}]")
    for name, value in (("num-rounds", request.num_rounds), ("batch-size", request.batch_size),
                        ("local-epochs", request.local_epochs),
                        ("tolerated-sites", request.tolerated_sites)):
        low, high = ROUND_WHOLE_RANGES[name]
        if not low <= value <= high:
            raise PolicyRefusal(Reason.SETTING_REFUSED, f"{name} {value} is outside [{low}, "
                                f"{high}]")
    if not (request.delta == 0 or MIN_DELTA <= request.delta <= policy.max_delta):
        raise PolicyRefusal(Reason.SETTING_REFUSED,
                            f"delta {request.delta:g} is not 0 (auto) or in [{MIN_DELTA:g}, "
                            f"{policy.max_delta:g}] (this site's max-delta)")
    try:
        check_accountant(request.accountant)
    except ValueError as err:
        raise PolicyRefusal(Reason.SETTING_REFUSED, str(err)) from err
    low, high = EPSILON_RANGES[request.accountant]
    if request.private and not low <= request.target_epsilon <= high:
        raise PolicyRefusal(Reason.SETTING_REFUSED,
                            f"target-epsilon {request.target_epsilon:g} is outside [{low:g}, "
                            f"{high:g}] (accountant {request.accountant})")
    if request.privacy_model not in policy.privacy_models:
        raise PolicyRefusal(Reason.MODEL_REFUSED,
                            f"the server asked for privacy-model {request.privacy_model!r}; "
                            f"this site takes part in {', '.join(policy.privacy_models)}")
    if request.distributed:
        if not request.private:
            raise PolicyRefusal(Reason.MODEL_REFUSED, "distributed DP without noise")
        if request.tolerated_sites < policy.min_tolerated_sites:
            raise PolicyRefusal(Reason.MODEL_REFUSED,
                                f"the run tolerates {request.tolerated_sites} missing or "
                                f"colluding sites; this site requires at least "
                                f"{policy.min_tolerated_sites}")
        if request.cohort_size > MAX_SECURE_SITES:
            raise PolicyRefusal(Reason.MODEL_REFUSED,
                                f"a secure sum over {request.cohort_size} sites, more than the "
                                f"{MAX_SECURE_SITES} a site joins")
        if request.cohort_size - request.tolerated_sites < 1:
            raise PolicyRefusal(Reason.MODEL_REFUSED,
                                f"a secure sum over {request.cohort_size} sites tolerating "
                                f"{request.tolerated_sites} leaves no site to add the noise")


def check_noise(policy: SitePolicy, request: RoundRequest, noise: float, planned: float,
                budget: str) -> None:
    """Decline (``PolicyRefusal``, before anything is charged) a round whose noise multiplier
    ``noise``, forced by the site's ``budget`` (described for the site's log), is more than
    ``max_noise_ratio`` times the ``planned`` one the run's target-epsilon asks for: its update
    would be mostly noise. Sent as its own decline, ``Reason.NOISE_REFUSED``."""
    ratio = noise / planned
    if ratio > policy.max_noise_ratio:
        raise PolicyRefusal(
            Reason.NOISE_REFUSED,
            f"{budget} needs noise multiplier {noise:.4g}, {ratio:.3g}x the {planned:.4g} the run "
            f"planned for target-epsilon {request.target_epsilon:g} over {request.num_rounds} "
            f"rounds; above this site's max-noise-ratio {policy.max_noise_ratio:g} the update "
            f"would be mostly noise, so the round is declined and nothing charged",
        )
