"""Tests written for the survivors of mutation testing stop 67 (docs/TESTING.md): the server's
checks of a site's privacy claims and update (``fl_server/update_validation.py``) and the SecAgg+
mask keying. Each pins one behaviour that a mutant of those checks changed without any other
test noticing; the numbers are worked out by hand from the documented formulas."""

import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from test_claimed_numbers import CONFIG, PLAN, check, dp_reply
from test_egress_guard import egress_log, head_state, masked_reply, secagg_incoming, send
from test_update_validation import GLOBAL, NO_DP, SPEC, train_content

from fl_server.update_validation import (
    BOUND_SAFETY,
    EPSILON_SLACK,
    EXAMPLES_RATIO,
    MAX_NOISE_RATIO,
    NOISE_TAIL,
    InvalidReply,
    RunPlan,
    check_evaluate_reply,
    check_privacy_claims,
    check_secure_train_reply,
    check_train_reply,
    derived_update_bound,
    oversized_claims,
    sufficient_noise,
)

pytestmark = pytest.mark.usefixtures("task_identity")


def test_an_unreadable_array_is_rejected_with_its_reason():
    """An array whose bytes do not decode is rejected as such, not left to fail in the norm."""
    good = Array(GLOBAL["weight"])
    garbage = Array(dtype=good.dtype, shape=good.shape, stype=good.stype, data=b"garbage")
    content = train_content()
    content["arrays"]["weight"] = garbage
    with pytest.raises(InvalidReply, match="weight: unreadable array"):
        check_train_reply(content, SPEC, GLOBAL, max_update_norm=0.0, plan=NO_DP)


def test_an_update_exactly_at_max_update_norm_is_accepted():
    """``max-update-norm`` is the largest norm accepted, not the first one rejected."""
    norm = check_train_reply(train_content(), SPEC, GLOBAL, max_update_norm=math.inf, plan=NO_DP)
    assert check_train_reply(train_content(), SPEC, GLOBAL, max_update_norm=norm,
                             plan=NO_DP) == norm
    with pytest.raises(InvalidReply, match="exceeds max-update-norm"):
        check_train_reply(train_content(), SPEC, GLOBAL, max_update_norm=norm * (1 - 1e-9),
                          plan=NO_DP)


BOUND_PLAN = RunPlan.from_run_config(CONFIG | {"clip-norm": 2.0, "learning-rate": 3.0})


@pytest.mark.parametrize("sigma,steps,units,rate,dimension,batch", [
    # B = 40 x 0.25 - 1 = 9; sqrt(T) = 2, sqrt(d) = 10
    (1.5, 4, 40, 0.25, 100, 9.0),
    # B = 2 x 1 - 1 = 1: Opacus' batch one lower, never below 1
    (0.5, 9, 2, 1.0, 49, 1.0),
    # B = 1 x 1 - 1 = 0, taken as 1
    (2.0, 1, 1, 1.0, 1, 1.0),
])
def test_the_derived_update_bound_is_the_documented_formula(sigma, steps, units, rate,
                                                            dimension, batch):
    """bound = BOUND_SAFETY x lr x C / B x (T x U + sigma x sqrt(T) x (sqrt(d) + NOISE_TAIL)),
    B = max(1, U x q - 1), with lr and C the run's (3 and 2 here, so that neither cancels)."""
    metrics = MetricRecord({"epsilon": 1.0, "noise-multiplier": sigma, "steps": steps,
                            "privacy-units": units, "sample-rate": rate})
    expected = (BOUND_SAFETY * 3.0 * 2.0 / batch
                * (steps * units + sigma * math.sqrt(steps) * (math.sqrt(dimension) + NOISE_TAIL)))
    assert derived_update_bound(metrics, BOUND_PLAN, dimension) == pytest.approx(expected,
                                                                                rel=1e-12)
    # and by hand for the first case: 2 x 3 x 2 / 9 x (160 + 1.5 x 2 x 20) = 880 / 3
    if units == 40:
        assert derived_update_bound(metrics, BOUND_PLAN, dimension) == pytest.approx(880 / 3)


