"""Distributed DP at a site: its clipped gradients and its share of the noise, in integers.

Under ``privacy-model = distributed`` a round is one full-batch step of DP gradient descent,
with the noise added by the sites together instead of each site alone. At the global model,
the site

1. computes every privacy unit's gradient (Opacus' per-sample gradients) and clips it to
   ``clip-norm`` (L2), exactly as DP-SGD does, then scales it to ``integer_norm`` and puts it on
   a fine grid (``grid_step``, 1/32 for the head) so that the site's sum of its units' vectors
   is *exact* (``clipped_grid_sum``). One unit therefore moves that sum by
   exactly its own vector, of L2 norm at most ``integer_norm`` (plus the grid's half step per
   coordinate). That treats each unit's float32 gradient as a function of the unit alone, as
   every DP-SGD implementation that clips in batches does: a matrix product of another batch
   shape can move its last bit (one grid step; ``tests/test_distributed_dp.py`` measures it);
2. rounds the sum to integers with randomized rounding (each coordinate up with probability
   its fractional part, from uniform offsets drawn once per round). With the offsets shared
   between two neighbouring data sets, the two rounded sums differ by ``k = floor(v) + B``,
   where ``v`` is the unit's scaled vector and the ``B_i`` are independent Bernoulli draws of
   mean ``frac(v_i)``: exactly the unit's own randomized rounding, as in Kairouz, Liu and
   Steinke's conditional rounding (ICML 2021), but drawn once per site. Whatever the offsets,
   ``||k||_2 <= rounding_bound`` = norm + sqrt(dimension) (2% above the norm for the head), the
   sensitivity of the Rényi account; except with probability ``ROUNDING_FAILURE`` (e**-200)
   over the offsets, ``||k||_2 <= likely_rounding_bound`` (0.16% above the norm, by Hoeffding's
   inequality), the sensitivity of the Gaussian-DP account, which pays that probability in
   delta (``skellam_gdp``). A mixture over shared offsets is no less private than its worst
   component (joint convexity of every hockey-stick and Rényi divergence), so these are
   sensitivities of the mechanism itself;
3. adds Skellam noise ``Poisson(mu_share) - Poisson(mu_share)`` to every coordinate (Agarwal,
   Kairouz and Liu, NeurIPS 2021). Skellams add up: the secure sum of ``k`` sites' vectors
   carries ``Skellam(k x mu_share)``.

Only the secure sum leaves (``secure_aggregation.py`` refuses to send these integers any other
way). The server divides it by ``integer_norm / clip-norm`` and by the number of examples and
takes the step. The noise share is planned so that the sites that are neither missing nor
colluding, at least ``cohort - tolerated-sites`` of them, together add the full noise
(``privacy_budget.charge_round``). Every draw, the rounding's and the noise's, comes from a
ChaCha20 stream keyed by the site's secret seed for the release (``private_random``).

Opacus is imported inside ``clipped_grid_sum``: the import takes about 2 s, and Flower starts
a fresh ClientApp process for every message, most of which never train.
"""

import math
import warnings
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from fl_client.dp_training import UnitLoss
from fl_client.private_random import private_stream, stream_seed
from fl_client.site_policy import PolicyRefusal
from fl_protocol.distributed_sum import integer_norm
from fl_protocol.wire import Reason
from models.fixed_shape import FIXED_WIDTH, PassShape, feature_chunks

GRID_RANGE = 2**18
"""One unit's clipped gradient, scaled to ``integer_norm`` and put on the grid, has L2 norm at
most this many grid steps (``grid_step``: 1/32 for the head)."""
BLOCK_ROWS = 2**24 // (2 * GRID_RANGE)
"""Units whose grid vectors float32 sums exactly: every partial sum an integer below 2**24."""
CHUNK_VALUES = 2**24
"""Per-unit gradients processed at once (units x dimension): 64 MiB of float32."""
NORM_BLOCK = 64
"""A unit's squared gradient coordinates are summed in float32 blocks of this many, the blocks in
float64, so the norm the clipping reads is exact to ``NORM_ERROR`` whatever the dimension."""
NORM_ERROR = 2**-18
"""A bound on the relative error of a clipped, scaled unit's norm: ``(NORM_BLOCK + 1) u`` on its
squared norm (sums of positive float32 terms, ``u = 2**-24``), so half that on the norm, plus
the float32 roundings of the scale and of the product (``36 u`` in all, below ``2**-18``)."""
ROUNDING_FAILURE = math.exp(-200)
"""The probability, over one round's rounding offsets, that one unit moves the rounded sum by
more than ``likely_rounding_bound``."""


