"""The privacy-plan checks of stop 60, each held by a test that fails when the check is broken.

Written from the mutation pass over the functions stop 60 changed
(``docs/benchmarks/mutation/mutation-stop60.json``): each surviving mutant that was a real gap
has a test here, through public functions only (``charge_round``, ``read_ledger`` and
``write_ledger`` for the ledger, ``round_request``/``check_request`` and the ClientApp for a
round's checks). A new unit's own-noise spend starts at nothing; a release over no units
reports no spend; a format 5 alias is dropped once its unit records a spend no smaller under its
name (an exhausted unit's too), and a unit that trains drops what others recorded under it; a
run cannot change its privacy model; a release's plan reads back whatever its batch, and a plan
of no batch, or an empty nonce, added to a release without one is refused, as is a version 3
ledger holding an empty alias table or deletion log; a format 7 ledger is read with its
own-noise spends; a round without a privacy setting is refused by its reason, and one without a
cohort-size is a cohort of none; a DP evaluation is declined outside the run's evaluation rounds
and outside evaluate-every's and its accountant's epsilon range (ends included), is recorded as
one full-batch step of sensitivity one, and is held to the site's privacy unit.
"""

import json
from dataclasses import replace
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from test_site_privacy import (
    LABELS,
    context,
    ledger,
    refused_with,
    rows,
    train_message,
    write_rows,
)

import fl_client.client_app as client_app
from fl_client.privacy_budget import charge_round, ledger_order
from fl_client.privacy_ledger import (
    FORMAT,
    LEDGER_FILE,
    Ledger,
    LedgerError,
    Release,
    now,
    privacy_unit_key,
    read_ledger,
    write_ledger,
)
from fl_client.site_policy import (
    PolicyRefusal,
    RoundRequest,
    SitePolicy,
    check_request,
    round_request,
)
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol.wire import Reason
from models import get_model_family

POLICY = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None)


def request(run: str = "run-1", server_round: int = 1, **changed) -> RoundRequest:
    """A local-DP training round of a run planned for three rounds."""
    return replace(RoundRequest(run_name=run, server_round=server_round, num_rounds=3,
                                target_epsilon=4.0, delta=1e-5, accountant="rdp",
                                privacy_unit="utterance", clip_norm=1.0, batch_size=100_000,
                                local_epochs=1), **changed)


def test_a_first_local_release_counts_each_units_own_noise_spend_as_its_spend(tmp_path):
    """A unit new to the ledger starts its own-noise (``alone``) spend at nothing: under local
    DP it is the spend itself, so its epsilon alone is its epsilon, not one raised by a start
    above zero."""
    create_site_secret(tmp_path)
    charge = charge_round(tmp_path, ["u1", "u2"], request(), POLICY)
    book = read_ledger(tmp_path, site_secret(tmp_path))
    assert book.alone == book.spend
    assert charge.epsilon_alone_all_runs == charge.epsilon_all_runs
    assert charge.epsilon_alone_this_run == charge.epsilon_this_run


def test_a_release_over_no_units_reports_no_spend(tmp_path):
    """A release that may be made over no units (``empty_ok``, a DP evaluation of an empty test
    split) charges no one: the epsilon over all runs it reports is nothing, not a made-up one."""
    create_site_secret(tmp_path)
    charge = charge_round(tmp_path, [], request(), POLICY, empty_ok=True)
    assert charge.trained == []
    assert charge.epsilon_all_runs == 0.0
    assert charge.epsilon_alone_all_runs == 0.0
    assert read_ledger(tmp_path, site_secret(tmp_path)).spend == {}


