"""The membership game: audit examples in and out at random, a target model and shadow models.

One *model* of the game is one complete federated training run, done exactly as the sites do
it (``fedintent.inprocess.train_fedavg``: every site's own ``train_locally``, DP-SGD with the
noise a fresh site plans for the run's epsilon and delta, under a lifetime budget that does not
set it, then example-weighted FedAvg), starting from the model family's label-name prior.
Before a model is trained, every audit example is put into its site's training data with
probability 1/2, independently of everything else: the *membership* of that model.

Audit examples are held-out utterances (the dataset's test rows, never part of any site's
training data otherwise), each belonging to the site whose test split it came from:

* canaries: given a random wrong label, the worst case for memorisation (nothing else in the
  data teaches the model that label for that text);
* natural: with their true label, what membership of an ordinary utterance looks like.

Model 0 is the *target* (the model the one-run bound audits); models 1..S are the attacker's
shadow models, trained the same way with their own random membership.

The game after an erasure (``Game.after_erasure``, ``benchmarks/forget_mia.py``): every model is
retrained, as the next run at the sites would be, on the same data without its *forgotten*
audit examples (``forgotten``: a random half of its members), with fresh training noise.
"""

import math
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from fedintent.audit.attacks import confidence_scores
from fedintent.inprocess import train_fedavg
from fl_client.dp_training import TrainingPlan, training_plan
from fl_client.privacy_accounting import (
    default_delta,
    epsilon_spent,
    fresh_site_noise,
    steps_per_round,
)
from fl_protocol.durable_files import write_bytes_atomic
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from models.family import ModelFamily, concat_features, get_model_family

CANARY = "canary"
NATURAL = "natural"
ACCOUNTANT = str(RUN_CONFIG_DEFAULTS["accountant"])

Site = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class AuditSet:
    """The audit examples: features, the label they are trained with, their site, their kind."""

    features: torch.Tensor
    labels: torch.Tensor
    site: np.ndarray
    kind: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Game:
    """Everything needed to train any model of the game (picklable for worker processes)."""

    sites: list[Site]
    audit: AuditSet
    holdout: Site
    """Test rows that are not audit examples: the utility of each model."""
    initial_state: dict[str, torch.Tensor]
    build_model: Callable[[], torch.nn.Module]
    seed: int
    model: str = str(RUN_CONFIG_DEFAULTS["model"])
    """The model family: how its training clips and batches (``training_plan``)."""
    after_erasure: bool = False
    """Train each model as its retrain after an erasure: without its ``forgotten`` examples,
    with a training seed of its own (the next run draws fresh noise)."""


def make_audit_set(test_sites: list[Site], num_labels: int, canaries: int, natural: int,
                   seed: int) -> tuple[AuditSet, Site]:
    """Draw the audit examples from the sites' test rows; return them and the unused rows."""
    features = concat_features([x for x, _ in test_sites])
    labels = torch.cat([y for _, y in test_sites])
    site = np.concatenate([np.full(len(y), k) for k, (_, y) in enumerate(test_sites)])
    if canaries + natural > len(labels):
        raise ValueError(f"{canaries} canaries + {natural} natural audit examples need that many "
                         f"test rows; the data has {len(labels)}")
    if canaries < 2 and natural < 2:
        raise ValueError("the audit needs at least 2 canaries or 2 natural examples")
    rng = np.random.default_rng([seed, 1])
    order = rng.permutation(len(labels))
    chosen, unused = order[: canaries + natural], order[canaries + natural:]
    trained_labels = labels[chosen].clone()
    # A canary's label: uniformly one of the other labels.
    shift = torch.from_numpy(rng.integers(1, num_labels, size=canaries))
    trained_labels[:canaries] = (trained_labels[:canaries] + shift) % num_labels
    kind = np.array([CANARY] * canaries + [NATURAL] * natural)
    audit = AuditSet(features[chosen], trained_labels, site[chosen], kind)
    return audit, (features[unused], labels[unused])


def membership(seed: int, model_index: int, size: int) -> np.ndarray:
    """Which audit examples model ``model_index`` trains on: each with probability 1/2."""
    return np.random.default_rng([seed, 2, model_index]).random(size) < 0.5


RETRAIN_SEED = 1 << 30
"""Added to a model's training seed when it is retrained after an erasure."""


def forgotten(seed: int, model_index: int, member: np.ndarray) -> np.ndarray:
    """Which of model ``model_index``'s members an erasure removes: each with probability 1/2.

    Only half, so that the retrain still trains on the other half: an attack that finds those
    in the retrain shows it can still see membership there.
    """
    return member & (np.random.default_rng([seed, 3, model_index]).random(len(member)) < 0.5)


def site_plans(sizes: list[int], epsilon: float, settings: dict,
               family: ModelFamily) -> tuple[list[TrainingPlan], list[dict]]:
    """Each site's training plan and privacy: the noise a fresh site plans for this run (its
    default delta, the lifetime budget ``settings["site-max-epsilon"]``, the run's epsilon over
    all rounds) and the epsilon its accountant reports after the last round. The audit's
    ``settings_for`` sets a budget that does not bind (bench's ``cell_lifetime_budget``): under
    the default budget of 8, every epsilon from about 8 up was planned as 7.44, and an audit
    labelled 16 or 32 audited that (found in review)."""
    rounds, epochs = int(settings["num-rounds"]), int(settings["local-epochs"])
    batch = int(settings["batch-size"])
    plans, privacy = [], []
    for units in sizes:
        noise, info = None, {"epsilon": math.inf, "delta": default_delta(units)}
        if math.isfinite(epsilon):
            rate, steps = steps_per_round(units, batch, epochs)
            noise = fresh_site_noise(epsilon, info["delta"], rate, steps * rounds, ACCOUNTANT,
                                     float(settings["site-max-epsilon"]), info["delta"])
            spent = epsilon_spent([(noise, rate, steps * rounds)], info["delta"], ACCOUNTANT)
            info = {"epsilon": spent,
                    "delta": info["delta"], "noise_multiplier": noise, "sample_rate": rate}
        plans.append(training_plan(family, noise, steps_per_round(units, batch, epochs),
                                   clip_norm=float(settings["clip-norm"]), batch_size=batch,
                                   local_epochs=epochs,
                                   learning_rate=float(settings["learning-rate"])))
        privacy.append(info)
    return plans, privacy


