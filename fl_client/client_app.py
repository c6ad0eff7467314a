"""fedintent ClientApp: what runs at a call-center site.

Per round, in this order, the site:

1. checks every privacy setting the server asks for against its own policy, its node config
   (``site_policy.py``), before it reads anything;
2. reads only its own data folder, validates and redacts it, leaves out what its retention policy
   and erasures have ended (and purges their derived copies, ``retention.py``), and featurizes
   the redacted text;
3. charges the round to every privacy unit that takes part in its ledger, leaving out units that
   have spent their lifetime budget (``privacy_budget.py``), before training;
4. trains the exchanged part of the model with DP-SGD on exactly those units (``dp_training.py``);
5. replies with the exchanged parameters and a few numbers (example count, epsilon, delta).

An evaluate message gets accuracy, loss and unit count from one Gaussian release of the test
split, charged to the ledger like a round of training (``dp_evaluation.py``); or, as the site's
node config ``evaluation`` says (``site_policy.evaluation_policy``), its exact metrics
(``"exact"``, the simulation's default) or nothing, declined unread (``"off"``). A site with
a ``labels-file`` answers either message only for a run with exactly that label set.

The egress guard checks every reply before it leaves. A failure leaves only as one of the fixed
``Reason`` values; its cause is logged here, at the site. Conversation text, labels and features
never leave this process. With secure aggregation the same training runs inside a SecAgg+ round
and only the masked update leaves (``secure_aggregation.py``). Under distributed DP, step 4 is
``distributed_dp.noisy_integer_sum`` (the site's clipped gradients and its share of the noise, as
integers), and only inside a SecAgg+ round: the site refuses to send its share in the clear.

Where the site's data and state live: ``site_folders.py``.
"""

import hashlib
import threading
from collections import OrderedDict
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from fl_client.deletion_log import check_deletion_log
from fl_client.distributed_dp import dimension, noisy_integer_sum, summable_dimension
from fl_client.dp_evaluation import noisy_scores, unit_contributions
from fl_client.dp_training import evaluate, train_locally, training_plan
from fl_client.egress_guard import PAID_RELEASE, egress_guard
from fl_client.privacy_accounting import BudgetExhausted, UnplannableRun
from fl_client.privacy_budget import Charge, charge_evaluation, charge_training
from fl_client.privacy_ledger import LedgerError
from fl_client.privacy_units import PADDING_LABEL, group_by_customer, split_units
from fl_client.retention import (
    FEATURES,
    RowPolicy,
    prune_features,
    row_policy,
    who_deletes,
)
from fl_client.rows import SiteDataError
from fl_client.secure_aggregation import secure_aggregation_mod
from fl_client.shown import rejection_lines, shown, shown_unknown_label
from fl_client.site_data import SiteData, SiteSplit, load_site, one_row_per_id
from fl_client.site_folders import site_folders, state_lock
from fl_client.site_policy import (
    PolicyRefusal,
    RoundRequest,
    SiteConfigError,
    SitePolicy,
    check_labels,
    check_model,
    check_parameters,
    check_request,
    evaluation_policy,
    evaluation_request,
    is_simulated,
    learning_rate,
    retention_days,
    round_request,
    site_languages,
    site_policy,
)
from fl_client.site_secret import SecretError, private_seed, site_key
from fl_protocol.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_METRICS,
    METRICS_KEY,
    TRAIN_METRICS,
    Reason,
    error_reply,
    language_mask,
    loggable,
    metric_record,
)
from models import ModelFamily, get_model_family

Failures = tuple[tuple[type[Exception] | tuple[type[Exception], ...], Reason], ...]
READ_FAILURES: Failures = (
    (SiteConfigError, Reason.SITE_CONFIG_INVALID),
    ((SecretError, LedgerError), Reason.LEDGER_UNREADABLE),  # checked before the data is read
    ((SiteDataError, ValueError, OSError), Reason.DATA_UNUSABLE),
)
"""Failures before anything is charged, and the fixed reason each is sent as (first match). A
plain ``ValueError`` is data unusable too: the read path raises it for the site's own files
beside ``SiteDataError`` (a local model folder that is no checkpoint,
``models.encoder.check_encoder_folder``), so a bug that raises one is sent as that as well."""
CHARGE_FAILURES: Failures = (
    (BudgetExhausted, Reason.BUDGET_EXHAUSTED),
    (UnplannableRun, Reason.SETTING_REFUSED),
    ((LedgerError, SecretError, OSError), Reason.LEDGER_UNREADABLE),
)
"""Failures while charging the ledger, and their reasons: a ledger that cannot be read or
written stops the site (it never trains on a budget it cannot account for)."""

