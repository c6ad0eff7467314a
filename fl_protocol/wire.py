"""The wire contract: every name, number and code a site and the server exchange, in one place.

Site (``fl_client``) and server (``fl_server``) are peers that speak this protocol; neither imports
the other. What is defined here, each side enforces on its own:

* the records of a message (``ARRAYS_KEY``, ``METRICS_KEY``, ``CONFIG_KEY``) and the keys of the
  round's ``config`` record the server sends (``ROUND_CONFIG_KEYS``);
* the run configuration every site reads and its defaults (``RUN_CONFIG_DEFAULTS``; the server
  checks a run against them in ``fl_server/run_config.py``), the privacy units and accountants
  a run may name;
* the metrics a site may send (``TRAIN_METRICS``, ``EVALUATE_METRICS``): the site's egress
  guard lets out no other name, the server requires and checks those with a ``check`` and
  rejects a reply that fails one, Flower's aggregation sees only the ``aggregated`` ones, and
  ``metrics.json`` keeps each as ``recorded_as``;
* what a SecAgg+ stage reply may carry (``SECAGG_REPLIES``);
* the error codes and the fixed vocabulary of reasons a site may give (``Reason``): never free
  text, since an exception message can quote a row of site data. The server keeps a site's
  reason only if it is in this vocabulary.

A test (``tests/test_wire_contract.py``) holds this module against what the egress guard lets
out and what the server accepts.
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

from flwr.app import Error, Message, MetricRecord
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from fl_protocol.written_numbers import Span

ARRAYS_KEY = "arrays"
"""The model parameters (``ArrayRecord``): server to site, and site to server after training."""
METRICS_KEY = "metrics"
"""A site's numbers (``MetricRecord``): only the names below."""
CONFIG_KEY = "config"
"""The round's instructions (``ConfigRecord``), server to site."""

ROUND_CONFIG_KEYS = ("labels", "num-rounds", "run-name", "sim-data-dir", "server-round",
                     "cohort-size")
"""What the server's ``config`` record holds: the run's label set, its planned rounds and name,
the simulation's data folder (deployed sites ignore it), Flower's round number, and (only in a
distributed-DP round) how many sites the round's secure sum is set up for. A site declines a
round whose record holds any other key (``fl_client/site_policy.round_request``)."""

MAX_RUN_NAME = 200
"""The longest run name either side takes, in characters, all of them printable. A site writes
the name into every release of its ledger and every line of its egress log, both kept for good
(MAC-chained, never trimmed): found in review, a server could grow a site's ledger without bound,
even a site with no budget left, by asking DP evaluations under ever longer names. The egress
log keeps at most this much of a refused name. This bounds each line and release, not their
number: every message a server sends still adds one of each at most."""


def run_name_problem(name: str) -> str:
    """Why ``name`` cannot name a run (``MAX_RUN_NAME``); empty where it can."""
    if len(name) > MAX_RUN_NAME:
        return f"is {len(name)} characters long, over the {MAX_RUN_NAME} a run name may take"
    if not name.isprintable():
        return ("holds a character that is not printable (a control character, a line break, "
                "a tab, a space other than ' '), which a run name may not")
    return ""


LOG_LIMIT = 2_000
"""The most of one text the server sent that a site's log line quotes, in characters."""


def loggable(text: str, limit: int = LOG_LIMIT) -> str:
    """``text``, which may quote what the server sent, as the site's log may hold it: every
    character that is not printable (a line break, a terminal escape, a bidi override) written
    as its escape, at most ``limit`` characters kept. Found in review: an array name or a
    SecAgg+ stage reached the site's log raw, a megabyte long, with escapes that cleared the
    operator's terminal and printed a forged INFO line."""
    shown = "".join(char if char.isprintable() else char.encode("unicode_escape").decode()
                    for char in text[:limit])
    return shown if len(text) <= limit else f"{shown}... (cut: {len(text)} characters)"