def test_derived_update_bound_is_infinite_without_dp():
    metrics = MetricRecord({"epsilon": math.inf, "noise-multiplier": 1.0, "steps": 1,
                            "privacy-units": 1, "sample-rate": 1.0})
    assert derived_update_bound(metrics, BOUND_PLAN, 10) == math.inf


def test_an_epsilon_within_the_accountants_slack_of_the_target_is_accepted():
    """Epsilon may exceed the target by ``EPSILON_SLACK`` (1%) for accountants' numerical error,
    and by no more."""
    start, update, metrics = dp_reply()
    assert EPSILON_SLACK == 1.01
    check(start, update, metrics | {"epsilon": PLAN.target_epsilon * 1.009})
    with pytest.raises(InvalidReply, match="above the run's target-epsilon"):
        check(start, update, metrics | {"epsilon": PLAN.target_epsilon * 1.011})


@pytest.mark.parametrize("delta", [[1e-5], [1.0, 2.0]])
def test_a_delta_that_is_not_a_number_is_rejected_by_the_claims_check(delta):
    """``check_privacy_claims`` is public: called on a record no contract check has seen, a
    delta that is not a number is an ``InvalidReply``, not a ``TypeError`` from comparing it."""
    _, _, metrics = dp_reply()
    with pytest.raises(InvalidReply, match="delta"):
        check_privacy_claims(MetricRecord(metrics | {"delta": delta}), PLAN)


@pytest.mark.parametrize("claims,reason", [
    # noise 0 is no DP release: rejected by the range check, not by a division by zero in the
    # noise ceiling after it
    ({"noise-multiplier": 0.0}, "noise-multiplier 0 or sample-rate .* out of range"),
    ({"noise-multiplier": math.inf}, "noise-multiplier inf or sample-rate .* out of range"),
    ({"noise-multiplier": -1.0}, "noise-multiplier -1 or sample-rate .* out of range"),
    ({"sample-rate": 0.0}, "sample-rate 0 out of range"),
    ({"sample-rate": 1.5}, "sample-rate 1.5 out of range"),
])
def test_a_dp_release_out_of_range_is_rejected_by_the_claims_check(claims, reason):
    """The range check of ``check_privacy_claims`` by itself (the contract check in front of it
    in ``check_train_reply`` catches some of these first)."""
    _, _, metrics = dp_reply()
    check_privacy_claims(MetricRecord(metrics), PLAN)
    with pytest.raises(InvalidReply, match=reason):
        check_privacy_claims(MetricRecord(metrics | claims), PLAN)


def test_a_clip_norm_within_the_slack_of_the_runs_is_accepted_and_no_further():
    """The claimed clip-norm may differ from the run's by ``EPSILON_SLACK - 1`` (1%) of it: at
    exactly 1% it passes, at 2% it does not."""
    _, _, metrics = dp_reply()
    assert PLAN.clip_norm == 1.0
    for clip in (PLAN.clip_norm * EPSILON_SLACK, 0.995, 1.005):
        check_privacy_claims(MetricRecord(metrics | {"clip-norm": clip}), PLAN)
    for clip in (1.02, 0.98, 1.5, 0.5):
        with pytest.raises(InvalidReply, match="clip-norm"):
            check_privacy_claims(MetricRecord(metrics | {"clip-norm": clip}), PLAN)


def test_a_claim_of_no_units_is_rejected_under_the_customer_unit():
    """Under the customer unit a site may hold more examples than units, but not zero units
    (the planned batches would be zero); under either unit one unit is enough."""
    _, _, metrics = dp_reply()
    customer = RunPlan.from_run_config(CONFIG | {"privacy-unit": "customer"})
    check_privacy_claims(MetricRecord(metrics), customer)
    with pytest.raises(InvalidReply, match="40 examples in 0 customer units"):
        check_privacy_claims(MetricRecord(metrics | {"privacy-units": 0}), customer)
    with pytest.raises(InvalidReply, match="40 examples in -1 customer units"):
        check_privacy_claims(MetricRecord(metrics | {"privacy-units": -1}), customer)


