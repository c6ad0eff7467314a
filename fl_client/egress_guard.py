"""The egress guard: the one place that decides what may leave a site.

A Flower client mod on both train and evaluate. Every reply is checked before it is sent:

* a train reply may carry exactly one ``ArrayRecord`` named ``arrays`` whose names, shapes and
  dtypes are those of the model family's exchanged parameters, and one ``MetricRecord`` named
  ``metrics`` whose keys are in the wire contract's ``TRAIN_METRICS`` (``fl_protocol/wire.py``);
* an evaluate reply may carry only ``metrics`` with keys in ``EVALUATE_METRICS``;
* metric values must be finite-or-infinite numbers (never strings, bytes or lists); array values
  must be finite;
* an error reply may carry only one of the wire contract's fixed ``Reason`` values, with its
  code: never free text, since an exception message can quote a row of site data. The details
  stay in the site's own log and egress log; any unexpected exception becomes
  ``Reason.INTERNAL``;
* with secure aggregation, a reply to a SecAgg+ stage may carry only that stage's protocol
  values (``SECAGG_REPLIES``): public keys, encrypted key shares, key shares, and the masked
  update, whose arrays must have the model's shapes; the masked update goes with the same
  ``metrics`` as a plain reply and Flower's legacy reply header (example count, or under
  distributed DP the fixed weight every site sends with; empty status). The plaintext update is
  checked like a plain reply before it is masked (``secure_aggregation.py``); under distributed
  DP its arrays are int64 (the site's integers), never float.

Anything else (a ``ConfigRecord``, an extra array, a string, a NaN) blocks the whole reply: it is
replaced by an error and nothing of it is sent. Every outgoing message, sent or blocked, is
appended to ``egress.jsonl`` in the site's state folder (array names, shapes and sizes, update
norm, metric names and values) so the site's data protection officer can audit what left. The
log fails closed: a reply whose entry cannot be written (a full disk, a read-only folder) is
replaced by the egress-blocked error, so nothing leaves that the log does not show, and no
release the ledger's rollback check needs to find there goes unrecorded.
"""

import json
import math
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from logging import ERROR
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import bytes_to_ndarray
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import recorddict_to_proto

from fl_client.site_folders import site_folders
from fl_protocol.distributed_sum import WEIGHT
from fl_protocol.durable_files import append_line, json_safe
from fl_protocol.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVALUATE_METRICS,
    LEGACY_HEADER,
    MAX_RUN_NAME,
    METRICS_KEY,
    SECAGG_REPLIES,
    TRAIN_METRICS,
    Reason,
    error_reply,
    is_site_reason,
    loggable,
    metric_names,
)
from models import get_model_family

EGRESS_LOG = "egress.jsonl"
PAID_RELEASE = "fedintent.paid-release"
"""Where a handler leaves, in the site's own ``context.state``, the ledger release (its number
and nonce) that the reply it returns paid for: the guard writes it into that reply's egress-log
entry, so that a ledger restored from an older copy, together with its head, is found missing it
(``privacy_ledger.read_ledger``). Never sent."""


class EgressViolation(ValueError):
    """A reply carries something that may not leave the site."""


