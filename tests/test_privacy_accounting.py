"""Accounting: the epsilon a site reports is the composition of everything it released."""

import math
from dataclasses import replace

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis.rdp import get_privacy_spent
from opacus.data_loader import DPDataLoader
from test_privacy_ledger import release
from torch.utils.data import DataLoader, TensorDataset

from fl_client import privacy_accounting
from fl_client.privacy_accounting import (
    DELTA_UNITS_FACTOR,
    PRV_MAX_STEPS,
    BudgetExhausted,
    UnplannableRun,
    coalesce,
    default_delta,
    epsilon_spent,
    filter_order,
    noise_within_rdp,
    plan_noise_multiplier,
    rdp_budget,
    rdp_epsilon,
    release_rdp,
    steps_per_round,
)
from fl_client.privacy_budget import charge_round, run_epsilons
from fl_client.privacy_ledger import LEDGER_FILE
from fl_client.site_policy import RoundRequest, SitePolicy
from fl_client.site_secret import create_site_secret


@pytest.mark.parametrize("n,batch,epochs", [(100, 32, 1), (64, 32, 2), (7, 32, 1), (1000, 10, 3)])
def test_steps_per_round_match_opacus_poisson_loader(n, batch, epochs):
    loader = DataLoader(TensorDataset(torch.zeros(n, 2)), batch_size=batch)
    dp_loader = DPDataLoader.from_data_loader(loader)
    rate, steps = steps_per_round(n, batch, epochs)
    assert rate == pytest.approx(dp_loader.sample_rate)
    assert steps == len(dp_loader) * epochs


def test_steps_per_round_rejects_empty_site():
    with pytest.raises(ValueError):
        steps_per_round(0, 32, 1)


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_planned_noise_meets_target_after_all_rounds(accountant, target):
    rate, steps = steps_per_round(400, 32, 1)
    rounds = 5
    sigma = plan_noise_multiplier(target, 1e-5, rate, steps * rounds, accountant)
    spent = epsilon_spent([(sigma, rate, steps)] * rounds, 1e-5, accountant)
    assert spent <= target
    assert spent >= 0.9 * target  # not wastefully noisy either


def test_epsilon_grows_every_round_and_matches_an_independent_accountant():
    rate, steps = steps_per_round(300, 32, 2)
    sigma = plan_noise_multiplier(3.0, 1e-5, rate, steps * 4, "prv")
    history, reported = [], []
    for _ in range(4):
        history.append((sigma, rate, steps))
        reported.append(epsilon_spent(history, 1e-5, "prv"))
    assert all(b > a for a, b in zip(reported, reported[1:], strict=False))

    independent = PRVAccountant()
    independent.history = [(sigma, rate, steps * 4)]
    assert reported[-1] == pytest.approx(independent.get_epsilon(delta=1e-5), rel=0.02)

    rdp = RDPAccountant()
    for _ in range(4 * steps):
        rdp.step(noise_multiplier=sigma, sample_rate=rate)
    assert epsilon_spent(history, 1e-5, "rdp") == pytest.approx(rdp.get_epsilon(1e-5), rel=1e-6)


def test_a_fresh_count_per_round_would_under_report():
    """The bug this module exists to avoid: restarting the accountant every round."""
    rate, steps = steps_per_round(200, 32, 1)
    one_round = epsilon_spent([(1.0, rate, steps)], 1e-5, "prv")
    five_rounds = epsilon_spent([(1.0, rate, steps)] * 5, 1e-5, "prv")
    assert five_rounds > 1.5 * one_round


def test_heterogeneous_history_composes():
    rate, steps = steps_per_round(200, 32, 1)
    low = epsilon_spent([(2.0, rate, steps)], 1e-5, "rdp")
    mixed = epsilon_spent([(2.0, rate, steps), (0.8, rate, steps)], 1e-5, "rdp")
    assert mixed > low
    assert epsilon_spent([], 1e-5, "prv") == 0.0


