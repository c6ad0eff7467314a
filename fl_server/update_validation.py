"""Checks on every site reply before it can reach aggregation.

A training reply must carry exactly the model's exchanged parameters (same names, shapes and
dtypes as the global model), only finite values, the metrics aggregation uses, and (when
``max-update-norm`` > 0) an update whose L2 distance from the global model it was sent is
within that bound. An evaluation reply must carry finite, in-range metrics. One bad reply is
rejected and recorded; it never reaches the average, and never stops the round. With secure
aggregation a training reply reaches the server as metrics only (its update is in the masked
sum), and only those can be checked.
"""

import math

import numpy as np
from flwr.app import ArrayRecord, RecordDict

from fl_protocol.wire import ARRAYS_KEY, EVALUATE_METRICS, METRICS_KEY, TRAIN_METRICS, Metric

ArraySpec = dict[str, tuple[tuple[int, ...], str]]
"""Parameter name -> (shape, numpy dtype string) of the exchanged model."""



class InvalidReply(ValueError):
    """A reply that must not be aggregated; the message says why."""


def array_spec(arrays: ArrayRecord) -> ArraySpec:
    """The names, shapes and dtypes every update must match."""
    return {key: (tuple(array.shape), np.dtype(array.dtype).str) for key, array in arrays.items()}


def check_train_reply(
    content: RecordDict,
    spec: ArraySpec,
    global_arrays: dict[str, np.ndarray],
    max_update_norm: float,
) -> float:
    """The reply's update norm ||reply - global||_2, or raise ``InvalidReply``."""
    if set(content) != {ARRAYS_KEY, METRICS_KEY}:
        raise InvalidReply(f"expected records {ARRAYS_KEY!r} and {METRICS_KEY!r}, "
                           f"got {sorted(content)}")
    arrays = content.array_records.get(ARRAYS_KEY)
    if arrays is None:
        raise InvalidReply(f"{ARRAYS_KEY!r} is not an ArrayRecord")
    _check_metrics(content, TRAIN_METRICS)
    missing, unexpected = sorted(set(spec) - set(arrays)), sorted(set(arrays) - set(spec))
    if missing or unexpected:
        raise InvalidReply(f"wrong parameter names: missing {missing}, unexpected {unexpected}")
    squared = 0.0
    for key, (shape, dtype) in spec.items():
        if tuple(arrays[key].shape) != shape:
            raise InvalidReply(f"{key}: shape {tuple(arrays[key].shape)}, expected {shape}")
        if np.dtype(arrays[key].dtype).str != dtype:
            raise InvalidReply(f"{key}: dtype {arrays[key].dtype}, expected {np.dtype(dtype)}")
        try:
            values = arrays[key].numpy()
        except (ValueError, TypeError) as err:
            raise InvalidReply(f"{key}: unreadable array ({err})") from err
        if not np.isfinite(values).all():
            raise InvalidReply(f"{key}: contains NaN or Inf")
        difference = values.astype(np.float64) - global_arrays[key].astype(np.float64)
        squared += float(np.sum(difference * difference))
    norm = math.sqrt(squared)
    if max_update_norm > 0 and norm > max_update_norm:
        raise InvalidReply(f"update norm {norm:.4g} exceeds max-update-norm {max_update_norm:g}")
    return norm


def check_secure_train_reply(content: RecordDict) -> None:
    """Raise ``InvalidReply`` unless a SecAgg+ site's reply holds exactly its usable metrics."""
    if set(content) != {METRICS_KEY}:
        raise InvalidReply(f"expected only the record {METRICS_KEY!r}, got {sorted(content)}")
    _check_metrics(content, TRAIN_METRICS)


def check_evaluate_reply(content: RecordDict) -> None:
    """Raise ``InvalidReply`` unless the reply holds usable evaluation metrics."""
    if set(content) != {METRICS_KEY}:
        raise InvalidReply(f"expected only the record {METRICS_KEY!r}, got {sorted(content)}")
    _check_metrics(content, EVALUATE_METRICS)


def _check_metrics(content: RecordDict, contract: tuple[Metric, ...]) -> None:
    """Every metric the contract requires is present and passes its check; the others are
    optional here (the site's egress guard lets out no name outside the contract)."""
    metrics = content.metric_records.get(METRICS_KEY)
    if metrics is None:
        raise InvalidReply(f"{METRICS_KEY!r} is not a MetricRecord")
    for metric in contract:
        if metric.check is None:
            continue
        value = metrics.get(metric.name)
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not metric.check(value)):
            raise InvalidReply(f"metric {metric.name!r} is missing or out of range: {value!r}")
