"""The reference points a federated DP run is judged against, all trained in this process.

* central: the same model (frozen encoder + head) on every site's training data pooled, no DP;
  what the model can do when privacy and federation cost nothing.
* central-dp: the same pooled data with DP-SGD at the same (epsilon, delta) per utterance
  (``baseline_delta``); what privacy alone costs, without federation.
* local-only: every site trains alone with DP-SGD on its own data, as in the federated run but
  without ever averaging; what federation buys a site. Reported as the mean over sites, each
  site's model scored on the whole test split (as the federated model is), and on the site's
  own test rows beside the federated model on the same rows (a site's own intent mix is what
  it serves, and what a model trained on it alone is best at).
* tfidf: TF-IDF word 1-2 grams + logistic regression on the pooled text, no DP; a classic
  non-neural yardstick for how hard the task is.

Every baseline is scored on the same held-out test split as the federated run.
"""

import math
import statistics
from dataclasses import dataclass

import torch
from torch import nn

from fl_client.dp_training import Evaluation, evaluate, train_locally, training_plan
from fl_client.privacy_accounting import default_delta, plan_noise_multiplier, steps_per_round
from fl_server.run_config import tuned_epsilon
from models import get_model_family


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one in-process training: epochs are passes over the training data."""

    epochs: int
    batch_size: int
    learning_rate: float
    clip_norm: float


CENTRAL_DP_RECIPES = {
    1.0: Recipe(epochs=40, batch_size=16384, learning_rate=24.0, clip_norm=1.0),
    3.0: Recipe(epochs=40, batch_size=1024, learning_rate=8.0, clip_norm=1.0),
    8.0: Recipe(epochs=40, batch_size=16384, learning_rate=96.0, clip_norm=1.0),
}
CENTRAL_RECIPE = Recipe(epochs=30, batch_size=64, learning_rate=2.0, clip_norm=1.0)
"""Pooled-data training, chosen like the federated settings on a validation split of
BANKING77's training rows (docs/BENCHMARKS.md); an epsilon between rows uses the row below it.
Not rescaled to another dataset's size, as the federated rates are (found in review: on 1,000
pooled rows central DP scored below the federated run it bounds); the report says so."""


def pooled_recipe(epsilon: float) -> Recipe:
    """The pooled baseline's recipe at ``epsilon``: central DP's tuned one (inf: non-private)."""
    if not math.isfinite(epsilon):
        return CENTRAL_RECIPE
    return CENTRAL_DP_RECIPES[tuned_epsilon(epsilon, CENTRAL_DP_RECIPES)]


def baseline_delta(site_rows: list[int]) -> float:
    """The delta a baseline trained on the data of sites of ``site_rows`` training rows plans
    at: the smallest delta those sites plan at in the federated run (``default_delta`` of each
    one's rows, what a site does when the run leaves delta to it, as bench's runs do).

    The comparison is of the guarantee each utterance gets, so every method gives an utterance
    the delta its own site gave it: local-only sites exactly their federated delta, central DP
    the sites' common one (the smallest where they differ, so that pooling never weakens any
    utterance's guarantee and never flatters central DP). Not ``default_delta`` of the pooled
    rows: that holds central DP to a tenfold smaller delta than the sites it is compared with
    (1e-6 against 1e-5 for BANKING77's 10 sites of about 1,000 rows), a different guarantee."""
    return min(default_delta(rows) for rows in site_rows)


def train_and_evaluate(
    model_name: str,
    label_names: list[str],
    features: torch.Tensor,
    labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    epsilon: float,
    recipe: Recipe,
    seed: int,
    *,
    delta: float,
) -> Evaluation:
    """Test scores of ``trained_model``."""
    model = trained_model(model_name, label_names, features, labels, epsilon, recipe, seed,
                          delta=delta)
    return evaluate(model, test_features, test_labels)


def trained_model(
    model_name: str,
    label_names: list[str],
    features: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    recipe: Recipe,
    seed: int,
    *,
    delta: float,
) -> nn.Module:
    """The model family's initial model trained on one pool of data with DP-SGD at
    (``epsilon``, ``delta``) (epsilon inf: plain SGD); the noise is planned for exactly this
    training."""
    family = get_model_family(model_name)
    charged = steps_per_round(len(labels), recipe.batch_size, recipe.epochs)
    noise = (plan_noise_multiplier(epsilon, delta, *charged, "prv") if math.isfinite(epsilon)
             else None)
    plan = training_plan(family, noise, charged, clip_norm=recipe.clip_norm,
                         batch_size=recipe.batch_size, local_epochs=recipe.epochs,
                         learning_rate=recipe.learning_rate)
    model = family.initial_model(label_names)
    train_locally(model, features, labels, plan, seed=seed)
    return model


def own_rows_scores(models: list[nn.Module],
                    site_tests: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Each site's model (the federated one: the same for all) on the site's own test rows,
    the intent mix it serves, for the sites that have test rows (none where no site has)."""
    accuracies = [evaluate(site_model, x, y).accuracy
                  for site_model, (x, y) in zip(models, site_tests, strict=True) if len(y)]
    if not accuracies:  # found in review: the mean of nothing failed a cell that had trained
        return {}
    return {"own_site_accuracies": accuracies, "own_accuracy": statistics.fmean(accuracies)}
