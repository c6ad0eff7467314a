"""fedintent ClientApp: what runs at a call-center site.

Per round the site reads only its own data folder, checks its privacy budget, records the
round's DP release in its privacy ledger, trains the exchanged part of the model with DP-SGD,
and replies with the model's exchanged parameters and a few numbers (example count, loss,
epsilon, delta). The egress guard checks every reply before it leaves. Conversation text,
labels and features never leave this process. With secure aggregation the same training runs
inside a SecAgg+ round and only the masked update leaves (``secure_aggregation.py``).

Where the site's data, state and budget come from: ``fl_client/site_folders.py``.
"""

import math
from dataclasses import replace
from functools import lru_cache
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fl_client.dp_training import TrainingPlan, evaluate, train_locally
from fl_client.egress_guard import DECLINED, SITE_ERROR, egress_guard
from fl_client.privacy_accounting import DELTA_UNITS_FACTOR, BudgetExhausted, default_delta
from fl_client.privacy_budget import RoundRequest, charge_round
from fl_client.privacy_ledger import LedgerError
from fl_client.privacy_units import check_privacy_unit, group_by_customer
from fl_client.secure_aggregation import secure_aggregation_mod
from fl_client.site_data import SiteData, SiteDataError, load_site
from fl_client.site_folders import site_folders, site_max_epsilon
from fl_client.site_secret import SecretError, private_seed, site_key
from models import get_model_family

app = ClientApp()


@app.train(mods=[egress_guard, secure_aggregation_mod])
def train(msg: Message, context: Context) -> Message:
    cfg = context.run_config
    try:
        site_dir, state_dir = site_folders(msg, context)
        labels = list(msg.content["config"]["labels"])
        site = _load_site_cached(str(site_dir), tuple(labels))
        if len(site.train) == 0:
            raise SiteDataError(f"{site_dir}: no valid training rows; this site cannot train")
        features, targets = _features(site, "train", context, state_dir)
        unit = check_privacy_unit(str(cfg["privacy-unit"]))
    except (SiteDataError, LedgerError, ValueError) as err:
        return Message(Error(code=SITE_ERROR, reason=str(err)), reply_to=msg)

    if unit == "customer":
        features, targets, dropped = group_by_customer(features, targets, site.train.units)
        if dropped:
            log(WARNING, "site %s: %d utterances over the per-customer cap not used", site_dir,
                dropped)

    config = msg.content["config"]
    request = RoundRequest(
        run_name=str(config["run-name"]),
        server_round=int(config["server-round"]),
        num_rounds=int(config["num-rounds"]),
        target_epsilon=float(cfg["target-epsilon"]),
        delta=0.0,
        accountant=str(cfg["accountant"]),
        privacy_unit=unit,
        clip_norm=float(cfg["clip-norm"]),
        batch_size=int(cfg["batch-size"]),
        local_epochs=int(cfg["local-epochs"]),
    )
    metrics: dict[str, float | int] = {
        "num-examples": len(site.train),
        "site-key": site_key(state_dir),
    }
    noise_multiplier = None
    if math.isfinite(request.target_epsilon):
        units = len(targets)
        try:
            request = replace(request, delta=_site_delta(float(cfg["delta"]), units, unit))
            max_epsilon = site_max_epsilon(context)
            charge = charge_round(state_dir, site.fingerprint(), units, request, max_epsilon)
        except BudgetExhausted as err:
            reason = f"declined: {err}"
            log(WARNING, "site %s: %s", site_dir, reason)
            return Message(Error(code=DECLINED, reason=reason), reply_to=msg)
        except (LedgerError, SecretError, ValueError, OSError) as err:
            return Message(Error(code=SITE_ERROR, reason=f"privacy: {err}"), reply_to=msg)
        noise_multiplier = charge.noise_multiplier
        metrics |= {
            "epsilon": charge.epsilon_this_run,
            "epsilon-all-runs": charge.epsilon_all_runs,
            "max-epsilon": max_epsilon,
            "delta": request.delta,
            "noise-multiplier": charge.noise_multiplier,
            "sample-rate": charge.sample_rate,
            "clip-norm": request.clip_norm,
            "privacy-units": units,
        }
    else:
        metrics |= {"epsilon": math.inf, "epsilon-all-runs": math.inf, "delta": 0.0}

    model = _model_from(msg, len(labels), cfg)
    family = get_model_family(str(cfg["model"]))
    plan = TrainingPlan(
        noise_multiplier=noise_multiplier,
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
    except (SiteDataError, ValueError) as err:
        return Message(Error(code=SITE_ERROR, reason=str(err)), reply_to=msg)

    model = _model_from(msg, len(labels), context.run_config)
    loss, accuracy = evaluate(model, features, targets)
    metrics = MetricRecord({"num-examples": len(site.test), "loss": loss, "accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def _site_delta(requested: float, units: int, unit: str) -> float:
    """The run's delta, or (0 = auto) the site's default, refused if too large for the site.

    delta is the probability that the epsilon guarantee fails outright; it must be small next to
    1 / (number of units), or releasing one unit's data verbatim would fit inside it.
    """
    limit = 1.0 / (DELTA_UNITS_FACTOR * units)
    if requested == 0:
        return default_delta(units)
    if requested >= limit:
        raise ValueError(
            f"delta {requested:g} is too large for this site: it has {units} {unit} units, so "
            f"delta must be below 1/({DELTA_UNITS_FACTOR} x {units}) = {limit:.2g}; refusing"
        )
    return requested


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