def test_a_format_5_alias_is_dropped_once_the_unit_records_its_spend_under_it(tmp_path):
    """A format 5 alias (a spend kept under another name of a unit, with no record of who
    spent it) is carried into the unit that now trains under that name; once the unit has
    recorded its spend under the name, an alias no larger is dropped, and the name's spend
    stays where the unit recorded it. The alias of a name no unit trains under is kept."""
    create_site_secret(tmp_path)
    secret = site_secret(tmp_path)
    old, other = (privacy_unit_key(secret, "utterance", name) for name in ("old-u1", "other"))
    write_ledger(tmp_path, Ledger(privacy_unit="utterance", order=ledger_order(POLICY, 1e-5),
                                  delta=1e-5, aliases={old: 0.01, other: 50.0}), secret)
    charge_round(tmp_path, ["u1"], request(), POLICY, aliases={"u1": (("old-u1",),)})
    book = read_ledger(tmp_path, secret)
    [key] = book.spend
    assert book.spend[key] > 0.01
    assert book.recorded == {old: {key: book.spend[key]}}
    assert book.aliases == {other: 50.0}


def test_an_exhausted_units_format_5_alias_is_dropped_once_recorded_at_its_size(tmp_path):
    """A unit whose format 5 alias is past the budget starts from it and takes part in nothing
    (a release over no units, ``empty_ok``); it records the alias's spend under the name, so the
    alias, no larger than that record, is dropped: the spend is kept once, by who spent it."""
    create_site_secret(tmp_path)
    secret = site_secret(tmp_path)
    old = privacy_unit_key(secret, "utterance", "old-u1")
    write_ledger(tmp_path, Ledger(privacy_unit="utterance", order=ledger_order(POLICY, 1e-5),
                                  delta=1e-5, aliases={old: 1e6}), secret)
    charge = charge_round(tmp_path, ["u1"], request(), POLICY, empty_ok=True,
                          aliases={"u1": (("old-u1",),)})
    assert charge.trained == []
    book = read_ledger(tmp_path, secret)
    [key] = book.spend
    assert book.spend == {key: 1e6}
    assert book.recorded == {old: {key: 1e6}}
    assert book.aliases == {}


def test_a_unit_that_trains_drops_the_records_others_made_under_its_name(tmp_path):
    """Once the unit named B trains, what another unit recorded under B (a spend B has now
    taken over, and goes past) is dropped: the ledger keeps who recorded what under B only
    until B's own history grows past it (``_carry_over``)."""
    create_site_secret(tmp_path)
    secret = site_secret(tmp_path)
    a, b = (privacy_unit_key(secret, "utterance", name) for name in ("A", "B"))
    charge_round(tmp_path, ["B"], request(server_round=1), POLICY)
    charge_round(tmp_path, ["A"], request(server_round=2), POLICY, aliases={"A": (("B",),)})
    assert set(read_ledger(tmp_path, secret).recorded) == {b}
    charge_round(tmp_path, ["B"], request(server_round=3), POLICY, aliases={"B": (("A",),)})
    book = read_ledger(tmp_path, secret)
    assert book.recorded == {a: {b: book.spend[b]}}
    assert book.spend[b] > book.spend[a]


def test_a_run_cannot_change_its_privacy_model_after_its_first_release(tmp_path):
    """A run's noise was planned for one privacy model: a local-DP run asking for a distributed
    round is refused as such, before its other settings are compared, and nothing is charged."""
    create_site_secret(tmp_path)
    charge_round(tmp_path, ["u1", "u2"], request(), POLICY)
    summed = request(server_round=2, privacy_model="distributed", cohort_size=10,
                     tolerated_sites=2)
    with pytest.raises(PolicyRefusal) as refused:
        charge_round(tmp_path, ["u1", "u2"], summed, POLICY, dimension=1000)
    assert refused.value.reason == Reason.MODEL_REFUSED
    assert len(read_ledger(tmp_path, site_secret(tmp_path)).releases) == 1


def plan_release(**plan) -> Release:
    """A local release, with the run's plan where ``plan`` gives it (none: from before format 8)."""
    return Release(run="run-1", server_round=1, num_rounds=3, noise_multiplier=1.1,
                   sample_rate=0.1, steps=10, clip_norm=1.0, delta=1e-5, accountant="prv",
                   units=2, rdp=0.25, time=now(), nonce="n1", **plan)


