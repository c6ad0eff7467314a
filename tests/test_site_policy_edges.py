"""The site's own policy at its edges: every node-config check, the ends of every range the
wire contract states, and the round requests a hostile server could shape to slip through one
of them. Found by mutation testing (fl_client/site_policy.py: each test kills a change that
no other test caught; docs/TESTING.md)."""

import math
from dataclasses import replace

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict

from fl_client.privacy_accounting import default_delta, delta_limit
from fl_client.privacy_budget import site_delta
from fl_client.site_policy import (
    PolicyRefusal,
    RoundRequest,
    SiteConfigError,
    SitePolicy,
    check_parameters,
    check_request,
    evaluation_request,
    is_simulated,
    learning_rate,
    retention_days,
    site_policy,
    unknown_setting_problem,
)
from fl_protocol.wire import (
    CLIP_NORM_RANGE,
    EPSILON_RANGES,
    LEARNING_RATE_RANGE,
    MIN_DELTA,
    ROUND_WHOLE_RANGES,
    RUN_CONFIG_DEFAULTS,
    Reason,
)

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["card_lost", "refund"]
POLICY = SitePolicy(max_epsilon=8.0, max_delta=1e-5, privacy_unit=None)


def request(**changes) -> RoundRequest:
    """A local round the default policy accepts; ``changes`` override its fields."""
    return replace(RoundRequest(run_name="run-a", server_round=1, num_rounds=3, target_epsilon=4.0,
                                delta=1e-5, accountant="prv", privacy_unit="utterance",
                                clip_norm=1.0, batch_size=16, local_epochs=1), **changes)


def refusal(policy: SitePolicy, asked: RoundRequest) -> Reason:
    with pytest.raises(PolicyRefusal) as refused:
        check_request(policy, asked)
    return refused.value.reason


# --- site_policy: the site's own node config ------------------------------------------------


@pytest.mark.parametrize(("key", "bad"), [
    ("privacy-models", ""), ("privacy-models", " , "), ("privacy-models", "centralised"),
    ("privacy-models", "local,federated"), ("min-tolerated-sites", 1.5),
    ("min-tolerated-sites", True), ("min-tolerated-sites", -1), ("max-epsilon-alone", 0.0),
    ("max-epsilon-alone", -1.0), ("max-epsilon-alone", math.nan),
])
def test_an_invalid_node_config_setting_stops_the_site(ctx, key, bad):
    ctx.node_config[key] = bad
    with pytest.raises(SiteConfigError, match=key):
        site_policy(ctx)


def test_a_site_may_require_no_tolerated_site(ctx):
    ctx.node_config["min-tolerated-sites"] = 0
    assert site_policy(ctx).min_tolerated_sites == 0


def test_a_max_epsilon_alone_below_one_is_a_valid_policy(ctx):
    ctx.node_config["max-epsilon-alone"] = 0.5
    assert site_policy(ctx).max_epsilon_alone == 0.5


def test_a_retention_of_under_a_day_is_a_valid_policy(ctx):
    ctx.node_config["retention-days"] = 0.5
    assert retention_days(ctx) == 0.5


def test_a_deployed_site_without_a_data_path_never_takes_its_budget_from_the_run_config(tmp_path):
    node = {"state-dir": str(tmp_path / "state"), "max-epsilon": 2.0}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                  run_config=dict(RUN_CONFIG_DEFAULTS) | {"site-max-epsilon": 100.0})
    assert not is_simulated(ctx)
    assert site_policy(ctx).max_epsilon == 2.0


def test_only_flowers_own_keys_without_a_data_path_are_named_as_a_simulations():
    assert unknown_setting_problem({"colour": "blue"}).startswith(
        "'colour' is not a setting of the site;")
    assert unknown_setting_problem({"data-path": "/srv/data", "partition-id": 0}) == (
        "'partition-id' is a key Flower's simulation engine sets, and no simulation runs this "
        "site")
    assert unknown_setting_problem({"partition-id": 0}) == (
        "'partition-id' is a key Flower's simulation engine sets, and no simulation runs this "
        "site: name its data folder with data-path")


def test_flowers_example_node_config_outside_its_simulation_engine_is_a_deployed_site():
    """What the ClientApp reads from a SuperNode given Flower's example node config: no
    simulated site, so no policy taken from the run config (found in review)."""
    node = {"partition-id": 0, "num-partitions": 2}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                  run_config=dict(RUN_CONFIG_DEFAULTS) | {"site-max-epsilon": 100.0})
    assert not is_simulated(ctx)
    with pytest.raises(SiteConfigError, match="'num-partitions' is a key Flower's simulation "
                                              "engine sets, and no simulation runs this site"):
        site_policy(ctx)