def train_model(game: Game, model_index: int, epsilon: float, settings: dict) -> dict:
    """Train model ``model_index`` of the game at ``epsilon``; return its scores on the audit
    examples, its membership (what it trained on), its held-out accuracy and its sites'
    privacy."""
    member = membership(game.seed, model_index, len(game.audit))
    seed = game.seed * 1_000 + model_index
    if game.after_erasure:
        member = member & ~forgotten(game.seed, model_index, member)
        seed += RETRAIN_SEED
    sites = []
    for k, (features, labels) in enumerate(game.sites):
        rows = np.flatnonzero(member & (game.audit.site == k))
        sites.append((concat_features([features, game.audit.features[rows]]),
                      torch.cat([labels, game.audit.labels[rows]])))
    plans, privacy = site_plans([len(y) for _, y in sites], epsilon, settings,
                                get_model_family(game.model))
    model = game.build_model()
    model.load_state_dict(game.initial_state)
    train_fedavg(model, game.build_model, sites, plans, int(settings["num-rounds"]), seed)
    model.eval()
    with torch.no_grad():
        phi, loss = confidence_scores(model(game.audit.features), game.audit.labels)
        holdout_x, holdout_y = game.holdout
        accuracy = (model(holdout_x).argmax(1) == holdout_y).float().mean().item() \
            if len(holdout_y) else math.nan
    audited = [privacy[k] for k in sorted(set(game.audit.site.tolist()))]
    return {"phi": phi, "loss": loss, "member": member, "accuracy": accuracy,
            **audited_privacy(audited)}


def audited_privacy(audited: list[dict]) -> dict:
    """The privacy of the sites holding audit examples: the largest epsilon and delta (the
    weakest guarantee, which the bound must not exceed) and the (smallest, largest) noise
    multiplier among them (None without DP). A range, not one site's: sites of other sizes plan
    other noise (their delta, or their sample rate below full batch)."""
    noise = [site["noise_multiplier"] for site in audited if "noise_multiplier" in site]
    return {"epsilon": max(site["epsilon"] for site in audited),
            "delta": max(site["delta"] for site in audited),
            "noise_multiplier": (min(noise), max(noise)) if noise else None}


def run_models(game: Game, epsilon: float, settings: dict, models: int, store: Path,
               workers: int = 1, progress: Callable[[str], None] = print) -> list[dict]:
    """Train (or load from ``store``) models 0..models-1 at ``epsilon``.

    Each finished model's scores are written atomically to ``store/model-NNN.npz``, so an
    interrupted audit keeps its models and a re-run trains only the missing ones.
    """
    store.mkdir(parents=True, exist_ok=True)
    results: dict[int, dict] = {}
    todo = []
    for j in range(models):
        path = store / f"model-{j:03d}.npz"
        if path.exists():
            results[j] = _load(path)
        else:
            todo.append(j)
    if results:
        progress(f"  {len(results)} of {models} models already trained, loaded from {store}")
    started = time.monotonic()

    def finished(j: int, result: dict) -> None:
        _save(store / f"model-{j:03d}.npz", result)
        results[j] = result
        done = len(results)
        role = "target" if j == 0 else f"shadow {j}"
        progress(f"  model {done}/{models} ({role}) trained: held-out accuracy "
                 f"{result['accuracy']:.3f}, {time.monotonic() - started:.0f} s elapsed")

    if workers <= 1 or len(todo) <= 1:
        for j in todo:
            finished(j, train_model(game, j, epsilon, settings))
    else:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                 initializer=_init_worker, initargs=(game,)) as pool:
            futures = {j: pool.submit(_train_in_worker, j, epsilon, settings) for j in todo}
            for j in todo:
                finished(j, futures[j].result())
    return [results[j] for j in range(models)]


_WORKER_GAME: Game | None = None


def _init_worker(game: Game) -> None:
    global _WORKER_GAME
    torch.set_num_threads(1)
    _WORKER_GAME = game


def _train_in_worker(model_index: int, epsilon: float, settings: dict) -> dict:
    assert _WORKER_GAME is not None
    return train_model(_WORKER_GAME, model_index, epsilon, settings)


def _save(path: Path, result: dict) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, phi=result["phi"], loss=result["loss"], member=result["member"],
             accuracy=result["accuracy"], epsilon=result["epsilon"], delta=result["delta"],
             noise_multiplier=np.nan if result["noise_multiplier"] is None
             else np.array(result["noise_multiplier"]))
    write_bytes_atomic(path, buffer.getvalue())


def _load(path: Path) -> dict:
    with np.load(path) as data:
        noise = np.atleast_1d(data["noise_multiplier"])
        return {"phi": data["phi"], "loss": data["loss"], "member": data["member"],
                "accuracy": float(data["accuracy"]), "epsilon": float(data["epsilon"]),
                "delta": float(data["delta"]),
                "noise_multiplier": None if np.isnan(noise).all()
                else (float(noise.min()), float(noise.max()))}
