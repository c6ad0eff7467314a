"""Charging one round to the site's privacy budget: plan, filter, record.

This is where a site decides which of its privacy units may train this round, and where the
round is charged to its ledger, *before* training, so a crash before the reply is sent can only
over-count. Per round:

1. The noise multiplier is planned for the whole run from public values only
   (``privacy_accounting.plan_run_noise``): the run's target epsilon over all its planned rounds,
   and never less noise than lets a fresh unit finish the run within the site's lifetime budget.
   When the budget forces more than ``max-noise-ratio`` times the run's own plan
   (``site_policy.check_noise``), the update would be mostly noise: the site declines the round
   and charges nothing.
2. The lifetime filter (``privacy_accounting``, Feldman and Zrnic's individual Rényi filter): a
   unit takes part only if its spend plus this release's Rényi DP stays within the site's budget.
   Units at their budget are left out; new units start at zero. Since leaving units out can
   raise the sample rate, 1-2 repeat until the set of units is stable, so that the release
   charged is exactly the one trained.
3. Every unit that takes part is charged the release's Rényi DP, and the release is recorded.

A round without DP (only a site whose max-epsilon is inf accepts one) is recorded too, and
charges every unit an infinite spend: none of them can be part of a DP guarantee afterwards.

Distributed DP (``distributed_dp.py``) is charged the same way, with the Skellam mechanism's
Rényi DP in place of the subsampled Gaussian's: the run's total noise ``mu`` is planned for the
run's target epsilon and the lifetime filter, every unit is charged what the sum costs it when
``mu`` is all the noise it carries (``epsilon``), and the site adds ``mu / (cohort -
tolerated-sites)`` itself. What the site's own share alone would cost (``epsilon_alone``) is
recorded in each release and charged to each unit's own-noise account (``Ledger.alone``), which
the lifetime filter holds within the site's ``max-epsilon-alone`` as it holds the spend within
``max-epsilon``; a run whose share would take a unit new to the site past it is declined.
The noise check compares the standard deviation of the sum's noise, ``sqrt(2 mu)``, with that of
the ``mu`` planned for the target alone; the site's share scales with both alike.
"""

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from logging import INFO, WARNING
from pathlib import Path

from flwr.common.logger import log

from fl_client.deletion_log import deletion_log_check, older_log_refusal
from fl_client.distributed_dp import (
    ROUNDING_FAILURE,
    l1_bound,
    likely_rounding_bound,
    rounding_bound,
)
from fl_client.privacy_accounting import (
    DELTA_UNITS_FACTOR,
    BudgetExhausted,
    default_delta,
    delta_limit,
    epsilon_spent,
    feasible_accountant,
    lifetime_filter,
    plan_noise_multiplier,
    plan_run_noise,
    plan_skellam_mu,
    rdp_budget,
    rdp_epsilon,
    release_rdp,
    skellam_mu_within_rdp,
    skellam_rdp,
    skellam_releases_epsilon,
    steps_per_round,
)
from fl_client.privacy_ledger import (
    RUN_PLAN_FIELDS,
    Ledger,
    Release,
    alone_spend,
    full_batch_only,
    group_rdp,
    now,
    own_noise_extra,
    privacy_unit_key,
    read_ledger,
    unit_epsilons,
    write_ledger,
)
from fl_client.privacy_units import split_aliases
from fl_client.site_data import SiteSplit
from fl_client.site_folders import state_lock
from fl_client.site_policy import PolicyRefusal, RoundRequest, SitePolicy, check_noise
from fl_client.site_secret import release_nonce, site_secret
from fl_protocol.distributed_sum import integer_norm
from fl_protocol.wire import MAX_AUTO_DELTA, Reason


