"""Epsilon for a site: planning the noise up front and computing what has been spent.

This is the one place where epsilon is computed (the Skellam sum's Gaussian-DP account, with
its proof, is ``fl_client/skellam_gdp.py``, used only from here). A site's guarantee is
(epsilon, delta)-DP for one *privacy unit* of its training data (one utterance by default):
every DP-SGD step samples units with Poisson sampling at rate ``q``, clips each unit's gradient
to ``clip-norm`` and adds Gaussian noise with standard deviation ``noise_multiplier *
clip-norm``. Each step is a subsampled Gaussian mechanism; the accountant composes all of them.

A round's release is recorded as ``(noise_multiplier, sample_rate, steps)``. Two accounts use it:

* **This run** (``plan_noise_multiplier``, ``epsilon_spent``): the run's noise is planned so that
  all its planned rounds together stay within the run's target epsilon, composed with the run's
  accountant (PRV by default, the tightest; or RDP; RDP too past ``PRV_MAX_STEPS`` steps).
* **A unit's lifetime** (``rdp_budget``, ``release_rdp``, ``rdp_epsilon``): every privacy unit
  carries its own spend across all runs and data versions, as Rényi DP at one order fixed when
  the site's ledger is created. This is the individual Rényi filter of Feldman and Zrnic
  ("Individual Privacy Accounting via a Rényi Filter", NeurIPS 2021), applied to each unit's own
  losses with add/remove-one-unit neighbours: a unit takes part in a release only if its spend
  plus the release's Rényi DP stays within the budget ``B``, so the whole adaptive sequence of
  releases is (order, B)-RDP for that unit, and (max-epsilon, delta)-DP after conversion. The
  filter is sound here because each release's per-unit loss is fixed before the release by
  public values (noise multiplier, sample rate, steps: the worst case over all gradients, since
  every unit is clipped to the same norm), and an excluded unit contributes nothing to it.
  Composing at one fixed order is what the theorem requires; PRV composition has no such filter
  result, so the lifetime account is RDP while the per-run plan may use PRV.

Distributed DP (Skellam) (``skellam_rdp``, ``skellam_epsilon``, ``plan_skellam_mu``,
``skellam_mu_within_rdp``): with secure aggregation each site adds integer Skellam noise
``Sk(mu) = Poisson(mu) - Poisson(mu)`` (variance ``2 mu`` per coordinate) to its integer-rounded
sum of clipped per-example gradients, and only the sum over sites is revealed, whose noise is
``Sk(sum of the mus)``. A release is one round: one full-batch gradient sum, no subsampling. Two
accounts hold for it, and a run's epsilon is the smaller:

* its Rényi DP, the closed form of Agarwal, Kairouz and Liu ("The Skellam Mechanism for
  Differentially Private Federated Learning", NeurIPS 2021, Theorem 3.5) for the L1 and L2
  sensitivities of the rounded sum, composed additively at each order and converted with
  Opacus' conversion over the filter's orders, with the sensitivities that hold whatever the
  rounding draws (``SkellamRelease.l1``, ``l2``). The lifetime filter uses it.
* its Gaussian DP (``fl_client/skellam_gdp.py``, with its proof), composed and converted
  exactly, with the sensitivities that hold except with probability e**-200 over the rounding
  draws (``likely_l1``, ``likely_l2``; 2% smaller), that probability paid in delta. For the
  noise of real runs it is the Gaussian mechanism's own account within 0.1%, and needs 8 to 10%
  less noise than the Rényi one for the same run epsilon.

Opacus is imported inside the functions that use it: the import takes about 2 s, and Flower
starts a fresh ClientApp process for every message, most of which never train (evaluation,
three of SecAgg+'s four stages).
"""

import math
import warnings
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from typing import NamedTuple

from fl_client.skellam_gdp import skellam_gdp_epsilon
from fl_protocol.wire import ACCOUNTANTS, DEFAULT_MAX_EPSILON_ALONE, MAX_AUTO_DELTA

