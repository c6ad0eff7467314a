"""The egress guard: only the model's parameters and allow-listed numbers may leave a site."""

import json
import math
from pathlib import Path

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
from flwr.common import Code, FitRes, Parameters, Status, ndarray_to_bytes
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from fl_client.egress_guard import egress_guard, site_error_text
from fl_client.site_secret import create_site_secret
from fl_protocol.wire import (
    DECLINED,
    EGRESS_BLOCKED,
    LOG_LIMIT,
    REASON_CODES,
    SITE_ERROR,
    Reason,
    error_reply,
    loggable,
)
from fl_protocol.wire import RUN_CONFIG_DEFAULTS as DEFAULTS
from models import get_model_family

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["a", "b", "c"]


def head_state() -> dict[str, torch.Tensor]:
    return get_model_family("minilm-head").build_model(len(LABELS)).state_dict()


def incoming(message_type: str) -> Message:
    config = ConfigRecord({"labels": LABELS, "server-round": 2, "run-name": "r"})
    return Message(content=RecordDict({"arrays": ArrayRecord(head_state()), "config": config}),
                   dst_node_id=7, message_type=message_type)


def good_train_reply(msg: Message) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord(head_state()),
                       "metrics": MetricRecord({"num-examples": 10,
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
        "metrics": MetricRecord({"num-examples": 1, "epsilon": [0.1, 0.2]})}),
    "a NaN metric": lambda: RecordDict({
        "arrays": ArrayRecord(head_state()),
        "metrics": MetricRecord({"num-examples": 1, "epsilon": math.nan})}),
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
        {"num-examples": 5, "loss": 1.0, "accuracy": 0.8, "macro-f1": 0.7})}))
    assert not ok.has_error()
    leaky = send(msg, ctx, RecordDict({"metrics": MetricRecord(
        {"num-examples": 5, "loss": 1.0, "accuracy": 0.8, "macro-f1": 0.7,
         "train-loss": 1.0})}))
    assert leaky.has_error()
    dp = send(msg, ctx, RecordDict({"metrics": MetricRecord(
        {"num-examples": 5, "loss": 1.0, "accuracy": 0.8, "epsilon": 1.0})}))
    assert not dp.has_error()


def test_an_exception_never_carries_its_message_out(ctx):
    def crash(msg, context):
        raise ValueError("could not parse 'my card 4111 1111 1111 1111 was stolen'")

    reply = egress_guard(incoming("train"), ctx, crash)
    assert reply.has_error() and reply.error.code == SITE_ERROR
    assert reply.error.reason == Reason.INTERNAL.value


class PanicException(BaseException):
    """What PyO3 raises when a Rust extension (the fast tokenizer) panics: no ``Exception``."""


def test_a_panic_outside_exception_is_caught_logged_and_never_carries_its_message_out(ctx):
    """Found in review: a BaseException that is no Exception passed the guard, left no egress
    log entry, and only Flower's crash handling stood between its text and the wire."""
    def panic(msg, context):
        raise PanicException("tokenizer panicked on 'CANARY-Q7X3 my card 4111 1111 1111 1111'")

    reply = egress_guard(incoming("train"), ctx, panic)
    assert reply.has_error() and reply.error.reason == Reason.INTERNAL.value
    [entry] = egress_log(ctx)
    assert entry["verdict"] == "sent" and "CANARY" not in json.dumps(entry)

    def interrupted(msg, context):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        egress_guard(incoming("train"), ctx, interrupted)


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (42, Reason.INTERNAL.value),                      # unknown code
        (SITE_ERROR, "x"),                                # free text
        (SITE_ERROR, "site data unusable: my card 4111"), # a known reason with data appended
        (SITE_ERROR, Reason.BUDGET_EXHAUSTED.value),      # a known reason with the wrong code
        (DECLINED, ""),
    ],
)
def test_errors_pass_only_from_the_fixed_vocabulary(ctx, code, reason):
    msg = incoming("train")
    reply = egress_guard(msg, ctx, lambda m, c: Message(Error(code=code, reason=reason),
                                                        reply_to=m))
    assert reply.error.code == EGRESS_BLOCKED
    assert reply.error.reason == Reason.EGRESS_BLOCKED.value


