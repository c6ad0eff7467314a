"""Federated training in this process: every site's own ``train_locally``, then weighted FedAvg;
or, under distributed DP, every site's own ``noisy_integer_sum``, summed, then the server's step.

This is the loop that the tuning scripts (``benchmarks/tune_banking77.py``,
``benchmarks/per_site_levers.py``) and the privacy audit (``fedintent.audit``) need: the same
local DP-SGD code a site runs (``fl_client.dp_training.train_locally``: Opacus, Poisson
sampling, clipping, noise) and the example-weighted mean that Flower's FedAvg computes on the
server. Without the SuperLink, Ray and per-round messaging it costs only the sites' training, so
a model can be retrained dozens of times (shadow models, hyperparameter candidates). What it
leaves out on purpose: the privacy ledger, the egress guard and the site-secret seeds; the
training itself is identical. Under distributed DP it also leaves out SecAgg+, which carries the
sites' integers exactly (tests/test_distributed_dp.py): the sum here is the sum the server
decodes.
"""

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fl_client.data_files import list_site_dirs
from fl_client.distributed_dp import noisy_integer_sum
from fl_client.dp_training import TrainingPlan, train_locally, training_plan
from fl_client.privacy_accounting import default_delta, fresh_site_noise, steps_per_round
from fl_client.site_data import load_site
from fl_protocol.wire import DEFAULT_MAX_EPSILON
from fl_server.secure_aggregation import distributed_step
from models.family import ModelFamily, concat_features
from models.fixed_shape import PassShape

Site = tuple[torch.Tensor, torch.Tensor]
"""One site's training data: (features, labels)."""


def validation_split(data_dir: Path, labels: list[str], family: ModelFamily, share: float,
                     seed: int) -> tuple[list[Site], Site]:
    """Each site's training rows less a ``share`` held out at random (``seed``), and the pooled
    held-out rows: what tuning scores candidates on, so that no test split is ever read."""
    rng = np.random.default_rng(seed)
    sites, held_x, held_y = [], [], []
    for site_dir in list_site_dirs(data_dir):
        site = load_site(site_dir, labels)
        features = family.featurize(site.train.texts, data_dir / ".features")
        targets = torch.tensor(site.train.labels, dtype=torch.long)
        order = torch.from_numpy(rng.permutation(len(targets)))
        held = int(len(targets) * share)
        sites.append((features[order[held:]], targets[order[held:]]))
        held_x.append(features[order[:held]])
        held_y.append(targets[order[:held]])
    return sites, (concat_features(held_x), torch.cat(held_y))


def site_plans(family: ModelFamily, sites: Sequence[Site], epsilon: float, delta: float,
               rounds: int, batch_size: int, local_epochs: int,
               learning_rate: float,
               max_epsilon: float = DEFAULT_MAX_EPSILON) -> list[TrainingPlan]:
    """Each site's plan, its noise planned (PRV accountant) for ``epsilon`` at ``delta`` over all
    ``rounds`` as a site with a new ledger and lifetime budget ``max_epsilon`` (a site's
    default) plans it, that ledger at the site's own delta for its units (``default_delta``,
    the default policy's, whatever ``delta`` is); no noise where ``epsilon`` is infinite. Clip
    norm 1."""
    plans = []
    for _, targets in sites:
        rate, steps = steps_per_round(len(targets), batch_size, local_epochs)
        noise = (fresh_site_noise(epsilon, delta, rate, steps * rounds, "prv", max_epsilon,
                                  default_delta(len(targets)))
                 if math.isfinite(epsilon) else None)
        plans.append(training_plan(family, noise, (rate, steps), clip_norm=1.0,
                                   batch_size=batch_size, local_epochs=local_epochs,
                                   learning_rate=learning_rate))
    return plans


def train_fedavg(
    global_model: nn.Module,
    build_model: Callable[[], nn.Module],
    sites: Sequence[Site],
    plans: Sequence[TrainingPlan],
    rounds: int,
    seed: int,
    weight_power: float = 1.0,
) -> nn.Module:
    """Train ``global_model`` in place for ``rounds`` rounds of FedAvg and return it.

    Every round, each site starts from the global model, trains with its own plan, and the new
    global model is the mean of the sites' models weighted by their number of examples
    (``weight_power`` 1, FedAvg; 2 weighs each site by the inverse of its DP noise's variance,
    for benchmarks/per_site_levers.py). The
    seed of site ``i`` in round ``r`` is ``seed * 100_000 + r * 100 + i``: deterministic,
    different for every (site, round), as the sites' secret seeds are in a real run.
    """
    total = sum(len(targets) ** weight_power for _, targets in sites)
    for server_round in range(rounds):
        averaged = {k: torch.zeros_like(v) for k, v in global_model.state_dict().items()}
        for index, ((features, targets), plan) in enumerate(zip(sites, plans, strict=True)):
            local = build_model()
            local.load_state_dict(global_model.state_dict())
            train_locally(local, features, targets, plan,
                          seed=seed * 100_000 + server_round * 100 + index)
            for key, value in local.state_dict().items():
                averaged[key] += value * (len(targets) ** weight_power / total)
        global_model.load_state_dict(averaged)
    return global_model


def train_distributed(
    global_model: nn.Module,
    sites: Sequence[Site],
    mu_share: float,
    clip_norm: float,
    learning_rate: float,
    rounds: int,
    seed: int,
    passes: PassShape,
    server_momentum: float = 0.0,
) -> nn.Module:
    """Train ``global_model`` in place for ``rounds`` rounds of distributed DP and return it.

    Every round each site adds Skellam(``mu_share``) to its clipped, scaled and rounded gradient
    sum at the global model (``fl_client.distributed_dp``), and the server steps along the sum
    (``fl_server.secure_aggregation.distributed_step``), with heavy-ball momentum as Flower's
    FedAvgM applies it (``server_momentum``). Seeds as in ``train_fedavg``. ``passes``: the
    family's pass shape, as a site runs it (found in review: the default fixed width mixed
    token counts for ``minilm-finetune``, so the figures were not those of the site's path).
    """
    examples = sum(len(targets) for _, targets in sites)
    velocity: dict[str, np.ndarray] = {}
    for server_round in range(rounds):
        total = None
        for index, (features, targets) in enumerate(sites):
            ints = noisy_integer_sum(global_model, features, targets, clip_norm, mu_share,
                                     seed=seed * 100_000 + server_round * 100 + index,
                                     passes=passes)
            total = ints if total is None else {k: total[k] + ints[k] for k in total}
        state = {k: v.numpy() for k, v in global_model.state_dict().items()}
        stepped = distributed_step(state, total, examples=examples, clip_norm=clip_norm,
                                   learning_rate=learning_rate)
        for k in state:
            step = state[k] - stepped[k]
            velocity[k] = server_momentum * velocity[k] + step if k in velocity else step
        global_model.load_state_dict({k: torch.as_tensor(state[k] - velocity[k],
                                                         dtype=global_model.state_dict()[k].dtype)
                                      for k in state})
    return global_model
