"""Distributed DP accounting: the Skellam mechanism's Rényi DP, epsilon and planned noise."""

import math
import warnings
from functools import lru_cache

import numpy as np
import pytest
from opacus.accountants import RDPAccountant
from scipy.special import logsumexp
from scipy.stats import skellam

from fl_client.privacy_accounting import (
    FILTER_ORDERS,
    BudgetExhausted,
    plan_skellam_mu,
    rdp_epsilon,
    skellam_epsilon,
    skellam_mu_within_rdp,
    skellam_rdp,
    skellam_rdp_epsilon,
)
from fl_client.skellam_gdp import skellam_gdp_epsilon

ORDERS = (1.5, 2, 2.5, 3.9, 4, 8, 16, 32)
SHIFTS = (1, 3, 10)
LOG_PMF_FLOOR = -700.0
"""Below this a pmf is near the smallest normal double, where scipy's value loses precision."""


@lru_cache(maxsize=8)
def _log_pmf(mu: float) -> np.ndarray:
    """log P[Sk(mu) = k] for k = -half .. half, wide enough that the ends fall below the floor."""
    half = int(40 * math.sqrt(2 * mu)) + 400
    log_pmf = skellam.logpmf(np.arange(-half, half + 1), mu, mu)
    assert log_pmf[0] < LOG_PMF_FLOOR and log_pmf[-1] < LOG_PMF_FLOOR
    return log_pmf


def exact_renyi(mu: float, shift: int, order: float) -> tuple[float, float]:
    """The exact Rényi divergences of ``order`` between Sk(mu) + shift and Sk(mu), both ways,
    summed over every integer where both pmfs are representable. The terms at the ends of that
    window must be e^-30 below the sum, so the tails left out cannot matter."""
    log_pmf = _log_pmf(mu)
    log_q = log_pmf[shift:]  # Sk(mu) at k
    log_p = log_pmf[:-shift]  # Sk(mu) + shift at k: Sk(mu) at k - shift
    inside = np.flatnonzero((log_p > LOG_PMF_FLOOR) & (log_q > LOG_PMF_FLOOR))
    assert np.all(np.diff(inside) == 1), "the representable window must be one interval"
    log_p, log_q = log_p[inside], log_q[inside]
    divergences = []
    for first, second in ((log_p, log_q), (log_q, log_p)):
        terms = order * first + (1 - order) * second
        total = logsumexp(terms)
        assert total - max(terms[0], terms[-1]) > 30, "the support is too narrow"
        divergences.append(float(total) / (order - 1))
    return divergences[0], divergences[1]


@pytest.mark.parametrize("mu", [5, 50, 500, 5e4])
def test_skellam_rdp_bounds_the_exact_divergence(mu):
    for shift in SHIFTS:
        for order in ORDERS:
            forward, backward = exact_renyi(mu, shift, order)
            assert forward > 0 and backward > 0
            bound = skellam_rdp(mu, shift, shift, order)
            assert bound >= max(forward, backward), (mu, shift, order)


def test_skellam_rdp_is_tight_when_mu_dwarfs_the_sensitivity():
    # mu = 5e4 >> 10**2: at integer orders the closed form is within 0.001% of the exact
    # divergence here (measured: 1.00001x); allow 0.1%. Between integers the chord adds its own
    # slack: 0.8% at order 3.9 (3.931 against 3.9 Gaussian terms), 7% at 2.5 (2.667 / 2.5).
    for order, slack in ((2, 1.001), (4, 1.001), (8, 1.001), (32, 1.001), (3.9, 1.009),
                         (2.5, 1.067)):
        exact = max(exact_renyi(5e4, 10, order))
        assert skellam_rdp(5e4, 10, 10, order) <= slack * exact, order


