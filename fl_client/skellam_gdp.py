"""Gaussian DP of the Skellam sum: the exact account of a distributed-DP run.

The Rényi account of the Skellam mechanism (``privacy_accounting.skellam_rdp``) converts to
(epsilon, delta) loosely: 6 to 8% more noise than an exact Gaussian account for the same
guarantee. This module proves the Skellam sum Gaussian-DP (Dong, Roth and Su, "Gaussian
Differential Privacy", JRSS-B 2022), with a shift parameter a factor ``1 + O(1/s)`` above the
Gaussian's at the same standard deviation ``s``, which converts exactly.

**Claim.** Let every coordinate of the released integer sum carry independent noise
``Sk(mu)`` (variance ``x = 2 mu``), and let two neighbouring data sets move the sum by an
integer vector ``k`` with ``||k||_2 <= l2`` (``||k||_1 <= l1``), except with probability ``f``
over rounding draws common to both. Change the law of the noise on each coordinate where
``k_i != 0`` by at most ``eta`` in total variation (``shift_gdp``): the release is then
``(D l2)``-GDP. Over releases, GDP composes as ``sqrt(sum (D_r l2_r)**2)``, and the coupling
and the rounding together cost ``(1 + e**epsilon) * sum(l1_r * eta_r + f_r)`` of delta
(``skellam_gdp_epsilon`` counts it).

**Proof.** ``p(t) = e**-x I_t(x)`` is the noise's probability of ``t``. For any law on the
integers, ``F`` is its CDF, ``a_t = Phi^-1(F(t))`` and ``d_t = a_t - a_(t-1)`` its steps in
Gaussian quantiles.

1. *A shift is GDP if the steps are small.* For a log-concave law the most powerful tests
   between ``Z`` and ``Z + k`` are thresholds, with errors ``1 - F(tau)`` and ``F(tau - k)``.
   If every ``d_t <= D``, telescoping gives ``a_tau - a_(tau-k) <= D k``: at every threshold
   the trade-off is at least the Gaussian's ``G_(D k)``, and the randomised thresholds between
   are chords above that convex curve. A product of coordinates is then ``D ||k||_2``-GDP (the
   tensor product of Gaussian trade-offs, Dong et al.); coordinates with ``k_i = 0`` change
   nothing. The rounding draws are common to both data sets, and a mixture of pairs that each
   lie above a convex trade-off lies above it too. Where the sensitivity holds only except with
   probability ``f_r`` over round ``r``'s draws, compare with an imagined run whose draws are
   taken conditioned on it, each round given everything before: that run composes as above,
   and each real run (either data set) leaves it only when some round's draws fall outside,
   with probability at most ``sum f_r``. Total variation ``F`` on each side moves every
   hockey-stick divergence at ``e**epsilon`` by at most ``(1 + e**epsilon) F``.
2. *Log-concavity no stronger than a Gaussian's bounds the steps.* Let
   ``log p(t)**2 / (p(t-1) p(t+1)) <= kappa`` for every ``t``, and let ``D = d_t`` be a local
   maximum of the steps, ``A = a_(t-1)``. Then ``p(t) = J(A)``, ``p(t-1) <= J(A - D)`` and
   ``p(t+1) <= J(A + D)``, with ``J(y) = Phi(y + D) - Phi(y)``. So ``kappa`` is at least
   ``-(log J(A-D) - 2 log J(A) + log J(A+D)) >= D**2 (1 - D**2 / 4)``, because
   ``(log J)'' = -1 + Var``, a variance of a law on an interval of length ``D``. Hence
   ``D**2 <= 2 - 2 sqrt(1 - kappa)`` or ``D**2 >= 2 + 2 sqrt(1 - kappa)``; step 5 excludes
   the second, and the largest step is a local maximum, since ``d_t -> 0``.
3. *The Skellam's kappa.* ``p(t)**2 / (p(t-1) p(t+1)) = r_(t-1) / r_t`` with
   ``r_n = I_(n+1)(x) / I_n(x)``, and for ``n >= 0`` (Amos, Math. Comp. 28, 1974; Segura,
   J. Math. Anal. Appl. 374, 2011; Hornik and Grün, J. Math. Anal. Appl. 408, 2013):
   ``x / (n + 1/2 + sqrt((n + 3/2)**2 + x**2)) <= r_n``
   ``<= x / (n + 1/2 + sqrt((n + 1/2)**2 + x**2))``.
   For ``1 <= |t| <= T`` this gives ``kappa <= (1 + (2 T + 1) / x) / x``; at ``t = 0``
   (``r_(-1) = 1 / r_0``) it gives ``1 / x + 9 / (4 x**2)``, also below that.
4. *Far tails.* Beyond ``|t| > T`` these bounds are too loose. So the noise ``p'`` of the
   claim equals ``p`` on ``[-T, T]`` and falls geometrically beyond, with ratio
   ``rho = r_(T-1) e**-kappa``. It is log-concave, its kappa is the same at ``T`` and 0
   beyond, and its steps there shrink (``w -> Phi^-1(1 - e**-w)`` is concave). Normalised, it
   is within ``eta <= 2 P(Z >= T) (1 + 1 / (1 - rho))`` of ``p`` in total variation, and
   Chernoff gives ``P(Z >= T) <= exp(-x L(T / x))``, ``L(b) = b asinh(b) - sqrt(1 + b**2) + 1``.
   ``T`` is the least that makes ``eta <= delta e**-TAIL_MARGIN``.
5. *No step is 1.9 or more*, which excludes step 2's second branch. At ``t >= 1`` (where
   ``a_(t-1) >= 0``) a step ``d_t >= 1.9`` forces ``P(Z > t) / P(Z >= t) <=
   e**(-1.9 sqrt(2/pi))``. But that ratio is at least ``r / (1 + r)`` for the ratio
   ``r = p'(t+1) / p'(t)``, which is at least ``MIN_RATIO`` when the bound of step 3 at
   ``T - 1`` is, times ``e**-kappa``. At ``t = 0``, ``d_0 = 2 Phi^-1((1 + p(0)) / 2) < 1.9``
   while ``p(0) < 0.65``, which ``x >= 2`` gives (``p(0) <= 0.31``). ``shift_gdp`` checks
   these conditions and claims nothing where one fails.

Steps 2 and 3 are checked numerically in ``tests/test_skellam_gdp.py``: the Bessel ratio bounds
against high-precision values, and the largest increment of the exact Skellam CDF against ``D``.
"""