def dimension(model: nn.Module) -> int:
    """How many numbers the exchanged model (and so a site's integer vector) has."""
    return sum(value.numel() for value in model.state_dict().values())


def summable_dimension(model: nn.Module) -> int:
    """``dimension`` of a model the integer sum can carry, checked before the round is charged
    (found in review: a model too large for the grid was charged, then refused): every
    exchanged array a trained parameter, at most ``(GRID_RANGE // 32) ** 2`` numbers."""
    named = dict(model.named_parameters())
    state = model.state_dict()
    if set(state) != set(named) or not all(p.requires_grad for p in named.values()):
        raise PolicyRefusal(Reason.MODEL_REFUSED, "distributed DP needs a model whose exchanged "
                            "arrays are all trained parameters")
    dim = dimension(model)
    if integer_norm(dim) > GRID_RANGE:
        raise PolicyRefusal(Reason.MODEL_REFUSED, f"distributed DP supports models of up to "
                            f"{(GRID_RANGE // 32) ** 2:,} exchanged numbers, not {dim:,}")
    return dim


def grid_step(norm: float) -> float:
    """The grid a unit's gradient, scaled to ``norm``, is put on: ``norm / GRID_RANGE`` (1/32 at
    norm 2**13)."""
    return norm / GRID_RANGE


def unit_bound(norm: float, dim: int) -> float:
    """The L2 norm of one unit's vector before the sum is rounded, in integers: its clipped
    gradient scaled to ``norm`` (relative error below ``NORM_ERROR``) on the grid, plus half a
    grid step per coordinate."""
    return norm * (1 + NORM_ERROR) + math.sqrt(dim) * grid_step(norm) / 2


def rounding_bound(norm: float, dim: int) -> float:
    """The L2 norm by which one unit can move a site's rounded integer vector, whatever the
    rounding draws: ``unit_bound``, plus less than 1 per coordinate from rounding the sum."""
    return unit_bound(norm, dim) + math.sqrt(dim)


def likely_rounding_bound(norm: float, dim: int, failure: float = ROUNDING_FAILURE) -> float:
    """The L2 norm by which one unit moves a site's rounded integer vector except with
    probability ``failure`` over the round's rounding offsets. The move is ``k = v + e`` for the
    unit's vector ``v`` (``||v||_2 <= c``, ``unit_bound``) and independent ``e_i = B_i -
    frac(v_i)``, ``B_i`` Bernoulli of mean ``frac(v_i)``. So ``||k||**2 - ||v||**2`` is at most
    ``sum frac (1 - frac) <= dim / 4`` in mean, and its terms ``2 v_i e_i + e_i**2`` each range
    over ``|2 floor(v_i) + 1|``, whose squares sum to at most ``(2 c + sqrt(dim))**2``: by
    Hoeffding's inequality it exceeds its mean by ``(2 c + sqrt(dim)) sqrt(log(1 / failure) / 2)``
    with probability at most ``failure``."""
    if not 0 < failure < 1:
        raise ValueError(f"a failure probability is in (0, 1), got {failure}")
    c = unit_bound(norm, dim)
    spread = (2 * c + math.sqrt(dim)) * math.sqrt(math.log(1 / failure) / 2)
    return math.sqrt(c**2 + dim / 4 + spread)


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
    passes: PassShape = FIXED_WIDTH,
) -> dict[str, np.ndarray]:
    """The site's integer vector for the secure sum, per exchanged array (int64): its units'
    clipped, scaled gradients at ``model``, summed exactly, rounded at random, plus
    Skellam(``mu_share``). The scale is ``integer_norm`` of the model's size, the one the
    accountant's sensitivity (``privacy_budget``) and the server's decoding assume.

    ``mu_share`` is this site's share of the sum's noise: the run's guarantee counts on the
    shares of at least cohort - tolerated sites reaching the sum, and the site's own share
    alone gives ``epsilon-alone``, which ``max-epsilon-alone`` bounds
    (``privacy_budget._distributed_release`` plans both before this runs).
    ``passes``: the family's pass shape (``clipped_grid_sum``)."""
    state = model.state_dict()
    names = list(state)
    dim = summable_dimension(model)
    norm = integer_norm(dim)
    steps = GRID_RANGE // norm  # grid steps per integer
    grid_sums = clipped_grid_sum(model, features, labels, clip_norm, passes)
    rounding = private_stream(stream_seed(seed, "rounding"))
    noise = private_stream(stream_seed(seed, "skellam"))
    skellam = noise.poisson(mu_share, dim) - noise.poisson(mu_share, dim)
    out, offset = {}, 0
    for name in names:
        total = grid_sums[name].flatten()
        up = torch.from_numpy(rounding.integers(0, steps, len(total)))
        rounded = torch.div(total + up, steps, rounding_mode="floor").numpy()
        noisy = rounded + skellam[offset:offset + len(total)]
        out[name] = noisy.reshape(tuple(state[name].shape))
        offset += len(total)
    return out