def egress_guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    stage = secagg_stage(msg)  # read first: secaggplus_mod consumes it
    context.state.config_records.pop(PAID_RELEASE, None)
    try:
        reply = call_next(msg, context)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as err:  # also a Rust extension's panic, which is no Exception (found
        # in review): left to Flower, its text (which may quote the row) had no guard but Flower's
        log(ERROR, "site error, not sent to the server:\n%s", site_error_text(err))
        reply = error_reply(msg, Reason.INTERNAL)
    try:
        if stage is None or reply.has_error():
            check_reply(msg, reply, str(context.run_config.get("model")))
        else:
            distributed = context.run_config.get("privacy-model") == "distributed"
            check_secagg_reply(stage, msg, reply, str(context.run_config.get("model")),
                               weight=WEIGHT if distributed else None)
        verdict = "sent"
    except Exception as err:  # a check that cannot run blocks the reply as surely as a violation
        verdict = f"blocked: {err}"
        log(ERROR, "egress guard blocked a reply: %s", loggable(str(err)))
        reply = error_reply(msg, Reason.EGRESS_BLOCKED)
    paid = context.state.config_records.pop(PAID_RELEASE, None)
    try:
        _, state_dir = site_folders(msg, context, secret_required=False)
        append_egress_log(state_dir, msg, reply, verdict, stage,
                          dict(paid) if paid is not None else None)
    except Exception as err:  # fail closed: nothing leaves that the log does not show
        log(ERROR, "could not write the egress log, so the reply is not sent: %s", err)
        return error_reply(msg, Reason.EGRESS_BLOCKED)
    return reply


def check_reply(msg: Message, reply: Message, model: str, integers: bool = False) -> None:
    """Raise ``EgressViolation`` unless the reply holds only what may leave the site.
    ``integers``: a distributed-DP update before masking (int64 arrays of the model's shapes);
    it never leaves unmasked, since only ``secure_aggregation.py`` passes it."""
    if reply.has_error():
        reason = reply.error.reason or ""
        if not is_site_reason(reply.error.code, reason):
            raise EgressViolation("an error reply outside the fixed vocabulary (code "
                                  f"{reply.error.code}, reason of {len(reason)} characters)")
        return
    is_train = msg.metadata.message_type.startswith("train")
    content = reply.content
    expected = {ARRAYS_KEY, METRICS_KEY} if is_train else {METRICS_KEY}
    names = set(content.keys())
    if names != expected:
        raise EgressViolation(f"records {sorted(names)}, expected {sorted(expected)}")
    metrics = content[METRICS_KEY]
    if not isinstance(metrics, MetricRecord):
        raise EgressViolation("'metrics' is not a MetricRecord")
    _check_metrics(metrics, metric_names(TRAIN_METRICS if is_train else EVALUATE_METRICS))
    if is_train:
        arrays = content[ARRAYS_KEY]
        if not isinstance(arrays, ArrayRecord):
            raise EgressViolation("'arrays' is not an ArrayRecord")
        labels = list(msg.content[CONFIG_KEY]["labels"])
        _check_arrays(arrays, get_model_family(model).build_model(len(labels)).state_dict(),
                      integers)


def secagg_stage(msg: Message) -> str | None:
    """The SecAgg+ stage a train message asks for; None for a plain message."""
    if not msg.metadata.message_type.startswith("train"):
        return None
    configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    return None if configs is None else str(configs.get(Key.STAGE))


def check_secagg_reply(stage: str, msg: Message, reply: Message, model: str,
                       weight: float | None = None) -> None:
    """Raise ``EgressViolation`` unless the reply holds only what ``stage`` may send;
    ``weight``: the fixed weight of a distributed-DP update (None: its example count)."""
    if stage not in SECAGG_REPLIES:
        raise EgressViolation(f"unknown secure aggregation stage {stage!r}")
    content = reply.content
    masked = stage == Stage.COLLECT_MASKED_VECTORS
    expected = {RECORD_KEY_CONFIGS} | ({METRICS_KEY, *LEGACY_HEADER} if masked else set())
    if set(content.keys()) != expected:
        raise EgressViolation(f"{stage} reply has records {sorted(content.keys())}, "
                              f"expected {sorted(expected)}")
    protocol = content[RECORD_KEY_CONFIGS]
    allowed = SECAGG_REPLIES[stage]
    if not isinstance(protocol, ConfigRecord) or set(protocol.keys()) != set(allowed):
        raise EgressViolation(f"{stage} reply carries {sorted(protocol.keys())}, "
                              f"expected {sorted(allowed)}")
    for key, kind in allowed.items():
        value = protocol[key]
        if isinstance(kind, list):
            if not isinstance(value, list) or any(type(v) is not kind[0] for v in value):
                raise EgressViolation(f"{stage} value {key!r} is not a list of {kind[0].__name__}")
        elif type(value) is not kind:
            raise EgressViolation(f"{stage} value {key!r} is not {kind.__name__}")
    if masked:
        _check_masked_update(msg, content, model, weight)