import math
from collections import Counter
from functools import lru_cache

TAIL_MARGIN = 200.0
"""How far below delta each coordinate's total-variation change ``eta`` is kept:
``eta <= delta e**-200``, so that even ``e**100 x 10**20`` coordinates change delta by less than
one part in ``e**50``."""

MIN_RATIO = 0.282
"""Step 5's bound: every ratio ``r`` at least this has ``r / (1 + r) > e**(-1.9 sqrt(2 / pi))``."""


@lru_cache(maxsize=4096)
def shift_gdp(mu: float, delta: float) -> tuple[float, float]:
    """``(D, eta)`` for ``Sk(mu)`` noise: a unit integer shift of one coordinate is ``D``-GDP
    once the coordinate's noise law moves by at most ``eta`` in total variation (the module's
    proof). ``(inf, 0)`` where the proof's conditions fail, which happens only for noise too
    small for any useful guarantee."""
    x = 2 * mu
    if not x >= 2:
        return math.inf, 0.0
    log_eta_limit = math.log(delta) - TAIL_MARGIN
    tail = _least_tail(x, log_eta_limit)
    kappa = (1 + (2 * tail + 1) / x) / x
    lowest_ratio = bessel_ratio_bounds(x, tail - 1)[0] * math.exp(-kappa)  # step 5
    if not (kappa < 0.35 and lowest_ratio >= MIN_RATIO):
        return math.inf, 0.0
    return largest_increment(kappa), math.exp(_log_eta(x, tail))


def largest_increment(kappa: float) -> float:
    """Step 2's bound on every increment ``d_t`` of a law whose log-concavity is at most
    ``kappa`` (and whose increments stay below 1.9): ``sqrt(2 - 2 sqrt(1 - kappa))``."""
    return math.sqrt(2 * kappa / (1 + math.sqrt(1 - kappa)))


