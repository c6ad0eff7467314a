"""The wire contract (``fl_protocol/wire.py``) against both sides: what the site's egress guard
lets out is exactly what the contract names, and what the server requires, checks, aggregates
and records is exactly what the contract says."""

import math

import pytest
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord, RecordDict
from test_egress_guard import LABELS, head_state, incoming

from fl_client.egress_guard import egress_guard
from fl_protocol.wire import (
    EVALUATE_METRICS,
    LANGUAGES,
    REASON_CODES,
    RUN_CONFIG_DEFAULTS,
    TRAIN_METRICS,
    Reason,
    error_reply,
    evaluation_count,
    evaluation_number,
    language_mask,
    mask_languages,
    metric_names,
    metric_record,
)
from fl_server.run_record import RunRecord
from fl_server.strategy import AGGREGATED_TRAIN_METRICS
from fl_server.update_validation import (
    InvalidReply,
    RunPlan,
    array_spec,
    check_evaluate_reply,
    check_train_reply,
)

pytestmark = pytest.mark.usefixtures("task_identity")

VALID = {
    "num-examples": 10, "epsilon": 1.5, "epsilon-all-runs": 2.0,
    "epsilon-alone": 4.0, "epsilon-alone-all-runs": 5.0,
    "delta": 1e-5, "delta-all-runs": 1e-6, "noise-multiplier": 1.1, "sample-rate": 1.0,
    "clip-norm": 1.0, "steps": 1,
    "max-epsilon": 10.0, "privacy-units": 10, "site-key": 123456, "languages": 4,
    "loss": 0.7, "accuracy": 0.75, "macro-f1": 0.6,
}
"""A valid value for every metric either contract names."""
INVALID = {"num-examples": 0, "epsilon": math.nan, "loss": math.inf,
           "accuracy": 1.5, "macro-f1": 1.5, "epsilon-all-runs": math.nan,
           "epsilon-alone": -1.0, "epsilon-alone-all-runs": math.nan, "delta": math.inf,
           "delta-all-runs": 1.0,
           "noise-multiplier": -1.0, "sample-rate": 0.0, "clip-norm": 0.0, "steps": 1.5,
           "max-epsilon": math.nan, "privacy-units": math.inf, "site-key": 2.0**48}
"""A value each checked metric's check refuses."""
PLAN = RunPlan.from_run_config(RUN_CONFIG_DEFAULTS | {"privacy-model": "distributed",
                                                      "target-epsilon": 8.0})
"""A run that ``VALID``'s release (one full-batch step at the default clip-norm) fits."""
NO_DP = RunPlan.from_run_config(RUN_CONFIG_DEFAULTS | {"target-epsilon": math.inf})
"""A run without DP, whose sites may leave out every optional metric."""


def through_guard(ctx: Context, message_type: str, content: RecordDict) -> Message:
    msg = incoming(message_type)
    return egress_guard(msg, ctx, lambda m, c: Message(content=content, reply_to=m))


def train_content(metrics: dict) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(head_state()), "metrics": MetricRecord(metrics)})


def server_accepts_train(content: RecordDict, plan: RunPlan = PLAN) -> None:
    arrays = ArrayRecord(head_state())
    check_train_reply(content, array_spec(arrays),
                      {k: a.numpy() for k, a in arrays.items()}, max_update_norm=0.0, plan=plan)


def every(contract) -> dict:
    return {name: VALID[name] for name in metric_names(contract)}


def test_a_reply_with_every_contract_metric_leaves_the_site_and_is_accepted(ctx):
    train = train_content(every(TRAIN_METRICS))
    assert not through_guard(ctx, "train", train).has_error()
    server_accepts_train(train)
    evaluate = RecordDict({"metrics": MetricRecord(every(EVALUATE_METRICS))})
    assert not through_guard(ctx, "evaluate", evaluate).has_error()
    check_evaluate_reply(evaluate)


@pytest.mark.parametrize("message_type", ["train", "evaluate"])
def test_a_name_outside_the_contract_never_leaves(ctx, message_type):
    contract = TRAIN_METRICS if message_type == "train" else EVALUATE_METRICS
    others = sorted(set(VALID) - metric_names(contract)) + ["customer-phone"]
    for name in others:
        metrics = every(contract) | {name: 1.0}
        content = (train_content(metrics) if message_type == "train"
                   else RecordDict({"metrics": MetricRecord(metrics)}))
        reply = through_guard(ctx, message_type, content)
        assert reply.has_error() and reply.error.reason == Reason.EGRESS_BLOCKED.value, name