@pytest.mark.parametrize("mu,l1,l2", [(5, 10, 10), (50, 3, 3), (1e4, 100, 10)])
def test_skellam_rdp_between_integer_orders_is_the_chord_of_the_theorem(mu, l1, l2):
    # (order - 1) x Rényi DP is convex in the order, so between integers the bound is the chord
    # through the theorem's values at them: never below the theorem's formula at the order
    # itself, never above its value at the next integer.
    def theorem(order: float) -> float:
        return order * l2**2 / (4 * mu) + min(((2 * order - 1) * l2**2 + 6 * l1) / (16 * mu**2),
                                              3 * l1 / (4 * mu))

    assert skellam_rdp(mu, l1, l2, 1.5) == pytest.approx(theorem(2), rel=1e-12)
    cgf = 0.1 * 2 * theorem(3) + 0.9 * 3 * theorem(4)
    assert skellam_rdp(mu, l1, l2, 3.9) == pytest.approx(cgf / 2.9, rel=1e-12)
    for order in (1.1, 2.5, 3.9, 7.3, 62.5):
        assert theorem(order) <= skellam_rdp(mu, l1, l2, order) <= theorem(math.ceil(order))


def test_skellam_rdp_is_loose_but_valid_for_little_noise():
    # mu = 5, shift 10, order 32: the bound is 161.5 against an exact 23.7, still an upper bound.
    forward, _ = exact_renyi(5, 10, 32)
    assert forward == pytest.approx(23.74, abs=0.01)
    assert skellam_rdp(5, 10, 10, 32) == pytest.approx(161.5)


@pytest.mark.parametrize("mu,l1,l2,order,expected", [
    # mu > ((2 order - 1) l1 + 6) / 12 for l1 = l2 = shift: the 1 / mu**2 correction is the least
    (50, 1, 1, 2, 2 / 200 + (3 * 1 + 6) / (16 * 50**2)),
    (1e4, 100, 10, 8, 8 * 100 / 4e4 + (15 * 100 + 600) / (16 * 1e8)),
    # little noise: the 3 l1 / (4 mu) correction is the least
    (5, 10, 10, 32, 32 * 100 / 20 + 30 / 20),
    (1, 3, 3, 4, 4 * 9 / 4 + 9 / 4),
])
def test_skellam_rdp_is_theorem_3_5(mu, l1, l2, order, expected):
    assert skellam_rdp(mu, l1, l2, order) == pytest.approx(expected, rel=1e-12)


def test_skellam_rdp_tends_to_the_gaussian_from_above():
    l2 = 1000.0
    gaps = []
    for mu in (1e6, 1e8, 1e10):
        for order in (1.5, 8, 63):
            gaussian = order * l2**2 / (2 * (2 * mu))
            bound = skellam_rdp(mu, l2**2, l2, order)
            assert bound > gaussian
            gaps.append(bound / gaussian - 1)
    assert gaps[-1] < 1e-7
    assert gaps[-3:] < gaps[:3]


def test_skellam_rdp_without_noise_is_infinite_and_orders_exceed_one():
    assert skellam_rdp(0, 1, 1, 2) == math.inf
    with pytest.raises(ValueError):
        skellam_rdp(10, 1, 1, 1)
    with pytest.raises(ValueError):
        skellam_rdp(-1, 1, 1, 2)


@pytest.mark.parametrize("delta", [1e-5, 1e-7])
def test_skellam_rdp_epsilon_matches_opacus_gaussian_for_large_mu(delta):
    sigma, l2 = 5.0, 1000.0
    mu = (sigma * l2) ** 2 / 2
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1.0, 40)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gaussian = accountant.get_epsilon(delta=delta)
    epsilon = skellam_rdp_epsilon([(mu, l2**2, l2)] * 40, delta)
    assert gaussian <= epsilon <= 1.01 * gaussian


def test_skellam_rdp_epsilon_is_the_best_order_of_the_filter_grid():
    mu, l1, l2, releases, delta = 3e6, 1030.0**2, 1030.0, 40, 1e-5
    expected = min(rdp_epsilon(releases * skellam_rdp(mu, l1, l2, order), order, delta)
                   for order in FILTER_ORDERS)
    assert skellam_rdp_epsilon([(mu, l1, l2)] * releases, delta) == pytest.approx(expected,
                                                                              rel=1e-12)


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha")
@pytest.mark.parametrize("mu", [2.0, 3e3, 3e6, 3e9])
def test_skellam_epsilon_is_the_tighter_of_its_two_accounts(mu):
    l2, releases, delta = 1030.0, 40, 1e-5
    query = [(mu, l2**2, l2)] * releases
    both = (skellam_rdp_epsilon(query, delta),
            skellam_gdp_epsilon([(mu, l2**2, l2, 0.0)] * releases, delta))
    assert skellam_epsilon(mu, l2**2, l2, releases, delta) == min(both)
    # a likely sensitivity is the Gaussian-DP account's alone; the Rényi one keeps the sure one
    likely = (1000.0**2, 1000.0, 1e-90)
    both = (skellam_rdp_epsilon(query, delta),
            skellam_gdp_epsilon([(mu, *likely)] * releases, delta))
    assert skellam_epsilon(mu, l2**2, l2, releases, delta, likely) == min(both)


