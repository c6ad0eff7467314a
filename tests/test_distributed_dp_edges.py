"""Distributed DP at its edges: the sensitivities the accountants are given, the exactness of the
site's integer sum, the independence of its noise, and the conditions of the Gaussian-DP proof.
Found by mutation testing (fl_client/distributed_dp.py, fl_client/skellam_gdp.py,
fl_protocol/distributed_sum.py: each test kills a change that no other test caught;
docs/TESTING.md)."""

import math

import mpmath
import numpy as np
import pytest
import torch
from test_overflow_oracle import overflowing_model, rows_with

from fl_client.distributed_dp import (
    BLOCK_ROWS,
    GRID_RANGE,
    NORM_ERROR,
    clipped_grid_sum,
    dimension,
    exact_column_sum,
    grid_step,
    likely_rounding_bound,
    noisy_integer_sum,
    rounding_bound,
    summable_dimension,
    unit_bound,
)
from fl_client.skellam_gdp import (
    MIN_RATIO,
    TAIL_MARGIN,
    gdp_delta,
    gdp_epsilon,
    shift_gdp,
    skellam_gdp_epsilon,
)
from fl_protocol.distributed_sum import MODULUS, compact, expand, integer_norm, sum_range
from models import get_model_family

U = 2.0**-24
"""float32's unit roundoff."""
HEAD_DIM = 77 * 385


def head(labels: int = 2) -> torch.nn.Module:
    return get_model_family("minilm-head").build_model(labels)


def units(n: int, seed: int, labels: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n, 384, generator=generator), dim=1)
    return features, torch.randint(0, labels, (n,), generator=generator)


def flat(vectors: dict) -> np.ndarray:
    return np.concatenate([np.asarray(v).ravel() for v in vectors.values()])


# --- the sensitivities ------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 77, HEAD_DIM, 10**6])
def test_a_units_bound_covers_its_norms_error_and_half_a_grid_step_per_coordinate(dim):
    """The norm the clipping reads is off by up to ``(NORM_BLOCK + 1) u / 2`` plus the float32
    roundings of the scale and the product, 36 u in all (``NORM_ERROR``'s derivation), and the
    grid adds up to half a step per coordinate: a bound below either understates the L2
    sensitivity of every release."""
    norm = integer_norm(dim)
    assert NORM_ERROR >= 36 * U
    assert unit_bound(norm, dim) >= norm * (1 + 36 * U) + math.sqrt(dim) * grid_step(norm) / 2
    assert rounding_bound(norm, dim) >= unit_bound(norm, dim) + math.sqrt(dim)


@pytest.mark.parametrize("dim", [1, 77, HEAD_DIM, 10**6])
@pytest.mark.parametrize("failure", [math.exp(-200), 1e-6, 0.5])
def test_the_likely_bound_is_at_least_hoeffdings(dim, failure):
    """``likely_rounding_bound`` is the Gaussian-DP account's L2 sensitivity: its square must be
    at least ``c**2 + dim / 4`` (the mean) plus Hoeffding's deviation ``(2 c + sqrt(dim))
    sqrt(log(1 / failure) / 2)`` at the stated failure probability; any less, and a release's
    move exceeds it more often than the delta paid for it."""
    norm = integer_norm(dim)
    c = unit_bound(norm, dim)
    hoeffding = c**2 + dim / 4 + (2 * c + math.sqrt(dim)) * math.sqrt(math.log(1 / failure) / 2)
    assert likely_rounding_bound(norm, dim, failure) ** 2 >= hoeffding * (1 - 1e-12)


@pytest.mark.parametrize("failure", [0.0, 1.0, 1.5, -0.25, math.nan, math.inf])
def test_the_likely_bound_refuses_a_failure_probability_outside_zero_and_one(failure):
    """A failure probability of 1 (or more) would make the "likely" bound claim nothing while
    the account still relies on it; 0 would claim a bound that holds always."""
    with pytest.raises(ValueError, match="failure probability"):
        likely_rounding_bound(8192.0, HEAD_DIM, failure)