@pytest.mark.parametrize("reason", list(Reason))
def test_every_fixed_reason_passes_with_its_code(ctx, reason):
    msg = incoming("train")
    reply = egress_guard(msg, ctx, lambda m, c: error_reply(m, reason))
    assert reply.error.reason == reason.value and reply.error.code == REASON_CODES[reason]


def secagg_incoming(stage: str) -> Message:
    msg = incoming("train")
    msg.content[RECORD_KEY_CONFIGS] = ConfigRecord({Key.STAGE: stage})
    return msg


def masked_reply(shapes=None, **extra) -> RecordDict:
    """A collect-masked-vectors reply as secaggplus_mod builds it from a plaintext reply."""
    fitres = FitRes(Status(Code.OK, ""), Parameters([], ""), 10, {})
    content = fitres_to_recorddict(fitres, keep_input=False)
    content["fitres.parameters"].clear()  # as secaggplus_mod leaves it
    content["metrics"] = MetricRecord({"num-examples": 10, "epsilon": 1.5})
    shapes = shapes or [(1,)] + [tuple(t.shape) for t in head_state().values()]
    content[RECORD_KEY_CONFIGS] = ConfigRecord(
        {Key.MASKED_PARAMETERS: [ndarray_to_bytes(np.zeros(s, np.int64)) for s in shapes]})
    for name, record in extra.items():
        content[name] = record
    return content


def protocol(**values) -> RecordDict:
    return RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(values)})


def test_a_secure_aggregation_stage_sends_only_its_protocol_values(ctx):
    for stage, content in [
        (Stage.SETUP, protocol(**{Key.PUBLIC_KEY_1: b"k1", Key.PUBLIC_KEY_2: b"k2"})),
        (Stage.SHARE_KEYS, protocol(**{Key.DESTINATION_LIST: [3, 4],
                                       Key.CIPHERTEXT_LIST: [b"c", b"d"]})),
        (Stage.COLLECT_MASKED_VECTORS, masked_reply()),
        (Stage.UNMASK, protocol(**{Key.NODE_ID_LIST: [3], Key.SHARE_LIST: [b"s"]})),
    ]:
        assert not send(secagg_incoming(stage), ctx, content).has_error(), stage
    log = egress_log(ctx)
    assert [e["secure_aggregation_stage"] for e in log] == [
        Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK]
    assert all(e["verdict"] == "sent" and e["bytes"] > 0 for e in log)
    assert log[2]["metrics"]["epsilon"] == 1.5 and "arrays" not in log[2]


FORBIDDEN_SECAGG_REPLIES = {
    "text beside the public keys": (Stage.SETUP, lambda: protocol(
        **{Key.PUBLIC_KEY_1: b"k1", Key.PUBLIC_KEY_2: b"k2", "note": "my card 4111"})),
    "a public key as text": (Stage.SETUP, lambda: protocol(
        **{Key.PUBLIC_KEY_1: "4111 1111", Key.PUBLIC_KEY_2: b"k2"})),
    "another stage's values": (Stage.UNMASK, lambda: protocol(
        **{Key.PUBLIC_KEY_1: b"k1", Key.PUBLIC_KEY_2: b"k2"})),
    "the plaintext update beside the masked one": (Stage.COLLECT_MASKED_VECTORS, lambda:
        masked_reply(arrays=ArrayRecord(head_state()))),
    "an extra masked array": (Stage.COLLECT_MASKED_VECTORS, lambda: masked_reply(
        shapes=[(1,), (3, 384), (3,), (12,)])),
    "a masked array of another shape": (Stage.COLLECT_MASKED_VECTORS, lambda: masked_reply(
        shapes=[(1,), (384, 3), (3,)])),
    "text in the legacy metrics": (Stage.COLLECT_MASKED_VECTORS, lambda: masked_reply(
        **{"fitres.metrics": ConfigRecord({"utterance": "I lost my card"})})),
    "a metric off the allow-list": (Stage.COLLECT_MASKED_VECTORS, lambda: masked_reply(
        metrics=MetricRecord({"num-examples": 10, "customer-phone": 13812345678}))),
    "key shares as text": (Stage.UNMASK, lambda: protocol(
        **{Key.NODE_ID_LIST: [3], Key.SHARE_LIST: ["card 4111 1111 1111 1111"]})),
    "node ids as a number, not a list": (Stage.UNMASK, lambda: protocol(
        **{Key.NODE_ID_LIST: 3, Key.SHARE_LIST: [b"s"]})),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN_SECAGG_REPLIES))