def test_a_sample_rate_within_float_rounding_of_the_plans_is_accepted():
    """A site may compute ``1 / ceil(U / batch-size)`` in another order: within 1e-9 of the
    plan's rate it passes, a rate 1e-6 off does not."""
    _, _, metrics = dp_reply()
    assert metrics["sample-rate"] == 1.0
    check_privacy_claims(MetricRecord(metrics | {"sample-rate": 1.0 - 1e-12}), PLAN)
    with pytest.raises(InvalidReply, match="sample-rate"):
        check_privacy_claims(MetricRecord(metrics | {"sample-rate": 1.0 - 1e-6}), PLAN)


TWO_EPOCHS = RunPlan.from_run_config(CONFIG | {"local-epochs": 2})
"""40 units in one batch of 4096, two epochs: sample rate 1 and 2 steps a round, 3 rounds (so
that the planned rate, steps and rounds all differ)."""


def test_the_noise_cap_is_ten_times_the_sufficient_noise_over_the_planned_steps():
    """The cap is ``MAX_NOISE_RATIO`` x ``sufficient_noise`` over steps x rounds = 6 steps, not
    over 3 (the rate x rounds): a noise exactly at it passes, above it does not."""
    _, _, metrics = dp_reply(plan=TWO_EPOCHS)
    assert (metrics["sample-rate"], metrics["steps"], TWO_EPOCHS.num_rounds) == (1.0, 2, 3)
    cap = MAX_NOISE_RATIO * sufficient_noise(TWO_EPOCHS.target_epsilon, metrics["delta"], 6)
    assert cap < MAX_NOISE_RATIO * sufficient_noise(TWO_EPOCHS.target_epsilon,
                                                    metrics["delta"], 3) * 1.5
    claims = metrics | {"epsilon": 0.1}
    check_privacy_claims(MetricRecord(claims | {"noise-multiplier": cap}), TWO_EPOCHS)
    with pytest.raises(InvalidReply, match="is above 10 x"):
        check_privacy_claims(MetricRecord(claims | {"noise-multiplier": cap * (1 + 1e-9)}),
                             TWO_EPOCHS)
    # between the cap over 3 steps and the cap over 6: only the latter lets it through
    below = MAX_NOISE_RATIO * sufficient_noise(TWO_EPOCHS.target_epsilon, metrics["delta"], 3)
    check_privacy_claims(MetricRecord(claims | {"noise-multiplier": below * 1.2}), TWO_EPOCHS)


@pytest.mark.parametrize("sigma", [2.0, 6.0, 9.0])
def test_the_noise_ceiling_on_epsilon_is_the_documented_renyi_bound(sigma):
    """Under local DP the claimed epsilon is at most twice ``k / (2 sigma^2) + sqrt(2 k
    ln(1/delta)) / sigma`` with ``k`` twice the run's charged steps: here 2 x 3 rounds x 2 steps
    = 12. Worked out by hand, with epsilon just under and just over it."""
    _, _, metrics = dp_reply(plan=TWO_EPOCHS)
    k = 2 * 3 * 2
    ceiling = k / (2 * sigma**2) + math.sqrt(2 * k * math.log(1 / metrics["delta"])) / sigma
    if sigma == 6.0:  # 12 / 72 + sqrt(24 x 11.5129) / 6 = 0.1667 + 2.7703
        assert ceiling == pytest.approx(2.937, abs=1e-3)
    claims = metrics | {"noise-multiplier": sigma}
    if 2 * ceiling <= TWO_EPOCHS.target_epsilon:
        check_privacy_claims(MetricRecord(claims | {"epsilon": 2 * ceiling}), TWO_EPOCHS)
        check_privacy_claims(MetricRecord(claims | {"epsilon": 2 * ceiling * (1 - 1e-9)}),
                             TWO_EPOCHS)
        with pytest.raises(InvalidReply, match="allows at most epsilon"):
            check_privacy_claims(MetricRecord(claims | {"epsilon": 2 * ceiling * (1 + 1e-9)}),
                                 TWO_EPOCHS)
    else:  # at sigma 2 the ceiling is above the target: only the target binds
        check_privacy_claims(MetricRecord(claims | {"epsilon": TWO_EPOCHS.target_epsilon}),
                             TWO_EPOCHS)


