"""The run-name bound, the egress log's cuts and the erasure look-ups of stop 61, each held by a
test that fails when the check is broken.

Written from the mutation pass over the site-side functions stop 61 changed
(``docs/benchmarks/mutation/mutation-stop61.json``): each surviving mutant that was a real gap
has a test here, through public functions only (``run_name_problem``, ``egress_guard``, the
ClientApp for an evaluation, ``forget``/``customer_spend`` for the deletion log). A run name of
``MAX_RUN_NAME`` characters is a run name, logged whole in the egress log, where one character
more is cut and marked; a server-round is logged as a number only where it is a whole one (an
integral float too, never a bool), else as sent and cut, and as 0 where none was sent. A DP
evaluation's epsilon at the top of its accountant's range is accepted where no lifetime bound
caps it lower (the one test of that end, in ``test_plan_checks_mutants``, has evaluated at the
default max-epsilon-alone since stop 61 capped the evaluations by it). An earlier erasure is
looked for only where no row of the customer is left; one that counted no spend of theirs, or
that counted none and found no row, is none however the site trains afterwards; of those that
counted spend the newest is named, one unit being spend; and an erasure made with the ledger
unreadable records its spend as uncounted (``ledger_units`` None), never as a count.
"""

import math
from datetime import timedelta

import pytest
from flwr.app import ConfigRecord, Message, RecordDict
from test_egress_guard import egress_log
from test_plan_checks_mutants import evaluate, evaluations, write_evaluating_site
from test_retention import NOW, log_entries, site_rows, write_site
from test_site_privacy import context

from fl_client.deletion_log import DELETION_LOG
from fl_client.egress_guard import egress_guard
from fl_client.privacy_ledger import LEDGER_FILE, Ledger, write_ledger
from fl_client.retention import customer_key, customer_spend, forget
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol import hash_chain
from fl_protocol.wire import MAX_RUN_NAME, Reason, error_reply, run_name_problem

pytestmark = pytest.mark.usefixtures("task_identity")


def trained(state) -> None:
    """``state`` set up, with the ledger of a site that has trained per utterance (no unit's
    spend in it): the erasures' look-ups read the deletion log only where a ledger is."""
    create_site_secret(state)
    write_ledger(state, Ledger(privacy_unit="utterance", order=4.0, delta=1e-5),
                 site_secret(state))


def erasure_entry(state, customer: str, asked, **found) -> None:
    """An erasure of ``customer`` in the deletion log, as ``forget`` records it."""
    secret = site_secret(state)
    hash_chain.append_entry(state / DELETION_LOG, "erasure", {
        "actor": "test", "customer": customer_key(secret, customer),
        "requested_at": asked.isoformat(), "erased_at": asked.isoformat(), **found}, key=secret)


def logged(ctx, config: dict) -> dict:
    """The egress log's line for a message of ``config`` that the site declined."""
    msg = Message(content=RecordDict({"config": ConfigRecord({"labels": ["a", "b"], **config})}),
                  dst_node_id=7, message_type="train")
    egress_guard(msg, ctx, lambda m, c: error_reply(m, Reason.BUDGET_EXHAUSTED))
    return egress_log(ctx)[-1]


def test_a_run_name_of_the_longest_length_is_a_run_name():
    assert run_name_problem("r" * MAX_RUN_NAME) == ""
    assert run_name_problem("run-a") == ""
    assert run_name_problem("r" * (MAX_RUN_NAME + 1)).startswith(
        f"is {MAX_RUN_NAME + 1} characters long")


def test_the_egress_log_keeps_a_run_name_of_the_longest_length_whole_and_cuts_a_longer_one(ctx):
    assert logged(ctx, {"run-name": "r" * MAX_RUN_NAME})["run"] == "r" * MAX_RUN_NAME
    assert logged(ctx, {"run-name": "s" * (MAX_RUN_NAME + 1)})["run"] == (
        "s" * MAX_RUN_NAME + f"... (cut: {MAX_RUN_NAME + 1} characters)")


LONG_ROUND = "9" * MAX_RUN_NAME  # its repr, quoted, is two characters longer


@pytest.mark.parametrize(("sent", "written"), [
    (2, 2), (2.0, 2), (True, "True"), ("2", "'2'"), (2.5, "2.5"),
    (1e308, "1e+308"), (2.0**63, "9.223372036854776e+18"),  # found in review: 309 digits
    (LONG_ROUND, repr(LONG_ROUND)[:MAX_RUN_NAME] + f"... (cut: {MAX_RUN_NAME + 2} characters)"),
])
def test_the_egress_log_writes_a_server_round_as_a_number_only_where_it_is_a_whole_one(
        ctx, sent, written):
    """A whole number (an integral float too, not a bool) is the round; anything else is
    written as the server sent it, cut to ``MAX_RUN_NAME`` characters: the log is kept for good."""
    assert logged(ctx, {"server-round": sent, "run-name": "r"})["round"] == written