@pytest.mark.parametrize("accountant", ["prv", "rdp"])
def test_merging_equal_releases_changes_no_epsilon(accountant):
    """Rounds of the same mechanism are merged before accounting: the result must be exactly
    the composition of the unmerged history, as an accountant fed round by round computes it."""
    history = [(3.8, 1.0, 1)] * 12 + [(1.2, 0.05, 20)] * 3 + [(3.8, 1.0, 2), (0.9, 0.05, 20)]
    merged = coalesce(history)
    assert sorted(merged) == [(0.9, 0.05, 20), (1.2, 0.05, 60), (3.8, 1.0, 14)]
    independent = PRVAccountant() if accountant == "prv" else RDPAccountant()
    independent.history = list(history)
    assert epsilon_spent(history, 1e-5, accountant) == pytest.approx(
        independent.get_epsilon(delta=1e-5), rel=1e-6)


def test_unknown_accountant_is_refused():
    with pytest.raises(ValueError, match="unknown accountant"):
        epsilon_spent([(1.0, 0.1, 10)], 1e-5, "gdp-typo")
    assert math.isfinite(epsilon_spent([(1.0, 0.1, 10)], 1e-5, "rdp"))


# --- the lifetime filter's Rényi arithmetic -------------------------------------------------


@pytest.mark.parametrize("max_epsilon", [1.0, 3.0, 8.0, 10.0])
def test_the_rdp_budget_converts_back_to_max_epsilon_as_opacus_does(max_epsilon):
    order = filter_order(max_epsilon, 1e-5)
    budget = rdp_budget(max_epsilon, 1e-5, order)
    assert budget > 0
    assert rdp_epsilon(budget, order, 1e-5) == pytest.approx(max_epsilon)
    epsilon, _ = get_privacy_spent(orders=[order], rdp=[budget], delta=1e-5)
    assert epsilon == pytest.approx(max_epsilon)


def test_a_full_batch_release_costs_the_gaussian_mechanisms_rdp():
    # q = 1: each step is the Gaussian mechanism, whose Rényi DP is order / (2 sigma^2).
    assert release_rdp(2.0, 1.0, 3, 4.0) == pytest.approx(3 * 4.0 / (2 * 2.0**2))
    assert release_rdp(0.0, 1.0, 1, 4.0) == math.inf
    assert release_rdp(2.0, 0.1, 3, 4.0) < release_rdp(2.0, 1.0, 3, 4.0)  # amplification


@pytest.mark.parametrize(("rate", "steps"), [(1.0, 40), (0.25, 16), (0.01, 500)])
def test_noise_within_rdp_is_the_smallest_that_fits(rate, steps):
    order, budget = 4.0, 3.0
    noise = noise_within_rdp(rate, steps, order, budget)
    assert noise > 0
    assert release_rdp(noise, rate, steps, order) <= budget
    assert release_rdp(noise * 0.998, rate, steps, order) > budget  # within 0.1%, rounded up


def test_no_noise_fits_a_budget_that_is_too_small():
    with pytest.raises(BudgetExhausted):
        noise_within_rdp(1.0, 10, 4.0, 0.0)
    with pytest.raises(BudgetExhausted, match="too small for any release"):
        noise_within_rdp(1.0, 10, 4.0, 1e-12)  # would need noise beyond MAX_NOISE_MULTIPLIER
    assert rdp_budget(0.01, 1e-5, 4.0) < 0  # converting alone costs more than that
    assert noise_within_rdp(1.0, 10, 4.0, math.inf) == 0.0


@pytest.mark.parametrize(("units", "delta"), [(1, 1e-5), (100, 1e-5), (9_999, 1e-5),
                                                (10_000, 1e-6), (10_001, 1e-6),
                                                (100_000, 1e-7), (200_000, 1e-7)])
def test_the_default_delta_stays_below_one_over_ten_times_the_units(units, delta):
    """Without a delta from the run, a site takes the largest power of ten strictly below
    1 / (10 x units), at most 1e-5: small next to the chance of releasing any one unit verbatim
    (found in review: at a power of ten of units it was the limit itself)."""
    assert default_delta(units) == pytest.approx(delta, rel=1e-12)
    assert default_delta(units) < 1 / (DELTA_UNITS_FACTOR * units)