MAX_NOISE_MULTIPLIER = 1e4
"""The most noise a site plans (standard deviation over clip norm): a budget that needs more is
spent for all practical purposes, and the round is declined with ``BudgetExhausted`` rather
than sent as an update that is all noise (``noise_within_rdp``)."""
MAX_SKELLAM_MU = 2.0**40
"""The most Skellam noise a site plans: numpy's Poisson sampler is exact to its precision up to
about there (variance within 0.1% at 1e12); from about 5e13 its double-precision acceptance test
loses unit precision (variance 0.8 to 1.3 times the planned), and above 2**53 its draws lie on a
lattice whose low bits carry no noise at all (found in review: a small target reached both)."""

DELTA_UNITS_FACTOR = 10
"""delta must stay below 1 / (DELTA_UNITS_FACTOR * units at the site)."""

Release = tuple[float, float, int]
"""One DP release: (noise multiplier, Poisson sample rate, number of DP-SGD steps)."""


class BudgetExhausted(RuntimeError):
    """Training would take the site past its own max-epsilon; the site declines."""


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return name


PRV_MAX_STEPS = 100_000
"""The most DP-SGD steps the PRV accountant plans a run for; a run planned for more is planned,
and its epsilon reported (``privacy_budget.run_epsilons``), with RDP, a looser bound, still
sound, computed in under a second; a target RDP cannot reach there (below about 0.2 to 0.45,
by delta) is declined (``UnplannableRun``). Found in review: a plan inside the wire
contract's ranges (batch-size 1, 100 local epochs, 100 rounds) made one PRV search take 170 s
and 5 GB at 10**6 steps, the state folder locked meanwhile, and larger ones tried to allocate
30 to 48 GiB. At 10**5 steps (Poisson rate 0.01) a search took about 30 s and 2 GB here; the
runs fedintent plans take a few hundred steps."""


def feasible_accountant(accountant: str, planned_steps: int) -> str:
    """``accountant``, or RDP where it is PRV and a run is planned for more than
    ``PRV_MAX_STEPS`` steps."""
    if check_accountant(accountant) == "prv" and planned_steps > PRV_MAX_STEPS:
        return "rdp"
    return accountant


class UnplannableRun(ValueError):
    """The run's target cannot be planned over its steps with an accountant the site affords
    (``PRV_MAX_STEPS``); the site declines the round, nothing charged."""


def steps_per_round(num_units: int, batch_size: int, local_epochs: int) -> tuple[float, int]:
    """Poisson sample rate and DP-SGD steps for one round of local training.

    Matches Opacus' ``DPDataLoader``: an epoch is ``ceil(n / batch_size)`` steps, each drawing
    every unit independently with probability ``1 / ceil(n / batch_size)``.
    """
    if num_units < 1:
        raise ValueError("a site needs at least one training example")
    batches = math.ceil(num_units / batch_size)
    return 1.0 / batches, batches * local_epochs


def delta_limit(units: int) -> float:
    """The bound a site's delta must stay below for ``units`` units (> 0): small next to
    1 / units, or releasing one unit's data verbatim would fit inside the guarantee."""
    return 1.0 / (DELTA_UNITS_FACTOR * units)


def default_delta(units: int) -> float:
    """A site's delta when the run asks for none: the largest power of ten strictly below
    1 / (10 x units), at most 1e-5 (at 10**4 units, 1e-6: found in review, the limit itself,
    which the site's own checks then called too large). Here so that everything that trains
    like a site (the ClientApp, the privacy audit) uses the same delta; the server holds a
    reported delta to the same 1e-5."""
    limit = delta_limit(units)
    power = math.floor(math.log10(limit))
    if 10.0**power >= limit:
        power -= 1
    return min(MAX_AUTO_DELTA, 10.0**power)


@lru_cache(maxsize=256)
def plan_noise_multiplier(
    target_epsilon: float, delta: float, sample_rate: float, total_steps: int, accountant: str
) -> float:
    """The smallest noise (within search tolerance) whose total epsilon stays below the target.

    ``total_steps`` covers every round the run plans for this site, so that after the last round
    the cumulative epsilon is at most ``target_epsilon``. Cached: a PRV search takes seconds, and
    sites of one run with full-batch steps all ask the same question.
    """
    from opacus.accountants.utils import get_noise_multiplier

    planner = feasible_accountant(accountant, total_steps)
    with warnings.catch_warnings():
        _ignore_accountant_warnings()
        try:
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=total_steps,
                accountant=planner,
                epsilon_tolerance=0.005 * target_epsilon,
            )
        except ValueError as err:
            if planner == accountant:
                raise
            raise UnplannableRun(
                f"target-epsilon {target_epsilon:g} over {total_steps} steps: past "
                f"{PRV_MAX_STEPS} steps the site plans with RDP, which cannot reach it at delta "
                f"{delta:g}") from err
    return float(sigma)


