"""The site's side of secure aggregation (SecAgg+, ``secure-aggregation = true``).

Flower 1.41 runs SecAgg+ only through its legacy protocol: ``secaggplus_mod`` answers the four
stages of a round (setup, share keys, collect masked vectors, unmask), and in the third it calls
the train handler and masks the update it returns, which must be in the legacy ``FitRes`` form.
``secure_aggregation_mod`` sits between the egress guard and the train handler: it passes plain
rounds through untouched and, in a SecAgg+ round, lets the handler train exactly as in a plain
round (budget check, ledger charge, DP-SGD), checks the plaintext reply against the egress
guard's allow-list, and hands ``secaggplus_mod`` the parameters to mask. Only the masked vector
leaves; the site's metrics leave in the clear, as in a plain round, in their own ``metrics``
record, and the egress guard checks every protocol reply (``egress_guard.py``).

Before masking, the site refuses to send an update that SecAgg+ would silently clip: Flower
clips each weighted parameter, ``num-examples / max_weight * value``, to ``clipping_range``
before quantizing it, which would corrupt the sum without anyone noticing. A refusing site
drops out of the round like any other failed site.
"""

from logging import WARNING

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.logger import log
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
)
from flwr.compat.common.recorddict_compat import fitres_to_recorddict

from fl_client.egress_guard import EgressViolation, check_reply
from fl_protocol.wire import ARRAYS_KEY, METRICS_KEY, Reason, error_reply


class _Refused(Exception):
    """The handler's reply may not be masked and sent; ``reason`` goes to the server instead."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer a SecAgg+ stage; pass any other message straight to ``call_next``."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    try:
        return secaggplus_mod(msg, context, lambda m, c: _update_to_mask(m, c, call_next))
    except _Refused as refused:
        return error_reply(msg, refused.reason)


def _update_to_mask(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train as in a plain round; return the update in the form ``secaggplus_mod`` masks."""
    reply = call_next(msg, context)
    if reply.has_error():
        reason = reply.error.reason
        raise _Refused(Reason(reason) if reason in set(Reason) else Reason.INTERNAL)
    try:
        check_reply(msg, reply, str(context.run_config["model"]))
    except EgressViolation as err:
        log(WARNING, "egress guard blocked an update before masking: %s", err)
        raise _Refused(Reason.EGRESS_BLOCKED) from err
    names = list(msg.content[ARRAYS_KEY].keys())  # the server's order, which it unmasks in
    arrays = [reply.content[ARRAYS_KEY][name].numpy() for name in names]
    num_examples = int(reply.content[METRICS_KEY]["num-examples"])
    problem = out_of_range(arrays, num_examples, context)
    if problem:
        log(WARNING, "%s", problem)
        raise _Refused(Reason.OUT_OF_RANGE)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), num_examples, {})
    content = fitres_to_recorddict(fitres, keep_input=False)
    content[METRICS_KEY] = reply.content[METRICS_KEY]
    return Message(content, reply_to=msg)


def out_of_range(arrays: list[np.ndarray], num_examples: int, context: Context) -> str | None:
    """Why SecAgg+ would clip this update (then it must not be sent), or None."""
    # the round's settings, as secaggplus_mod kept them from the setup stage
    settings = context.state.config_records[RECORD_KEY_STATE]
    clipping_range, max_weight = float(settings["clipping_range"]), float(settings["max_weight"])
    quantization_range = int(settings["target_range"])
    scale = round(num_examples / max_weight * quantization_range) / quantization_range
    largest = max(float(np.max(np.abs(a))) for a in arrays)
    if largest * scale <= clipping_range:
        return None
    return (f"secure aggregation: this update does not fit the protocol's range (largest "
            f"parameter {largest:.4g} x weight {num_examples}/{max_weight:g} > clipping range "
            f"{clipping_range:g}); not sent, rather than clipped")