def test_the_noise_ceiling_grows_with_the_rounds_a_resume_trains_again():
    """A resumed run's charged rounds (4 here) raise ``k`` to 16: an epsilon above the 3-round
    ceiling but within the 4-round one passes only in the resumed run."""
    _, _, metrics = dp_reply(plan=TWO_EPOCHS)
    sigma = 6.0
    resumed = RunPlan.from_run_config(CONFIG | {"local-epochs": 2}, retrained_rounds=1)

    def ceiling(k):
        return k / (2 * sigma * sigma) + math.sqrt(2 * k * math.log(1e5)) / sigma

    epsilon = ceiling(12) + ceiling(16)  # between 2 x ceiling(12) and 2 x ceiling(16)
    claims = MetricRecord(metrics | {"noise-multiplier": sigma, "epsilon": epsilon})
    check_privacy_claims(claims, resumed)
    with pytest.raises(InvalidReply, match="allows at most epsilon"):
        check_privacy_claims(claims, TWO_EPOCHS)


def test_a_claim_of_exactly_twenty_times_the_median_is_not_oversized():
    """``EXAMPLES_RATIO`` x the other sites' median is the largest claim accepted."""
    assert EXAMPLES_RATIO == 20.0
    assert oversized_claims({1: 200.0, 2: 10.0, 3: 10.0}) == {}
    assert set(oversized_claims({1: 201.0, 2: 10.0, 3: 10.0})) == {1}
    assert oversized_claims({1: 1e9}) == {}  # a site alone


def test_a_secure_reply_is_held_to_the_plan_and_carries_only_its_metrics():
    """With secure aggregation the server sees only the metrics: their privacy claims are held
    to the plan as in a plain reply, and any other record is refused."""
    _, update, metrics = dp_reply()
    check_secure_train_reply(RecordDict({"metrics": MetricRecord(metrics)}), PLAN)
    for claims in ({"epsilon": 9.0}, {"clip-norm": 5.0}, {"steps": 3}):
        with pytest.raises(InvalidReply):
            check_secure_train_reply(RecordDict({"metrics": MetricRecord(metrics | claims)}), PLAN)
    with pytest.raises(InvalidReply, match="expected only the record 'metrics'"):
        check_secure_train_reply(RecordDict({
            "metrics": MetricRecord(metrics),
            "arrays": ArrayRecord({k: Array(v) for k, v in update.items()})}), PLAN)


def test_metrics_that_are_not_a_metric_record_are_rejected():
    as_config = RecordDict({"metrics": ConfigRecord({"num-examples": 10, "epsilon": 1.0})})
    with pytest.raises(InvalidReply, match="'metrics' is not a MetricRecord"):
        check_secure_train_reply(as_config, NO_DP)
    with pytest.raises(InvalidReply, match="'metrics' is not a MetricRecord"):
        check_evaluate_reply(as_config)


def test_sufficient_noise_meets_the_zcdp_bound_exactly():
    """``sufficient_noise`` solves ``rho + 2 sqrt(rho ln(1/delta)) = target`` with ``rho =
    steps / (2 sigma^2)``: 8 at delta 1e-5 over 3 steps is sigma 1.1957 by hand."""
    assert sufficient_noise(8.0, 1e-5, 3) == pytest.approx(1.1957, abs=1e-4)
    for target, delta, steps in ((8.0, 1e-5, 3), (1.0, 1e-3, 100), (0.5, 1e-7, 12)):
        sigma = sufficient_noise(target, delta, steps)
        rho = steps / (2 * sigma**2)
        assert rho + 2 * math.sqrt(rho * math.log(1 / delta)) == pytest.approx(target, rel=1e-9)


