"""fedintent ClientApp: what runs at a call-center site.

Per round, in this order, the site:

1. checks every privacy setting the server asks for against its own policy, its node config
   (``site_policy.py``), before it reads anything;
2. reads only its own data folder, validates and redacts it, and featurizes the redacted text;
3. charges the round to every privacy unit that takes part in its ledger, leaving out units that
   have spent their lifetime budget (``privacy_budget.py``), before training;
4. trains the exchanged part of the model with DP-SGD on exactly those units (``dp_training.py``);
5. replies with the exchanged parameters and a few numbers (example count, loss, epsilon, delta).

The egress guard checks every reply before it leaves. A failure leaves only as one of the fixed
``Reason`` values; its cause is logged here, at the site. Conversation text, labels and features
never leave this process. With secure aggregation the same training runs inside a SecAgg+ round
and only the masked update leaves (``secure_aggregation.py``).

Where the site's data and state live: ``site_folders.py``.
"""

from dataclasses import replace
from functools import lru_cache
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fl_client.dp_training import TrainingPlan, evaluate, train_locally
from fl_client.egress_guard import Reason, egress_guard, error_reply
from fl_client.privacy_accounting import BudgetExhausted
from fl_client.privacy_budget import charge_round
from fl_client.privacy_ledger import LedgerError
from fl_client.privacy_units import PADDING_LABEL, group_by_customer
from fl_client.secure_aggregation import secure_aggregation_mod
from fl_client.site_data import SiteData, SiteDataError, load_site
from fl_client.site_folders import site_folders
from fl_client.site_policy import (
    PolicyRefusal,
    SiteConfigError,
    check_request,
    round_request,
    site_delta,
    site_policy,
)
from fl_client.site_secret import SecretError, private_seed, site_key
from models import get_model_family

app = ClientApp()


@app.train(mods=[egress_guard, secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    try:
        policy = site_policy(context)
        request = round_request(msg, context)
        check_request(policy, request)  # before anything is read or computed
        site_dir, state_dir = site_folders(msg, context)
        labels = list(msg.content["config"]["labels"])
        site = _load_site_cached(str(site_dir), tuple(labels))
        if len(site.train) == 0:
            raise SiteDataError(f"{site_dir}: no valid training rows; this site cannot train")
        features, targets = _features(site, "train", context, state_dir)
    except PolicyRefusal as refusal:
        return _refuse(msg, refusal.reason, refusal)
    except SiteConfigError as err:
        return _refuse(msg, Reason.SITE_CONFIG_INVALID, err)
    except (SiteDataError, ValueError, OSError) as err:
        return _refuse(msg, Reason.DATA_UNUSABLE, err)

    if request.privacy_unit == "customer":
        features, targets, units, dropped = group_by_customer(features, targets,
                                                              site.train.units)
        if dropped:
            log(WARNING, "site %s: %d utterances over the per-customer cap not used", site_dir,
                dropped)
    else:
        features, targets, units = _one_row_per_utterance(features, targets, site.train.ids)

    metrics: dict[str, float | int] = {"site-key": site_key(state_dir)}
    try:
        request = replace(request, delta=site_delta(policy, request, len(units)))
        charge = charge_round(state_dir, units, request, policy)
    except PolicyRefusal as refusal:
        return _refuse(msg, refusal.reason, refusal)
    except BudgetExhausted as err:
        return _refuse(msg, Reason.BUDGET_EXHAUSTED, err)
    except (LedgerError, SecretError, OSError) as err:
        return _refuse(msg, Reason.LEDGER_UNREADABLE, err)
    if len(charge.trained) < len(units):
        log(WARNING, "site %s: %d of %d %s units have spent their budget and sit this round out",
            site_dir, len(units) - len(charge.trained), len(units), request.privacy_unit)
    features, targets = features[charge.trained], targets[charge.trained]
    metrics |= {
        "num-examples": int((targets != PADDING_LABEL).sum()),
        "epsilon": charge.epsilon_this_run,
        "epsilon-all-runs": charge.epsilon_all_runs,
        "delta": request.delta if request.private else 0.0,
    }
    if request.private:
        metrics |= {
            "max-epsilon": policy.max_epsilon,
            "noise-multiplier": charge.noise_multiplier,
            "sample-rate": charge.sample_rate,
            "clip-norm": request.clip_norm,
            "privacy-units": len(charge.trained),
        }

    model = _model_from(msg, len(labels), cfg)
    family = get_model_family(str(cfg["model"]))
    plan = TrainingPlan(
        noise_multiplier=charge.noise_multiplier if request.private else None,
        clip_norm=request.clip_norm,
        batch_size=request.batch_size,
        local_epochs=request.local_epochs,
        learning_rate=float(cfg["learning-rate"]),
        grad_sample_mode=family.grad_sample_mode,
        physical_batch_size=family.physical_batch_size,
    )
    seed = private_seed(state_dir, request.run_name, request.server_round)
    loss, steps_taken = train_locally(model, features, targets, plan, seed=seed)
    metrics |= {"train-loss": loss, "steps": steps_taken}

    reply = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=reply, reply_to=msg)


@app.evaluate(mods=[egress_guard])
def evaluate_on_site(msg: Message, context: Context) -> Message:
    try:
        site_dir, state_dir = site_folders(msg, context)
        labels = list(msg.content["config"]["labels"])
        site = _load_site_cached(str(site_dir), tuple(labels))
        if len(site.test) == 0:
            raise SiteDataError(f"{site_dir}: no valid test rows; this site cannot evaluate")
        features, targets = _features(site, "test", context, state_dir)
    except (SiteDataError, ValueError, OSError) as err:
        return _refuse(msg, Reason.DATA_UNUSABLE, err)

    model = _model_from(msg, len(labels), context.run_config)
    loss, accuracy = evaluate(model, features, targets)
    metrics = MetricRecord({"num-examples": len(site.test), "loss": loss, "accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def _refuse(msg: Message, reason: Reason, cause: Exception) -> Message:
    """Log the cause here, at the site; send the server only the fixed ``reason``."""
    log(WARNING, "site not training: %s (%s)", reason.value, cause)
    return error_reply(msg, reason)


def _one_row_per_utterance(
    features: torch.Tensor, targets: torch.Tensor, ids: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """One row per utterance identity: a duplicated row would be one unit counted twice, with
    twice the influence its clipping allows."""
    first: dict[str, int] = {}
    for index, uid in enumerate(ids):
        first.setdefault(uid, index)
    if len(first) < len(ids):
        log(WARNING, "site data: %d duplicated utterances (same id) used once",
            len(ids) - len(first))
    keep = list(first.values())
    return features[keep], targets[keep], list(first)


@lru_cache(maxsize=4)
def _load_site_cached(site_dir: str, labels: tuple[str, ...]) -> SiteData:
    """Load once per process; problems are logged here, at the site, never sent."""
    site = load_site(Path(site_dir), labels)
    for row in site.rejected:
        log(WARNING, "site data %s: skipped %s", site_dir, row)
    for label, count in site.unknown_labels.items():
        log(WARNING, "site data %s: skipped %d rows with unknown label %r", site_dir, count, label)
    return site


def _features(
    site: SiteData, split: str, context: Context, state_dir: Path
) -> tuple[torch.Tensor, torch.Tensor]:
    family = get_model_family(str(context.run_config["model"]))
    part = getattr(site, split)
    features = family.featurize(part.texts, state_dir / "features")
    return features, torch.tensor(part.labels, dtype=torch.long)


def _model_from(msg: Message, num_labels: int, cfg) -> torch.nn.Module:
    model = get_model_family(str(cfg["model"])).build_model(num_labels)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return model
