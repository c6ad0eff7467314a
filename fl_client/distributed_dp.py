"""Distributed DP at a site: its clipped gradients and its share of the noise, in integers.

Under ``privacy-model = distributed`` a round is one full-batch step of DP gradient descent,
with the noise added by the sites together instead of each site alone. At the global model,
the site

1. computes every privacy unit's gradient (Opacus' per-sample gradients) and clips it to
   ``clip-norm`` (L2), exactly as DP-SGD does;
2. scales it to ``integer_norm`` and rounds it to integers with *conditional* randomized
   rounding (Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for
   Federated Learning with Secure Aggregation", ICML 2021): each coordinate is rounded up with
   probability equal to its fractional part, and a unit's rounding is drawn again until its L2
   norm is at most ``rounding_bound``. So one unit changes the integer sum by at most
   ``rounding_bound`` in L2 and ``l1_bound`` in L1, always, whatever the draws: these are the
   sensitivities the accountant uses;
3. adds Skellam noise ``Poisson(mu_share) - Poisson(mu_share)`` to every coordinate (Agarwal,
   Kairouz and Liu, NeurIPS 2021). Skellams add up: the secure sum of ``k`` sites' vectors
   carries ``Skellam(k x mu_share)``.

Only the secure sum leaves (``secure_aggregation.py`` refuses to send these integers any other
way). The server divides it by ``integer_norm / clip-norm`` and by the number of examples and
takes the step. The noise share is planned so that the sites that are neither missing nor
colluding, at least ``cohort - tolerated-sites`` of them, together add the full noise
(``privacy_budget.charge_round``). Every draw comes from the site's secret round seed.
"""

import math
import warnings

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from fl_client.dp_training import UnitLoss
from fl_protocol.distributed_sum import integer_norm

ROUNDING_BETA = 1e-3
"""The chance one unit's first rounding exceeds ``rounding_bound`` and is drawn again."""
CHUNK_VALUES = 2**24
"""Per-unit gradients rounded at once (units x dimension): 64 MiB of float32, 128 MiB of int64."""


def dimension(model: nn.Module) -> int:
    """How many numbers the exchanged model (and so a site's integer vector) has."""
    return sum(value.numel() for value in model.state_dict().values())


def rounding_bound(norm: float, dim: int) -> float:
    """The L2 norm a unit's rounded, scaled gradient never exceeds: conditional randomized
    rounding of a vector of norm at most ``norm`` in ``dim`` coordinates (Kairouz et al. 2021,
    with ``ROUNDING_BETA``), and never more than ``norm + sqrt(dim)``."""
    spread = math.sqrt(2 * math.log(1 / ROUNDING_BETA)) * (norm + math.sqrt(dim) / 2)
    return min(math.sqrt(norm**2 + dim / 4 + spread), norm + math.sqrt(dim))


def l1_bound(l2: float, dim: int) -> float:
    """The L1 norm of an integer vector of L2 norm at most ``l2`` in ``dim`` coordinates: every
    nonzero integer is at least 1 in size, so L1 <= L2**2, and L1 <= sqrt(dim) x L2 always."""
    return min(l2**2, math.sqrt(dim) * l2)


def noisy_integer_sum(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    clip_norm: float,
    mu_share: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """The site's integer vector for the secure sum, per exchanged array (int64): its units'
    clipped, scaled and rounded gradients at ``model``, summed, plus Skellam(``mu_share``).
    The scale is ``integer_norm`` of the model's size, the one the accountant's sensitivity
    (``privacy_budget``) and the server's decoding assume."""
    named = dict(model.named_parameters())
    state = model.state_dict()
    if set(state) != set(named) or not all(p.requires_grad for p in named.values()):
        raise ValueError("distributed DP needs a model whose exchanged arrays are all trained "
                         "parameters")
    names = list(state)
    dim = sum(named[name].numel() for name in names)
    norm = integer_norm(dim)
    bound = rounding_bound(norm, dim)
    rounding = torch.Generator().manual_seed(seed)
    total = torch.zeros(dim, dtype=torch.float64)  # sums of integers, exact below 2**53
    # rows per chunk: their column sums stay exact in float32 (below 2**24)
    per_chunk = max(1, min(CHUNK_VALUES // dim, int(2**24 // (bound + 1))))
    sampled = GradSampleModule(model, loss_reduction="sum")
    criterion = UnitLoss()
    criterion.reduction = "none"
    model.train()
    for start in range(0, len(labels), per_chunk):
        x, y = features[start:start + per_chunk], labels[start:start + per_chunk]
        sampled.zero_grad(set_to_none=True)
        for param in named.values():
            param.grad_sample = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            criterion(sampled(x), y).sum().backward()
        with torch.no_grad():
            grads = torch.cat([named[name].grad_sample.reshape(len(y), -1) for name in names],
                              dim=1)
            norms = grads.norm(dim=1).clamp(min=1e-30)
            scaled = grads * (norm / clip_norm * (clip_norm / norms).clamp(max=1.0))[:, None]
            total += conditional_round(scaled, bound, rounding).sum(dim=0).double()
    sampled.remove_hooks()
    noise = np.random.default_rng([seed, 1])  # its own stream, after every rounding draw
    skellam = noise.poisson(mu_share, dim) - noise.poisson(mu_share, dim)
    vector = total.to(torch.int64).numpy() + skellam
    out, offset = {}, 0
    for name in names:
        size = state[name].numel()
        out[name] = vector[offset:offset + size].reshape(tuple(state[name].shape))
        offset += size
    return out


def conditional_round(scaled: torch.Tensor, bound: float,
                      generator: torch.Generator) -> torch.Tensor:
    """Each row (of L2 norm at most ``bound``) rounded to integers, each coordinate up with
    probability its fractional part (``floor(x + U)``, ``U`` uniform on [0, 1)), a row drawn
    again until its L2 norm is at most ``bound``. Float32 holding exact integers; the norms are
    exact too: every square and every partial sum is an integer below 2**24 (or the sums run in
    float64)."""
    dim = scaled.shape[1]
    wide = (bound + math.sqrt(dim)) ** 2 >= 2**24

    def squared_norms(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.double() if wide else rows
        return torch.einsum("ij,ij->i", rows, rows)

    rounded = torch.rand(scaled.shape, generator=generator).add_(scaled).floor_()
    todo = (squared_norms(rounded) > bound**2).nonzero().flatten()
    while len(todo):
        draw = torch.rand((len(todo), dim), generator=generator).add_(scaled[todo]).floor_()
        fits = squared_norms(draw) <= bound**2
        rounded[todo[fits]] = draw[fits]
        todo = todo[~fits]
    return rounded