# --- the site's egress guard on a masked update (SecAgg+) ----------------------------------------
# The first two kill mutants no test ran (egress_guard.py:185 and :208). The others pin the
# other direction of mutants the first pass killed only because a good masked update was then
# blocked: nothing checked that a float array, a legacy header whose parameters, count or status
# differ, or the wrong weight under distributed DP is blocked.


def masked_sent(ctx, content) -> tuple[bool, str]:
    """(whether the collect-masked-vectors reply left, the egress log's verdict for it)."""
    reply = send(secagg_incoming(Stage.COLLECT_MASKED_VECTORS), ctx, content)
    return not reply.has_error(), egress_log(ctx)[-1]["verdict"]


def test_masked_metrics_that_are_not_a_metric_record_are_blocked(ctx):
    """Numbers in a ConfigRecord pass the metric checks and carry the example count, but the
    metrics travel as a MetricRecord or not at all."""
    content = masked_reply(metrics=ConfigRecord({"num-examples": 10, "epsilon": 1.5}))
    assert masked_sent(ctx, content) == (False, "blocked: 'metrics' is not a MetricRecord")


def test_an_unreadable_masked_array_is_blocked_as_such(ctx):
    content = masked_reply()
    content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS] = [b"garbage", b"more", b"bytes"]
    sent, verdict = masked_sent(ctx, content)
    assert not sent and verdict.startswith("blocked: masked update is unreadable")


def test_masked_arrays_of_the_right_shapes_but_not_integers_are_blocked(ctx):
    """Masking works on integers: a float array of the right shape is a plaintext update."""
    shapes = [(1,)] + [tuple(t.shape) for t in head_state().values()]
    content = masked_reply()
    content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS] = [
        ndarray_to_bytes(np.full(s, 0.25, np.float64)) for s in shapes]
    sent, verdict = masked_sent(ctx, content)
    assert not sent and "expected integer arrays" in verdict


@pytest.mark.parametrize("name,record", [
    ("fitres.parameters", ArrayRecord({"w": Array(np.zeros(2, np.float32))})),
    ("fitres.parameters", ConfigRecord({})),
    ("fitres.num_examples", ConfigRecord({"num_examples": 11})),
    ("fitres.status", ConfigRecord({"code": 1, "message": ""})),
    ("fitres.status", ConfigRecord({"code": 0, "message": "I lost my card"})),
], ids=["parameters", "parameters-not-arrays", "count", "status-code", "status-text"])
def test_a_legacy_header_carrying_more_than_the_count_is_blocked(ctx, name, record):
    sent, verdict = masked_sent(ctx, masked_reply(**{name: record}))
    assert not sent and "legacy reply header" in verdict


def test_a_distributed_dp_masked_update_carries_the_fixed_weight_not_its_count(ctx):
    """Under distributed DP every site sends with the fixed weight (10,000), so the legacy
    header's count is that weight and the site's own example count there is blocked; under local
    DP the other way round."""
    def header(count):
        return masked_reply(**{"fitres.num_examples": ConfigRecord({"num_examples": count})})

    ctx.run_config["privacy-model"] = "distributed"
    assert masked_sent(ctx, header(10_000)) == (True, "sent")
    sent, verdict = masked_sent(ctx, header(10))
    assert not sent and "legacy reply header" in verdict
    ctx.run_config["privacy-model"] = "local"
    assert masked_sent(ctx, header(10)) == (True, "sent")
    sent, verdict = masked_sent(ctx, header(10_000))
    assert not sent and "legacy reply header" in verdict