app = ClientApp()


@app.train(mods=[egress_guard, secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    try:
        policy = site_policy(context)
        request = round_request(msg, context)
        check_request(policy, request)  # before anything is read or computed
        rate = learning_rate(context)
        check_model(context)
        check_labels(context, msg)
        check_parameters(msg)
        family = _model_family(context)
        model = _model_from(msg, family)
        if request.distributed and RECORD_KEY_CONFIGS not in msg.content.config_records:
            raise PolicyRefusal(Reason.MODEL_REFUSED, "distributed DP asked outside a secure "
                                "sum: the site's noise share alone would leave the site")
        site_dir, state_dir, rows, features, targets = _read_split(msg, context, "train", family)
        languages = site_languages(context, site_dir)
        first = _one_row_per_utterance(rows, site_dir)
        if request.privacy_unit == "customer":
            _check_customers(site_dir, [rows.customers[index] for index in first], "training")
    except Exception as err:
        return _refuse(msg, err, READ_FAILURES)

    features, targets = features[first], targets[first]
    row_units = split_units(request.privacy_unit, rows)
    units = [row_units[index] for index in first]
    if request.privacy_unit == "customer":
        features, targets, units, dropped = group_by_customer(features, targets, units)
        if dropped:
            log(WARNING, "site %s: %d utterances over the per-customer cap not used", site_dir,
                dropped)

    try:
        size = summable_dimension(model) if request.distributed else dimension(model)
        charge = charge_training(state_dir, units, rows, request, policy, size,
                                 fresh_nonce=not is_simulated(context))
    except Exception as err:
        return _refuse(msg, err, CHARGE_FAILURES)
    _note_paid_release(context, charge)
    if len(charge.trained) < len(units):
        log(WARNING, "site %s: %d of %d %s units have spent their budget and sit this round out",
            site_dir, len(units) - len(charge.trained), len(units), request.privacy_unit)
    features, targets = features[charge.trained], targets[charge.trained]
    privacy = {
        "max_epsilon": policy.max_epsilon,
        "noise_multiplier": charge.noise_multiplier,
        "sample_rate": charge.sample_rate,
        "clip_norm": request.clip_norm,
        "privacy_units": len(charge.trained),
        "delta_all_runs": charge.delta_all_runs,
    } if request.private else {}

    # never the same for two releases (``Charge.release_number``, ``nonce``), never known to
    # the server
    seed = private_seed(state_dir, request.run_name, request.server_round,
                        charge.release_number, charge.nonce)
    if request.distributed:
        update = noisy_integer_sum(model, features, targets, request.clip_norm,
                                   charge.skellam_mu_share, seed, family.passes)
        arrays, steps_taken = ArrayRecord({k: Array(v) for k, v in update.items()}), 1
    else:
        steps_taken = _train(model, features, targets, request, charge, family, rate, seed)
        arrays = ArrayRecord(model.state_dict())
    metrics = metric_record(
        TRAIN_METRICS,
        site_key=site_key(state_dir),
        num_examples=int((targets != PADDING_LABEL).sum()),
        steps=steps_taken,
        epsilon=charge.epsilon_this_run,
        epsilon_all_runs=charge.epsilon_all_runs,
        epsilon_alone=charge.epsilon_alone_this_run,
        epsilon_alone_all_runs=charge.epsilon_alone_all_runs,
        delta=charge.delta_this_run if request.private else 0.0,
        **privacy,
        **({"languages": language_mask(languages)} if languages else {}),
    )
    reply = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: metrics})
    return Message(content=reply, reply_to=msg)


