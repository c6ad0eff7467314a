"""The Gaussian-DP account of the Skellam sum (fl_client/skellam_gdp.py): each step of its proof
checked against exact values of the Skellam law, and the account against Opacus' PRV
accountant, an independent implementation of the exact Gaussian composition."""

import math
import warnings

import mpmath
import numpy as np
import pytest
from opacus.accountants import PRVAccountant
from scipy.special import ive, log_ndtr, ndtri

from fl_client.distributed_dp import ROUNDING_FAILURE
from fl_client.privacy_accounting import plan_skellam_mu, skellam_rdp_epsilon
from fl_client.privacy_budget import skellam_sensitivity
from fl_client.skellam_gdp import (
    MIN_RATIO,
    TAIL_MARGIN,
    bessel_ratio_bounds,
    gdp_delta,
    gdp_epsilon,
    largest_increment,
    log_normal_cdf,
    shift_gdp,
    skellam_gdp_epsilon,
)

HEAD_DIM = 29_645


def _bessel_ratios(x: float, largest: int) -> list[mpmath.mpf]:
    """I_(n+1)(x) / I_n(x) for n = 0 .. largest, by backward recurrence in 40 digits (Miller's
    algorithm: started far enough beyond, the error dies out long before it reaches ``largest``)."""
    xm = mpmath.mpf(x)
    ratio, ratios = mpmath.mpf(0), [None] * (largest + 1)
    for n in range(int(largest + x + 60 * math.sqrt(x + 1) + 200), -1, -1):
        ratio = xm / (2 * (n + 1) + xm * ratio)
        if n <= largest:
            ratios[n] = ratio
    return ratios


@pytest.mark.parametrize("x", [1e-3, 0.5, 2.0, 10.0, 100.0, 1e3, 3e4])
def test_the_bessel_ratio_bounds_of_step_3_hold(x):
    orders = [0, 1, 2, 3, 5, 10, 30, 100, 1000, 10_000, 30_000]
    with mpmath.workdps(40):  # mpmath's precision is process-wide: set it for this test only
        _check_ratio_bounds(x, orders, _bessel_ratios(x, max(orders)))


def _check_ratio_bounds(x: float, orders: list[int], ratios: list) -> None:
    for n in orders:
        xm, nm = mpmath.mpf(x), mpmath.mpf(n)
        below = xm / (nm + 0.5 + mpmath.sqrt((nm + 1.5) ** 2 + xm**2))
        above = xm / (nm + 0.5 + mpmath.sqrt((nm + 0.5) ** 2 + xm**2))
        assert below <= ratios[n] <= above, (x, n)
        assert bessel_ratio_bounds(x, n) == pytest.approx((float(below), float(above)),
                                                          rel=1e-12)  # the code's, too


def _skellam(x: float, half: int) -> tuple[np.ndarray, np.ndarray]:
    """The Skellam law of variance ``x`` on 0 .. half: log p(t), and log P(Z > t)."""
    t = np.arange(half + 400)
    with np.errstate(divide="ignore"):  # e^-x I_t(x) underflows to 0 far beyond ``half``
        log_p = np.log(ive(t, x))  # the law of Poisson(x/2) - Poisson(x/2)
    log_tail = np.logaddexp.accumulate(log_p[::-1])[::-1]  # P(Z >= t)
    return log_p[: half + 1], log_tail[1: half + 2]