def plan_run_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    run_steps: int,
    accountant: str,
    order: float,
    budget: float,
) -> float:
    """The noise multiplier of a run: enough for the run's own ``target_epsilon`` over all its
    planned steps, and never less than lets a unit new to the site finish the whole run within
    its lifetime ``budget`` (Rényi DP at ``order``). Public values only, so the plan reveals
    nothing about the site's data."""
    return max(
        plan_noise_multiplier(target_epsilon, delta, sample_rate, run_steps, accountant),
        noise_within_rdp(sample_rate, run_steps, order, budget),
    )


def fresh_site_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    run_steps: int,
    accountant: str,
    max_epsilon: float,
    ledger_delta: float,
    max_epsilon_alone: float = DEFAULT_MAX_EPSILON_ALONE,
) -> float:
    """The noise multiplier a site with a new ledger plans for a local-DP run at ``delta``:
    ``plan_run_noise`` under the lifetime filter that ledger fixes for ``max_epsilon`` (the
    site's lifetime budget per unit) at ``ledger_delta``, at the order its
    ``max_epsilon_alone`` may fix (``lifetime_filter``). ``ledger_delta``: where the site's
    ledger begins, its own delta for its units (``privacy_budget.lifetime_delta``; the default
    policy's is ``default_delta``), never the run's (found in review: planned at the run's
    1e-10, a simulated site added 0.87 where a real one adds 0.71). What a simulation of sites
    must train with (the privacy audit, the tuning scripts): the run's own plan alone is up to
    6% less noise than real sites add when the run's target is their whole budget, so it scored
    settings above what they deliver."""
    return plan_run_noise(target_epsilon, delta, sample_rate, run_steps, accountant,
                          *lifetime_filter(max_epsilon, ledger_delta, max_epsilon_alone))


FILTER_ORDERS = tuple([1 + x / 10 for x in range(1, 100)] + [float(x) for x in range(11, 64)])
"""Rényi orders the lifetime filter may be fixed at (Opacus' default grid), every one a float:
a ledger MACs its order as written, and one fixed at the int 18 read back as 18.0 no longer
verified (found in review: a site whose budget fixed an order from 11 up trained one round)."""


def filter_order(max_epsilon: float, delta: float) -> float:
    """The Rényi order a new ledger fixes for good: the one under which a unit's budget admits
    the most Gaussian noise steps (the largest ``rdp_budget / order``). Depends only on the
    site's policy, never on its data. An unlimited budget has no best order; it takes that of
    a budget of 10**6."""
    bounded = min(max_epsilon, 1e6)
    return max(FILTER_ORDERS, key=lambda order: rdp_budget(bounded, delta, order) / order)


def lifetime_filter(max_epsilon: float, delta: float,
                    max_epsilon_alone: float = math.inf) -> tuple[float, float]:
    """(order, Rényi budget) of the lifetime filter a new ledger fixes for ``max_epsilon`` at
    ``delta``: what a unit new to the site may spend. The order is the best for the smaller of
    ``max_epsilon`` and ``max_epsilon_alone`` (a site that takes part in distributed DP: its
    units' own-noise accounts, never below their spends, meet that bound first; found in
    review: at the order best for a max-epsilon of 50 or inf, a max-epsilon-alone of 14 or 50
    converted to no Rényi budget at all, and the site declined every distributed run)."""
    order = filter_order(min(max_epsilon, max_epsilon_alone), delta)
    return order, rdp_budget(max_epsilon, delta, order)


