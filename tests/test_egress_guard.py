"""The egress guard: only the model's parameters and allow-listed numbers may leave a site."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)

from fl_client.egress_guard import EGRESS_BLOCKED, SITE_ERROR, egress_guard
from fl_server.run_config import DEFAULTS
from models import get_model_family

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["a", "b", "c"]


def head_state() -> dict[str, torch.Tensor]:
    return get_model_family("minilm-head").build_model(len(LABELS)).state_dict()


def incoming(message_type: str) -> Message:
    config = ConfigRecord({"labels": LABELS, "server-round": 2, "run-name": "r"})
    return Message(content=RecordDict({"arrays": ArrayRecord(head_state()), "config": config}),
                   dst_node_id=7, message_type=message_type)


@pytest.fixture
def ctx(tmp_path) -> Context:
    node = {"data-path": str(tmp_path / "data"), "state-dir": str(tmp_path / "state")}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                   run_config=dict(DEFAULTS))


def good_train_reply(msg: Message) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(head_state()),
                       "metrics": MetricRecord({"num-examples": 10, "train-loss": 0.5,
                                                "epsilon": 1.5, "delta": 1e-5})})


def send(msg: Message, ctx: Context, content: RecordDict) -> Message:
    return egress_guard(msg, ctx, lambda m, c: Message(content=content, reply_to=m))


def egress_log(ctx: Context) -> list[dict]:
    path = ctx.node_config["state-dir"] + "/egress.jsonl"
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_a_well_formed_train_reply_leaves_and_is_logged(ctx):
    msg = incoming("train")
    reply = send(msg, ctx, good_train_reply(msg))
    assert not reply.has_error()
    [entry] = egress_log(ctx)
    assert entry["verdict"] == "sent" and entry["round"] == 2 and entry["message"] == "train"
    assert [a["name"] for a in entry["arrays"]] == ["weight", "bias"]
    assert entry["metrics"]["epsilon"] == 1.5
    assert math.isfinite(entry["update_norm"])


def with_arrays(state: dict) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(state),
                       "metrics": MetricRecord({"num-examples": 10})})


def weights_with(name: str, value) -> dict:
    state = head_state()
    state[name] = value
    return state


FORBIDDEN_TRAIN_REPLIES = {
    "a config record with text": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()), "metrics": MetricRecord({"num-examples": 1}),
        "config": ConfigRecord({"utterance": "I lost my card 4111111111111111"})}),
    "bytes in a config record": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()), "metrics": MetricRecord({"num-examples": 1}),
        "leak": ConfigRecord({"raw": b"customer text"})}),
    "an extra array": lambda: with_arrays(head_state() | {"features": torch.zeros(5, 384)}),
    "token ids as an array": lambda: with_arrays(
        head_state() | {"token_ids": torch.tensor([101, 1045, 2439, 102])}),
    "a missing array": lambda: with_arrays({"weight": head_state()["weight"]}),
    "a reshaped array": lambda: with_arrays(weights_with("weight", torch.zeros(384, 3))),
    "a wrong dtype": lambda: with_arrays(
        weights_with("weight", torch.zeros(3, 384, dtype=torch.float64))),
    "NaN in an array": lambda: with_arrays(weights_with("bias", torch.tensor([0., math.nan, 0.]))),
    "Inf in an array": lambda: with_arrays(weights_with("bias", torch.tensor([0., math.inf, 0.]))),
    "a metric off the allow-list": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()),
        "metrics": MetricRecord({"num-examples": 1, "customer-phone": 13812345678})}),
    "a list metric": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()),
        "metrics": MetricRecord({"num-examples": 1, "train-loss": [0.1, 0.2]})}),
    "a NaN metric": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()),
        "metrics": MetricRecord({"num-examples": 1, "train-loss": math.nan})}),
    "a second metric record": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()), "metrics": MetricRecord({"num-examples": 1}),
        "more": MetricRecord({"x": 1.0})}),
    "an array in a hand-made array": lambda: RecordDict({
        "arrays": ArrayRecord({"weight": Array(np.zeros((3, 384), np.float32)),
                               "bias": Array(np.zeros(3, np.float32)),
                               "text": Array(np.frombuffer(b"secret text!", np.uint8))}),
        "metrics": MetricRecord({"num-examples": 1})}),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN_TRAIN_REPLIES))
def test_forbidden_train_content_is_blocked_and_logged(ctx, case):
    reply = send(incoming("train"), ctx, FORBIDDEN_TRAIN_REPLIES[case]())
    assert reply.has_error() and reply.error.code == EGRESS_BLOCKED, case
    assert "secret" not in reply.error.reason and "4111" not in reply.error.reason
    [entry] = egress_log(ctx)
    assert entry["verdict"].startswith("blocked")


def test_evaluate_replies_carry_no_parameters(ctx):
    msg = incoming("evaluate")
    blocked = send(msg, ctx, with_arrays(head_state()))
    assert blocked.has_error() and blocked.error.code == EGRESS_BLOCKED
    ok = send(msg, ctx, RecordDict({"metrics": MetricRecord(
        {"num-examples": 5, "loss": 1.0, "accuracy": 0.8})}))
    assert not ok.has_error()
    leaky = send(msg, ctx, RecordDict({"metrics": MetricRecord(
        {"num-examples": 5, "loss": 1.0, "accuracy": 0.8, "epsilon": 1.0})}))
    assert leaky.has_error()


def test_an_exception_never_carries_its_message_out(ctx):
    def crash(msg, context):
        raise ValueError("could not parse 'my card 4111 1111 1111 1111 was stolen'")

    reply = egress_guard(incoming("train"), ctx, crash)
    assert reply.has_error() and reply.error.code == SITE_ERROR
    assert "4111" not in reply.error.reason and "stolen" not in reply.error.reason


def test_errors_pass_only_with_known_codes_and_short_reasons(ctx):
    msg = incoming("train")
    unknown = egress_guard(msg, ctx, lambda m, c: Message(Error(code=42, reason="x"),
                                                          reply_to=m))
    assert unknown.error.code == EGRESS_BLOCKED
    long = egress_guard(msg, ctx, lambda m, c: Message(Error(code=SITE_ERROR, reason="x" * 600),
                                                       reply_to=m))
    assert long.error.code == EGRESS_BLOCKED