def test_forbidden_secure_aggregation_content_is_blocked(ctx, case):
    stage, content = FORBIDDEN_SECAGG_REPLIES[case]
    reply = send(secagg_incoming(stage), ctx, content())
    assert reply.has_error() and reply.error.code == EGRESS_BLOCKED, case
    assert "4111" not in reply.error.reason
    [entry] = egress_log(ctx)
    assert entry["verdict"].startswith("blocked")


# --- the guard on the real ClientApp's evaluate replies ---------------------------------------

EVAL_LABELS = ["card_lost", "refund"]


@pytest.fixture
def evaluating_site(tmp_path) -> Context:
    """A deployed site (node config with data-path, state-dir, max-epsilon) with a test split,
    evaluating exactly (its node config's choice: a site evaluates under DP by default)."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "train.csv").write_text("text,label\nI lost my card,card_lost\n"
                                        "please refund my order,refund\n")
    (site_dir / "test.csv").write_text("text,label\nmy card is lost,card_lost\n"
                                       "where is my refund,refund\nlost card again,card_lost\n")
    node = {"data-path": str(site_dir), "state-dir": str(tmp_path / "state"),
            "max-epsilon": 10.0, "retention-days": math.inf, "evaluation": "exact"}
    create_site_secret(tmp_path / "state")  # as ``fedintent init-site`` does
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                   run_config=dict(DEFAULTS))


def evaluate_message() -> Message:
    model = get_model_family("minilm-head").initial_model(EVAL_LABELS)
    config = ConfigRecord({"labels": EVAL_LABELS, "server-round": 3, "num-rounds": 3,
                           "run-name": "eval-run"})
    return Message(content=RecordDict({"arrays": ArrayRecord(model.state_dict()),
                                       "config": config}),
                   dst_node_id=7, message_type="evaluate")


def test_the_real_evaluate_reply_passes_the_guard_and_is_logged(evaluating_site):
    import fl_client.client_app as client_app

    reply = client_app.app(evaluate_message(), evaluating_site)
    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {"metrics"}
    metrics = reply.content["metrics"]
    assert set(metrics.keys()) == {"num-examples", "loss", "accuracy", "macro-f1"}
    assert 0.0 <= metrics["macro-f1"] <= 1.0
    assert metrics["num-examples"] == 3
    [entry] = egress_log(evaluating_site)
    assert entry["message"] == "evaluate" and entry["verdict"] == "sent"
    assert entry["round"] == 3 and entry["run"] == "eval-run"
    assert entry["metrics"] == dict(metrics.items())
    assert "arrays" not in entry and "error" not in entry


LEAKED_PHONE = 13812345678
LEAKY_EVALUATE_REPLIES = {
    "a metric off the evaluate allow-list": "metric",
    "a train-only metric": "train-metric",
    "the model's parameters": "arrays",
    "a config record with the test text": "config",
}


@pytest.mark.parametrize("case", sorted(LEAKY_EVALUATE_REPLIES))
def test_the_real_evaluate_handler_cannot_send_more_than_its_allow_list(
    evaluating_site, monkeypatch, case
):
    """The real app and the real guard; only the handler's reply is made to carry more, the way
    a bug or a careless change in the handler would."""
    import fl_client.client_app as client_app

    kind = LEAKY_EVALUATE_REPLIES[case]
    real_metric_record, real_record_dict = client_app.metric_record, client_app.RecordDict

    def leaky_metrics(contract, **values):
        extra = {"metric": {"customer-phone": LEAKED_PHONE},
                 "train-metric": {"site-key": 12345.0}}.get(kind, {})
        return MetricRecord(dict(real_metric_record(contract, **values)) | extra)

    def leaky_content(records):
        records = dict(records)
        if kind == "arrays":
            records["arrays"] = ArrayRecord(head_state())
        if kind == "config":
            records["config"] = ConfigRecord({"utterance": f"my number is {LEAKED_PHONE}"})
        return real_record_dict(records)

    monkeypatch.setattr(client_app, "metric_record", leaky_metrics)
    monkeypatch.setattr(client_app, "RecordDict", leaky_content)
    reply = client_app.app(evaluate_message(), evaluating_site)

    assert reply.has_error() and reply.error.code == EGRESS_BLOCKED, case
    assert str(LEAKED_PHONE) not in (reply.error.reason or "")
    [entry] = egress_log(evaluating_site)
    assert entry["message"] == "evaluate" and entry["verdict"].startswith("blocked")
    assert entry["error"]["code"] == EGRESS_BLOCKED
    assert "metrics" not in entry and "arrays" not in entry
    with open(evaluating_site.node_config["state-dir"] + "/egress.jsonl") as f:
        assert str(LEAKED_PHONE) not in f.read()


def test_the_egress_log_is_private_to_the_site_and_exact(ctx):
    """The log names what left and how far the update moved from the model received, for the
    site's data protection officer; it sits in an owner-only folder, owner-only itself."""
    msg = incoming("train")
    received = {k: v.numpy() for k, v in msg.content["arrays"].items()}
    moved = {k: v + 0.5 for k, v in received.items()}
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in moved.items()}),
                          "metrics": MetricRecord({"num-examples": 10,
                                                   "epsilon": math.inf, "delta": 1e-5})})
    assert not send(msg, ctx, content).has_error()
    refused = egress_guard(msg, ctx, lambda m, c: error_reply(m, Reason.BUDGET_EXHAUSTED))
    assert refused.error.reason == Reason.BUDGET_EXHAUSTED.value
    sent, declined = egress_log(ctx)
    size = sum(v.size for v in received.values())
    assert sent["update_norm"] == pytest.approx(0.5 * math.sqrt(size))
    assert sent["metrics"]["epsilon"] is None  # no DP: JSON has no infinity
    assert [a["shape"] for a in sent["arrays"]] == [list(v.shape) for v in received.values()]
    assert declined["error"] == {"code": DECLINED, "reason": Reason.BUDGET_EXHAUSTED.value}
    state = Path(ctx.node_config["state-dir"])
    assert state.stat().st_mode & 0o777 == 0o700
    assert (state / "egress.jsonl").stat().st_mode & 0o777 == 0o600