def test_skellam_epsilon_without_releases_or_noise():
    assert skellam_epsilon(1e6, 1e6, 1e3, 0, 1e-5) == 0.0
    assert skellam_epsilon(0, 1e6, 1e3, 1, 1e-5) == math.inf


def test_skellam_epsilon_falls_with_noise_and_grows_with_releases_and_sensitivity():
    l2, delta = 1030.0, 1e-5
    by_mu = [skellam_epsilon(mu, l2**2, l2, 40, delta) for mu in (1e6, 1e7, 1e8, 1e9)]
    assert all(a > b for a, b in zip(by_mu, by_mu[1:], strict=False))
    by_releases = [skellam_epsilon(1e7, l2**2, l2, n, delta) for n in (1, 10, 40, 200)]
    assert all(a < b for a, b in zip(by_releases, by_releases[1:], strict=False))
    by_l2 = [skellam_epsilon(1e7, s**2, s, 40, delta) for s in (100.0, 1030.0, 3000.0)]
    assert all(a < b for a, b in zip(by_l2, by_l2[1:], strict=False))


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_plan_skellam_mu_is_the_least_noise_within_target(target):
    l2, delta, releases = 1030.0, 1e-5, 40
    mu = plan_skellam_mu(target, delta, l2**2, l2, releases)
    assert skellam_epsilon(mu, l2**2, l2, releases, delta) <= target
    # within the search's 0.1%: a hair less noise (0.999 x, so also 0.99 x) overshoots
    assert skellam_epsilon(0.999 * mu, l2**2, l2, releases, delta) > target


def test_plan_skellam_mu_for_a_small_query_and_one_release():
    mu = plan_skellam_mu(2.0, 1e-5, 1.0, 1.0, 1)
    assert skellam_epsilon(mu, 1.0, 1.0, 1, 1e-5) <= 2.0
    assert skellam_epsilon(0.999 * mu, 1.0, 1.0, 1, 1e-5) > 2.0


def test_plan_skellam_mu_declines_an_unreachable_target():
    # epsilon 1e-3 over 40 releases needs noise ~3e4 x the sensitivity, above the cap of 1e4.
    with pytest.raises(BudgetExhausted):
        plan_skellam_mu(1e-3, 1e-5, 1030.0**2, 1030.0, 40)


def test_skellam_plans_reject_meaningless_queries():
    with pytest.raises(ValueError):
        plan_skellam_mu(1.0, 1e-5, 1.0, 1.0, 0)
    with pytest.raises(ValueError):
        skellam_mu_within_rdp(0.0, 0.0, 1, 8.0, 1.0)


@pytest.mark.parametrize("order,budget", [(8.0, 0.5), (2.5, 3.0), (32.0, 10.0)])
def test_skellam_mu_within_rdp_is_the_least_noise_within_budget(order, budget):
    l2, releases = 1030.0, 40
    mu = skellam_mu_within_rdp(l2**2, l2, releases, order, budget)
    assert releases * skellam_rdp(mu, l2**2, l2, order) <= budget
    assert releases * skellam_rdp(0.999 * mu, l2**2, l2, order) > budget


def test_skellam_mu_within_rdp_unlimited_and_exhausted_budgets():
    assert skellam_mu_within_rdp(1e6, 1e3, 40, 8.0, math.inf) == 0.0
    for budget in (0.0, -1.0):
        with pytest.raises(BudgetExhausted, match="at its delta"):
            skellam_mu_within_rdp(1e6, 1e3, 40, 8.0, budget)
    # a budget so small that even the largest noise overshoots it
    with pytest.raises(BudgetExhausted):
        skellam_mu_within_rdp(1e6, 1e3, 40, 8.0, 1e-12)