def test_the_egress_log_writes_round_0_where_the_server_named_none(ctx):
    assert logged(ctx, {"run-name": "r"})["round"] == 0


@pytest.fixture
def evaluating_site(tmp_path):
    return write_evaluating_site(tmp_path / "site")


@pytest.mark.parametrize("node", [{"privacy-models": "local"}, {"max-epsilon-alone": 100.0}])
def test_an_evaluation_epsilon_at_the_top_of_the_accountants_range_is_accepted(
        evaluating_site, tmp_path, node):
    """The range's top end is included where no lifetime bound caps the evaluations below it:
    with the default max-epsilon-alone (50) in distributed DP, an evaluation-epsilon of 100 is
    evaluated at 50 and never meets the end."""
    state = tmp_path / "state"
    ctx = context(evaluating_site, state, max_epsilon=1000.0, model="ngram",
                  node={"evaluation": "dp", "evaluation-epsilon": 100.0, **node},
                  accountant="rdp")
    reply = evaluate(ctx, 1, 3)
    assert not reply.has_error(), reply.error
    assert len(evaluations(state)) == 1


def test_a_customer_erased_before_the_site_trained_has_no_spend_kept_once_it_has(tmp_path):
    """The erasure counted no spend of theirs (``ledger_units`` 0): once the site has trained,
    and so keeps a ledger, it is still no erasure that found spend, nor one whose spend went
    uncounted."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[2]["customer_id"] = "carol"
    write_site(site, rows)
    create_site_secret(state)
    assert forget(site, state, "carol", math.inf, "test", delete_from_data=True).ledger_units == 0
    trained(state)
    spend = customer_spend(site, state, "carol")
    assert (spend.rows_found, spend.units, spend.earlier_erasure) == (0, 0, None)
    assert forget(site, state, "carol", math.inf, "test").earlier_erasure is None


def test_an_uncounted_erasure_that_found_no_row_is_no_earlier_erasure(tmp_path):
    """An erasure an earlier release logged without counting the spend (no ``ledger_units``),
    or made with the ledger unreadable (``None``), is taken for one only where it found rows."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    trained(state)
    for customer, counted in (("erin", {}), ("fay", {"ledger_units": None})):
        erasure_entry(state, customer, NOW, rows_found=0, **counted)
        assert customer_spend(site, state, customer).earlier_erasure is None


def test_of_several_erasures_that_found_spend_the_newest_is_named(tmp_path):
    """Newest of those that counted spend (one unit is spend), before any that did not count."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    trained(state)
    older, newer = NOW - timedelta(days=2), NOW - timedelta(days=1)
    for asked, units in ((older, 3), (newer, 1), (NOW, None)):
        erasure_entry(state, "gil", asked, rows_found=1, ledger_units=units)
    found = customer_spend(site, state, "gil").earlier_erasure
    assert (found.asked_at, found.ledger_units) == (newer, 1)


def test_a_customer_with_rows_again_is_looked_up_by_them_not_by_an_earlier_erasure(tmp_path):
    """Their rows name the units their spend is under: the deletion log is read only where
    none is left."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[4]["customer_id"] = "hal"  # a returning customer, not trained on since
    write_site(site, rows)
    trained(state)
    erasure_entry(state, "hal", NOW - timedelta(days=3), rows_found=2, ledger_units=2)
    spend = customer_spend(site, state, "hal")
    assert (spend.rows_found, spend.units, spend.earlier_erasure) == (1, 0, None)


def test_an_erasure_with_the_ledger_unreadable_records_its_spend_as_uncounted(tmp_path):
    """It found rows but could not count their spend: ``ledger_units`` is None, never a count,
    so that once the ledger reads again the erasure is named without a number of units."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[1]["customer_id"] = "ida"
    write_site(site, rows)
    trained(state)
    ledger_file = state / LEDGER_FILE
    kept = ledger_file.read_bytes()
    ledger_file.write_text('{"garbage": 1}')
    erasure = forget(site, state, "ida", math.inf, "test", delete_from_data=True, now=NOW)
    assert erasure.ledger_problem and erasure.rows_found == 1
    assert log_entries(state)[0]["ledger_units"] is None
    ledger_file.write_bytes(kept)
    found = customer_spend(site, state, "ida").earlier_erasure
    assert (found.asked_at, found.ledger_units) == (NOW, None)