def clipped_grid_sum(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    clip_norm: float,
    passes: PassShape = FIXED_WIDTH,
) -> dict[str, torch.Tensor]:
    """Per parameter, the exact sum over units of each unit's gradient clipped to ``clip_norm``
    and scaled to ``GRID_RANGE``, rounded to integers: ``integer_norm`` in grid steps. Exact
    because float32 sums blocks of ``BLOCK_ROWS`` such integers (every partial sum an integer
    below 2**24) and float64 the blocks: removing a unit changes the sum by exactly that unit's
    term, whatever the order of the additions. Units go through the model in passes of one
    fixed shape (``passes``, at most as many rows as exactness allows; ``models.fixed_shape``),
    so that no unit's gradient depends on another unit; a pass's padding adds the zero vector."""
    named = dict(model.named_parameters())
    sums = {name: torch.zeros(param.shape, dtype=torch.float64) for name, param in named.items()}
    dim = sum(p.numel() for p in named.values())
    per_chunk = max(1, CHUNK_VALUES // dim // BLOCK_ROWS) * BLOCK_ROWS
    from opacus import GradSampleModule

    sampled = GradSampleModule(model, loss_reduction="sum")
    criterion = UnitLoss()
    criterion.reduction = "none"
    model.train()
    for chunk in feature_chunks(features, passes._replace(rows=min(per_chunk, passes.rows))):
        x, y = features[chunk.index], labels[chunk.index]
        sampled.zero_grad(set_to_none=True)
        for param in named.values():
            param.grad_sample = None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            criterion(sampled(x), y).sum().backward()
        with torch.no_grad():
            samples = {name: param.grad_sample.reshape(len(y), -1)
                       for name, param in named.items()}
            norms = unit_norms(samples.values())
            # A unit whose gradient is not finite adds the zero vector, as in DP-SGD
            # (``dp_training``): refusing would tell the server that such a unit exists.
            finite = torch.isfinite(norms)
            finite[chunk.real:] = False  # the pass's padding
            ratio = torch.where(finite, (clip_norm / norms.clamp(min=1e-300)).clamp(max=1), 0.0)
            scale = ((GRID_RANGE / clip_norm) * ratio).float()
            for name, grads in samples.items():
                grads[~finite] = 0.0
                on_grid = grads.mul_(scale[:, None]).round_()
                sums[name] += exact_column_sum(on_grid).view(sums[name].shape)
    sampled.remove_hooks()
    return {name: total.to(torch.int64) for name, total in sums.items()}


def unit_norms(grads: Iterable[torch.Tensor]) -> torch.Tensor:
    """Each unit's gradient norm (float64) over its per-parameter rows (units x width, float32):
    squares summed in float32 blocks of ``NORM_BLOCK``, the blocks in float64, so the relative
    error stays below ``(NORM_BLOCK + 1) 2**-24`` on the squared norm where a plain float32 sum's
    grows with the dimension."""
    total = 0
    for rows in grads:
        squares = rows.square()
        whole = squares.shape[1] // NORM_BLOCK * NORM_BLOCK
        blocks = squares[:, :whole].reshape(len(rows), -1, NORM_BLOCK).sum(dim=2)
        total = (total + blocks.sum(dim=1, dtype=torch.float64)
                 + squares[:, whole:].sum(dim=1, dtype=torch.float64))
    return torch.as_tensor(total, dtype=torch.float64).sqrt()


def exact_column_sum(rows: torch.Tensor) -> torch.Tensor:
    """The column sums (float64) of float32 integer rows of magnitude at most ``2 x
    GRID_RANGE``: exact, block by block."""
    whole = len(rows) // BLOCK_ROWS * BLOCK_ROWS
    blocks = rows[:whole].view(-1, BLOCK_ROWS, rows.shape[1]).sum(dim=1)
    return torch.cat([blocks, rows[whole:].sum(dim=0, keepdim=True)]).sum(dim=0,
                                                                             dtype=torch.float64)