@pytest.mark.parametrize("x", [20.0, 200.0, 2000.0, 20_000.0])
def test_every_increment_is_within_the_lemma(x):
    """Steps 2 and 3 on the exact law: the largest increment of Phi^-1(F) is at most the
    bound from the law's own log-concavity, which is at most the bound from the Bessel ratios."""
    half = int(14 * math.sqrt(x))
    log_p, log_tail = _skellam(x, half)
    assert np.all(np.isfinite(log_p)) and log_tail[-1] < -60
    above = -ndtri(np.exp(log_tail))  # a_t = Phi^-1(F(t)) = -Phi^-1(P(Z > t)), t >= 0
    increments = np.concatenate([[2 * above[0]], np.diff(above)])
    middle = log_p[1:-1]
    concavity = np.concatenate([[2 * (log_p[0] - log_p[1])],
                                2 * middle - log_p[:-2] - log_p[2:]])
    kappa_true = float(concavity.max())
    kappa_bound = (1 + (2 * half + 1) / x) / x
    assert 1 / x < kappa_true <= kappa_bound
    assert 1 / math.sqrt(x) < increments.max() <= largest_increment(kappa_true)
    assert increments.argmax() == 0  # the centre, where the law is most like a Gaussian


@pytest.mark.parametrize("mu", [1e3, 1e4])
def test_one_coordinate_privacy_curve_is_below_the_gaussian_one(mu):
    """The claim end to end for one coordinate: the exact (epsilon, delta) curve of Sk(mu) + k
    against Sk(mu) is below the GDP curve of ``D k`` (plus the coupling's cost), both for the
    account's ``D`` and for the sharper one from the law's own log-concavity."""
    x = 2 * mu
    increment, eta = shift_gdp(mu, 1e-5)
    half = int(40 * math.sqrt(x))
    log_p, _ = _skellam(x, half)
    concavity = max(2 * (log_p[0] - log_p[1]), float(np.max(2 * log_p[1:-1] - log_p[:-2]
                                                            - log_p[2:])))
    sharp = largest_increment(concavity)
    log_law = np.concatenate([log_p[:0:-1], log_p])  # t = -half .. half
    for shift in (1, 4, 16):
        gaussian = shift / math.sqrt(x)
        shifted, plain = log_law[shift:], log_law[:-shift]
        for epsilon in (0.0, gaussian / 2, gaussian, 2 * gaussian, 3 * gaussian):
            gap = np.exp(shifted) - np.exp(epsilon + plain)
            exact = float(gap[gap > 0].sum())
            assert exact <= gdp_delta(epsilon, increment * shift) + (1 + math.exp(epsilon)) * eta
            assert exact <= gdp_delta(epsilon, sharp * shift)
            assert exact > 0.99 * gdp_delta(epsilon, gaussian)  # as private as a Gaussian, no more


@pytest.mark.parametrize("mu", [100.0, 1e3, 1e6, 1e10])
def test_shift_gdp_is_a_little_above_the_gaussian_and_its_tail_is_negligible(mu):
    increment, eta = shift_gdp(mu, 1e-5)
    s = math.sqrt(2 * mu)
    assert 1 < increment * s < 1 + 25 / s
    assert 0 < eta <= 1e-5 * math.exp(-TAIL_MARGIN)


def test_shift_gdp_claims_nothing_for_little_noise():
    assert shift_gdp(0.0, 1e-5) == (math.inf, 0.0)
    assert shift_gdp(0.9, 1e-5) == (math.inf, 0.0)
    assert skellam_gdp_epsilon([(0.9, 1.0, 1.0, 0.0)], 1e-5) == math.inf
    by_mu = [shift_gdp(mu, 1e-5)[0] * math.sqrt(2 * mu) for mu in (30.0, 1e3, 1e5, 1e8)]
    assert all(a > b for a, b in zip(by_mu, by_mu[1:], strict=False))


@pytest.mark.parametrize(("sigma", "steps", "delta"), [(20.4, 30, 1e-5), (7.6, 30, 1e-5),
                                                       (3.3, 30, 1e-5), (1.0, 1, 1e-6)])