@dataclass(frozen=True)
class Charge:
    """The release this round makes, who is in it, and the spend including it.

    noise_multiplier, sample_rate, steps: the planned noise, Poisson sample rate and step count
        charged: training runs with this noise and refuses any other rate or step count
        (``TrainingPlan.charged``).
    trained: positions (in the ``units`` given to ``charge_round``) of the units that take part.
    epsilon_this_run: this run's releases composed with the run's accountant.
    epsilon_all_runs: the largest lifetime epsilon of any unit in the site's data now.
    epsilon_alone_this_run, epsilon_alone_all_runs: the same from the site's own noise only
        (equal to the two above under local DP).
    delta_this_run: the delta both ``-this-run`` figures are at: the request's (the site's
        own, where ``charge_training`` or ``charge_evaluation`` replaced it).
    delta_all_runs: the ledger's lifetime delta, the one both ``-all-runs`` figures are at; it
        may differ from ``delta_this_run`` either way (lower: a run asking for less; higher: a
        ledger lowered when the site had more units).
    skellam_mu_share: distributed DP: the Skellam noise this site adds (0 under local DP).
    release_number, nonce: this release's place in the site's ledger (1 for its first ever)
        and the fresh randomness recorded with it (``Release.nonce``). The ledger never holds
        two releases at one place, and a restored ledger, whose places repeat, draws new
        nonces, so noise and sampling seeded from both are never drawn twice: a round the server
        asks for again (a replay, or a resumed run training a round once more) gets fresh noise
        and is charged again. Noise drawn twice for two different models would cancel in the
        difference of the two updates.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int
    trained: list[int]
    epsilon_this_run: float
    epsilon_all_runs: float
    epsilon_alone_this_run: float
    epsilon_alone_all_runs: float
    delta_this_run: float
    delta_all_runs: float
    skellam_mu_share: float = 0.0
    release_number: int = 0
    nonce: str = ""


def charge_training(state_dir: Path, units: list[str], split: SiteSplit, request: RoundRequest,
                    policy: SitePolicy, dimension: int, *, fresh_nonce: bool) -> Charge:
    """Charge a training round before it trains, and say which units train (``charge_round``).

    The guarantee protects one privacy unit (``request.privacy_unit``: one utterance, or all of
    one customer's utterances at the site). ``epsilon_this_run`` is stated at the round's delta
    (``site_delta``: the run's, or the site's own where the run leaves it to the site or asks
    one too large for the site's units), ``Charge.delta_this_run``; the ``-all-runs`` figures at
    the ledger's lifetime delta, begun at the site's own (``lifetime_delta``) and lowered to it
    when the site outgrows it, ``Charge.delta_all_runs``. Each unit's budget (max-epsilon at
    that delta) is enforced here, by the lifetime filter; the noise, sample rate and steps
    charged are the ones Opacus' ``PrivacyEngine`` runs with in ``dp_training.train_locally``,
    which refuses any other rate or step count (``TrainingPlan.charged``); under distributed DP
    ``distributed_dp.noisy_integer_sum`` adds ``Charge.skellam_mu_share``.

    Args:
        state_dir: the site's state folder, whose ledger is charged.
        units: the training units, one per privacy unit, in the order of the examples trained;
            ``Charge.trained`` holds positions in it.
        split: the training split the units come from: each unit is also charged under its
            other identities (``privacy_units.split_aliases``).
        request: the server's asks, as ``site_policy.check_request`` accepted them; its delta
            is replaced by the site's (``site_delta``).
        policy: the site's own limits (``site_policy.SitePolicy``).
        dimension: the exchanged model's size (distributed DP: the sensitivity of its sum).
        fresh_nonce: False at a simulated site (``charge_round``).
    """
    request = replace(request, delta=site_delta(policy, request, len(units)))
    return charge_round(state_dir, units, request, policy, dimension, fresh_nonce=fresh_nonce,
                        lifetime_delta=lifetime_delta(policy, len(units)),
                        aliases=split_aliases(request.privacy_unit, split))


def charge_evaluation(state_dir: Path, units: list[str], split: SiteSplit,
                      request: RoundRequest, policy: SitePolicy, *,
                      fresh_nonce: bool) -> Charge:
    """Charge a DP evaluation's one release of the test split before anything is computed from
    it, and say which units are in it (``charge_round``).

    The guarantee protects one privacy unit of the test split (``request.privacy_unit``), whose
    rows move the release's sums by at most one (``dp_evaluation.py``). ``epsilon_this_run`` is
    stated at the evaluation's delta (``evaluation_delta``: the run's, or the site's own
    automatic one, never a function of the test split's size), ``Charge.delta_this_run``; a
    ledger this release begins is fixed at ``own_evaluation_delta``. Each unit's budget is
    enforced here, by the lifetime filter; when no unit may take part the release is still made,
    over no unit, charging nobody (a decline would tell the server whether any unit with budget
    left is there). The noise is added by ``dp_evaluation.noisy_scores`` at
    ``Charge.noise_multiplier``, in one full-batch step: Opacus takes no part.

    Args:
        state_dir: the site's state folder, whose ledger is charged.
        units: the test split's distinct units, in order; ``Charge.trained`` holds positions
            in it.
        split: the test split: each unit is also charged under its other identities
            (``privacy_units.split_aliases``).
        request: the run's evaluation asks (``site_policy.evaluation_request``); its batch size
            is replaced by the count of units (one release of the whole split, sample rate 1)
            and its delta by the site's (``evaluation_delta``).
        policy: the site's own limits (``site_policy.SitePolicy``).
        fresh_nonce: False at a simulated site (``charge_round``).
    """
    request = replace(request, batch_size=len(units),
                      delta=evaluation_delta(policy, request, len(units)))
    return charge_round(state_dir, units, request, policy, empty_ok=True, evaluation=True,
                        fresh_nonce=fresh_nonce, begin_delta=own_evaluation_delta(policy),
                        aliases=split_aliases(request.privacy_unit, split))


def charge_round(
    state_dir: Path, units: list[str], request: RoundRequest, policy: SitePolicy,
    dimension: int = 0, empty_ok: bool = False, fresh_nonce: bool = True,
    aliases: Mapping[str, tuple[tuple[str, ...], ...]] | None = None,
    lifetime_delta: float | None = None, begin_delta: float | None = None,
    evaluation: bool = False,
) -> Charge:
    """Charge this round to the ledger and say who trains, or raise (nothing charged).

    The general form of ``charge_training`` and ``charge_evaluation``, which the ClientApp calls:
    here the delta and the kind of release are the caller's to give. The ledger is read, charged
    and written under the state folder's lock: rounds charged at once (two runs on one site) are
    both recorded.

    Args:
        units: the stable identity of each training unit at the site (unique).
        aliases: a unit's other identities, grouped by the unit they were
            (``privacy_units.unit_aliases``): a unit starts from the largest spend the ledger
            holds under any of them (a customer new to the ledger whose rows were units apart,
            from their spends added up, ``_carry_over``), and all of them record what it
            spends, so that the same unit written another way keeps its budget.
        dimension: the exchanged model's size (distributed DP: the sensitivity of its integer
            sum).
        empty_ok: a local release whose noise does not depend on the units taking part, as a
            DP evaluation's: when no unit may take part, the release is still made and
            recorded, over no unit, charging nobody, instead of raising ``BudgetExhausted``: a
            decline would tell the server, outside DP, whether any unit with budget left is
            there.
        fresh_nonce: False at a simulated site, whose state folder only its own operator could
            restore: the release records no nonce, so twin sites (one secret, fresh ledgers)
            draw the same noise, which is how tests compare two runs.
        lifetime_delta: training rounds: the site's own delta for the units it holds now (the
            function ``lifetime_delta``): the ledger's lifetime delta is lowered to it when the
            site has outgrown the one it was fixed at, that is when it is no longer below
            ``delta_limit`` of the units (``_tighten_delta``).
        begin_delta: a ledger this release begins is fixed at it (a DP evaluation's:
            ``own_evaluation_delta``), else at ``lifetime_delta``, else at the request's: the
            site's own, never the run's (found in review: a first run asking for delta 1e-10
            fixed every later run's budget there, for good).
        evaluation: a DP evaluation's release: the run is held to its accountant only, not to
            the training plan (its epsilon is the site's own, its batch its test split).

    Raises:
        BudgetExhausted: no unit may take part, or no noise fits the budget.
        PolicyRefusal: the request contradicts the ledger (another privacy unit, a round beyond
            the run's plan, other settings than the run's earlier releases were planned for,
            ``_plan_changes``), or the budget needs noise far above the run's plan.
        LedgerError: the ledger (or the deletion log) cannot be read or verified.
    """
    with state_lock(state_dir):
        return _charge_round(state_dir, units, request, policy, dimension, empty_ok,
                             fresh_nonce, aliases or {}, lifetime_delta, begin_delta, evaluation)


def _charge_round(state_dir: Path, units: list[str], request: RoundRequest, policy: SitePolicy,
                  dimension: int, empty_ok: bool, fresh_nonce: bool,
                  aliases: Mapping[str, tuple[tuple[str, ...], ...]],
                  lifetime_delta: float | None, begin_delta: float | None,
                  evaluation: bool) -> Charge:
    secret = site_secret(state_dir)
    begun_at = next(delta for delta in (begin_delta, lifetime_delta, request.delta)
                    if delta is not None)
    ledger = read_ledger(state_dir, secret) or Ledger(
        privacy_unit=request.privacy_unit,
        order=ledger_order(policy, begun_at),
        delta=begun_at,
    )
    _check_against_ledger(ledger, request, training=not evaluation)
    # the units in the data now, not every unit the ledger has charged: those include the test
    # units of DP evaluations, and the delta goes to the server in every reply, which would
    # then read the test split's size from it (found in review; privacy-report warns where the
    # ledger's units have outgrown its delta)
    if lifetime_delta is not None and ledger.delta >= delta_limit(len(units)):
        _tighten_delta(ledger, min(lifetime_delta, ledger.delta), policy)
    ledger.deletion_log, problem = deletion_log_check(state_dir, secret, ledger.deletion_log)
    if problem:
        raise older_log_refusal(state_dir, problem, "refusing to train")
    keys = [privacy_unit_key(secret, ledger.privacy_unit, unit) for unit in units]
    former = [[[privacy_unit_key(secret, ledger.privacy_unit, alias) for alias in group]
               for group in aliases.get(unit, ())] for unit in units]
    joined = _carry_over(ledger, keys, former,
                         rdp_budget(policy.max_epsilon, ledger.delta, ledger.order))
    others = [dict.fromkeys([alias for group in groups for alias in group if alias != key]
                            + units)
              for key, groups, units in zip(keys, former, joined, strict=True)]
    if request.distributed:
        release, trained = _distributed_release(ledger, keys, request, policy, dimension)
    elif request.private:
        release, trained = _filtered_release(ledger, keys, request, policy, empty_ok)
    else:
        release = _release(request, 0.0, *steps_per_round(len(keys), request.batch_size,
                                                           request.local_epochs),
                           units=len(keys), rdp=math.inf)
        trained = list(range(len(keys)))
    release = replace(release, nonce=release_nonce() if fresh_nonce else "")
    own_noise = release.rdp_alone if release.distributed else release.rdp
    for index in trained:
        ledger.spend[keys[index]] = ledger.spend.get(keys[index], 0.0) + release.rdp
        ledger.alone[keys[index]] = ledger.alone.get(keys[index], 0.0) + own_noise
    for key, alias_keys in zip(keys, others, strict=True):
        _record_aliases(ledger, key, alias_keys)
    for index in trained:  # its history grew past what any unit recorded under its key
        ledger.recorded.pop(keys[index], None)
    ledger.releases.append(release)
    write_ledger(state_dir, ledger, secret)

    this_run = [r for r in ledger.releases if r.run == request.run_name]
    epsilon_this_run, alone_this_run = run_epsilons(this_run, request.delta)
    if request.private:
        epsilon_all_runs = max(unit_epsilons(ledger, keys), default=0.0)
        alone_all_runs = rdp_epsilon(alone_spend(ledger, keys), ledger.order, ledger.delta)
    else:
        epsilon_all_runs = alone_all_runs = math.inf
    return Charge(
        noise_multiplier=release.noise_multiplier,
        sample_rate=release.sample_rate,
        steps=release.steps,
        trained=trained,
        epsilon_this_run=epsilon_this_run,
        epsilon_all_runs=epsilon_all_runs,
        epsilon_alone_this_run=alone_this_run,
        epsilon_alone_all_runs=alone_all_runs,
        delta_this_run=request.delta,
        delta_all_runs=ledger.delta,
        skellam_mu_share=release.skellam_mu_share,
        release_number=len(ledger.releases),
        nonce=release.nonce,
    )


def _carry_over(ledger: Ledger, keys: list[str], former: list[list[list[str]]],
                budget: float) -> list[list[str]]:
    """Start each unit from what the ledger holds for it under its other identities (``former``:
    per unit, groups of names, each group's first name the identity of a unit it may have
    been: a row's own, for a row that had no ``customer_id``; another written form of its
    customer id; its canonical form, under which every form of the id records): the largest
    spend under any of them. Only in memory until the release is written. Returns, per unit,
    the units it was (``_joined_units``), whose spends its own now counts.

    A customer that was several units (rows that were units of their own, its id written in
    another form) starts from their spends as a group (found in review: the largest of them
    alone let a customer of 4 rows reach epsilon 9.2 where the ledger said 8.0), each unit
    counted once: ``recorded`` says which unit recorded each spend, so the many names one unit
    recorded under are one unit, and a unit whose spend a unit in the group has recorded under
    its key (it counts it) is not counted again, until it trains again (``charge_round`` then
    drops those records: found in review, a record larger than the unit's spend does not count
    releases the unit took part in after it). In a release without sampling (full batch, an
    evaluation, a Skellam sum), ``n`` units that are one person move it by up to ``n`` clip
    norms, so its Rényi DP is at most ``n**2`` times a unit's: over the releases, the square of
    the norm of the sum of the units' vectors (``n_t`` times the square root of release ``t``'s
    Rényi DP, per release), which the triangle inequality bounds by the square of the sum of the
    square roots of their spends (at most ``k`` times their sum, the bound before, and far less
    where one spend is small: a row joining its customer after one release); a sampled release
    has no such bound, so after one such a group starts from the whole ``budget``. Each unit's
    own-noise spend (``Ledger.alone``) is carried over by the same rule, from each part's own
    (found in review: with every distributed release's extra over the charge added once for
    the group, a customer that was two units read epsilon alone 13.1 where its bound was 15.9;
    with it added once per part, squared, six rows given their customer's id read 51.3 where
    the bound was 13.1). Under the utterance unit a unit is one utterance whatever its names,
    and starts from the largest spend under any of them."""
    full_batch = full_batch_only(ledger)
    most_alone = _own_noise_ratio(ledger)
    extra = own_noise_extra(ledger.releases)
    joined = []
    for key, groups in zip(keys, former, strict=True):
        units = _joined_units(ledger, key, groups) if ledger.privacy_unit == "customer" else {}
        legacy = [max((ledger.aliases.get(name, 0.0) for name in group), default=0.0)
                  for group in groups]
        named = [max((_named_spend(ledger, name) for name in group if name != key), default=0.0)
                 for group in groups]
        # a unit's own alone; a recorded spend's, at most its recorder's now and the release
        # with the most own noise per spend times it; a format 5 alias's, as format 6 bounded it
        own = ledger.spend.get(key, 0.0)
        own_part = (own, max(ledger.alone.get(key, 0.0), own))
        unit_parts = {unit: (spend, max(ledger.alone.get(unit, 0.0), spend))
                      for unit, spend in units.items()}
        legacy_parts = [(spend, min(spend + extra, most_alone * spend)) for spend in legacy]
        named_parts = [(spend, max(min(_named_alone(ledger, group, key), most_alone * spend),
                                   spend))
                       for spend, group in zip(named, groups, strict=True)]
        parts = [own_part, *unit_parts.values(), *legacy_parts, *named_parts]
        carried = max(spend for spend, _ in parts)
        carried_alone = max(alone for _, alone in parts)
        if ledger.privacy_unit == "customer":
            known = key in ledger.spend
            counted = [unit_parts[unit] for unit, spend in units.items()
                       if not _counted_by(ledger, unit, spend, [key, *units], known)]
            if own > 0 and not _counted_by(ledger, key, own, list(units), known):
                counted.append(own_part)
            if not known:  # spends recorded before the ledger named who did
                counted += [part for part, by_name in zip(legacy_parts, named, strict=True)
                            if part[0] > by_name]
                # a row whose names others share was at most one unit more, its largest
                most = max(units.values(), default=0.0)
                counted += [part for part, group in zip(named_parts, groups, strict=True)
                            if len(group) > 1 and part[0] > most]
            if len(counted) > 1:
                together = group_rdp(spend for spend, _ in counted)
                carried = max(carried, together if full_batch or not math.isfinite(budget)
                              else max(budget, together))
                carried_alone = max(carried_alone, group_rdp(alone for _, alone in counted))
        if carried > own:
            ledger.spend[key] = carried
        if carried > 0:
            ledger.alone[key] = max(carried_alone, carried, ledger.alone.get(key, 0.0))
        joined.append(list(units))
    return joined


def _own_noise_ratio(ledger: Ledger) -> float:
    """The most any release cost per unit of spend counting only the site's own noise (1 for a
    local release): a unit's ``alone`` is at most this times its spend, whatever the releases
    it was in."""
    return max([1.0, *(r.rdp_alone / r.rdp for r in ledger.releases if r.distributed)])


def _joined_units(ledger: Ledger, key: str, groups: list[list[str]]) -> dict[str, float]:
    """The units (their keys) that a customer ``key`` with these names was, each with its
    largest spend known: a group's first name that is itself a unit's key (a row that had no
    ``customer_id``, another form of the id), and every unit that recorded under a group of one
    name (another written form, the id's canonical form), which only forms of this customer
    record under. Names a customer shares with others (a conversation, a row id reused in
    another file, a text) make no unit of the others (found in review: counting them let
    customers sharing a conversation be charged as each other's group, round after round);
    they carry the largest spend over, and a new customer's row holding more there is one
    unit more (``_carry_over``)."""
    units: dict[str, float] = {}
    for group in groups:
        first = group[0]
        if first == key:
            continue
        if first in ledger.spend:
            units[first] = max(units.get(first, 0.0), ledger.spend[first])
        if len(group) == 1:
            for unit, spend in ledger.recorded.get(first, {}).items():
                if unit != key:
                    units[unit] = max(units.get(unit, 0.0), spend, ledger.spend.get(unit, 0.0))
    return units


def _named_spend(ledger: Ledger, name: str) -> float:
    """The largest spend a unit recorded under ``name`` (or spent as ``name``)."""
    return max([ledger.spend.get(name, 0.0), *ledger.recorded.get(name, {}).values()])


def _named_alone(ledger: Ledger, group: list[str], key: str) -> float:
    """The largest ``alone`` now of the units that spent as, or recorded under, a name of
    ``group`` other than ``key``."""
    return max((ledger.alone.get(unit, 0.0) for name in group if name != key
                for unit in [name, *ledger.recorded.get(name, {})]), default=0.0)


def _counted_by(ledger: Ledger, unit: str, spend: float, others: list[str],
                known: bool) -> bool:
    """Whether another unit of ``others`` counts ``unit``'s ``spend`` in its own: it recorded
    under ``unit``'s key a spend at least as large (it was that unit, or absorbed it). For a
    customer already in the ledger (``known``), a format 5 alias there counts the same: such a
    ledger recorded it when the customer absorbed a row of its own, which is the rule it was
    charged by; for a new customer the alias's recorder is unknown, so it does not."""
    recorded = ledger.recorded.get(unit, {})
    return (any(recorded.get(other, 0.0) >= spend for other in others if other != unit)
            or (known and ledger.aliases.get(unit, 0.0) >= spend))


def _record_aliases(ledger: Ledger, key: str, names: Iterable[str]) -> None:
    """Record ``key``'s spend under each of its names, and under the key of every unit it was,
    as recorded by ``key``. A name's format 5 alias, no larger, is recorded by ``key`` now."""
    spend = ledger.spend.get(key, 0.0)
    if spend <= 0:
        return
    for name in names:
        by = ledger.recorded.setdefault(name, {})
        by[key] = max(by.get(key, 0.0), spend)
        if name in ledger.aliases and ledger.aliases[name] <= spend:
            del ledger.aliases[name]


def _check_against_ledger(ledger: Ledger, request: RoundRequest, training: bool) -> None:
    if request.privacy_unit != ledger.privacy_unit:
        raise PolicyRefusal(
            Reason.UNIT_REFUSED,
            f"this site's ledger counts {ledger.privacy_unit} units and the run asks for "
            f"privacy-unit={request.privacy_unit}; mixing units on one site is refused",
        )
    models = {r.privacy_model for r in ledger.releases if r.run == request.run_name}
    if models and models != {request.privacy_model}:
        raise PolicyRefusal(
            Reason.MODEL_REFUSED,
            f"run {request.run_name} released under privacy-model {sorted(models)} and now asks "
            f"for {request.privacy_model}: its noise was planned for one model",
        )
    planned = {r.num_rounds for r in ledger.releases if r.run == request.run_name}
    if planned and planned != {request.num_rounds}:
        raise PolicyRefusal(
            Reason.ROUND_REFUSED,
            f"run {request.run_name} was planned for {sorted(planned)} rounds and now asks for "
            f"{request.num_rounds}: its noise was planned for the rounds it first announced",
        )
    if changed := _plan_changes(ledger, request, training):
        # found in review: a resubmitted run at a higher target-epsilon planned less noise
        raise PolicyRefusal(
            Reason.PLAN_REFUSED,
            f"run {request.run_name} released under other privacy settings than it now asks for "
            f"({', '.join(changed)}): its noise was planned for the settings it first announced",
        )


def _plan_changes(ledger: Ledger, request: RoundRequest, training: bool) -> list[str]:
    """Each setting the run's noise plan rests on that ``request`` asks otherwise than the run's
    earlier releases recorded it, as ``name old -> new``. Training pins the run's plan
    (``RUN_PLAN_FIELDS``), its clip norm and, under local DP, its accountant (a distributed
    release is always accounted in Rényi DP); a DP evaluation pins the accountant, the one of
    its settings the server asks for (its epsilon is the site's own, its batch its test split).
    Releases recorded before the plan was (``batch_size`` 0) pin only what they hold."""
    earlier = [r for r in ledger.releases if r.run == request.run_name]
    recorded = {
        "accountant": {r.accountant for r in earlier if not r.distributed},
        **({"clip_norm": {r.clip_norm for r in earlier}} if training else {}),
        **({name: {getattr(r, name) for r in earlier if r.batch_size}
            for name in RUN_PLAN_FIELDS} if training else {}),
    }
    return [f"{PLAN_SETTINGS.get(name, name.replace('_', '-'))} "
            f"{' or '.join(map(_shown, sorted(values)))} -> {_shown(getattr(request, name))}"
            for name, values in recorded.items()
            if values and values != {getattr(request, name)}]


PLAN_SETTINGS = {"plan_delta": "delta (as the run asked for it)"}
"""A plan field's name in a site's log where it is not its run-config key's."""


def _shown(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def own_evaluation_delta(policy: SitePolicy) -> float:
    """The delta a site evaluates at when the run names none: the largest automatic delta
    (``MAX_AUTO_DELTA``), or its ``max-delta`` if lower; where a DP evaluation begins the
    ledger, its lifetime delta (``charge_evaluation``)."""
    return min(policy.max_delta, MAX_AUTO_DELTA)


def evaluation_delta(policy: SitePolicy, request: RoundRequest, units: int) -> float:
    """A DP evaluation's delta: the run's, or (0 = auto) the largest automatic delta
    (``MAX_AUTO_DELTA``, or the site's ``max-delta`` if lower); never a function of the test
    split, whose size it would show (a refusal, or the ``epsilon`` sent, would say where the
    count lies). A split too large for it (``site_delta``'s rule) is only warned of here, at
    the site: its operator can lower ``max-delta``."""
    delta = request.delta or own_evaluation_delta(policy)
    if units and delta >= delta_limit(units):
        log(WARNING, "DP evaluation: delta %g is not below 1/(%d x %d test units); set the "
            "node config max-delta lower for a guarantee that fits this test split", delta,
            DELTA_UNITS_FACTOR, units)
    return delta


def lifetime_delta(policy: SitePolicy, units: int) -> float:
    """The site's own delta for ``units`` training units: its default for that many
    (``default_delta``), or its ``max-delta`` if lower. Never the request's: the ledger states
    every unit's lifetime guarantee at it (``_tighten_delta``)."""
    return min(policy.max_delta, default_delta(units))


def site_delta(policy: SitePolicy, request: RoundRequest, units: int) -> float:
    """The round's delta: the run's, or (0 = auto) the site's default; a delta too large for
    the site's size is lowered to that default, never refused.

    delta is the probability that the epsilon guarantee fails outright; it must be small next to
    1 / (number of units), or releasing one unit's data verbatim would fit inside it. A refusal
    would tell the server, for nothing charged, on which side of ``1 / (10 x delta)`` the count
    of the site's units lies (found in review: a search over delta read the count exactly, even
    after every unit's budget was spent); the lowered delta appears only in a reply that
    carries the count anyway (``num-examples``).
    """
    own = lifetime_delta(policy, units)
    if request.delta == 0:
        return own
    if request.delta >= delta_limit(units):
        log(WARNING, "delta %g is too large for this site's %d %s units (it must be below "
            "1/(%d x %d)); using %g instead", request.delta, units, request.privacy_unit,
            DELTA_UNITS_FACTOR, units, own)
        return own
    return request.delta


def _tighten_delta(ledger: Ledger, delta: float, policy: SitePolicy) -> None:
    """Lower the ledger's lifetime delta to ``delta`` if every unit's spend fits the budget
    there, and its own-noise spend max-epsilon-alone; otherwise keep it, and say so in the
    site's log.

    The delta is fixed when the ledger begins, from the units the site held then (or, when its
    first release was a DP evaluation, the evaluation's delta, 1e-5): a site that grows past
    1 / (10 x delta) units would state every guarantee at a delta its size makes too large. A
    Rényi filter stays sound when its budget shrinks, as long as no unit has spent past the new
    one: the order is kept, and from here on every unit stays within ``max-epsilon`` at the
    lower delta. Spends without DP (infinite, no guarantee at any delta) do not count (found in
    review: an infinite own-noise spend kept a site at its old delta for good).
    """
    budget = rdp_budget(policy.max_epsilon, delta, ledger.order)
    finite = [spend for spend in ledger.spend.values() if math.isfinite(spend)]
    alone = rdp_epsilon(max(filter(math.isfinite, ledger.alone.values()), default=0.0),
                        ledger.order, delta)
    if max(finite, default=0.0) <= budget and (
            not any(r.distributed for r in ledger.releases)  # its two accounts are equal
            or alone <= policy.max_epsilon_alone):
        log(INFO, "this site's units outgrew its ledger's delta %g: lifetime guarantees are "
            "stated at delta %g from now on (every unit's spend fits max-epsilon %g there)",
            ledger.delta, delta, policy.max_epsilon)
        ledger.delta = delta
        return
    log(WARNING, "this site's units outgrew its ledger's delta %g (delta %g would suit them), "
        "but some unit has spent more than max-epsilon %g allows at delta %g: guarantees stay "
        "stated at %g (docs/PRIVACY.md, \"The lifetime delta\")", ledger.delta, delta,
        policy.max_epsilon, delta, ledger.delta)


def _filtered_release(
    ledger: Ledger, keys: list[str], request: RoundRequest, policy: SitePolicy,
    empty_ok: bool = False,
) -> tuple[Release, list[int]]:
    """The round's release and the units in it: repeated until the units that fit the budget
    are exactly those the release's sample rate was computed for (``empty_ok``: possibly
    none, planned as for one unit). On a ledger that holds a distributed release, where a
    unit's own-noise spend can exceed its spend, a unit must also stay within max-epsilon-alone
    (a local release's noise is all the site's own; found in review: local rounds after
    distributed ones took units past it); on one that holds none the two accounts are equal,
    and max-epsilon alone binds, as it always did (found in review: held to max-epsilon-alone
    too, a site whose max-epsilon was inf trained no unit, the bound converted at its order)."""
    budget = rdp_budget(policy.max_epsilon, ledger.delta, ledger.order)
    after_distributed = any(r.distributed for r in ledger.releases)
    alone_budget = (rdp_budget(policy.max_epsilon_alone, ledger.delta, ledger.order)
                    if after_distributed else math.inf)
    # a new unit's two accounts are equal in local releases: the noise is planned for it to
    # finish the run within the smaller budget (found in review: planned for max-epsilon alone,
    # a run's units sat out part way through at max-epsilon-alone)
    binding = (min(policy.max_epsilon, policy.max_epsilon_alone) if after_distributed
               else policy.max_epsilon)
    _check_useful_noise(ledger, request, policy, binding)
    trained = list(range(len(keys)))
    while True:
        if not trained and not empty_ok:
            alone = ("" if math.isinf(alone_budget) else
                     f", or, after distributed rounds, max-epsilon-alone "
                     f"{policy.max_epsilon_alone:g}")
            raise BudgetExhausted(
                f"every one of the site's {len(keys)} units has spent its budget "
                f"(max-epsilon {policy.max_epsilon:g}{alone})"
            )
        rate, steps = steps_per_round(max(len(trained), 1), request.batch_size,
                                      request.local_epochs)
        run_steps = steps * request.num_rounds
        noise = plan_run_noise(request.target_epsilon, request.delta, rate, run_steps,
                               request.accountant, ledger.order, min(budget, alone_budget))
        rdp = release_rdp(noise, rate, steps, ledger.order)
        fits = [i for i in trained if ledger.spend.get(keys[i], 0.0) + rdp <= budget
                and ledger.alone.get(keys[i], 0.0) + rdp <= alone_budget]  # its noise is all
        if len(fits) == len(trained):
            return _release(request, noise, rate, steps, units=len(fits), rdp=rdp), fits
        trained = fits


def ledger_order(policy: SitePolicy, delta: float) -> float:
    """The Rényi order a new ledger fixes for good (``privacy_accounting.lifetime_filter``):
    the best for max-epsilon, or for max-epsilon-alone where that is smaller and the site takes
    part in distributed DP (a local-only site holds no unit to it, and that order would cost
    its local runs noise for nothing)."""
    return lifetime_filter(policy.max_epsilon, delta, policy.alone_bound)[0]


def _reference_budget(policy: SitePolicy, request: RoundRequest,
                      max_epsilon: float) -> tuple[float, float, float]:
    """(delta, order, Rényi budget for ``max_epsilon``) of a fresh unit at the run's planned
    delta, in the ledger a site would begin there: what the noise checks compare at, public
    values only. The ledger's own delta and order follow from the site's unit count when it was
    made (found in review: with them, a 10,000-unit site declined where a 9,999-unit one
    trained, and large honest sites were declined)."""
    delta = request.plan_delta or MAX_AUTO_DELTA
    order = ledger_order(policy, delta)
    return delta, order, rdp_budget(max_epsilon, delta, order)


def _check_useful_noise(ledger: Ledger, request: RoundRequest, policy: SitePolicy,
                        max_epsilon: float) -> None:
    """``check_noise`` for a local-DP round whose noise a fresh unit's ``max_epsilon`` may
    force up, at a reference made of public values only: full batch, the run's planned delta
    (``_reference_budget``). At the round's own sample rate and delta, both functions of how
    many units fit, a server that chose the batch size could read from the decline, free of
    charge, on which side of it the count lay (found in review: a 60-unit site declined where a
    61-unit site trained)."""
    steps = request.local_epochs * request.num_rounds
    delta, order, reference = _reference_budget(policy, request, max_epsilon)
    noise = plan_run_noise(request.target_epsilon, delta, 1.0, steps, request.accountant,
                           order, reference)
    planned = plan_noise_multiplier(request.target_epsilon, delta, 1.0, steps,
                                    request.accountant)
    check_noise(policy, request, noise, planned, _budget_text(ledger, policy, max_epsilon))


def skellam_sensitivity(dimension: int) -> tuple[float, float, tuple[float, float, float]]:
    """One unit's L1 and L2 sensitivity in the integer sum of a model of ``dimension`` numbers,
    whatever the rounding draws, and (L1, L2, failure probability) of the likely bound: what
    ``plan_skellam_mu`` and the two accounts take."""
    norm = integer_norm(dimension)
    l2 = rounding_bound(norm, dimension)
    likely_l2 = likely_rounding_bound(norm, dimension)
    return (l1_bound(l2, dimension), l2,
            (l1_bound(likely_l2, dimension), likely_l2, ROUNDING_FAILURE))


def _distributed_release(
    ledger: Ledger, keys: list[str], request: RoundRequest, policy: SitePolicy, dimension: int,
) -> tuple[Release, list[int]]:
    """The round's Skellam release and the units in it: those whose spend stays within
    max-epsilon and whose own-noise spend (``Ledger.alone``) within max-epsilon-alone, the
    lifetime filter applied to both accounts. Every unit is in each full-batch sum, so leaving
    units out changes nothing in the release: one pass of the filter is exact.

    Every site plans the same common noise from public values (the run's target, its planned
    delta, rounds and the model's size) and adds its share of it; a site whose own budget, or
    the target at its own delta, needs more adds the difference itself. What the site counts
    on (``mu``) is its own share plus the common shares of the other ``cohort - tolerated - 1``
    sites, never its own plan for them: sites with other budgets or deltas plan other totals
    (found in review: the site with the largest plan then charged less than the sum gave it)."""
    l1, l2, likely = skellam_sensitivity(dimension)
    budget = rdp_budget(policy.max_epsilon, ledger.delta, ledger.order)
    counted = request.cohort_size - request.tolerated_sites
    planned = plan_skellam_mu(request.target_epsilon, request.plan_delta or request.delta, l1, l2,
                              request.num_rounds, likely)
    others = (counted - 1) * planned / counted  # what the other sites that count add, at least
    needed = max(skellam_mu_within_rdp(l1, l2, request.num_rounds, ledger.order, budget),
                 plan_skellam_mu(request.target_epsilon, request.delta, l1, l2,
                                 request.num_rounds, likely))  # the target at its own delta
    share = max(planned / counted, needed - others)
    mu = share + others
    rdp = skellam_rdp(mu, l1, l2, ledger.order)
    rdp_alone = skellam_rdp(share, l1, l2, ledger.order)
    # compared at the run's planned delta, not the site's own (a function of its unit count),
    # so that the decline, charged nothing, says nothing of the count (as ``_check_useful_noise``)
    _, reference_order, reference_budget = _reference_budget(policy, request,
                                                             policy.max_epsilon)
    within_reference = skellam_mu_within_rdp(l1, l2, request.num_rounds, reference_order,
                                             reference_budget)
    reference = max(planned / counted, max(within_reference, planned) - others) + others
    check_noise(policy, request, math.sqrt(2 * reference) / l2, math.sqrt(2 * planned) / l2,
                _budget_text(ledger, policy, policy.max_epsilon))
    released = sum(1 for r in ledger.releases if r.run == request.run_name)
    to_come = max(request.num_rounds - released, 1)  # this release counts, even past the plan
    # a unit new to the site, over the run's releases to come: whether the share is too small
    # for the run at all. Units that trained before are held to the bound by the filter below,
    # each sitting out once at it; a decline counting them would tell the server, outside DP,
    # what the ledger holds (found in review: whether the oldest unit was still there, whether
    # a row had been given its customer's id), and one unit would stop the site for good. By
    # the filter's own rule, so that a new unit that passes takes part in every release to come
    # (found in review: by the run's own accountant at the run's delta, it passed runs whose
    # every unit then sat out); the ledger's order and delta follow from the site's size when
    # the ledger began, and so does the decline, at a boundary of the automatic delta
    alone = rdp_epsilon(to_come * rdp_alone, ledger.order, ledger.delta)
    if alone > policy.max_epsilon_alone:
        raise PolicyRefusal(
            Reason.MODEL_REFUSED,
            f"the run's noise share ({request.cohort_size} sites, {request.tolerated_sites} "
            f"tolerated) would take the own-noise epsilon of a unit new to this site to "
            f"{alone:.3g} over the run, above its max-epsilon-alone "
            f"{policy.max_epsilon_alone:g} (Rényi DP at order {ledger.order:g}, which the "
            "site's ledger fixed for good when it began: an order fixed for a far larger "
            "max-epsilon converts max-epsilon-alone to little Rényi DP)",
        )
    alone_budget = rdp_budget(policy.max_epsilon_alone, ledger.delta, ledger.order)
    trained = [i for i, key in enumerate(keys) if ledger.spend.get(key, 0.0) + rdp <= budget
               and ledger.alone.get(key, 0.0) + rdp_alone <= alone_budget]
    if not trained:
        raise BudgetExhausted(f"every one of the site's {len(keys)} units has spent its budget "
                              f"(max-epsilon {policy.max_epsilon:g}, or max-epsilon-alone "
                              f"{policy.max_epsilon_alone:g})")
    release = replace(
        _release(request, math.sqrt(2 * mu) / l2, 1.0, 1, units=len(trained), rdp=rdp),
        accountant="rdp", privacy_model="distributed", skellam_mu=mu, skellam_mu_share=share,
        l1=l1, l2=l2, rdp_alone=rdp_alone, likely_l1=likely[0], likely_l2=likely[1],
        rounding_failure=likely[2],
    )
    return release, trained


def _budget_text(ledger: Ledger, policy: SitePolicy, max_epsilon: float) -> str:
    """The lifetime budget a fresh unit has, for the site's log: ``max_epsilon``, the site's
    max-epsilon or its max-epsilon-alone."""
    budget = rdp_budget(max_epsilon, ledger.delta, ledger.order)
    setting = "max-epsilon" if max_epsilon == policy.max_epsilon else "max-epsilon-alone"
    return (f"this site's lifetime budget ({setting} {max_epsilon:g} per {ledger.privacy_unit} "
            f"at delta {ledger.delta:g}: Rényi DP {budget:.3g} at order {ledger.order:g})")


def run_epsilons(releases: list[Release], delta: float) -> tuple[float, float]:
    """(epsilon, epsilon alone) of one run's releases at ``delta``: composed with the run's
    accountant (local DP, where the two are equal) or the Skellam mechanism's Rényi DP, for the
    noise the guarantee counts on and for the site's own share (distributed DP)."""
    if not releases:
        return 0.0, 0.0
    if any(r.noise_multiplier == 0 for r in releases):
        return math.inf, math.inf
    if releases[0].distributed:
        summed = [r.skellam for r in releases]
        alone = [r.skellam._replace(mu=r.skellam_mu_share) for r in releases]
        return skellam_releases_epsilon(summed, delta), skellam_releases_epsilon(alone, delta)
    planned = max(r.steps * r.num_rounds for r in releases)  # as the plan chose its accountant
    epsilon = epsilon_spent([r.mechanism for r in releases], delta,
                            feasible_accountant(releases[0].accountant, planned))
    return epsilon, epsilon


def _release(request: RoundRequest, noise: float, rate: float, steps: int, units: int,
             rdp: float) -> Release:
    return Release(
        run=request.run_name, server_round=request.server_round, num_rounds=request.num_rounds,
        noise_multiplier=noise, sample_rate=rate, steps=steps, clip_norm=request.clip_norm,
        delta=request.delta, accountant=request.accountant, units=units, rdp=rdp, time=now(),
        **{name: getattr(request, name) for name in RUN_PLAN_FIELDS},
    )
