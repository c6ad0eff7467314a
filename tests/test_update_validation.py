"""Server-side reply checks: a bad update is rejected and recorded, never aggregated."""

import json
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fl_protocol.wire import RUN_CONFIG_DEFAULTS, Reason
from fl_server.run_record import RunRecord
from fl_server.strategy import STRATEGIES, build_strategy
from fl_server.update_validation import (
    InvalidReply,
    RunPlan,
    array_spec,
    check_evaluate_reply,
    check_train_reply,
)

GLOBAL = {"weight": np.zeros((3, 4), dtype=np.float32), "bias": np.zeros(3, dtype=np.float32)}
SPEC = array_spec(ArrayRecord({k: Array(v) for k, v in GLOBAL.items()}))
METRICS = {"num-examples": 10, "epsilon": math.inf, "delta": 0.0}
"""A site's reply in a run without DP: its privacy claims are ``test_claimed_numbers``'."""
NO_DP = RunPlan.from_run_config(RUN_CONFIG_DEFAULTS | {"target-epsilon": math.inf})
"""A run without DP, in which nothing derives an update bound from a site's DP settings."""


def train_content(arrays: dict | None = None, **metrics) -> RecordDict:
    arrays = {k: v + 0.1 for k, v in GLOBAL.items()} if arrays is None else arrays
    return RecordDict({
        "arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
        "metrics": MetricRecord(METRICS | metrics),
    })


def test_a_good_update_passes_with_its_norm():
    norm = check_train_reply(train_content(), SPEC, GLOBAL, max_update_norm=0.0, plan=NO_DP)
    assert norm == pytest.approx(math.sqrt(15 * 0.1**2), rel=1e-6)


@pytest.mark.parametrize(
    "content,reason",
    [
        (train_content({"weight": GLOBAL["weight"]}), "missing ['bias']"),
        (train_content(GLOBAL | {"extra": np.zeros(2, np.float32)}), "unexpected ['extra']"),
        (train_content(GLOBAL | {"bias": np.zeros(4, np.float32)}), "bias: shape (4,)"),
        (train_content(GLOBAL | {"bias": np.zeros(3, np.float64)}), "bias: dtype float64"),
        (train_content(GLOBAL | {"bias": np.array([0, np.nan, 0], np.float32)}), "NaN or Inf"),
        (train_content(GLOBAL | {"bias": np.array([0, np.inf, 0], np.float32)}), "NaN or Inf"),
        (train_content(**{"num-examples": 0}), "num-examples"),
        (train_content(epsilon=math.nan), "epsilon"),
        (RecordDict({"metrics": MetricRecord(METRICS)}), "expected records"),
        (RecordDict({"arrays": MetricRecord(METRICS), "metrics": MetricRecord(METRICS)}),
         "not an ArrayRecord"),
        (RecordDict({**train_content(), "config": ConfigRecord({"x": "y"})}),
         "expected records"),
    ],
)
def test_bad_updates_are_rejected_with_a_reason(content, reason):
    with pytest.raises(InvalidReply) as err:
        check_train_reply(content, SPEC, GLOBAL, max_update_norm=0.0, plan=NO_DP)
    assert reason in str(err.value)


def test_an_update_beyond_max_update_norm_is_rejected():
    big = {k: v + 10.0 for k, v in GLOBAL.items()}
    check_train_reply(train_content(big), SPEC, GLOBAL, max_update_norm=0.0, plan=NO_DP)  # none
    with pytest.raises(InvalidReply, match="update norm 38.73 exceeds max-update-norm 5"):
        check_train_reply(train_content(big), SPEC, GLOBAL, max_update_norm=5.0, plan=NO_DP)


def test_the_norm_is_measured_from_the_global_model_sent():
    moved = {k: v + 1.0 for k, v in GLOBAL.items()}
    assert check_train_reply(train_content(moved), SPEC, moved, max_update_norm=0.1,
                             plan=NO_DP) == 0.0


@pytest.mark.parametrize(
    "metrics",
    [{"loss": 1.0, "accuracy": 0.5, "macro-f1": 0.5},
     {"num-examples": 5, "loss": math.inf, "accuracy": 0.5, "macro-f1": 0.5},
     {"num-examples": 5, "loss": 1.0, "accuracy": 1.5, "macro-f1": 0.5},
     {"num-examples": 5, "loss": 1.0, "accuracy": 0.5, "epsilon": -1.0},
     {"num-examples": 5, "loss": 1.0, "accuracy": 0.5, "macro-f1": -0.1}],
)
def test_bad_evaluation_metrics_are_rejected(metrics):
    with pytest.raises(InvalidReply):
        check_evaluate_reply(RecordDict({"metrics": MetricRecord(metrics)}))


@pytest.fixture
def server_identity(monkeypatch):
    """What the ServerApp runtime sets before a strategy creates messages."""
    for name, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


