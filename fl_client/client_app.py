"""fedintent ClientApp: what runs at a call-center site.

Per round the site reads only its own data folder, trains the exchanged part of the model with
DP-SGD, charges the privacy ledger *before* replying, and replies with the model's exchanged
parameters and a few numbers (example count, loss, epsilon, delta). Conversation text, labels
and features never leave this process.

Where the site's data lives:

* deployment: node config ``data-path`` (the site's folder) and ``state-dir`` (ledger, caches);
* simulation: node config ``partition-id`` picks one site folder of the run's data folder.
"""

import math
from functools import lru_cache
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log

from fl_client.dp_training import TrainingPlan, evaluate, train_locally
from fl_client.privacy_accounting import epsilon_spent, plan_noise_multiplier, steps_per_round
from fl_client.privacy_ledger import (
    LedgerEntry,
    LedgerError,
    append_entry,
    ledger_path,
    now,
)
from fl_client.site_data import SiteData, SiteDataError, list_site_dirs, load_site
from models import get_model_family

PRIVACY_UNIT = "utterance"
SITE_ERROR = 1001

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    try:
        site_dir, state_dir = _site_folders(msg, context)
        labels = list(msg.content["config"]["labels"])
        site = _load_site_cached(str(site_dir), tuple(labels))
        if len(site.train) == 0:
            raise SiteDataError(f"{site_dir}: no valid training rows; this site cannot train")
        features, targets = _features(site, "train", context, state_dir)
    except (SiteDataError, LedgerError, ValueError) as err:
        return Message(Error(code=SITE_ERROR, reason=str(err)), reply_to=msg)

    cfg = context.run_config
    server_round = int(msg.content["config"]["server-round"])
    run_name = str(msg.content["config"]["run-name"])
    num_rounds = int(msg.content["config"]["num-rounds"])
    target_epsilon = float(cfg["target-epsilon"])
    delta = float(cfg["delta"])
    accountant = str(cfg["accountant"])
    batch_size, local_epochs = int(cfg["batch-size"]), int(cfg["local-epochs"])
    private = math.isfinite(target_epsilon)

    metrics: dict[str, float | int] = {"num-examples": len(site.train)}
    noise_multiplier = None
    if private:
        sample_rate, steps = steps_per_round(len(site.train), batch_size, local_epochs)
        noise_multiplier = _planned_noise(
            target_epsilon, delta, sample_rate, steps * num_rounds, accountant
        )
        entry = LedgerEntry(
            run=run_name,
            server_round=server_round,
            noise_multiplier=noise_multiplier,
            sample_rate=sample_rate,
            steps=steps,
            clip_norm=float(cfg["clip-norm"]),
            delta=delta,
            accountant=accountant,
            privacy_unit=PRIVACY_UNIT,
            time=now(),
        )
        fingerprint = site.fingerprint()
        try:
            history = append_entry(ledger_path(state_dir, fingerprint), fingerprint, entry)
        except (LedgerError, OSError) as err:
            return Message(Error(code=SITE_ERROR, reason=f"privacy ledger: {err}"), reply_to=msg)
        this_run = [e.release for e in history if e.run == run_name]
        metrics |= {
            "epsilon": epsilon_spent(this_run, delta, accountant),
            "epsilon-all-runs": epsilon_spent([e.release for e in history], delta, accountant),
            "delta": delta,
            "noise-multiplier": noise_multiplier,
            "sample-rate": sample_rate,
            "clip-norm": float(cfg["clip-norm"]),
        }
    else:
        metrics |= {"epsilon": math.inf, "epsilon-all-runs": math.inf, "delta": 0.0}

    model = _model_from(msg, len(labels), cfg)
    plan = TrainingPlan(
        noise_multiplier=noise_multiplier,
        clip_norm=float(cfg["clip-norm"]),
        batch_size=batch_size,
        local_epochs=local_epochs,
        learning_rate=float(cfg["learning-rate"]),
    )
    seed = int(cfg["seed"]) * 1_000_003 + server_round * 1009 + context.node_id % 1009
    loss, steps_taken = train_locally(model, features, targets, plan, seed=seed)
    metrics |= {"train-loss": loss, "steps": steps_taken}

    reply = RecordDict(
        {"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord(metrics)}
    )
    return Message(content=reply, reply_to=msg)


@app.evaluate()
def evaluate_on_site(msg: Message, context: Context) -> Message:
    try:
        site_dir, state_dir = _site_folders(msg, context)
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


def _site_folders(msg: Message, context: Context) -> tuple[Path, Path]:
    """(site data folder, site state folder) from node config, or the simulated partition."""
    node = context.node_config
    if "data-path" in node:
        site_dir = Path(str(node["data-path"]))
        state_dir = Path(str(node.get("state-dir", site_dir / ".fedintent-state")))
        return site_dir, state_dir
    if "partition-id" not in node:
        raise SiteDataError("node config has neither 'data-path' (deployment) nor 'partition-id'")
    data_dir = Path(str(msg.content["config"]["sim-data-dir"]))
    sites = list_site_dirs(data_dir)
    partition = int(node["partition-id"])
    if partition >= len(sites):
        raise SiteDataError(
            f"simulated site {partition} has no folder: {data_dir} holds {len(sites)} sites"
        )
    site_dir = sites[partition]
    state_root = str(context.run_config.get("state-dir", "")) or str(data_dir / ".fedintent-state")
    return site_dir, Path(state_root) / site_dir.name


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


@lru_cache(maxsize=8)
def _planned_noise(
    target_epsilon: float, delta: float, sample_rate: float, total_steps: int, accountant: str
) -> float:
    """The run's noise multiplier, planned once so the run's total epsilon meets the target."""
    return plan_noise_multiplier(target_epsilon, delta, sample_rate, total_steps, accountant)