def rdp_budget(max_epsilon: float, delta: float, order: float) -> float:
    """The Rényi DP at ``order`` that converts to exactly ``(max_epsilon, delta)``.

    The inverse of the conversion Opacus' RDP accountant uses (Balle et al. 2020, Theorem 21):
    ``epsilon = rdp + log((order - 1) / order) - (log(delta) + log(order)) / (order - 1)``.
    ``inf`` for an unlimited budget; may be <= 0 when max-epsilon is too small for any release.
    """
    if math.isinf(max_epsilon):
        return math.inf
    return (max_epsilon + (math.log(delta) + math.log(order)) / (order - 1)
            - math.log((order - 1) / order))


def rdp_epsilon(rdp: float, order: float, delta: float) -> float:
    """The (epsilon, delta) guarantee of a Rényi DP spend at ``order`` (0 for no spend)."""
    if rdp == 0:
        return 0.0
    return rdp - (math.log(delta) + math.log(order)) / (order - 1) + math.log((order - 1) / order)


def release_rdp(noise_multiplier: float, sample_rate: float, steps: int, order: float) -> float:
    """Rényi DP at ``order`` of one release (``steps`` Poisson-subsampled Gaussian steps), the
    most any one unit can lose in it; ``inf`` without noise."""
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants.analysis.rdp import compute_rdp

    return float(compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                             orders=[order])[0])


@lru_cache(maxsize=256)
def noise_within_rdp(sample_rate: float, steps: int, order: float, budget: float) -> float:
    """The smallest noise multiplier (within 0.1%, rounded up) whose ``steps`` steps cost at
    most ``budget`` Rényi DP at ``order``; 0 for an unlimited budget. Raises
    ``BudgetExhausted`` when no noise would do."""
    if math.isinf(budget):
        return 0.0
    if not budget > 0:
        raise BudgetExhausted("the site's max-epsilon is too small for any release at its delta")

    def fits(noise: float) -> bool:
        return release_rdp(noise, sample_rate, steps, order) <= budget

    high = 1.0
    while not fits(high):
        high *= 2
        if high > MAX_NOISE_MULTIPLIER:
            raise BudgetExhausted("the site's max-epsilon is too small for any release")
    low = high / 2
    while low > 1e-3 and fits(low):
        high, low = low, low / 2
    while (high - low) / high > 1e-3:
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high


def epsilon_spent(releases: list[Release], delta: float, accountant: str) -> float:
    """Cumulative epsilon of all releases at the given delta (0.0 for an empty history)."""
    if not releases:
        return 0.0
    return _composed_epsilon(tuple(coalesce(releases)), float(delta), check_accountant(accountant))


@lru_cache(maxsize=256)
def _composed_epsilon(history: tuple[Release, ...], delta: float, accountant: str) -> float:
    """``epsilon_spent`` of a coalesced history. Cached: a PRV composition takes about half a
    second, and ``fedintent privacy-report`` composes every run of the ledger, most of them
    runs of one plan (a year of one daily run: 365 compositions of the same history)."""
    from opacus.accountants import create_accountant

    acc = create_accountant(mechanism=accountant)
    acc.history = list(history)
    with warnings.catch_warnings():
        _ignore_accountant_warnings()
        return float(acc.get_epsilon(delta=delta))


def coalesce(releases: list[Release]) -> list[Release]:
    """The same releases with equal (noise, sample rate) merged into one entry of summed steps.

    Composition only counts how many steps of each mechanism were run, so this changes nothing
    in the result; it makes the accountant's work grow with the number of distinct mechanisms
    instead of the number of rounds (40 one-step rounds: 3.7 s with PRV, merged: 0.1 s).
    """
    steps: dict[tuple[float, float], int] = {}
    for noise, rate, count in releases:
        key = (float(noise), float(rate))
        steps[key] = steps.get(key, 0) + int(count)
    return [(noise, rate, count) for (noise, rate), count in steps.items()]


def _ignore_accountant_warnings() -> None:
    """Silence two harmless accountant warnings: RDP's note about its alpha range, and the PRV
    accountant's log(0) at sample rate 1 (full-batch steps), which it handles correctly."""
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    warnings.filterwarnings("ignore", message="divide by zero encountered in log",
                            category=RuntimeWarning)


# --- Distributed DP: the Skellam mechanism -------------------------------------------------------

