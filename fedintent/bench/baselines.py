"""The reference points a federated DP run is judged against, all trained in this process.

* central: the same model (frozen encoder + head) on every site's training data pooled, no DP;
  what the model can do when privacy and federation cost nothing.
* central-dp: the same pooled data with DP-SGD at the same (epsilon, delta) per utterance; what
  privacy alone costs, without federation.
* local-only: every site trains alone with DP-SGD on its own data, as in the federated run but
  without ever averaging; what federation buys a site. Reported as the mean over sites.
* tfidf: TF-IDF word 1-2 grams + logistic regression on the pooled text, no DP; a classic
  non-neural yardstick for how hard the task is.

Every baseline is scored on the same held-out test split as the federated run.
"""

import math
from dataclasses import dataclass

import torch

from fl_client.dp_training import Evaluation, evaluate, train_locally, training_plan
from fl_client.privacy_accounting import plan_noise_multiplier, steps_per_round
from models import get_model_family

DELTA = 1e-5


@dataclass(frozen=True)
class Recipe:
    """Hyperparameters of one in-process training: epochs are passes over the training data."""

    epochs: int
    batch_size: int
    learning_rate: float
    clip_norm: float


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
) -> Evaluation:
    """Test scores of the model family's initial model trained on one pool of data with
    DP-SGD at ``epsilon`` (inf: plain SGD); the noise is planned for exactly this training."""
    family = get_model_family(model_name)
    charged = steps_per_round(len(labels), recipe.batch_size, recipe.epochs)
    noise = (plan_noise_multiplier(epsilon, DELTA, *charged, "prv") if math.isfinite(epsilon)
             else None)
    plan = training_plan(family, noise, charged, clip_norm=recipe.clip_norm,
                         batch_size=recipe.batch_size, local_epochs=recipe.epochs,
                         learning_rate=recipe.learning_rate)
    model = family.initial_model(label_names)
    train_locally(model, features, labels, plan, seed=seed)
    return evaluate(model, test_features, test_labels)