def test_the_largest_model_the_grid_carries_is_summable():
    """The refusal's own figure, 67,108,864 exchanged numbers, is accepted; one more is not."""
    largest = (GRID_RANGE // 32) ** 2
    assert integer_norm(largest) == GRID_RANGE
    at_limit = torch.nn.Linear(8192, largest // 8192, bias=False, device="meta")
    assert summable_dimension(at_limit) == largest
    assert integer_norm(largest + 1) > GRID_RANGE


# --- the exact sum ----------------------------------------------------------------------------


def test_the_grid_sum_is_exact_for_rows_at_the_largest_magnitude():
    """Exactness is what makes one unit move the sum by exactly its own vector: float32 blocks
    of ``BLOCK_ROWS`` rows of magnitude up to ``2 x GRID_RANGE`` stay below 2**24. Rows near
    that magnitude, one sign per column, push every partial sum to the limit (a larger block,
    or blocks summed across before within, would round)."""
    generator = torch.Generator().manual_seed(8)
    rows = ((2 * GRID_RANGE - torch.randint(0, 1000, (40 * BLOCK_ROWS + 7, 4),
                                            generator=generator))
            * torch.tensor([1, -1, 1, -1])).float()
    exact = rows.to(torch.int64).sum(dim=0)
    assert torch.equal(exact_column_sum(rows).to(torch.int64), exact)
    assert not torch.equal(rows.sum(dim=0).to(torch.int64), exact)  # the test can tell
    assert BLOCK_ROWS * 2 * GRID_RANGE <= 2**24


def test_a_unit_inside_the_clip_norm_is_not_scaled_up():
    """Clipping only shrinks: with a clip norm far above every unit's gradient norm, the grid
    sum is the plain gradient sum scaled by ``GRID_RANGE / clip_norm`` (half a grid step per
    unit and coordinate apart); a unit scaled up would carry more than its own gradient."""
    model = head()
    features, labels = units(48, 5)
    clip_norm = 100.0
    reference = torch.zeros(dimension(model), dtype=torch.float64)
    for x, y in zip(features, labels, strict=True):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[None]), y[None]).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
        assert grad.norm() < clip_norm / 10
        reference += grad * GRID_RANGE / clip_norm
    summed = torch.cat([v.flatten() for v in clipped_grid_sum(model, features, labels,
                                                              clip_norm).values()]).double()
    assert (summed - reference).abs().max() <= len(labels) / 2 + 1e-3 * reference.abs().max()


def test_an_overflowing_unit_adds_exactly_the_zero_vector():
    """A unit whose gradient is not finite adds nothing: the site's grid sum with it equals the
    sum without it, and every value is finite. (Two different overflowing rows giving the same
    sum, which ``tests/test_overflow_oracle.py`` checks, also holds if both poison it.)"""
    features, labels = rows_with(1.0)
    _, model, logits = overflowing_model("minilm-head", features)
    assert not torch.isfinite(logits[3]).all()
    others = [i for i in range(len(labels)) if i != 3]
    with_it = clipped_grid_sum(model, features, labels, 1.0)
    without = clipped_grid_sum(model, features[others], labels[others], 1.0)
    for name in with_it:
        assert torch.equal(with_it[name], without[name])
    assert any(v.abs().sum() > 0 for v in without.values())  # the other rows do add something


# --- the noise --------------------------------------------------------------------------------


def test_every_coordinate_draws_noise_of_its_own():
    """The accounts assume independent Skellam noise on every coordinate of the released
    vector: a parameter array whose noise repeated part of another array's would let the
    server cancel it by subtraction. The head's bias noise matches no stretch of its weight
    noise, and every array's noise has the planned variance."""
    model = head(77)
    features, labels = units(40, 6, labels=77)
    mu_share = 1e6
    clean = noisy_integer_sum(model, features, labels, 1.0, 0.0, seed=9)
    noisy = noisy_integer_sum(model, features, labels, 1.0, mu_share, seed=9)
    noise = {name: (noisy[name] - clean[name]).ravel() for name in clean}
    weight, bias = noise["weight"], noise["bias"]
    windows = np.lib.stride_tricks.sliding_window_view(weight, len(bias))
    assert not (windows == bias).all(axis=1).any()
    for values in noise.values():  # 6 sd of the sample variance: a false alarm once in 5e8
        assert abs(values.var() / (2 * mu_share) - 1) < 6 * math.sqrt(2 / len(values))
    assert abs(np.corrcoef(bias, weight[:len(bias)])[0, 1]) < 6 / math.sqrt(len(bias))


# --- the Gaussian-DP account of the Skellam noise -----------------------------------------------