def test_by_default_a_site_requires_one_tolerated_site(ctx):
    policy = site_policy(ctx)
    distributed = request(privacy_model="distributed", tolerated_sites=1, cohort_size=3)
    check_request(policy, distributed)
    assert refusal(policy, replace(distributed, tolerated_sites=0)) == Reason.MODEL_REFUSED


# --- site_policy: what the server asks --------------------------------------------------------


# The wire contract's ranges are inclusive and the server accepts their ends; a site that
# refused them would decline every round of a run the server let through.
@pytest.mark.parametrize("changes", [
    {"clip_norm": CLIP_NORM_RANGE[0]},
    {"clip_norm": CLIP_NORM_RANGE[1]},
    {"num_rounds": ROUND_WHOLE_RANGES["num-rounds"][1]},
    {"batch_size": ROUND_WHOLE_RANGES["batch-size"][1]},
    {"local_epochs": ROUND_WHOLE_RANGES["local-epochs"][1]},
    {"tolerated_sites": ROUND_WHOLE_RANGES["tolerated-sites"][1]},
    {"delta": MIN_DELTA},
    {"accountant": "prv", "target_epsilon": EPSILON_RANGES["prv"][0]},
    {"accountant": "prv", "target_epsilon": EPSILON_RANGES["prv"][1]},
    {"accountant": "rdp", "target_epsilon": EPSILON_RANGES["rdp"][0]},
    {"accountant": "rdp", "target_epsilon": EPSILON_RANGES["rdp"][1]},
], ids=lambda changes: "-".join(f"{k}={v}" for k, v in changes.items()))
def test_the_ends_of_every_range_the_wire_contract_states_are_accepted(changes):
    check_request(POLICY, request(**changes))


@pytest.mark.parametrize("rate", LEARNING_RATE_RANGE)
def test_the_ends_of_the_learning_rate_range_are_accepted(ctx, rate):
    ctx.run_config["learning-rate"] = rate
    assert learning_rate(ctx) == rate


def test_the_largest_evaluate_every_is_accepted(ctx):
    every = ROUND_WHOLE_RANGES["evaluate-every"][1]
    ctx.run_config["evaluate-every"] = every
    msg = Message(content=RecordDict({"config": ConfigRecord({
        "labels": LABELS, "run-name": "run-a", "server-round": 3, "num-rounds": 3})}),
        dst_node_id=7, message_type="evaluate")
    assert evaluation_request(msg, ctx, site_policy(ctx)).server_round == 1


@pytest.mark.parametrize("target", [math.nan, -math.inf])
def test_a_target_epsilon_that_is_not_a_positive_number_is_refused_where_no_dp_is_allowed(target):
    anything = SitePolicy(max_epsilon=math.inf, max_delta=1e-5, privacy_unit=None)
    assert refusal(anything, request(target_epsilon=target)) == Reason.SETTING_REFUSED


def test_a_distributed_round_leaving_exactly_one_site_beyond_the_tolerated_is_accepted():
    policy = SitePolicy(max_epsilon=8.0, max_delta=1e-5, privacy_unit=None, min_tolerated_sites=2)
    check_request(policy, request(privacy_model="distributed", tolerated_sites=2, cohort_size=3))


def test_distributed_dp_without_noise_is_refused_even_where_no_dp_is_allowed():
    anything = SitePolicy(max_epsilon=math.inf, max_delta=1e-5, privacy_unit=None)
    asked = request(privacy_model="distributed", target_epsilon=math.inf, tolerated_sites=1,
                    cohort_size=3)
    assert refusal(anything, asked) == Reason.MODEL_REFUSED


def test_a_message_without_a_model_is_refused_with_its_fixed_reason():
    msg = Message(content=RecordDict({"config": ConfigRecord({"run-name": "run-a"})}),
                  dst_node_id=7, message_type="train")
    with pytest.raises(PolicyRefusal) as refused:
        check_parameters(msg)
    assert refused.value.reason == Reason.PARAMETERS_REFUSED


def test_a_delta_of_exactly_the_sites_limit_is_lowered_to_its_own():
    lenient = SitePolicy(max_epsilon=8.0, max_delta=0.5, privacy_unit=None)
    limit = delta_limit(60)
    assert site_delta(lenient, request(delta=limit), 60) == default_delta(60)
    below = limit * 0.99
    assert site_delta(lenient, request(delta=below), 60) == below