def bessel_ratio_bounds(x: float, n: int) -> tuple[float, float]:
    """Step 3's bounds on ``I_(n+1)(x) / I_n(x)`` for ``n >= 0``: the ratio of the noise's
    probabilities of ``n + 1`` and ``n``."""
    return (x / (n + 0.5 + math.sqrt((n + 1.5) ** 2 + x * x)),
            x / (n + 0.5 + math.sqrt((n + 0.5) ** 2 + x * x)))


def _log_eta(x: float, tail: int) -> float:
    """Step 4's bound on the log of the total-variation change for tail ``tail``."""
    ratio_above = bessel_ratio_bounds(x, tail - 1)[1]
    b = tail / x
    chernoff = b * math.asinh(b) - b * b / (1 + math.sqrt(1 + b * b))
    return math.log(2) + math.log1p(1 / (1 - ratio_above)) - x * chernoff


def _least_tail(x: float, log_eta_limit: float) -> int:
    """The least integer ``T >= 1`` with ``_log_eta(x, T) <= log_eta_limit`` (it falls with T)."""
    low, high = 0, 1
    while _log_eta(x, high) > log_eta_limit:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _log_eta(x, middle) <= log_eta_limit else (middle, high)
    return high


def gdp_delta(epsilon: float, mu: float) -> float:
    """The exact delta of ``mu``-GDP at ``epsilon`` (Dong et al., Corollary 2.13): the same
    curve as the Gaussian mechanism's (Balle and Wang 2018)."""
    first = math.exp(log_normal_cdf(-epsilon / mu + mu / 2))
    second = math.exp(epsilon + log_normal_cdf(-epsilon / mu - mu / 2))
    return max(0.0, first - second)


def log_normal_cdf(z: float) -> float:
    """``log Phi(z)``, accurate far into the lower tail (the site image has no scipy): ``erfc``
    down to -20, below it the asymptotic series of Mills' ratio, whose first term left out is
    below 1e-10 of the sum there."""
    if z > 0:
        return math.log1p(-0.5 * math.erfc(z / math.sqrt(2)))
    if z > -20:
        return math.log(0.5 * math.erfc(-z / math.sqrt(2)))
    inverse_square = 1 / (z * z)
    series = 1 - inverse_square * (1 - 3 * inverse_square * (1 - 5 * inverse_square
                                                             * (1 - 7 * inverse_square)))
    return -z * z / 2 - math.log(-z) - math.log(2 * math.pi) / 2 + math.log(series)


def gdp_epsilon(mu: float, delta: float) -> float:
    """The least epsilon at which ``mu``-GDP is ``(epsilon, delta)``-DP (within 1e-9)."""
    if mu == 0:
        return 0.0
    if math.isinf(mu):
        return math.inf
    if gdp_delta(0.0, mu) <= delta:
        return 0.0
    low, high = 0.0, 1.0
    while gdp_delta(high, mu) > delta:
        low, high = high, high * 2
    while high - low > 1e-9 * max(1.0, high):
        middle = (low + high) / 2
        low, high = (low, middle) if gdp_delta(middle, mu) <= delta else (middle, high)
    return high


def skellam_gdp_epsilon(releases: list[tuple[float, float, float, float]], delta: float) -> float:
    """The (epsilon, delta) guarantee of Skellam releases ``(mu, l1, l2, f)`` composed as GDP, the
    sensitivities holding except with probability ``f`` over the rounding draws; the coupling's
    cost and that probability included. ``inf`` where the proof claims nothing."""
    if not releases:
        return 0.0
    squares, coupling = 0.0, 0.0
    for (mu, l1, l2, failure), count in Counter(releases).items():
        increment, eta = shift_gdp(mu, delta)
        squares += count * (increment * l2) ** 2
        coupling += count * (l1 * eta + failure)
    epsilon = gdp_epsilon(math.sqrt(squares), delta * (1 - 1e-9))
    if not math.isfinite(epsilon) or (1 + math.exp(min(epsilon, 700.0))) * coupling > 1e-9 * delta:
        return math.inf
    return epsilon