PRIVACY_UNITS = ("utterance", "customer")
"""What one DP-SGD example is, and so what the guarantee protects (``fl_client/privacy_units``)."""
PRIVACY_MODELS = ("local", "distributed")
"""Who adds the noise a guarantee counts on: ``local``, each site all of it for its own update;
``distributed``, each site a share, with only the secure sum leaving
(``fl_client/distributed_dp.py``)."""
ACCOUNTANTS = ("prv", "rdp")
"""How a site converts its noise into epsilon for a run's plan; both are sound upper bounds."""

DEFAULT_MAX_EPSILON = 8.0
"""The one default privacy budget: a site's lifetime ``max-epsilon`` per unit when its node
config sets none (``fl_client/site_policy``, and so the site container's), the simulated sites'
stand-in ``site-max-epsilon``, and a run's ``target-epsilon``. Defined here, in the layer both
sides share; a site's own node config overrides it, the server's run config cannot."""

DEFAULT_MAX_EPSILON_ALONE = 50.0
"""A site's default bound on ``epsilon-alone`` under distributed DP (node config
``max-epsilon-alone``; simulation: the run config's ``site-max-epsilon-alone``): what it keeps if
the server lies about the cohort or every other site colludes, since the noise share it adds
shrinks with the cohort the server announces."""

EVALUATION_POLICIES = ("exact", "dp", "off")
"""What a site's ``evaluation`` node config may say (simulation: the run config's
``site-evaluation``): exact metrics, DP estimates, or none (``fl_client/site_policy``)."""

DEFAULT_EVALUATION_EPSILON = DEFAULT_MAX_EPSILON
"""A site's ``evaluation-epsilon`` when its node config sets none, and the simulated sites'
stand-in ``site-evaluation-epsilon``: what one run's DP evaluations may cost a test unit, all
its rounds together. The run's target epsilon by default, so a test utterance is protected as a
training utterance is; less leaves the per-round estimates noisier (docs/PRIVACY.md)."""

DEFAULT_RETENTION_DAYS = 30.0
"""How long a deployed site uses a text conversation after its timestamp when its node config
sets no ``retention-days`` (the figure privacy practice for call-center text records gives):
the ClientApp's default, and so the container's and ``fedintent purge``'s."""

RUN_CONFIG_DEFAULTS: dict[str, str | int | float | bool] = {
    "data-dir": "",
    "labels-file": "",
    "out-dir": "",
    "run-name": "",
    "state-dir": "",
    "num-rounds": 40,
    "model": "minilm-head",
    "strategy": "fedavg",
    "server-learning-rate": 0.05,
    "server-momentum": 0.0,
    "min-sites": 2,
    "target-epsilon": DEFAULT_MAX_EPSILON,
    "delta": 0.0,
    "privacy-unit": "utterance",
    "site-max-epsilon": DEFAULT_MAX_EPSILON,
    "site-max-epsilon-alone": DEFAULT_MAX_EPSILON_ALONE,
    "site-retention-days": math.inf,
    "site-evaluation": "exact",
    "site-evaluation-epsilon": DEFAULT_EVALUATION_EPSILON,
    "evaluate-every": 1,
    "accountant": "prv",
    "clip-norm": 1.0,
    "batch-size": 4096,
    "local-epochs": 1,
    "learning-rate": 48.0,
    "seed": 0,
    "reply-timeout": 3600.0,
    "max-update-norm": 0.0,
    "resume": False,
    "stop-after-round": 0,
    "secure-aggregation": False,
    "privacy-model": "local",
    "tolerated-sites": 2,
}
"""Every run-config key and its default (also ``[tool.flwr.app.config]`` in pyproject.toml; a
test keeps the two equal). The server sets the run config; a site reads the privacy settings
from it only as *requests*, which it checks against its own policy (``fl_client/site_policy``).
``max-update-norm`` (server only): 0 bounds each DP update by what its clip norm, learning rate
and noise allow (``fl_server/update_validation.derived_update_bound``; no bound without DP),
a positive number is a fixed bound, ``inf`` none."""