def proof_shift(mu: float, delta: float) -> tuple[float, float]:
    """``(D, eta)`` as the proof in ``skellam_gdp``'s docstring states them, in 50 digits and
    with a search of its own: ``T`` the least tail with ``2 exp(-x L(T / x)) (1 + 1 / (1 -
    r))`` at most ``delta e**-TAIL_MARGIN`` (``r`` step 3's upper bound on ``I_T / I_(T-1)``),
    ``kappa = (1 + (2 T + 1) / x) / x``, ``D = sqrt(2 - 2 sqrt(1 - kappa))``; no claim below
    ``x = 2``, at ``kappa >= 0.35`` or where step 5's lowest ratio is below ``MIN_RATIO``."""
    with mpmath.workdps(50):
        x = 2 * mpmath.mpf(mu)
        if x < 2:
            return math.inf, 0.0

        def log_eta(t: int):
            b = t / x
            chernoff = b * mpmath.asinh(b) - mpmath.sqrt(1 + b * b) + 1
            ratio = x / (t - 0.5 + mpmath.sqrt((t - 0.5) ** 2 + x * x))
            return mpmath.log(2) + mpmath.log(1 + 1 / (1 - ratio)) - x * chernoff

        limit = mpmath.log(delta) - TAIL_MARGIN
        tail = 1
        while log_eta(tail) > limit:
            tail *= 2
        below = tail // 2
        while tail - below > 1:
            middle = (tail + below) // 2
            tail, below = (middle, below) if log_eta(middle) <= limit else (tail, middle)
        kappa = (1 + (2 * tail + 1) / x) / x
        lowest = x / (tail - 0.5 + mpmath.sqrt((tail + 0.5) ** 2 + x * x)) * mpmath.exp(-kappa)
        if not (kappa < 0.35 and lowest >= MIN_RATIO):
            return math.inf, 0.0
        return float(mpmath.sqrt(2 - 2 * mpmath.sqrt(1 - kappa))), float(mpmath.exp(log_eta(tail)))


@pytest.mark.parametrize("delta", [1e-5, 1e-10])
@pytest.mark.parametrize("mu", [1.0, 15.25, 50.0, 98.0, 100.0, 1e3, 1e4, 1e6, 4.2e9])
def test_the_shift_gdp_account_is_the_proofs(mu, delta):
    """Every release's privacy comes from ``shift_gdp``'s ``D`` (times the L2 sensitivity) and
    ``eta`` (times the L1 sensitivity, in delta). A tail ``T`` one too small, a log-concavity
    bound ``kappa`` a little low or a tail bound ``eta`` below the proof's own understates the
    loss; at noise of the size of a real run this moves epsilon by parts per million only, so
    the proof's numbers are checked where they show, at small ``mu``."""
    increment, eta = shift_gdp(mu, delta)
    expected_increment, expected_eta = proof_shift(mu, delta)
    if math.isinf(expected_increment):
        assert (increment, eta) == (math.inf, 0.0)
    else:
        assert increment == pytest.approx(expected_increment, rel=1e-12)
        assert math.isclose(eta, expected_eta, rel_tol=1e-9, abs_tol=0.0)  # eta is ~1e-92
        assert 0 < eta <= delta * math.exp(-TAIL_MARGIN)


def test_step_5_decides_where_the_account_starts_to_claim_anything():
    """The least noise with a claim: below it step 5's ratio condition fails (``kappa`` is
    already below 0.35 there), so the proof says nothing and the account must say nothing."""
    low, high = 2.0, 1000.0
    while high - low > 1e-7 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if math.isinf(proof_shift(middle, 1e-5)[0]) else (low, middle)
    assert 90 < low < 100
    assert shift_gdp(low * (1 - 1e-6), 1e-5) == (math.inf, 0.0)
    assert math.isfinite(shift_gdp(high * (1 + 1e-6), 1e-5)[0])


