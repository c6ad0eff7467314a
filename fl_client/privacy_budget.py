"""Charging one round to the site's privacy budget: plan, check, record.

This is where a site decides whether it may train this round, and where the round is charged
to its ledger. The noise multiplier is planned once per run from the run's target and the
budget that remains after earlier runs (``privacy_accounting.plan_within_budget``); each round
is checked against the site's own ``max-epsilon`` and recorded in the ledger *before* training,
so it is charged even if the site crashes before its reply is sent.
"""

from dataclasses import dataclass
from pathlib import Path

from fl_client.privacy_accounting import (
    BudgetExhausted,
    epsilon_spent,
    plan_within_budget,
    steps_per_round,
)
from fl_client.privacy_ledger import LedgerEntry, append_entry, ledger_path, now, read_ledger
from fl_client.site_secret import site_secret


@dataclass(frozen=True)
class RoundRequest:
    """What the run asks of the site this round; every field is public run information."""

    run_name: str
    server_round: int
    num_rounds: int
    target_epsilon: float
    delta: float
    accountant: str
    privacy_unit: str
    clip_norm: float
    batch_size: int
    local_epochs: int


@dataclass(frozen=True)
class Charge:
    """The release this round makes, and the site's spend including it."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    epsilon_this_run: float
    epsilon_all_runs: float


def charge_round(
    state_dir: Path, data_fingerprint: str, units: int, request: RoundRequest, max_epsilon: float
) -> Charge:
    """Charge this round to the ledger, or raise ``BudgetExhausted`` (nothing charged)."""
    secret = site_secret(state_dir)
    path = ledger_path(state_dir, data_fingerprint)
    history = read_ledger(path, data_fingerprint, secret)
    mixed = {e.privacy_unit for e in history} - {request.privacy_unit}
    if mixed:
        raise ValueError(
            f"the privacy ledger of this data holds {sorted(mixed)} releases and this run asks "
            f"for privacy-unit={request.privacy_unit}; mixing units on the same data is refused"
        )
    sample_rate, steps = steps_per_round(units, request.batch_size, request.local_epochs)
    noise = plan_within_budget(
        tuple(e.release for e in history if e.run != request.run_name),
        request.target_epsilon, max_epsilon, request.delta, sample_rate,
        steps * request.num_rounds, request.accountant,
    )
    releases = [e.release for e in history] + [(noise, sample_rate, steps)]
    after = epsilon_spent(releases, request.delta, request.accountant)
    if after > max_epsilon:
        raise BudgetExhausted(
            f"this round would bring the site to epsilon {after:.3f}, above its max-epsilon "
            f"{max_epsilon:g}"
        )
    entry = LedgerEntry(
        run=request.run_name, server_round=request.server_round, noise_multiplier=noise,
        sample_rate=sample_rate, steps=steps, clip_norm=request.clip_norm, delta=request.delta,
        accountant=request.accountant, privacy_unit=request.privacy_unit, time=now(),
    )
    history = append_entry(path, data_fingerprint, entry, secret)
    this_run = [e.release for e in history if e.run == request.run_name]
    return Charge(
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps=steps,
        epsilon_this_run=epsilon_spent(this_run, request.delta, request.accountant),
        epsilon_all_runs=after,
    )