def one_release_ledger(state, release: Release) -> Path:
    create_site_secret(state)
    book = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5, releases=[release],
                  spend={"k": release.rdp}, alone={"k": release.rdp})
    write_ledger(state, book, site_secret(state))
    return state / LEDGER_FILE


@pytest.mark.parametrize("batch_size", [1, 4096])
def test_a_release_with_a_plan_reads_back_with_it(tmp_path, batch_size):
    """A release's record of its run's plan, whatever its batch (1: a DP evaluation of one
    test unit), reads back as written."""
    plan = {"target_epsilon": 4.0, "batch_size": batch_size, "local_epochs": 2,
            "tolerated_sites": 1, "plan_delta": 1e-6}
    one_release_ledger(tmp_path, plan_release(**plan))
    [read] = read_ledger(tmp_path, site_secret(tmp_path)).releases
    assert {name: getattr(read, name) for name in plan} == plan


@pytest.mark.parametrize("batch_size", [0, -1, 0.0, False])
def test_a_plan_of_no_batch_added_to_a_release_without_one_is_refused(tmp_path, batch_size):
    """A release recorded before format 8 has no plan, and its MAC covers none: a plan added to
    it with no batch (which the ledger would write back without the plan, so that its MAC still
    verifies) is refused as an edit, not read."""
    path = one_release_ledger(tmp_path, plan_release())
    document = json.loads(path.read_text())
    assert "batch_size" not in document["releases"][0]
    document["releases"][0].update(target_epsilon=40.0, batch_size=batch_size, local_epochs=1,
                                   tolerated_sites=0, plan_delta=1e-5)
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerError, match="plan of no batch size"):
        read_ledger(tmp_path, site_secret(tmp_path))


def test_an_empty_nonce_added_to_a_release_without_one_is_refused(tmp_path):
    """A release without fresh randomness records no nonce, and its MAC covers none: an empty
    one added to it (which the MAC would not notice) is refused as an edit."""
    path = one_release_ledger(tmp_path, replace(plan_release(), nonce=""))
    document = json.loads(path.read_text())
    assert "nonce" not in document["releases"][0]
    document["releases"][0]["nonce"] = ""
    path.write_text(json.dumps(document))
    with pytest.raises(LedgerError, match="empty nonce"):
        read_ledger(tmp_path, site_secret(tmp_path))


@pytest.mark.parametrize("added", ["aliases", "deletion_log"])
def test_a_version_3_ledger_holding_an_empty_alias_table_or_deletion_log_is_refused(tmp_path,
                                                                                    added):
    """Version 3 had no aliases and no deletion log: one that holds either, even empty (which
    its MAC would not notice), was edited, and is refused; without it, it reads."""
    create_site_secret(tmp_path)
    write_ledger(tmp_path, Ledger(privacy_unit="utterance", order=4.0, delta=1e-5,
                                  releases=[plan_release()], spend={"k": 0.25}),
                 site_secret(tmp_path))
    path = tmp_path / LEDGER_FILE
    document = {k: v for k, v in json.loads(path.read_text()).items()
                if k not in ("aliases", "recorded", "alone", "deletion_log")}
    path.write_text(json.dumps(document | {"format": "fedintent-privacy-ledger/3"}))
    assert read_ledger(tmp_path, site_secret(tmp_path)).spend == {"k": 0.25}
    path.write_text(json.dumps(document | {"format": "fedintent-privacy-ledger/3", added: {}}))
    with pytest.raises(LedgerError, match="version 3 ledger cannot hold"):
        read_ledger(tmp_path, site_secret(tmp_path))