def test_a_reply_whose_log_entry_cannot_be_written_is_not_sent(ctx):
    """The log fails closed: what the site's officer cannot see in it never left, and no paid
    release that the ledger's rollback check looks for there is missing from it."""
    Path(ctx.node_config["state-dir"], "egress.jsonl").mkdir(parents=True)  # cannot be appended
    msg = incoming("train")
    reply = send(msg, ctx, good_train_reply(msg))
    assert reply.has_error() and reply.error.code == EGRESS_BLOCKED
    assert reply.error.reason == Reason.EGRESS_BLOCKED.value
    assert not reply.has_content()


def test_an_unexpected_error_is_logged_with_its_frames_and_its_server_text_escaped():
    """Found in review: an unknown SecAgg+ stage, quoted by Flower's error, reached the site's
    log raw through the traceback (a megabyte, with terminal escapes)."""
    stage = "\x1b[2J" + "s" * 1_000_000
    try:
        try:
            raise KeyError("first")
        except KeyError as first:
            raise ValueError(f"expected stage setup, but receive {stage} stage") from first
    except ValueError as err:
        text = site_error_text(err)
    assert "\x1b" not in text and "\\x1b[2J" in text
    assert text.index("KeyError: 'first'") < text.index("(while handling)") < text.index(
        "ValueError: expected stage setup, but receive \\x1b[2J")
    assert "test_an_unexpected_error_is_logged" in text  # the site's own frames are kept
    assert len(text) < 2 * LOG_LIMIT + 1_000
    assert loggable("银行卡\t丢了") == "银行卡\\t丢了"  # printable text of any script stays