def test_the_server_requires_exactly_the_checked_metrics_and_applies_each_check():
    required = {m.name for m in TRAIN_METRICS if m.check is not None and not m.optional}
    assert required == {"num-examples", "epsilon"}
    for metric in TRAIN_METRICS:
        without = every(TRAIN_METRICS)
        del without[metric.name]
        if metric.check is None or metric.optional:
            server_accepts_train(train_content(without | {"epsilon": math.inf}), NO_DP)
        if metric.check is None:
            continue
        if metric.optional:  # checked whenever it is there (found in review: an infinite unit
            with pytest.raises(InvalidReply, match=metric.name):  # count ended the run)
                server_accepts_train(train_content(every(TRAIN_METRICS)
                                                   | {metric.name: INVALID[metric.name]}))
            continue
        with pytest.raises(InvalidReply, match=metric.name):
            server_accepts_train(train_content(without))
        with pytest.raises(InvalidReply, match=metric.name):
            server_accepts_train(train_content(every(TRAIN_METRICS)
                                               | {metric.name: INVALID[metric.name]}))
    for metric in EVALUATE_METRICS:
        bad = every(EVALUATE_METRICS) | {metric.name: INVALID[metric.name]}
        with pytest.raises(InvalidReply, match=metric.name):
            check_evaluate_reply(RecordDict({"metrics": MetricRecord(bad)}))


@pytest.mark.parametrize("value", [1e-10, 1e-5, 0.5])
def test_a_ledger_delta_a_run_could_have_is_accepted(value):
    server_accepts_train(train_content(every(TRAIN_METRICS) | {"delta-all-runs": value}))


@pytest.mark.parametrize("value", [0.0, -1e-6, 5e-324, 9.9e-11, 1.0, math.inf, math.nan])
def test_a_ledger_delta_no_run_could_have_is_refused(value):
    """Found in review: the server took 5e-324, and the card printed the lifetime figure at it,
    the strongest guarantee there is."""
    with pytest.raises(InvalidReply, match="delta-all-runs"):
        server_accepts_train(train_content(every(TRAIN_METRICS) | {"delta-all-runs": value}))


def test_aggregation_sees_exactly_the_aggregated_metrics():
    assert set(AGGREGATED_TRAIN_METRICS) == {m.name for m in TRAIN_METRICS if m.aggregated}
    assert set(AGGREGATED_TRAIN_METRICS) == {"num-examples", "epsilon"}


def test_the_run_record_keeps_every_recorded_metric_under_its_name(tmp_path):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, LABELS)
    asked = Message(RecordDict(), dst_node_id=8, message_type="train")
    reply = Message(train_content(every(TRAIN_METRICS) | {"epsilon": math.inf}), reply_to=asked)
    entry = record.record_train(1, [reply], {})
    [(name, site)] = entry["sites"].items()
    assert name == f"site-{VALID['site-key']:012x}"
    recorded = {m.recorded_as: m.name for m in TRAIN_METRICS if m.recorded_as is not None}
    assert set(recorded) <= set(site)
    for field, metric in recorded.items():
        expected = None if metric == "epsilon" else VALID[metric]  # JSON has no infinity
        assert site[field] == expected, field



@pytest.mark.parametrize("sent,recorded", [
    (language_mask(["zh", "en"]), ["en", "zh"]), (1, ["ar"]), (2**15 - 1, list(LANGUAGES)),
    (0, None), (2**15, None), (-4, None), (4.5, None), (math.nan, None), ([4], None),
], ids=["en-zh", "first", "all", "none", "too-large", "negative", "fraction", "nan", "list"])
def test_the_run_record_keeps_declared_languages_as_codes_and_nothing_else(tmp_path, sent,
                                                                         recorded):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, LABELS)
    asked = Message(RecordDict(), dst_node_id=8, message_type="train")
    reply = Message(train_content(every(TRAIN_METRICS) | {"languages": sent}), reply_to=asked)
    [site] = record.record_train(1, [reply], {})["sites"].values()
    assert site.get("languages") == recorded
    assert mask_languages(sent) == recorded
    assert language_mask(LANGUAGES) == 2**len(LANGUAGES) - 1
    assert mask_languages(True) is None and mask_languages("4") is None


def test_the_run_record_keeps_every_evaluation_metric_under_its_name(tmp_path):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, LABELS)
    asked = Message(RecordDict(), dst_node_id=8, message_type="evaluate")
    reply = Message(RecordDict({"metrics": MetricRecord(every(EVALUATE_METRICS))}),
                    reply_to=asked)
    record.record_evaluate(1, [reply], None)
    site = record.doc["rounds"][0]["evaluation"]["8"]
    recorded = {m.recorded_as: m.name for m in EVALUATE_METRICS if m.recorded_as is not None}
    assert set(recorded) == {"num_examples", "loss", "accuracy", "macro_f1", "epsilon"}
    assert {field: site[field] for field in recorded} == {
        field: VALID[metric] for field, metric in recorded.items()}