def test_a_format_7_ledger_reads_with_its_own_noise_spends_and_is_written_as_the_current_one(
        tmp_path):
    """The ledger the release before format 8 wrote (its releases without a plan, its units'
    own-noise spends kept) is read, ``alone`` included, and the next charge writes it back as
    the current format; a run it holds a release of is not held to a plan it never recorded."""
    path = one_release_ledger(tmp_path, plan_release())
    secret = site_secret(tmp_path)
    document = json.loads(path.read_text())
    assert document["format"] == FORMAT and document["alone"] == {"k": 0.25}
    path.write_text(json.dumps(document | {"format": "fedintent-privacy-ledger/7"}))
    assert read_ledger(tmp_path, secret).alone == {"k": 0.25}
    charge_round(tmp_path, ["u1"], request(server_round=2, accountant="prv",
                                           target_epsilon=8.0), POLICY)
    assert json.loads(path.read_text())["format"] == FORMAT
    book = read_ledger(tmp_path, secret)
    assert book.alone["k"] == 0.25 and len(book.releases) == 2


def write_evaluating_site(site_dir: Path) -> Path:
    """A site of 60 training rows and two test rows, its evaluation under DP."""
    site_dir.mkdir()
    write_rows(site_dir, rows(0, 60))
    write_rows(site_dir, rows(100, 102), name="test.csv")
    return site_dir


@pytest.fixture
def site(tmp_path):
    return write_evaluating_site(tmp_path / "site")


def evaluate(ctx, server_round: int, num_rounds: int) -> Message:
    """The ClientApp's reply to the server's evaluation of round ``server_round`` of run-a."""
    model = get_model_family("ngram").initial_model(LABELS)
    config = ConfigRecord({"labels": LABELS, "server-round": server_round,
                           "num-rounds": num_rounds, "run-name": "run-a"})
    message = Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                          "config": config}),
                      dst_node_id=7, message_type="evaluate")
    return client_app.app(message, ctx)


def evaluations(state) -> list[tuple[int, int]]:
    """Each DP evaluation the ledger holds, as (its number, the run's count of them)."""
    book = ledger(state)
    return [] if book is None else [(r.server_round, r.num_rounds) for r in book.releases
                                    if r.run == "run-a (evaluation)"]


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("missing", ["accountant", "privacy-model"])
def test_a_round_whose_run_config_lacks_a_privacy_setting_is_refused(site, tmp_path, missing):
    """A run config without one of the privacy settings read by name is a malformed round,
    refused with its fixed reason before anything is charged, not an internal error."""
    state = tmp_path / "state"
    ctx = context(site, state)
    ctx.run_config = {k: v for k, v in ctx.run_config.items() if k != missing}
    assert refused_with(client_app.app(train_message(), ctx), Reason.SETTING_REFUSED)
    assert ledger(state) is None


@pytest.mark.usefixtures("task_identity")
def test_a_distributed_round_without_a_cohort_size_leaves_no_site_to_add_the_noise(site,
                                                                                 tmp_path):
    """A round config that names no cohort-size is read as a cohort of none: a distributed
    round without one is refused even where the site requires no tolerated site (a cohort of
    one would have the site count on a secure sum of itself)."""
    ctx = context(site, tmp_path / "state", **{"privacy-model": "distributed",
                                               "tolerated-sites": 0})
    asked = round_request(train_message(), ctx)
    assert asked.cohort_size == 0
    with pytest.raises(PolicyRefusal, match="leaves no site to add the noise"):
        check_request(replace(POLICY, min_tolerated_sites=0), asked)


@pytest.mark.usefixtures("task_identity")
def test_a_dp_evaluation_outside_the_runs_evaluation_rounds_is_declined(site, tmp_path):
    """With evaluate-every 2 over 5 rounds the run evaluates in rounds 2, 4 and 5: round 1 is
    declined before anything is charged, and the evaluations are numbered 1 to 3 of 3."""
    state = tmp_path / "state"
    ctx = context(site, state, model="ngram", node={"evaluation": "dp"}, **{"evaluate-every": 2})
    assert refused_with(evaluate(ctx, 1, 5), Reason.ROUND_REFUSED)
    assert evaluations(state) == []
    for server_round in (2, 4, 5):
        reply = evaluate(ctx, server_round, 5)
        assert not reply.has_error(), reply.error
    assert evaluations(state) == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.usefixtures("task_identity")