class FakeGrid:
    """Delivers each message to ``answer`` the way a Grid does: message ids set on push."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages, answer) -> list[Message]:
        replies = []
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{number}"
            reply = answer(message)
            if reply is not None:
                replies.append(reply)
        return replies


def evaluate(strategy, grid: FakeGrid, arrays: ArrayRecord) -> None:
    """Complete the round: every site answers its evaluation."""
    metrics = MetricRecord({"num-examples": 5, "loss": 1.0, "accuracy": 0.5, "macro-f1": 0.4})
    messages = strategy.configure_evaluate(1, arrays, ConfigRecord({}), grid)
    replies = grid.send_and_receive(
        messages, lambda m: Message(RecordDict({"metrics": metrics}), reply_to=m)
    )
    strategy.aggregate_evaluate(1, replies)


def test_strategy_aggregates_only_valid_replies_and_records_the_rest(tmp_path, server_identity):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a", "b", "c"])
    strategy = build_strategy("fedavg", record, SPEC, min_sites=1, server_learning_rate=0.1,
                              max_update_norm=20.0, reply_timeout=7.0, plan=NO_DP)
    grid = FakeGrid([1, 2, 3, 4, 5, 6, 7])
    start = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})
    replies_by_node = {
        1: train_content({k: v + 1.0 for k, v in GLOBAL.items()}),
        2: train_content({k: v + 3.0 for k, v in GLOBAL.items()}, **{"num-examples": 30}),
        3: train_content({"weight": GLOBAL["weight"]}),
        4: train_content(GLOBAL | {"bias": np.array([0, np.nan, 0], np.float32)}),
        5: train_content({k: v + 100.0 for k, v in GLOBAL.items()}),
        6: Error(code=1002, reason=Reason.BUDGET_EXHAUSTED.value),
        7: None,  # never answers
    }

    def answer(message: Message) -> Message | None:
        content = replies_by_node[message.metadata.dst_node_id]
        return None if content is None else Message(content, reply_to=message)

    messages = strategy.configure_train(1, start, ConfigRecord({}), grid)
    arrays, metrics = strategy.aggregate_train(1, grid.send_and_receive(messages, answer))

    # (1.0 * 10 + 3.0 * 30) / 40 = 2.5: only nodes 1 and 2 are averaged
    np.testing.assert_allclose(arrays["weight"].numpy(), np.full((3, 4), 2.5, np.float32))
    assert arrays["weight"].numpy().dtype == np.float32
    assert dict(metrics) == {"max-epsilon": math.inf}
    evaluate(strategy, grid, arrays)
    entry = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert entry["sites_trained"] == 2 and entry["sites_failed"] == 5
    assert entry["sites"]["1"]["update_norm"] == pytest.approx(math.sqrt(15))
    failures = {f["node_id"]: (f["kind"], f["reason"]) for f in entry["failures"]}
    assert failures["3"][0] == "rejected" and "missing ['bias']" in failures["3"][1]
    assert failures["4"][0] == "rejected" and "NaN" in failures["4"][1]
    assert failures["5"][0] == "rejected" and "max-update-norm" in failures["5"][1]
    assert failures["6"] == ("declined", Reason.BUDGET_EXHAUSTED.value)
    assert failures["7"] == ("no reply", "no reply within 7s")
    assert entry["sites_evaluated"] == 7 and entry["accuracy"] == pytest.approx(0.5)
    assert entry["macro_f1"] == pytest.approx(0.4) and entry["worst_site_accuracy"] == 0.5


@pytest.mark.parametrize("name", STRATEGIES)
def test_superlink_errors_are_attributed_to_the_node_asked(tmp_path, server_identity, name):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    strategy = build_strategy(name, record, SPEC, min_sites=1, server_learning_rate=0.1,
                              max_update_norm=0.0, reply_timeout=60.0, plan=NO_DP)
    grid = FakeGrid([11, 12])
    start = ArrayRecord({k: Array(v) for k, v in GLOBAL.items()})

    def answer(message: Message) -> Message:
        if message.metadata.dst_node_id == 11:
            return Message(train_content(), reply_to=message)
        from_superlink = Message(Error(code=5, reason="Node Unavailable"), reply_to=message)
        from_superlink.metadata.__dict__["_src_node_id"] = 1  # the SuperLink's own node id
        return from_superlink

    messages = strategy.configure_train(1, start, ConfigRecord({}), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(messages, answer))
    evaluate(strategy, grid, arrays)
    entry = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert entry["failures"] == [{"node_id": "12", "kind": "failed", "reason": "Node Unavailable"}]
    assert entry["sites_trained"] == 1
    assert arrays["bias"].numpy().dtype == np.float32


def test_a_site_reason_outside_the_vocabulary_is_not_kept(tmp_path, server_identity):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    asked = Message(RecordDict(), dst_node_id=8, message_type="train")
    leaky = Message(Error(code=1001, reason="could not parse 'CANARY-91 card 4111 1111'"),
                    reply_to=asked)
    known = Message(Error(code=1001, reason=Reason.DATA_UNUSABLE.value), reply_to=asked)
    entry = record.record_train(1, [leaky, known], {})
    reasons = [f["reason"] for f in entry["failures"]]
    assert "CANARY" not in reasons[0] and "4111" not in reasons[0]
    assert "outside fedintent's vocabulary" in reasons[0]
    assert reasons[1] == Reason.DATA_UNUSABLE.value