def test_a_coordinate_just_below_an_integer_still_rounds_down_at_its_rate():
    """The likely sensitivity (Hoeffding's, above) holds because each coordinate rounds up with
    probability exactly its fraction: offsets drawn from 1 .. 31 instead of 0 .. 31 would round
    a coordinate 31/32 of the way up always, and bias every large coordinate by ~1/62 (a move
    of ``2 v_i`` times that in the squared norm, far above the ``dim / 4`` the bound allows).
    The head of 77 intents, on its 1/32 grid."""
    model = head(77)
    features, labels = units(64, 7, labels=77)
    steps = GRID_RANGE // integer_norm(dimension(model))
    assert steps == 32
    grid = flat(clipped_grid_sum(model, features, labels, 1.0)).astype(np.int64)
    fraction = np.mod(grid, steps)
    ups = np.stack([flat(noisy_integer_sum(model, features, labels, 1.0, 0.0, seed))
                    - np.floor_divide(grid, steps) for seed in range(10)])
    assert set(np.unique(ups)) <= {0, 1}
    assert not ups[:, fraction == 0].any()
    for j in (1, steps // 2, steps - 1):
        trials = ups[:, fraction == j]
        assert trials.size >= 2000
        rate = j / steps
        assert abs(trials.mean() - rate) <= 5 * math.sqrt(rate * (1 - rate) / trials.size)




def test_a_gdp_guarantee_within_delta_at_epsilon_zero_is_epsilon_zero():
    """Tiny ``mu`` (more noise than signal by far): epsilon 0, not a failed search or a made-up
    number."""
    assert gdp_delta(0.0, 1e-7) <= 1e-5
    assert gdp_epsilon(1e-7, 1e-5) == 0.0



def test_a_coupling_cost_past_its_share_of_delta_leaves_no_claim():
    """The coupling and the rounding failures may cost at most ``1e-9 delta`` at the returned
    epsilon, and that cost is ``(1 + e**eps)`` times their probability (both sides of the
    hockey stick): a failure probability just past it must give no claim, even where
    ``e**eps`` alone (or ``2 x``) would still fit."""
    delta, l2, releases, mu = 1e-5, 8200.0, 30, 4.2e9
    epsilon = skellam_gdp_epsilon([(mu, l2**2, l2, 0.0)] * releases, delta)
    assert 1.5 < epsilon < 3
    increment, eta = shift_gdp(mu, delta)
    allowed = 1e-9 * delta / (1 + math.exp(epsilon)) - releases * l2**2 * eta
    for share, claims in ((0.999, True), (1.001, False)):
        release = (mu, l2**2, l2, share * allowed / releases)
        assert math.isfinite(skellam_gdp_epsilon([release] * releases, delta)) == claims


# --- the transport ----------------------------------------------------------------------------


def test_compact_refuses_a_masked_value_outside_32_bits_and_keeps_both_ends():
    """A masked value outside ``[0, 2**32)`` sent as ``uint32`` would silently wrap, and the
    server would decode a sum that is not the sites' (and not what the account covers)."""
    ends = np.array([0, 1, MODULUS - 1], dtype=np.int64)
    assert [a.tolist() for a in expand(compact([ends]))] == [ends.tolist()]
    for bad in (-1, MODULUS, MODULUS + 5):
        with pytest.raises(ValueError, match="32 bits"):
            compact([ends, np.array([7, bad], dtype=np.int64)])
    assert compact([np.zeros(0, dtype=np.int64)])[0].size == 0


@pytest.mark.parametrize("sites", [1, 2, 3, 4, 7, 8, 100, 1023])
def test_the_sum_range_is_the_largest_power_of_two_whose_weights_do_not_wrap(sites):
    """``T x (sites + 1) <= MODULUS`` (Flower adds each site's weight ``T``), and no larger power
    of two fits: a smaller ``T`` clips sums that would fit, a larger one wraps the weights."""
    target = sum_range(sites)
    assert target & (target - 1) == 0
    assert target * (sites + 1) <= MODULUS < 2 * target * (sites + 1)


@pytest.mark.parametrize("sites", [0, -1])
def test_a_secure_sum_of_no_site_is_refused(sites):
    """No range is planned for an empty (or negative) cohort: it would be 2**32 or a crash."""
    with pytest.raises(ValueError, match="at least one site"):
        sum_range(sites)


@pytest.mark.parametrize("dim", [1, 2, 63, 64, 65, 100, 770, HEAD_DIM, 10**6, 2**26])
def test_the_integer_norm_is_the_documented_power_of_two(dim):
    """The scale the accountant's sensitivity, the site's rounding (``GRID_RANGE // norm`` grid
    steps per integer, exact only for a power of two) and the server's decoding all assume:
    the smallest power of two of at least ``32 sqrt(dim)`` and 256."""
    norm = integer_norm(dim)
    assert norm & (norm - 1) == 0 and GRID_RANGE % norm == 0
    assert norm >= max(256, 32 * math.sqrt(dim))
    assert norm == 256 or norm / 2 < 32 * math.sqrt(dim)