def _check_masked_update(msg: Message, content: RecordDict, model: str,
                         weight: float | None) -> None:
    """The masked update: one integer array per model parameter plus the weight, nothing else;
    the site's metrics, as in a plain reply; a legacy header that repeats the example count."""
    metrics = content[METRICS_KEY]
    if not isinstance(metrics, MetricRecord):
        raise EgressViolation("'metrics' is not a MetricRecord")
    _check_metrics(metrics, metric_names(TRAIN_METRICS))
    header = {name: content[name] for name in LEGACY_HEADER}
    count = metrics.get("num-examples") if weight is None else int(weight)
    if (
        not isinstance(header["fitres.parameters"], ArrayRecord)
        or len(header["fitres.parameters"]) != 0
        or dict(header["fitres.num_examples"]) != {"num_examples": count}
        or len(header["fitres.metrics"]) != 0
        or dict(header["fitres.status"]) != {"code": 0, "message": ""}
    ):
        raise EgressViolation("masked update: the legacy reply header carries more than the "
                              "example count")
    labels = list(msg.content[CONFIG_KEY]["labels"])
    own = get_model_family(model).build_model(len(labels)).state_dict()
    # In the order the server sent the model: the site masks in it and the server unmasks in it
    # (review 123 L1: the family's order here blocked every update sent in another, after the
    # round was charged).
    shapes = [(1,)] + [tuple(own[name].shape) if name in own else None
                       for name in msg.content[ARRAYS_KEY]]
    try:
        sent = [bytes_to_ndarray(b) for b in content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
    except ValueError as err:
        raise EgressViolation(f"masked update is unreadable ({err})") from err
    if [tuple(a.shape) for a in sent] != shapes or any(a.dtype.kind not in "iu" for a in sent):
        found = [f"{a.dtype}{list(a.shape)}" for a in sent]
        raise EgressViolation(f"masked update has arrays {found}, expected integer arrays of "
                              f"shapes {shapes}")


def _check_metrics(metrics: MetricRecord, allowed: frozenset[str]) -> None:
    unexpected = sorted(set(metrics.keys()) - allowed)
    if unexpected:
        raise EgressViolation(f"metrics not on the allow-list: {unexpected}")
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise EgressViolation(f"metric {key!r} is a {type(value).__name__}, not a number")
        if math.isnan(value):
            raise EgressViolation(f"metric {key!r} is NaN")


def _check_arrays(arrays: ArrayRecord, expected: dict, integers: bool = False) -> None:
    if set(arrays.keys()) != set(expected):
        raise EgressViolation(
            f"arrays {sorted(arrays.keys())}, expected the model's {sorted(expected)}"
        )
    for name, array in arrays.items():
        want = expected[name]
        want_dtype = "int64" if integers else str(want.numpy().dtype)
        if tuple(array.shape) != tuple(want.shape) or array.dtype != want_dtype:
            raise EgressViolation(
                f"array {name!r} is {array.dtype}{list(array.shape)}, "
                f"expected {want_dtype}{list(want.shape)}"
            )
        if not np.isfinite(array.numpy()).all():
            raise EgressViolation(f"array {name!r} holds NaN or Inf")


def _as_sent(value: object) -> int | str:
    """A round number as the server sent it, anything but a whole number as its ``repr``: a
    malformed one is logged with the refusal it got, never a crash that hides it (found in
    review: server-round inf was answered "blocked by the egress guard")."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else _cut(repr(value))


VERDICT_LIMIT = 2_000
"""The most of a blocked reply's verdict the egress log keeps, in characters: the guard's own
text, which may quote a value the server sent (a SecAgg+ stage it does not know)."""


def site_error_text(err: BaseException) -> str:
    """An unexpected exception for the site's log: each frame of its traceback (the site's own
    code), and its message and those of the exceptions it came from, ``loggable``."""
    parts = []
    seen: BaseException | None = err
    while seen is not None and len(parts) < 5:
        frames = "".join(traceback.format_tb(seen.__traceback__))
        parts.append(f"Traceback (most recent call last):\n{frames}{type(seen).__name__}: "
                     f"{loggable(str(seen))}")
        seen = seen.__cause__ or seen.__context__
    return "\n(while handling)\n".join(reversed(parts))


def _cut(text: str, limit: int = MAX_RUN_NAME) -> str:
    """What the server sent, at most ``limit`` characters of it, marked where cut: the
    log is kept for good (found in review: a refused 1 MB run name, and then a SecAgg+ stage,
    were written whole, so a server grew the log by a megabyte a message)."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... (cut: {len(text)} characters)"