def evaluation_number(server_round: int, num_rounds: int, evaluate_every: int) -> int | None:
    """Which of a run's evaluations round ``server_round`` holds (1 for the first), or None: the
    sites evaluate the global model in every ``evaluate-every``-th round and always in the last,
    so the final model is always evaluated. The server asks in these rounds only; a site
    evaluating under DP plans its evaluation epsilon over exactly ``evaluation_count`` of them
    and declines any other round (``fl_client/site_policy.evaluation_request``), so fewer
    evaluations each carry less noise. Arithmetic only: the numbers are the server's."""
    if not 1 <= server_round <= num_rounds:
        return None
    if server_round % evaluate_every == 0:
        return server_round // evaluate_every
    return evaluation_count(num_rounds, evaluate_every) if server_round == num_rounds else None


def evaluation_count(num_rounds: int, evaluate_every: int) -> int:
    """How many rounds of a run of ``num_rounds`` evaluate (``evaluation_number``)."""
    return -(-num_rounds // evaluate_every)


MIN_SECURE_SITES = 3
"""Fewest sites in a secure sum the protocol unmasks: with two, each site learns the other's
update from it (the sum, less its own). The server sets no lower reconstruction threshold
(``fl_server/secure_aggregation``) and a site joins no round set up with one
(``fl_client/secure_aggregation``)."""

MAX_SECURE_SITES = 1_000
"""Most sites in a secure sum a site joins (SecAgg+'s sample and share counts, a round's peers,
distributed DP's cohort). Each site splits its secrets into a share per peer, at a cost that
grows with the square of their number, before it can check a single peer's key: found in
review, 2,000 peers in a 0.13 MB message took a site 30 s of CPU, and 20,000 would take about
50 minutes. At 1,000 it is about 8 s; docs/SCALING.md measured federations of up to 100."""

MIN_DELTA = 1e-10
"""The smallest nonzero delta a run may ask for: the server's check and each site's floor. Below
it the accountants' conversions lose their footing, and a site's ledger keeps the Rényi order its
first release's delta gives, so a far smaller one would fix, for good, an order whose lifetime
budget is a fraction of the site's max-epsilon."""
CLIP_NORM_RANGE = (1e-6, 100.0)
"""The clip-norms a run may ask for: the server's check and each site's. Far below it, the
noise's standard deviation (noise multiplier x clip-norm) rounds to zero in float32 while
clipping still holds (found in review: at 7e-46 a site sent updates with no noise at all, its
ledger charging the planned epsilon); far above it, the update overflows after the charge."""
LEARNING_RATE_RANGE = (1e-8, 10_000.0)
"""The local learning rates a run may ask for, checked by the server and before anything is
charged by each site: above float32's range the optimizer fails after the charge."""
EPSILON_RANGES: dict[str, tuple[float, float]] = {"prv": (0.1, 100.0), "rdp": (0.5, 100.0)}
"""A finite ``target-epsilon`` per accountant: where its noise search plans (measured down to
delta 1e-10, up to 1000 rounds of full-batch steps), checked by the server and by each site. A
PRV run planned past ``privacy_accounting.PRV_MAX_STEPS`` steps is planned with RDP, and below
RDP's range declined. The
RDP conversion cannot reach below about 0.45 at delta 1e-10; PRV fails below 0.01 and above 100,
and its search slows down there until it does not end (found in review: a hostile server's
target-epsilon of 1000 kept a site searching, its state folder locked, erasures waiting)."""
EVALUATION_EPSILON_RANGE = (min(low for low, _ in EPSILON_RANGES.values()),
                            max(high for _, high in EPSILON_RANGES.values()))
"""Where a site's own ``evaluation-epsilon`` may lie: within some accountant's range, since its
DP evaluations are planned like a run at that target; one outside every range is a site
configuration error at start-up, and a run whose accountant cannot plan it (below 0.5 under
``rdp``) gets that site's evaluations declined."""
SITE_NUMBER_SPANS: dict[str, Span] = {
    "max-epsilon": Span(0, low_open=True), "max-delta": Span(MIN_DELTA, 1, high_open=True),
    "max-epsilon-alone": Span(0, low_open=True), "max-noise-ratio": Span(1),
    "retention-days": Span(0, low_open=True), "evaluation-epsilon": Span(*EVALUATION_EPSILON_RANGE),
    "min-tolerated-sites": Span(0, high_open=True),
}
"""Where each number setting of a site's node config may lie (``inf`` only where a span takes
it: no limit), checked by ``site_policy`` and named for a number too large to read."""
ROUND_WHOLE_RANGES: dict[str, tuple[int, int]] = {
    "num-rounds": (1, 10_000),
    "batch-size": (1, 1_000_000_000),
    "local-epochs": (1, 1_000),
    "tolerated-sites": (0, 10_000),
    "evaluate-every": (1, 10_000),
}
"""The whole-number settings a round's plan depends on, with their inclusive ranges: checked by
the server and by each site (found in review: num-rounds of a million kept a site's noise
search running for good, its state folder locked)."""
MAX_AUTO_DELTA = 1e-5
"""The largest delta a site picks when the run's ``delta`` is 0 (its default, at most this
and below 1 / (10 x its units)); the server holds a site's reported delta to it."""


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


def _finite(value: float) -> bool:
    return math.isfinite(value)


def _epsilon(value: float) -> bool:
    """Epsilon may be inf (a run without DP), never NaN or negative."""
    return value >= 0


def _ledger_delta(value: float) -> bool:
    """A ledger's delta is no smaller than a run's may be, and below 1 (one that began at a
    run's delta, before 7b35b78, may hold any the site's max-delta allowed). Found in review:
    the server accepted 5e-324, and the model card printed a lifetime figure "at delta
    4.94e-324", the strongest guarantee there is."""
    return MIN_DELTA <= value < 1.0


def _fraction(value: float) -> bool:
    return 0.0 <= value <= 1.0


def _nonnegative(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _rate(value: float) -> bool:
    return 0.0 < value <= 1.0


def _count(value: float) -> bool:
    return math.isfinite(value) and value >= 0 and value == int(value)


def _site_key(value: float) -> bool:
    """``fl_client.site_secret.site_key``: 48 bits, exact as a float."""
    return _count(value) and value < 1 << 48


@dataclass(frozen=True)
class Metric:
    """One number a site may send.

    check: the server rejects a reply carrying this metric unless ``check(value)``; ``None``:
        not checked, and optional.
    optional: with a ``check``, the reply may leave the metric out; without ``optional`` the
        server requires it.
    aggregated: passed on to the aggregation (the rest is recorded, not aggregated).
    recorded_as: its field in ``metrics.json``'s per-site entry; ``None``: not recorded there.
    """

    name: str
    check: Callable[[float], bool] | None = None
    aggregated: bool = False
    recorded_as: str | None = None
    optional: bool = False


TRAIN_METRICS: tuple[Metric, ...] = (
    Metric("num-examples", _positive, aggregated=True, recorded_as="num_examples"),
    Metric("epsilon", _epsilon, aggregated=True, recorded_as="epsilon"),
    Metric("epsilon-all-runs", _epsilon, recorded_as="epsilon_all_runs", optional=True),
    Metric("epsilon-alone", _epsilon, recorded_as="epsilon_alone", optional=True),
    Metric("epsilon-alone-all-runs", _epsilon, recorded_as="epsilon_alone_all_runs",
           optional=True),
    Metric("delta", _nonnegative, recorded_as="delta", optional=True),
    Metric("delta-all-runs", _ledger_delta, recorded_as="delta_all_runs", optional=True),
    Metric("noise-multiplier", _nonnegative, recorded_as="noise_multiplier", optional=True),
    Metric("sample-rate", _rate, recorded_as="sample_rate", optional=True),
    Metric("clip-norm", _positive, recorded_as="clip_norm", optional=True),
    Metric("steps", _count, recorded_as="steps", optional=True),
    Metric("max-epsilon", _epsilon, recorded_as="max_epsilon_budget", optional=True),
    Metric("privacy-units", _count, recorded_as="privacy_units", optional=True),
    Metric("site-key", _site_key, optional=True),
    Metric("languages"),
)
"""A training reply's numbers. ``site-key`` (a keyed hash of the site secret) names the site in
the record across restarts instead of its node id; it is not recorded as a value. Under
distributed DP, ``epsilon`` holds against a server that sees only the secure sum (with at most
``tolerated-sites`` sites missing or colluding) and ``epsilon-alone`` from the site's own noise
share only, what it keeps if every other site colludes with the server; under local DP the two
are equal. ``epsilon`` and ``epsilon-alone`` are at the run's ``delta``; the two ``-all-runs``
figures at ``delta-all-runs``, the site's ledger's, its own, which no run chooses: a run asking
for a delta below it can read a lifetime figure below its ``epsilon``, each true at its own
delta (found in review: progress printed "epsilon 9.98 ... at delta 1e-10 (lifetime 7.07 of
budget 8)", the lifetime at 1e-5). ``languages`` (optional) is what the site declares its
conversations are in, as a ``language_mask``: recorded decoded, as the codes. No training loss:
the loss of the training rows under the model the server sent is an exact statistic of them,
outside every epsilon, and a server choosing that model could use it as an oracle, round after
round."""
EVALUATE_METRICS: tuple[Metric, ...] = (
    Metric("num-examples", _positive, recorded_as="num_examples"),
    Metric("loss", _finite, aggregated=True, recorded_as="loss"),
    Metric("accuracy", _fraction, aggregated=True, recorded_as="accuracy"),
    Metric("macro-f1", _fraction, aggregated=True, recorded_as="macro_f1", optional=True),
    Metric("epsilon", _positive, recorded_as="epsilon", optional=True),
)
"""An evaluation reply's numbers, each recorded per site (``evaluation``), each one scalar over
the site's held-out split. An exact evaluation sends the first four: ``macro-f1`` is the mean of
per-class F1 scores, computed at the site, so the per-class counts (the site's label histogram)
never leave it. A DP evaluation (``fl_client/dp_evaluation.py``) sends estimates of the first
three from one Gaussian release and ``epsilon``, what this run's evaluations have cost the
site's test units so far; no macro-F1. The aggregated ones are example-weighted over the
replies that carry them."""


LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr",
             "zh")
"""The languages a site may declare its conversations are in (node config ``languages``; ISO
639-1, ``zh`` for Simplified and Traditional Chinese alike): those ``use-multilingual`` reads. A
fixed vocabulary sent as one number with a bit per language, so a declaration can carry nothing
but the choice of languages; the model card lists them."""


def language_mask(codes: Iterable[str]) -> int:
    """The number a site sends for its declared ``codes`` (each in ``LANGUAGES``)."""
    return sum(1 << LANGUAGES.index(code) for code in set(codes))


def mask_languages(mask: object) -> list[str] | None:
    """The codes a ``language_mask`` stands for; ``None`` for a number that is not one, which
    the server does not record."""
    if isinstance(mask, bool) or not isinstance(mask, int | float) or not math.isfinite(mask):
        return None
    if mask != int(mask) or not 0 < mask < 1 << len(LANGUAGES):
        return None
    return [code for bit, code in enumerate(LANGUAGES) if int(mask) >> bit & 1]


def metric_names(metrics: tuple[Metric, ...]) -> frozenset[str]:
    return frozenset(metric.name for metric in metrics)


def metric_record(metrics: tuple[Metric, ...], **values: float) -> MetricRecord:
    """A ``MetricRecord`` of ``values`` (``num_examples=`` for ``num-examples``); a name outside
    ``metrics`` raises ``KeyError`` at the site, before the egress guard would block it."""
    allowed = metric_names(metrics)
    record = {}
    for key, value in values.items():
        name = key.replace("_", "-")
        if name not in allowed:
            raise KeyError(f"{name!r} is not in the wire contract")
        record[name] = value
    return MetricRecord(record)


SECAGG_REPLIES: dict[str, dict[str, type | list[type]]] = {
    Stage.SETUP: {Key.PUBLIC_KEY_1: bytes, Key.PUBLIC_KEY_2: bytes},
    Stage.SHARE_KEYS: {Key.DESTINATION_LIST: [int], Key.CIPHERTEXT_LIST: [bytes]},
    Stage.COLLECT_MASKED_VECTORS: {Key.MASKED_PARAMETERS: [bytes]},
    Stage.UNMASK: {Key.NODE_ID_LIST: [int], Key.SHARE_LIST: [bytes]},
}
"""SecAgg+ stage -> what its reply may carry in Flower's SecAgg+ record. Keys and shares are
random (never derived from site data); only the masked update depends on the site's data."""
LEGACY_HEADER = ("fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status")
"""The records Flower's legacy reply format adds around a masked update."""

SITE_ERROR = 1001
"""A site could not train or evaluate (its data, ledger or configuration)."""
DECLINED = 1002
"""A site's policy refused what the server asked."""
EGRESS_BLOCKED = 1003
"""A site's egress guard blocked a reply."""
REJECTED = 2001
"""The server refused to aggregate a reply."""
NO_REPLY = 2002
"""A site did not answer within the reply timeout."""
FAILURE_KINDS = {DECLINED: "declined", REJECTED: "rejected", NO_REPLY: "no reply"}
"""How ``metrics.json`` names a failure by its code; any other code is "failed"."""


class Reason(StrEnum):
    """Every reason a site may give the server for not sending an update: a fixed vocabulary.

    Each names a class of problem and what the operator can do about it, and carries no data.
    The concrete cause (a file and line, a ledger path, an exception) is logged at the site.
    """

    DATA_UNUSABLE = "site data unusable (see the site's log)"
    LEDGER_UNREADABLE = "privacy ledger unreadable, rolled back or missing; the site stopped"
    SITE_CONFIG_INVALID = "site configuration invalid (see the site's log)"
    INTERNAL = "internal site error (see the site's log)"
    OUT_OF_RANGE = "update outside the secure-aggregation range; not sent"
    MODEL_REFUSED = "declined: privacy model or secure sum weaker than the site's policy"
    BUDGET_EXHAUSTED = "declined: privacy budget exhausted"
    NOISE_REFUSED = "declined: the site's budget allows only noise far above the run's plan"
    NO_DP_REFUSED = "declined: the site's policy requires differential privacy"
    SETTING_REFUSED = "declined: a privacy setting weaker than the site's policy"
    ROUND_REFUSED = "declined: a round beyond the run's planned rounds"
    PLAN_REFUSED = "declined: privacy settings other than the run's earlier rounds were planned for"
    UNIT_REFUSED = "declined: privacy unit differs from the site's"
    EVALUATION_REFUSED = "declined: the site's policy sends no evaluation of its data"
    MODEL_FOLDER_REFUSED = "declined: a model folder the site's policy does not list"
    LABELS_REFUSED = "declined: the run's label set is not the site's taxonomy"
    UNMASK_REFUSED = "declined: a secure-aggregation request that could unmask one site's update"
    PARAMETERS_REFUSED = ("declined: the model sent is not the run's family's, or holds NaN or "
                          "infinity")
    EGRESS_BLOCKED = "blocked by the site's egress guard"


REASON_CODES: dict[Reason, int] = {
    reason: DECLINED if reason.value.startswith("declined") else SITE_ERROR for reason in Reason
} | {Reason.EGRESS_BLOCKED: EGRESS_BLOCKED}
"""The error code each reason goes with; no other (code, reason) pair leaves a site."""


def error_reply(msg: Message, reason: Reason) -> Message:
    """The reply that tells the server only ``reason``."""
    return Message(Error(code=REASON_CODES[reason], reason=reason.value), reply_to=msg)


def is_site_reason(code: int, reason: str) -> bool:
    """Whether (code, reason) is one of the pairs a fedintent site may send."""
    return reason in set(Reason) and REASON_CODES[Reason(reason)] == code