def _train(model: torch.nn.Module, features: torch.Tensor, targets: torch.Tensor,
           request: RoundRequest, charge: Charge, family: ModelFamily, rate: float,
           seed: int) -> int:
    """Local DP-SGD (or plain SGD) on exactly the units and release charged; the optimizer
    steps taken. Its training loss stays here: an exact statistic of the training rows under a
    model the server chose, which no DP covers (``wire.TRAIN_METRICS``)."""
    plan = training_plan(
        family,
        noise_multiplier=charge.noise_multiplier if request.private else None,
        charged=(charge.sample_rate, charge.steps),
        clip_norm=request.clip_norm,
        batch_size=request.batch_size,
        local_epochs=request.local_epochs,
        learning_rate=rate,
    )
    _, steps = train_locally(model, features, targets, plan, seed=seed)
    return steps


@app.evaluate(mods=[egress_guard])
def evaluate_on_site(msg: Message, context: Context) -> Message:
    try:
        evaluation = evaluation_policy(context)
        if evaluation == "off":
            raise PolicyRefusal(Reason.EVALUATION_REFUSED, "the site's evaluation policy is off")
        check_model(context)
        check_labels(context, msg)
        check_parameters(msg)
        family = _model_family(context)
        model = _model_from(msg, family)
        if evaluation == "dp":  # before anything is read, as for training
            policy = site_policy(context)
            request = evaluation_request(msg, context, policy)
        site_dir, state_dir, rows, features, targets = _read_split(msg, context, "test", family)
        if evaluation == "dp" and request.privacy_unit == "customer":
            _check_customers(site_dir, rows.customers, "test")
    except Exception as err:
        return _refuse(msg, err, READ_FAILURES)

    if evaluation == "dp":
        return _evaluate_with_dp(msg, context, state_dir, policy, request, family, model, rows,
                                 features, targets)
    scores = evaluate(model, features, targets)
    metrics = metric_record(EVALUATE_METRICS, num_examples=len(rows), loss=scores.loss,
                            accuracy=scores.accuracy, macro_f1=scores.macro_f1)
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


def _evaluate_with_dp(msg: Message, context: Context, state_dir: Path, policy: SitePolicy,
                      request: RoundRequest, family: ModelFamily, model: torch.nn.Module,
                      rows: SiteSplit, features: torch.Tensor, targets: torch.Tensor) -> Message:
    """The test split's scores as one Gaussian release (``dp_evaluation.py``), charged before
    anything is computed from the rows, over the units the lifetime filter lets take part.

    Which test units are there never decides whether the site answers: its delta is the site's
    own (``charge_evaluation``), and when every unit is at its budget the same release is made
    over no unit, noise alone, charging nobody; a decline would tell the server, outside DP,
    when a new test unit arrived. Two facts about the split do decide it, as for training: a
    split with no row at all for the run's labels is declined (with a ``labels-file``, the one
    fact that the site has no test rows), and under the customer unit so is one where no row
    names a customer (``_check_customers``): the first such row to arrive turns the decline
    into an answer."""
    units = split_units(request.privacy_unit, rows)
    distinct = list(dict.fromkeys(units))
    try:  # one release of the whole split: sample rate 1, one step
        charge = charge_evaluation(state_dir, distinct, rows, request, policy,
                                   fresh_nonce=not is_simulated(context))
    except Exception as err:
        return _refuse(msg, err, CHARGE_FAILURES)
    _note_paid_release(context, charge)
    kept = {distinct[index] for index in charge.trained}
    in_release = [row for row, unit in enumerate(units) if unit in kept]
    contributions = unit_contributions(model, features[in_release], targets[in_release],
                                       [units[row] for row in in_release], family.passes)
    seed = private_seed(state_dir, request.run_name, request.server_round,
                        charge.release_number, charge.nonce)
    scores = noisy_scores(contributions, charge.noise_multiplier, seed)
    metrics = metric_record(EVALUATE_METRICS, num_examples=scores.units, loss=scores.loss,
                            accuracy=scores.accuracy, epsilon=charge.epsilon_this_run)
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


def _note_paid_release(context: Context, charge: Charge) -> None:
    """Tell the egress guard which ledger release this reply paid for (``PAID_RELEASE``): its
    egress-log entry records it, so a ledger restored without it is found out."""
    context.state.config_records[PAID_RELEASE] = ConfigRecord(
        {"number": charge.release_number, "nonce": charge.nonce})