SKELLAM_MU_TOLERANCE = 1e-3
"""Relative tolerance of the Skellam searches: the mu found is at most 0.1% above the least."""


def skellam_rdp(mu: float, l1: float, l2: float, order: float) -> float:
    """Rényi DP at ``order`` of one release of the multidimensional Skellam mechanism ``Sk(mu)``
    for an integer query with L1 sensitivity ``l1`` and L2 sensitivity ``l2`` (Agarwal et al.
    2021, Theorem 3.5): the Gaussian term ``order * l2**2 / (4 mu)`` plus a correction for the
    lattice that vanishes as ``mu`` grows. ``inf`` without noise.

    The theorem's proof works at integer orders. Between two integers ``k < order < k + 1`` the
    bound is interpolated: ``(order - 1) x`` the Rényi divergence is the cumulant generating
    function of the privacy loss, convex in the order (van Erven and Harremoës 2014, Theorem
    11), so it lies below the chord through the theorem's values at ``k`` and ``k + 1`` (at
    ``k = 1`` that value is 0). Sound whatever the theorem's range, and within a few percent of
    the theorem's formula at the order itself (3.93 against 3.9 at order 3.9)."""
    if not order > 1:
        raise ValueError(f"Rényi order must exceed 1, got {order}")
    if mu < 0:
        raise ValueError(f"Skellam mu must be non-negative, got {mu}")
    if mu == 0:
        return math.inf
    low = math.floor(order)
    if low == order:
        return _skellam_rdp_at_integer(mu, l1, l2, low)
    weight = order - low
    chord = (weight * low * _skellam_rdp_at_integer(mu, l1, l2, low + 1)
             + (1 - weight) * (low - 1) * (_skellam_rdp_at_integer(mu, l1, l2, low)
                                           if low > 1 else 0.0))
    return chord / (order - 1)


def _skellam_rdp_at_integer(mu: float, l1: float, l2: float, order: int) -> float:
    """Theorem 3.5 of Agarwal et al. at an integer ``order`` > 1, for ``mu`` > 0."""
    correction = min(((2 * order - 1) * l2**2 + 6 * l1) / (16 * mu**2), 3 * l1 / (4 * mu))
    return order * l2**2 / (4 * mu) + correction


class SkellamRelease(NamedTuple):
    """One release of the Skellam sum, as the two accounts read it.

    mu: the noise ``Sk(mu)`` per coordinate of the sum that the guarantee counts on.
    l1, l2: one unit's L1 and L2 sensitivity in the integer sum, whatever the rounding draws:
        the Rényi account's.
    likely_l1, likely_l2: the same, except with probability ``failure`` over the rounding draws
        (``distributed_dp.likely_rounding_bound``): the Gaussian-DP account's, which pays
        ``failure`` in delta.
    """

    mu: float
    l1: float
    l2: float
    likely_l1: float
    likely_l2: float
    failure: float


def skellam_release(
    mu: float, l1: float, l2: float, likely: tuple[float, float, float] | None = None
) -> SkellamRelease:
    """A release of sensitivities ``l1``, ``l2`` that always hold, and ``likely`` = (L1, L2,
    failure probability); without ``likely``, the Gaussian-DP account uses ``l1``, ``l2``."""
    return SkellamRelease(mu, l1, l2, *(likely or (l1, l2, 0.0)))


def skellam_epsilon(
    mu: float, l1: float, l2: float, releases: int, delta: float,
    likely: tuple[float, float, float] | None = None,
) -> float:
    """The (epsilon, delta) guarantee of ``releases`` identical Skellam releases
    (``skellam_release``): the smaller of the Gaussian-DP and the Rényi-DP accounts
    (``skellam_releases_epsilon``). 0.0 without releases."""
    return skellam_releases_epsilon([skellam_release(mu, l1, l2, likely)] * releases, delta)