def test_a_run_reports_its_epsilon_with_the_accountant_its_plan_used(monkeypatch):
    """Found in review: the plan chose by its planned steps and the report by the steps
    released, so a resumed run (its lost rounds charged again) planned with PRV was reported
    with RDP, above the target the server holds it to. A run planned past the limit reports
    with RDP; one planned within it with PRV, however many steps it released."""
    monkeypatch.setattr(privacy_accounting, "PRV_MAX_STEPS", 100)
    within = [replace(release(server_round=r), steps=40, num_rounds=2) for r in (1, 2, 2)]
    past = [replace(release(server_round=r), steps=60, num_rounds=2) for r in (1, 2)]
    for releases, accountant in ((within, "prv"), (past, "rdp")):
        assert run_epsilons(releases, 1e-5)[0] == epsilon_spent(
            [r.mechanism for r in releases], 1e-5, accountant)
    assert epsilon_spent([r.mechanism for r in within], 1e-5, "prv") != epsilon_spent(
        [r.mechanism for r in within], 1e-5, "rdp")


def test_one_history_composed_at_two_deltas_or_by_two_accountants_gives_each_its_own_epsilon():
    """``epsilon_spent`` caches a history's composition (stop 63): the delta and the accountant
    are part of what it is cached by, in whatever order they are asked."""
    history = [(1.1, 0.1, 30), (1.1, 0.1, 10)]  # coalesced to one mechanism of 40 steps
    at = {(delta, accountant): epsilon_spent(history, delta, accountant)
          for delta in (1e-5, 1e-3) for accountant in ("rdp", "prv")}
    assert at[(1e-5, "rdp")] > at[(1e-3, "rdp")] and at[(1e-5, "prv")] > at[(1e-3, "prv")]
    assert at[(1e-5, "rdp")] != at[(1e-5, "prv")]
    assert epsilon_spent([(1.1, 0.1, 40)], 1e-3, "rdp") == at[(1e-3, "rdp")]
    assert epsilon_spent([(1.1, 0.1, 41)], 1e-3, "rdp") > at[(1e-3, "rdp")]


def test_a_target_rdp_cannot_reach_past_the_prv_limit_is_declined_with_nothing_charged(tmp_path):
    """Found in review: a PRV target below RDP's reach (0.1) on a run planned past
    PRV_MAX_STEPS made every site fail with an internal error; it is a declined setting."""
    create_site_secret(tmp_path)
    request = RoundRequest(run_name="r", server_round=1, num_rounds=1, target_epsilon=0.1,
                           delta=1e-6, accountant="prv", privacy_unit="utterance",
                           clip_norm=1.0, batch_size=1, local_epochs=PRV_MAX_STEPS // 1000 + 1)
    policy = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None)
    with pytest.raises(UnplannableRun, match="past 100000 steps the site plans with RDP"):
        charge_round(tmp_path, [f"u{i}" for i in range(1000)], request, policy, 10)
    assert not (tmp_path / LEDGER_FILE).exists()


def test_a_plan_of_more_steps_than_prv_composes_quickly_is_accounted_with_rdp():
    """Found in review: batch-size 1 and many epochs, inside the contract's ranges, made a PRV
    search take minutes and gigabytes under the state lock; past PRV_MAX_STEPS the plan is
    RDP's, sound and a little looser."""
    steps = PRV_MAX_STEPS + 1
    noise = plan_noise_multiplier(8.0, 1e-5, 0.01, steps, "prv")
    assert noise == plan_noise_multiplier(8.0, 1e-5, 0.01, steps, "rdp")
    assert epsilon_spent([(noise, 0.01, steps)], 1e-5, "rdp") <= 8.0
    # within the limit PRV plans, with less noise for the same target
    assert plan_noise_multiplier(8.0, 1e-5, 0.5, 40, "prv") < plan_noise_multiplier(
        8.0, 1e-5, 0.5, 40, "rdp")