def test_gdp_epsilon_is_opacus_prv_account_of_full_batch_gaussian_steps(sigma, steps, delta):
    accountant = PRVAccountant()
    accountant.history = [(sigma, 1.0, steps)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prv = accountant.get_epsilon(delta=delta, eps_error=1e-3)
    assert gdp_epsilon(math.sqrt(steps) / sigma, delta) == pytest.approx(prv, abs=2e-3)


@pytest.mark.parametrize("z", [-1e5, -60.0, -20.001, -20.0, -19.999, -8.0, -1.0, 0.0, 0.5, 4.0,
                               9.0])
def test_log_normal_cdf_is_scipys_far_into_both_tails(z):
    assert log_normal_cdf(z) == pytest.approx(float(log_ndtr(z)), rel=1e-9, abs=1e-15)


def test_gdp_delta_and_epsilon_are_inverse_and_exact_at_zero():
    assert gdp_delta(0.0, 1.0) == pytest.approx(math.erf(0.5 / math.sqrt(2)), rel=1e-12)
    for mu in (0.05, 0.5, 2.0):
        epsilon = gdp_epsilon(mu, 1e-5)
        assert gdp_delta(epsilon, mu) == pytest.approx(1e-5, rel=1e-6)
    assert gdp_epsilon(0.0, 1e-5) == 0.0 and gdp_epsilon(math.inf, 1e-5) == math.inf


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_a_run_plans_the_gaussian_noise_within_a_fraction_of_a_percent(target):
    """30 full-batch releases of the head: the planned Skellam noise is within 0.2% of what
    the Gaussian mechanism needs under its exact account at the likely sensitivity, and below
    the Rényi account's."""
    l1, l2, likely = skellam_sensitivity(HEAD_DIM)
    mu = plan_skellam_mu(target, 1e-5, l1, l2, 30, likely)
    planned = math.sqrt(2 * mu) / likely[1]
    low, high = 0.1, 100.0
    while high / low > 1 + 1e-6:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if gdp_epsilon(math.sqrt(30) / middle, 1e-5) <= target else (
            middle, high)
    assert high <= planned <= 1.002 * high
    assert skellam_rdp_epsilon([(mu, l1, l2)] * 30, 1e-5) > 1.05 * target


def test_the_account_composes_releases_that_differ():
    l2 = 8000.0
    releases = [(1e10, l2**2, l2, 0.0), (4e10, l2**2, l2, 0.0)]
    shifts = [shift_gdp(mu, 1e-5)[0] * l2 for mu, _, _, _ in releases]
    expected = gdp_epsilon(math.sqrt(sum(m * m for m in shifts)), 1e-5 * (1 - 1e-9))
    assert skellam_gdp_epsilon(releases, 1e-5) == pytest.approx(expected, rel=1e-9)
    assert skellam_gdp_epsilon(releases[:1], 1e-5) < skellam_gdp_epsilon(releases, 1e-5)
    assert skellam_gdp_epsilon([], 1e-5) == 0.0


def test_the_constants_of_step_5():
    """A step of 1.9 would need a tail ratio below e**(-1.9 sqrt(2/pi)); every ratio of at
    least MIN_RATIO is above it, and the centre's step is below 1.9 while p(0) < 0.65."""
    assert math.exp(-1.9 * math.sqrt(2 / math.pi)) < MIN_RATIO / (1 + MIN_RATIO)
    assert 2 * ndtri((1 + 0.65) / 2) < 1.9
    assert ive(0, 2.0) < 0.65  # p(0) at the least variance shift_gdp accepts, x = 2


def test_the_rounding_failure_is_paid_in_delta():
    """A sensitivity that fails with probability f per release costs (1 + e**eps) f of delta:
    e**-200 changes nothing; a probability near delta's budget leaves no claim at all."""
    l2 = 8000.0
    sure = skellam_gdp_epsilon([(1e10, l2**2, l2, 0.0)] * 30, 1e-5)
    assert skellam_gdp_epsilon([(1e10, l2**2, l2, ROUNDING_FAILURE)] * 30, 1e-5) == sure
    assert skellam_gdp_epsilon([(1e10, l2**2, l2, 1e-12)] * 30, 1e-5) == math.inf
