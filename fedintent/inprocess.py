"""Federated training in this process: every site's own ``train_locally``, then weighted FedAvg;
or, under distributed DP, every site's own ``noisy_integer_sum``, summed, then the server's step.

This is the loop that the tuning script (``benchmarks/tune_banking77.py``) and the privacy audit
(``fedintent.audit``) both need: the same local DP-SGD code a site runs
(``fl_client.dp_training.train_locally``: Opacus, Poisson sampling, clipping, noise) and the
example-weighted mean that Flower's FedAvg computes on the server. Without the SuperLink, Ray
and per-round messaging it costs only the sites' training, so a model can be retrained dozens of
times (shadow models, hyperparameter candidates). What it leaves out on purpose: the privacy
ledger, the egress guard and the site-secret seeds; the training itself is identical. Under
distributed DP it also leaves out SecAgg+, which carries the sites' integers exactly
(tests/test_distributed_dp.py): the sum here is the sum the server decodes.
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from fl_client.distributed_dp import noisy_integer_sum
from fl_client.dp_training import TrainingPlan, train_locally
from fl_server.secure_aggregation import distributed_step

Site = tuple[torch.Tensor, torch.Tensor]
"""One site's training data: (features, labels)."""


def train_fedavg(
    global_model: nn.Module,
    build_model: Callable[[], nn.Module],
    sites: Sequence[Site],
    plans: Sequence[TrainingPlan],
    rounds: int,
    seed: int,
) -> nn.Module:
    """Train ``global_model`` in place for ``rounds`` rounds of FedAvg and return it.

    Every round, each site starts from the global model, trains with its own plan, and the new
    global model is the mean of the sites' models weighted by their number of examples. The
    seed of site ``i`` in round ``r`` is ``seed * 100_000 + r * 100 + i``: deterministic,
    different for every (site, round), as the sites' secret seeds are in a real run.
    """
    total = sum(len(targets) for _, targets in sites)
    for server_round in range(rounds):
        averaged = {k: torch.zeros_like(v) for k, v in global_model.state_dict().items()}
        for index, ((features, targets), plan) in enumerate(zip(sites, plans, strict=True)):
            local = build_model()
            local.load_state_dict(global_model.state_dict())
            train_locally(local, features, targets, plan,
                          seed=seed * 100_000 + server_round * 100 + index)
            for key, value in local.state_dict().items():
                averaged[key] += value * (len(targets) / total)
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
    server_momentum: float = 0.0,
) -> nn.Module:
    """Train ``global_model`` in place for ``rounds`` rounds of distributed DP and return it.

    Every round each site adds Skellam(``mu_share``) to its clipped, scaled and rounded gradient
    sum at the global model (``fl_client.distributed_dp``), and the server steps along the sum
    (``fl_server.secure_aggregation.distributed_step``), with heavy-ball momentum as Flower's
    FedAvgM applies it (``server_momentum``). Seeds as in ``train_fedavg``.
    """
    examples = sum(len(targets) for _, targets in sites)
    velocity: dict[str, np.ndarray] = {}
    for server_round in range(rounds):
        total = None
        for index, (features, targets) in enumerate(sites):
            ints = noisy_integer_sum(global_model, features, targets, clip_norm, mu_share,
                                     seed=seed * 100_000 + server_round * 100 + index)
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