def _refuse(msg: Message, cause: Exception, failures: Failures) -> Message:
    """Log the cause here, at the site; send the server only its fixed reason (a
    ``PolicyRefusal`` carries its own). A cause outside ``failures`` is raised again: the egress
    guard logs it and sends ``Reason.INTERNAL``."""
    reason = cause.reason if isinstance(cause, PolicyRefusal) else next(
        (reason for kinds, reason in failures if isinstance(cause, kinds)), None)
    if reason is None:
        raise cause
    log(WARNING, "site not %s: %s (%s)", _declined(msg), reason.value, loggable(str(cause)))
    return error_reply(msg, reason)


def _declined(msg: Message) -> str:
    """What the site declines, for its log: training, or evaluating (a message type is
    ``train`` or ``evaluate``, or either with ``.<action>`` after it)."""
    category = msg.metadata.message_type.partition(".")[0]
    return "training" if category == MessageType.TRAIN else "evaluating"


def _check_customers(site_dir: Path, customers: list[str | None], split: str) -> None:
    """Under the customer unit, a row without a ``customer_id`` is a unit of its own, and its
    customer is protected per utterance only: warn with their count, and refuse a split where
    no row has one (most likely a column the loader does not read, ``customer`` for
    ``customer_id``), since the site cannot give the customer-level protection it was asked
    for. Like a split without rows, that refusal tells the server one fact about the data
    outside DP: that none of its rows names a customer."""
    missing = customers.count(None)
    if missing == len(customers):
        raise SiteDataError(f"{site_dir}: none of the {missing} {split} rows has a customer_id "
                            "and the privacy unit is customer, so each would be a unit of its "
                            "own; a customer column under another name is not read "
                            "(fedintent check-data names it; docs/DATA_FORMAT.md)")
    if missing:
        log(WARNING, "site %s: %d of the %d %s rows have no customer_id: under privacy-unit "
            "customer each is a unit of its own, its customer protected per utterance only "
            "(docs/DATA_FORMAT.md)", site_dir, missing, len(customers), split)


SHOWN_DUPLICATES = 5
"""How many rows with a duplicated id a round's log line names (``check-data`` names all)."""


def _one_row_per_utterance(rows: SiteSplit, site_dir: Path) -> list[int]:
    """The index of the first row of each utterance identity (``site_data.one_row_per_id``),
    logging the others as ``file:line``, so that the site can find and fix them."""
    first, duplicates = one_row_per_id(rows)
    for row in duplicates[:SHOWN_DUPLICATES]:
        log(WARNING, "site data %s: skipped %s", site_dir, row)
    if len(duplicates) > SHOWN_DUPLICATES:
        log(WARNING, "site data %s: skipped %d more rows with a duplicated id (fedintent "
            "check-data names them all)", site_dir, len(duplicates) - SHOWN_DUPLICATES)
    return first


def _data_digest(site_dir: Path) -> str:
    """A digest of the site's data files (``*.jsonl``, ``*.csv``): new or changed conversations
    are read again, unchanged ones come from the cache. A file that cannot be read counts by its
    name only; the loader reports it and goes on with the others."""
    digest = hashlib.sha256()
    if site_dir.is_dir():
        for path in sorted(p for p in site_dir.iterdir()
                           if p.suffix in (".jsonl", ".csv") and p.is_file()):
            digest.update(f"{path.name}\0".encode())
            try:
                with open(path, "rb") as data:
                    digest.update(hashlib.file_digest(data, "sha256").digest())
            except OSError as err:
                digest.update(f"unreadable: {err.errno}\0".encode())
    return digest.hexdigest()


_LOADED: OrderedDict[str, tuple[tuple, SiteData]] = OrderedDict()
"""The newest load of each of the last ``_LOADED_SITES`` sites this process served, by site
folder: (what it was loaded under, the rows)."""
_LOADED_SITES = 4
_LOADED_LOCK = threading.Lock()


def _load_site_cached(site_dir: str, labels: tuple[str, ...], data_digest: str,
                      policy: RowPolicy) -> SiteData:
    """Load once per version of the data and of the retention policy (its hourly cut-off, its
    erasures). Only a site's newest load is kept: an older one, which may hold the text of rows
    since erased or expired, is dropped the moment another replaces it (found in review: a
    cache of the last four loads kept an erased customer's text in memory)."""
    version = (labels, data_digest, policy)
    with _LOADED_LOCK:
        held = _LOADED.pop(site_dir, None)
    if held is None or held[0] != version:
        del held  # never two versions of one site's rows alive at once
        held = (version, _load_site_logged(site_dir, labels, policy))
    with _LOADED_LOCK:
        _LOADED[site_dir] = held
        while len(_LOADED) > _LOADED_SITES:
            _LOADED.popitem(last=False)
    return held[1]