@lru_cache(maxsize=256)
def plan_skellam_mu(
    target_epsilon: float, delta: float, l1: float, l2: float, releases: int,
    likely: tuple[float, float, float] | None = None,
) -> float:
    """The smallest Skellam mu (within 0.1%, rounded up) whose ``releases`` releases stay within
    ``target_epsilon``: the distributed counterpart of ``plan_noise_multiplier``. Public values
    only. Raises ``BudgetExhausted`` when no noise would do."""
    _check_skellam_query(l1, l2, releases)

    def fits(mu: float) -> bool:
        return skellam_epsilon(mu, l1, l2, releases, delta, likely) <= target_epsilon

    with warnings.catch_warnings():
        # Far too little noise puts the best order at the grid's smallest; only probes do that.
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        return _least_skellam_mu(fits, l2, f"no Skellam noise reaches epsilon {target_epsilon}")


@lru_cache(maxsize=256)
def skellam_mu_within_rdp(
    l1: float, l2: float, releases: int, order: float, budget: float
) -> float:
    """The smallest Skellam mu (within 0.1%, rounded up) whose ``releases`` releases cost at
    most ``budget`` Rényi DP at ``order``, for the site's lifetime filter (as
    ``noise_within_rdp``); 0 for an unlimited budget. Raises ``BudgetExhausted`` when no noise
    would do."""
    if math.isinf(budget):
        return 0.0
    if not budget > 0:
        raise BudgetExhausted("the site's max-epsilon is too small for any release at its delta")
    _check_skellam_query(l1, l2, releases)

    def fits(mu: float) -> bool:
        return releases * skellam_rdp(mu, l1, l2, order) <= budget

    return _least_skellam_mu(fits, l2, "the site's max-epsilon is too small for any release")


def skellam_releases_epsilon(releases: list[SkellamRelease], delta: float) -> float:
    """The (epsilon, delta) guarantee of Skellam releases that may differ (a run whose cohort,
    and so noise share, changed between rounds): each account holds, so the smaller does. 0.0
    without releases."""
    return min(skellam_rdp_epsilon([(r.mu, r.l1, r.l2) for r in releases], delta),
               skellam_gdp_epsilon([(r.mu, r.likely_l1, r.likely_l2, r.failure)
                                    for r in releases], delta))


def skellam_rdp_epsilon(releases: list[tuple[float, float, float]], delta: float) -> float:
    """The Rényi account of Skellam releases ``(mu, l1, l2)``: Theorem 3.5 summed at each order
    of the filter's grid, then Opacus' conversion at the best order. 0.0 without releases."""
    if not releases:
        return 0.0
    if any(mu == 0 for mu, _, _ in releases):
        return math.inf
    from opacus.accountants.analysis.rdp import get_privacy_spent

    counts = Counter(releases)  # a run's rounds are mostly one release repeated
    rdp = [sum(count * skellam_rdp(mu, l1, l2, order) for (mu, l1, l2), count in counts.items())
           for order in FILTER_ORDERS]
    with warnings.catch_warnings():
        _ignore_accountant_warnings()
        epsilon, _ = get_privacy_spent(orders=list(FILTER_ORDERS), rdp=rdp, delta=delta)
    return float(epsilon)


def _check_skellam_query(l1: float, l2: float, releases: int) -> None:
    if not (l1 > 0 and l2 > 0):
        raise ValueError(f"Skellam sensitivities must be positive, got l1={l1}, l2={l2}")
    if releases < 1:
        raise ValueError(f"a Skellam plan needs at least one release, got {releases}")


def _least_skellam_mu(fits: Callable[[float], bool], l2: float, exhausted: str) -> float:
    """Bisection in log space for the least mu that ``fits`` (monotone: more noise, less loss),
    returning the upper end so the result always fits. Capped where the noise's standard
    deviation ``sqrt(2 mu)`` is ``MAX_NOISE_MULTIPLIER`` times ``l2``, the Gaussian plan's cap,
    and at ``MAX_SKELLAM_MU``, the most the sampler draws exactly."""
    cap = min((MAX_NOISE_MULTIPLIER * l2) ** 2 / 2, MAX_SKELLAM_MU)
    high = 1.0
    while not fits(high):
        high *= 2
        if high > cap:
            raise BudgetExhausted(exhausted)
    low = high / 2
    while low > 1e-6 and fits(low):
        high, low = low, low / 2
    while high / low > 1 + SKELLAM_MU_TOLERANCE:
        middle = math.sqrt(low * high)
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high