@pytest.mark.parametrize("reason", list(Reason))
def test_every_fixed_reason_leaves_the_site_and_is_kept_by_the_server(ctx, reason, tmp_path):
    msg = incoming("train")
    reply = egress_guard(msg, ctx, lambda m, c: error_reply(m, reason))
    assert (reply.error.code, reply.error.reason) == (REASON_CODES[reason], reason.value)
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, LABELS)
    asked = Message(RecordDict(), dst_node_id=8, message_type="train")
    entry = record.record_train(1, [Message(reply.error, reply_to=asked)], {})
    assert entry["failures"][0]["reason"] == reason.value


def test_a_reason_with_another_code_is_neither_sent_nor_kept(ctx, tmp_path):
    wrong = set(REASON_CODES.values()) - {REASON_CODES[Reason.BUDGET_EXHAUSTED]}
    for code in sorted(wrong):
        mislabelled = Error(code=code, reason=Reason.BUDGET_EXHAUSTED.value)
        reply = egress_guard(incoming("train"), ctx,
                             lambda m, c, e=mislabelled: Message(e, reply_to=m))
        assert reply.error.reason == Reason.EGRESS_BLOCKED.value
        record = RunRecord.start(tmp_path / "metrics.json", 1, {}, LABELS)
        asked = Message(RecordDict(), dst_node_id=8, message_type="train")
        entry = record.record_train(1, [Message(mislabelled, reply_to=asked)], {})
        assert "outside fedintent's vocabulary" in entry["failures"][0]["reason"]


def test_metric_record_refuses_a_name_outside_the_contract():
    record = metric_record(TRAIN_METRICS, num_examples=3, epsilon_all_runs=1.0)
    assert dict(record) == {"num-examples": 3, "epsilon-all-runs": 1.0}
    with pytest.raises(KeyError, match="customer-phone"):
        metric_record(TRAIN_METRICS, customer_phone=13812345678)
    with pytest.raises(KeyError, match="epsilon-all-runs"):
        metric_record(EVALUATE_METRICS, epsilon_all_runs=1.0)


def test_the_contract_names_each_metric_once():
    for contract in (TRAIN_METRICS, EVALUATE_METRICS):
        names = [m.name for m in contract]
        assert len(names) == len(set(names))


@pytest.mark.parametrize("accuracy", [0.0, 1.0])
def test_an_evaluation_at_either_end_of_the_accuracy_range_is_accepted(accuracy):
    """A site whose held-out split is all wrong or all right is a valid result, not a bad
    reply."""
    check_evaluate_reply(RecordDict({"metrics": MetricRecord(
        every(EVALUATE_METRICS) | {"accuracy": accuracy})}))


@pytest.mark.parametrize("num_rounds", [1, 2, 7, 12, 40])
@pytest.mark.parametrize("every", [1, 2, 5, 12, 50])
def test_the_evaluation_rounds_are_every_kth_and_the_last_numbered_without_gaps(num_rounds,
                                                                                 every):
    numbers = {r: evaluation_number(r, num_rounds, every) for r in range(-1, num_rounds + 3)}
    evaluated = [r for r, number in numbers.items() if number is not None]
    assert evaluated == sorted({*range(every, num_rounds + 1, every), num_rounds})
    assert [numbers[r] for r in evaluated] == list(range(1, evaluation_count(num_rounds, every)
                                                         + 1))


def test_a_huge_announced_run_is_numbered_without_enumerating_it():
    assert evaluation_number(10**15, 10**15, 1) == evaluation_count(10**15, 1) == 10**15
    assert evaluation_number(10**15 - 1, 10**15, 10**14) is None


@pytest.mark.parametrize("code,name", [(2, "CLIENT_APP_RAISED_EXCEPTION"),
                                       (8, "CLIENT_APP_CRASHED"), (77, "error code 77")])
def test_a_crashed_site_is_told_from_a_refusal_by_flowers_code_name_and_its_text_is_not_kept(
        tmp_path, code, name):
    """Found in review: a site killed mid-round showed only "a reason outside fedintent's
    vocabulary", so an operator could not tell a crash from a refusal. Flower's name for the
    code is a fixed word; the exception's text (which may quote site data) is still dropped."""
    canary = "Traceback ... ValueError: row 'CANARY-Q7X3 my card 4111 1111 1111 1111'"
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, LABELS)
    asked = Message(RecordDict(), dst_node_id=8, message_type="train")
    entry = record.record_train(1, [Message(Error(code=code, reason=canary), reply_to=asked)], {})
    reason = entry["failures"][0]["reason"]
    assert reason.startswith(f"({name}: a reason outside fedintent's vocabulary, {len(canary)} ")
    assert "CANARY" not in (tmp_path / "metrics.json").read_text() and "CANARY" not in reason
