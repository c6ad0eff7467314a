"""Charging one round to the site's privacy budget: plan, filter, record.

This is where a site decides which of its privacy units may train this round, and where the
round is charged to its ledger, *before* training, so a crash before the reply is sent can only
over-count. Per round:

1. The noise multiplier is planned for the whole run from public values only
   (``privacy_accounting.plan_run_noise``): the run's target epsilon over all its planned rounds,
   and never less noise than lets a fresh unit finish the run within the site's lifetime budget.
2. The lifetime filter (``privacy_accounting``, Feldman and Zrnic's individual Rényi filter): a
   unit takes part only if its spend plus this release's Rényi DP stays within the site's budget.
   Units at their budget are left out; new units start at zero. Since leaving units out can
   raise the sample rate, 1-2 repeat until the set of units is stable, so that the release
   charged is exactly the one trained.
3. Every unit that takes part is charged the release's Rényi DP, and the release is recorded.

A round without DP (only a site whose max-epsilon is inf accepts one) is recorded too, and
charges every unit an infinite spend: none of them can be part of a DP guarantee afterwards.
"""

import math
from dataclasses import dataclass
from pathlib import Path

from fl_client.privacy_accounting import (
    BudgetExhausted,
    epsilon_spent,
    filter_order,
    plan_run_noise,
    rdp_budget,
    release_rdp,
    steps_per_round,
)
from fl_client.privacy_ledger import (
    Ledger,
    Release,
    now,
    read_ledger,
    unit_epsilons,
    unit_key,
    write_ledger,
)
from fl_client.site_policy import PolicyRefusal, RoundRequest, SitePolicy
from fl_client.site_secret import site_secret
from fl_protocol.wire import Reason


@dataclass(frozen=True)
class Charge:
    """The release this round makes, who is in it, and the spend including it.

    trained: positions (in the ``units`` given to ``charge_round``) of the units that take part.
    epsilon_this_run: this run's releases composed with the run's accountant.
    epsilon_all_runs: the largest lifetime epsilon of any unit in the site's data now.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    trained: list[int]
    epsilon_this_run: float
    epsilon_all_runs: float


def charge_round(
    state_dir: Path, units: list[str], request: RoundRequest, policy: SitePolicy
) -> Charge:
    """Charge this round to the ledger and say who trains, or raise (nothing charged).

    ``units``: the stable identity of each training unit at the site (unique). Raises
    ``BudgetExhausted`` when no unit may take part, ``PolicyRefusal`` when the request contradicts
    the ledger (another privacy unit, a round beyond the run's plan), ``LedgerError``.
    """
    secret = site_secret(state_dir)
    ledger = read_ledger(state_dir, secret) or Ledger(
        privacy_unit=request.privacy_unit,
        order=filter_order(min(policy.max_epsilon, 1e6), request.delta),
        delta=request.delta,
    )
    _check_against_ledger(ledger, request)
    keys = [unit_key(secret, f"{ledger.privacy_unit}\0{unit}") for unit in units]
    if request.private:
        release, trained = _filtered_release(ledger, keys, request, policy)
    else:
        release = _release(request, 0.0, *steps_per_round(len(keys), request.batch_size,
                                                           request.local_epochs),
                           units=len(keys), rdp=math.inf)
        trained = list(range(len(keys)))
    for index in trained:
        ledger.spend[keys[index]] = ledger.spend.get(keys[index], 0.0) + release.rdp
    ledger.releases.append(release)
    write_ledger(state_dir, ledger, secret)

    this_run = [r.mechanism for r in ledger.releases if r.run == request.run_name]
    if request.private:
        epsilon_this_run = epsilon_spent(this_run, request.delta, request.accountant)
        epsilon_all_runs = max(unit_epsilons(ledger, keys))
    else:
        epsilon_this_run = epsilon_all_runs = math.inf
    return Charge(
        noise_multiplier=release.noise_multiplier,
        sample_rate=release.sample_rate,
        steps=release.steps,
        trained=trained,
        epsilon_this_run=epsilon_this_run,
        epsilon_all_runs=epsilon_all_runs,
    )


def _check_against_ledger(ledger: Ledger, request: RoundRequest) -> None:
    if request.privacy_unit != ledger.privacy_unit:
        raise PolicyRefusal(
            Reason.UNIT_REFUSED,
            f"this site's ledger counts {ledger.privacy_unit} units and the run asks for "
            f"privacy-unit={request.privacy_unit}; mixing units on one site is refused",
        )
    planned = {r.num_rounds for r in ledger.releases if r.run == request.run_name}
    if planned and planned != {request.num_rounds}:
        raise PolicyRefusal(
            Reason.ROUND_REFUSED,
            f"run {request.run_name} was planned for {sorted(planned)} rounds and now asks for "
            f"{request.num_rounds}: its noise was planned for the rounds it first announced",
        )


def _filtered_release(
    ledger: Ledger, keys: list[str], request: RoundRequest, policy: SitePolicy
) -> tuple[Release, list[int]]:
    """The round's release and the units in it: repeated until the units that fit the budget
    are exactly those the release's sample rate was computed for."""
    budget = rdp_budget(policy.max_epsilon, ledger.delta, ledger.order)
    trained = list(range(len(keys)))
    while True:
        if not trained:
            raise BudgetExhausted(
                f"every one of the site's {len(keys)} units has spent its budget "
                f"(max-epsilon {policy.max_epsilon:g})"
            )
        rate, steps = steps_per_round(len(trained), request.batch_size, request.local_epochs)
        run_steps = steps * request.num_rounds
        noise = plan_run_noise(request.target_epsilon, request.delta, rate, run_steps,
                               request.accountant, ledger.order, budget)
        rdp = release_rdp(noise, rate, steps, ledger.order)
        fits = [i for i in trained if ledger.spend.get(keys[i], 0.0) + rdp <= budget]
        if len(fits) == len(trained):
            return _release(request, noise, rate, steps, units=len(fits), rdp=rdp), fits
        trained = fits


def _release(request: RoundRequest, noise: float, rate: float, steps: int, units: int,
             rdp: float) -> Release:
    return Release(
        run=request.run_name, server_round=request.server_round, num_rounds=request.num_rounds,
        noise_multiplier=noise, sample_rate=rate, steps=steps, clip_norm=request.clip_norm,
        delta=request.delta, accountant=request.accountant, units=units, rdp=rdp, time=now(),
    )