def _load_site_logged(site_dir: str, labels: tuple[str, ...], policy: RowPolicy) -> SiteData:
    """The site's rows; problems are logged here, at the site, never sent."""
    site = load_site(Path(site_dir), labels, keep=policy)
    for line in rejection_lines(site.rejected):
        log(WARNING, "site data %s: skipped %s", site_dir, line)
    for label, count in site.unknown_labels.items():
        log(WARNING, "site data %s: skipped %d rows with unknown label %s", site_dir, count,
            shown_unknown_label(label, labels))
    for reason, count in site.excluded.items():
        log(WARNING, "site data %s: %d rows not used (%s; the site's retention policy)",
            site_dir, count, reason)
    return site


def _read_split(
    msg: Message, context: Context, split: str, family: ModelFamily
) -> tuple[Path, Path, SiteSplit, torch.Tensor, torch.Tensor]:
    """(site folder, state folder, rows, features, labels) of this site's ``split``: read,
    validated and redacted (``load_site``), without the rows the site's retention policy and
    erasures leave out, then featurized; a split without rows is an error. Before a training
    round, the feature store is pruned to the rows the policy keeps (``retention.py``). A
    deletion log older than the ledger recorded stops the site before any row is read."""
    site_dir, state_dir = site_folders(msg, context)
    labels = tuple(msg.content[CONFIG_KEY]["labels"])
    days = retention_days(context)
    with state_lock(state_dir):
        check_deletion_log(state_dir)
        policy = row_policy(state_dir, days)
        site = _load_site_cached(str(site_dir), labels, _data_digest(site_dir), policy)
        if split == "train":
            # every row the policy keeps, whatever the run's labels: the server's label set
            # must not decide what the site's store deletes
            prune_features(state_dir,
                           site.train.texts + site.test.texts + site.other_label_texts,
                           site.excluded,
                           who_deletes(f"fedintent ClientApp, before round "
                                       f"{shown(msg.content[CONFIG_KEY]['server-round'])} of "
                                       f"run {shown(msg.content[CONFIG_KEY]['run-name'])}"),
                           days)
        rows = getattr(site, split)
        if len(rows) == 0:
            use = {"train": "training rows; this site cannot train",
                   "test": "test rows; this site cannot evaluate"}[split]
            raise SiteDataError(f"{site_dir}: no valid {use}")
        features = family.featurize(rows.texts, state_dir / FEATURES)
    return site_dir, state_dir, rows, features, torch.tensor(rows.labels, dtype=torch.long)


def _model_family(context: Context) -> ModelFamily:
    """The run's model family, resolved once per message (``site_policy.check_model`` has
    allowed it): every step of the message uses this one."""
    return get_model_family(str(context.run_config["model"]))


def _model_from(msg: Message, family: ModelFamily) -> torch.nn.Module:
    """The model the server sent, in this run's model family; refused before any row is read
    when its parameters are not the family's (found in review: other names or shapes were an
    internal error, after the data was read), dtype included: loading casts, and a float64
    1e300, finite where ``check_parameters`` looked, became infinity in float32 (found in
    review: the site read, charged and trained, and its egress guard blocked the reply)."""
    num_labels = len(msg.content[CONFIG_KEY]["labels"])
    model = family.build_model(num_labels)
    own = model.state_dict()
    try:
        sent = msg.content[ARRAYS_KEY].to_torch_state_dict()
        for name, value in sent.items():
            if name in own and value.dtype != own[name].dtype:
                raise PolicyRefusal(Reason.PARAMETERS_REFUSED, f"the model's {name!r} is "
                                    f"{value.dtype}, not the family's {own[name].dtype}")
        model.load_state_dict(sent)
    except (RuntimeError, ValueError, TypeError, KeyError) as err:
        raise PolicyRefusal(Reason.PARAMETERS_REFUSED, "the model's parameters are not the "
                            f"family's (other names or shapes): {err}") from err
    return model