def test_a_dp_evaluation_is_recorded_as_one_full_batch_step_of_sensitivity_one(site, tmp_path):
    """A DP evaluation is one Gaussian release of the whole test split (sample rate 1, one
    step) of scores whose sensitivity is 1 (``dp_evaluation.py``): the ledger records it so,
    whatever clip norm, batch size and local epochs the run trains with."""
    state = tmp_path / "state"
    ctx = context(site, state, model="ngram", node={"evaluation": "dp"},
                  **{"clip-norm": 2.0, "local-epochs": 3, "batch-size": 64})
    reply = evaluate(ctx, 1, 3)
    assert not reply.has_error(), reply.error
    [release] = ledger(state).releases
    assert (release.clip_norm, release.sample_rate, release.steps, release.units,
            release.batch_size, release.local_epochs) == (1.0, 1.0, 1, 2, 2, 1)


@pytest.mark.usefixtures("task_identity")
def test_the_largest_evaluate_every_is_accepted_for_a_dp_evaluation(site, tmp_path):
    """evaluate-every's range is inclusive: at 10,000 a run evaluates in its last round only."""
    state = tmp_path / "state"
    ctx = context(site, state, model="ngram", node={"evaluation": "dp"},
                  **{"evaluate-every": 10_000})
    reply = evaluate(ctx, 3, 3)
    assert not reply.has_error(), reply.error
    assert evaluations(state) == [(1, 1)]


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("every", [0, 10_001])
def test_an_evaluate_every_outside_its_range_is_refused_for_a_dp_evaluation(site, tmp_path,
                                                                             every):
    state = tmp_path / "state"
    ctx = context(site, state, model="ngram", node={"evaluation": "dp"},
                  **{"evaluate-every": every})
    assert refused_with(evaluate(ctx, 3, 3), Reason.SETTING_REFUSED)
    assert evaluations(state) == []


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("accountant,epsilon,accepted", [
    ("prv", 0.5, True), ("prv", 0.1, True), ("rdp", 0.5, True), ("rdp", 100.0, True),
    ("rdp", 0.2, False)])
def test_a_sites_evaluation_epsilon_is_held_to_the_runs_accountants_range(
        site, tmp_path, accountant, epsilon, accepted):
    """The site's evaluation-epsilon is planned by the run's accountant: accepted anywhere in
    that accountant's target-epsilon range (PRV from 0.1, RDP from 0.5, both up to 100), ends
    included, and declined below it, before anything is charged. The site takes no part in
    distributed DP, whose max-epsilon-alone (50) would cap the evaluations below the top."""
    state = tmp_path / "state"
    ctx = context(site, state, max_epsilon=1000.0, model="ngram",
                  node={"evaluation": "dp", "evaluation-epsilon": epsilon,
                        "privacy-models": "local"},
                  accountant=accountant)
    reply = evaluate(ctx, 1, 3)
    if accepted:
        assert not reply.has_error(), reply.error
        assert len(evaluations(state)) == 1
    else:
        assert refused_with(reply, Reason.EVALUATION_REFUSED)
        assert evaluations(state) == []


@pytest.mark.usefixtures("task_identity")
def test_a_dp_evaluation_is_held_to_the_sites_privacy_unit(site, tmp_path):
    """A DP evaluation is checked against the site's policy as a training round is: a server
    asking for the utterance unit at a site that counts customers is refused, nothing charged."""
    state = tmp_path / "state"
    ctx = context(site, state, model="ngram",
                  node={"evaluation": "dp", "privacy-unit": "customer"},
                  **{"privacy-unit": "utterance"})
    assert refused_with(evaluate(ctx, 1, 3), Reason.UNIT_REFUSED)
    assert ledger(state) is None