def append_egress_log(
    state_dir: Path, msg: Message, reply: Message, verdict: str, stage: str | None = None,
    release: dict | None = None,
) -> None:
    """Append one line describing what this reply sent (or why it was blocked), with the ledger
    ``release`` it paid for, if any (site-private, like the whole log)."""
    config = msg.content.get(CONFIG_KEY, {})
    entry: dict = {
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": _cut(str(config.get("run-name", ""))),
        "round": _as_sent(config.get("server-round", 0)),
        "message": _cut(msg.metadata.message_type),
        "verdict": _cut(verdict, VERDICT_LIMIT),  # a violation may quote what was sent
    }
    if stage is not None:
        entry["secure_aggregation_stage"] = _cut(stage)
    if release is not None:
        entry["release"] = release
    if reply.has_error():
        entry["error"] = {"code": reply.error.code, "reason": reply.error.reason}
    else:
        entry["bytes"] = recorddict_to_proto(reply.content).ByteSize()  # as serialized
        if METRICS_KEY in reply.content:
            entry["metrics"] = json_safe(dict(reply.content[METRICS_KEY]))
        if ARRAYS_KEY in reply.content:
            sent = reply.content[ARRAYS_KEY]
            entry["arrays"] = [
                {"name": name, "dtype": a.dtype, "shape": list(a.shape), "bytes": len(a.data)}
                for name, a in sent.items()
            ]
            entry["update_norm"] = _update_norm(msg.content[ARRAYS_KEY], sent)
    # into the state folder as it is (``site_folders``), never made here: one lost or not
    # mounted must not come back holding a log alone; the reply then does not leave
    append_line(Path(state_dir) / EGRESS_LOG, json.dumps(entry), mode=0o600)  # site-private


def egress_entries(state_dir: Path) -> Iterator[dict | None]:
    """Each line of the site's egress log, oldest first, as ``append_egress_log`` wrote it;
    ``None`` for a line that is not an entry (torn, edited, undecodable), so readers count it
    rather than guess. Nothing when the site has sent nothing."""
    path = Path(state_dir) / EGRESS_LOG
    if not path.exists():
        return
    with open(path, encoding="utf-8", errors="replace") as log_file:
        for line in log_file:
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            yield entry if isinstance(entry, dict) else None


def sent_with_epsilon(entry: dict | None) -> bool:
    """Whether an egress log entry is a reply that left with an epsilon, DP or not: a training
    update or a DP evaluation, each a release the ledger charged before it left."""
    return (isinstance(entry, dict) and entry.get("verdict") == "sent"
            and isinstance(entry.get("metrics"), dict) and "epsilon" in entry["metrics"])


def _update_norm(received: ArrayRecord, sent: ArrayRecord) -> float:
    squares = sum(
        float(np.sum((sent[name].numpy().astype(np.float64)
                      - received[name].numpy().astype(np.float64)) ** 2))
        for name in sent
    )
    return math.sqrt(squares)
