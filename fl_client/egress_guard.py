"""The egress guard: the one place that decides what may leave a site.

A Flower client mod on both train and evaluate. Every reply is checked before it is sent:

* a train reply may carry exactly one ``ArrayRecord`` named ``arrays`` whose names, shapes and
  dtypes are those of the model family's exchanged parameters, and one ``MetricRecord`` named
  ``metrics`` whose keys are in ``TRAIN_METRICS``;
* an evaluate reply may carry only ``metrics`` with keys in ``EVALUATE_METRICS``;
* metric values must be finite-or-infinite numbers (never strings, bytes or lists); array values
  must be finite;
* an error reply may carry only an error code fedintent defines and a short reason; any
  unexpected exception is replaced by a generic error (details stay in the site's log).

Anything else (a ``ConfigRecord``, an extra array, a string, a NaN) blocks the whole reply: it is
replaced by an error and nothing of it is sent. Every outgoing message, sent or blocked, is
appended to ``egress.jsonl`` in the site's state folder (array names, shapes and sizes, update
norm, metric names and values) so the site's data protection officer can audit what left.
"""

import json
import math
import os
import traceback
from datetime import UTC, datetime
from logging import ERROR
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.logger import log

from fl_client.site_folders import site_folders
from models import get_model_family

SITE_ERROR = 1001
DECLINED = 1002
EGRESS_BLOCKED = 1003
ALLOWED_ERROR_CODES = (SITE_ERROR, DECLINED, EGRESS_BLOCKED)
MAX_REASON_CHARS = 500

TRAIN_METRICS = frozenset({
    "num-examples", "train-loss", "steps", "epsilon", "epsilon-all-runs", "max-epsilon",
    "delta", "noise-multiplier", "sample-rate", "clip-norm", "privacy-units", "site-key",
})
EVALUATE_METRICS = frozenset({"num-examples", "loss", "accuracy"})
EGRESS_LOG = "egress.jsonl"


class EgressViolation(ValueError):
    """A reply carries something that may not leave the site."""


def egress_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    try:
        reply = call_next(msg, context)
    except Exception:
        log(ERROR, "site error, not sent to the server:\n%s", traceback.format_exc())
        reply = Message(Error(code=SITE_ERROR, reason="site error (details in the site log)"),
                        reply_to=msg)
    try:
        check_reply(msg, reply, str(context.run_config["model"]))
        verdict = "sent"
    except EgressViolation as err:
        verdict = f"blocked: {err}"
        log(ERROR, "egress guard blocked a reply: %s", err)
        reply = Message(Error(code=EGRESS_BLOCKED, reason=f"egress guard: {err}"), reply_to=msg)
    try:
        _, state_dir = site_folders(msg, context)
        append_egress_log(state_dir, msg, reply, verdict)
    except Exception as err:  # the log must never turn into a leak or a crash
        log(ERROR, "could not write the egress log: %s", err)
    return reply


def check_reply(msg: Message, reply: Message, model: str) -> None:
    """Raise ``EgressViolation`` unless the reply holds only what may leave the site."""
    if reply.has_error():
        if reply.error.code not in ALLOWED_ERROR_CODES:
            raise EgressViolation(f"unexpected error code {reply.error.code}")
        if len(reply.error.reason or "") > MAX_REASON_CHARS:
            raise EgressViolation("error reason too long")
        return
    is_train = msg.metadata.message_type.startswith("train")
    content = reply.content
    expected = {"arrays", "metrics"} if is_train else {"metrics"}
    names = set(content.keys())
    if names != expected:
        raise EgressViolation(f"records {sorted(names)}, expected {sorted(expected)}")
    metrics = content["metrics"]
    if not isinstance(metrics, MetricRecord):
        raise EgressViolation("'metrics' is not a MetricRecord")
    _check_metrics(metrics, TRAIN_METRICS if is_train else EVALUATE_METRICS)
    if is_train:
        arrays = content["arrays"]
        if not isinstance(arrays, ArrayRecord):
            raise EgressViolation("'arrays' is not an ArrayRecord")
        labels = list(msg.content["config"]["labels"])
        _check_arrays(arrays, get_model_family(model).build_model(len(labels)).state_dict())


def _check_metrics(metrics: MetricRecord, allowed: frozenset[str]) -> None:
    unexpected = sorted(set(metrics.keys()) - allowed)
    if unexpected:
        raise EgressViolation(f"metrics not on the allow-list: {unexpected}")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EgressViolation(f"metric {key!r} is a {type(value).__name__}, not a number")
        if math.isnan(value):
            raise EgressViolation(f"metric {key!r} is NaN")


def _check_arrays(arrays: ArrayRecord, expected: dict) -> None:
    if set(arrays.keys()) != set(expected):
        raise EgressViolation(
            f"arrays {sorted(arrays.keys())}, expected the model's {sorted(expected)}"
        )
    for name, array in arrays.items():
        want = expected[name]
        want_dtype = str(want.numpy().dtype)
        if tuple(array.shape) != tuple(want.shape) or array.dtype != want_dtype:
            raise EgressViolation(
                f"array {name!r} is {array.dtype}{list(array.shape)}, "
                f"expected {want_dtype}{list(want.shape)}"
            )
        if not np.isfinite(array.numpy()).all():
            raise EgressViolation(f"array {name!r} holds NaN or Inf")


def append_egress_log(state_dir: Path, msg: Message, reply: Message, verdict: str) -> None:
    """Append one line describing what this reply sent (or why it was blocked)."""
    config = msg.content.get("config", {})
    entry: dict = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(config.get("run-name", "")),
        "round": int(config.get("server-round", 0)),
        "message": msg.metadata.message_type,
        "verdict": verdict,
    }
    if reply.has_error():
        entry["error"] = {"code": reply.error.code, "reason": reply.error.reason}
    else:
        entry["metrics"] = {k: _json_number(v) for k, v in reply.content["metrics"].items()}
        if "arrays" in reply.content:
            sent = reply.content["arrays"]
            entry["arrays"] = [
                {"name": name, "dtype": a.dtype, "shape": list(a.shape), "bytes": len(a.data)}
                for name, a in sent.items()
            ]
            entry["update_norm"] = _update_norm(msg.content["arrays"], sent)
    path = Path(state_dir) / EGRESS_LOG
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _update_norm(received: ArrayRecord, sent: ArrayRecord) -> float:
    squares = sum(
        float(np.sum((sent[name].numpy().astype(np.float64)
                      - received[name].numpy().astype(np.float64)) ** 2))
        for name in sent
    )
    return math.sqrt(squares)


def _json_number(value: float | int) -> float | int | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value
