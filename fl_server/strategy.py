"""Aggregation strategies, wrapped so that every round's replies are checked and recorded.

FedAvg averages the sites' parameters weighted by their number of training examples; FedAdam
applies the averaged update through a server-side Adam optimizer; FedTrimmedAvg and FedMedian
are robust to a minority of outlying updates; FedAvg with ``server-momentum`` is FedAvgM
(heavy-ball momentum on the averaged step). All are Flower's own. What fedintent adds
(``CheckedRounds``, a wrapper like Flower's DP strategy wrappers), before Flower's aggregation
sees a reply:

* every site asked gets exactly one outcome: a site that did not answer within the reply
  timeout, or whose node the SuperLink reports unavailable, is recorded as a failure of *that*
  node (the SuperLink's own error replies come from its own node id);
* every update is checked (``update_validation.py``): its arrays, its norm, its privacy claims
  against the run's plan, and its example count against the round's other sites; a rejected
  one is recorded like a failure (``REJECTED``, in ``metrics.json`` and the audit log) and never
  aggregated;
* accepted replies are aggregated in a canonical order (by a digest of their parameters), so
  the result does not depend on the order replies arrived in, nor on the node ids.

With secure aggregation (``secure_aggregation.py``) the server gets the mean of the updates, not
the updates: ``aggregate_secure_train`` checks and records each site's metrics and hands the mean
to Flower's aggregation (FedAvg keeps it, FedAvgM and FedAdam step from it).
"""

from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, Strategy

from fl_protocol.wire import (
    ARRAYS_KEY,
    EVALUATE_METRICS,
    METRICS_KEY,
    NO_REPLY,
    REJECTED,
    TRAIN_METRICS,
)
from fl_server.run_record import RunRecord
from fl_server.secure_aggregation import SecureRound
from fl_server.tensor_digest import arrays_sha256
from fl_server.update_validation import (
    ArraySpec,
    InvalidReply,
    RunPlan,
    capped_claims,
    check_evaluate_reply,
    check_secure_train_reply,
    check_train_reply,
    oversized_claims,
)

BASES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg,
    "fedadam": FedAdam,
    "fedtrimmedavg": FedTrimmedAvg,
    "fedmedian": FedMedian,
}
STRATEGIES = tuple(BASES)
"""The aggregation rules a run may name (``strategy``)."""
STATE_ATTRIBUTES = ("m_t", "v_t", "momentum_vector")
"""Strategy attributes that carry state from round to round: FedAdam's moments (by array name)
and FedAvgM's momentum (a list, in the model's array order)."""
LIST_STATE = ("momentum_vector",)

AGGREGATED_TRAIN_METRICS = tuple(m.name for m in TRAIN_METRICS if m.aggregated)
AGGREGATED_EVALUATE_METRICS = tuple(m.name for m in EVALUATE_METRICS if m.aggregated)


def build_strategy(
    name: str,
    record: RunRecord,
    spec: ArraySpec,
    min_sites: int,
    server_learning_rate: float,
    max_update_norm: float,
    reply_timeout: float,
    plan: RunPlan,
    server_momentum: float = 0.0,
) -> "CheckedRounds":
    """A Flower strategy that trains and evaluates on every connected site each round, wrapped
    in ``CheckedRounds``. ``fedavg`` with ``server_momentum`` is Flower's FedAvgM: heavy-ball
    momentum on the server's step, post-processing of what the sites sent (no privacy cost).
    ``plan``: the run's settings, that sites' privacy claims and derived update bounds are held
    against (``update_validation.RunPlan``)."""
    if name not in BASES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    options = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": min_sites,
        "min_evaluate_nodes": min_sites,
        "min_available_nodes": min_sites,
        "train_metrics_aggr_fn": aggregate_train_metrics,
    }
    if name == "fedadam":
        options |= {"eta": server_learning_rate, "eta_l": 1.0, "beta_1": 0.9, "beta_2": 0.99}
    if name == "fedavg" and server_momentum > 0:
        base = FedAvgM(**options, server_learning_rate=1.0, server_momentum=server_momentum)
        return CheckedRounds(base, record, spec, max_update_norm, reply_timeout, plan)
    return CheckedRounds(BASES[name](**options), record, spec, max_update_norm, reply_timeout,
                         plan)


class CheckedRounds(Strategy):
    """A strategy wrapper, in the style of Flower's own DP wrappers: each round's replies are
    attributed, checked and recorded before the wrapped strategy aggregates the accepted ones.

    The wrapped ``strategy`` configures the rounds and aggregates; this wrapper keeps what it
    sent (to check each update against the model it was sent), turns every reply into one
    outcome per site asked (``checked_replies``), records the round (``RunRecord``) and orders
    the accepted replies canonically.
    """

    def __init__(
        self,
        strategy: FedAvg,
        record: RunRecord,
        spec: ArraySpec,
        max_update_norm: float,
        reply_timeout: float,
        plan: RunPlan,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        self.record = record
        self.spec = spec
        self.max_update_norm = max_update_norm
        self.reply_timeout = reply_timeout
        self.plan = plan
        self.sent_arrays: dict[str, np.ndarray] = {}
        self.asked_train: list[Message] = []
        self.asked_evaluate: list[Message] = []

    def summary(self) -> None:
        self.strategy.summary()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.sent_arrays = {key: array.numpy() for key, array in arrays.items()}
        self.asked_train = list(self.strategy.configure_train(server_round, arrays, config, grid))
        return self.asked_train

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        update_norms: dict[int, float] = {}

        def check(reply: Message) -> None:
            update_norms[reply.metadata.src_node_id] = check_train_reply(
                reply.content, self.spec, self.sent_arrays, self.max_update_norm, self.plan
            )

        checked = _cohort_checked(
            self.asked_train, checked_replies(self.asked_train, replies, self.reply_timeout, check)
        )
        self.record.record_train(server_round, checked, update_norms)
        accepted = [_lean(reply) for reply in checked if not reply.has_error()]
        accepted.sort(key=lambda reply: arrays_sha256(_numpy(reply.content[ARRAYS_KEY])))
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        if arrays is not None:
            arrays = _with_dtypes(arrays, self.spec)
        return arrays, metrics

    def aggregate_secure_train(
        self, server_round: int, secure: SecureRound
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """A SecAgg+ round: each reply holds only its site's metrics, ``secure.aggregate``
        the example-weighted mean of the updates of the sites that trained.

        A site whose metrics fail the check cannot be taken out of the sum, so then the
        round's mean is dropped and the global model stays as it was.
        """
        checked = _cohort_checked(self.asked_train, [
            _checked(sent, reply, self.reply_timeout,
                     lambda reply: check_secure_train_reply(reply.content, self.plan))
            for sent, reply in zip(self.asked_train, secure.replies, strict=True)
        ])
        entry = self.record.record_train(server_round, checked, {})
        entry["secure_aggregation"] = secure.summary
        if any(c.has_error() and not r.has_error()
               for c, r in zip(checked, secure.replies, strict=True)):
            secure.summary["dropped"] = ("a site in the sum was rejected; its update cannot "
                                         "be taken out of the sum, so the sum was dropped")
            return None, None
        if secure.aggregate is None:
            return None, None
        accepted = [
            _lean(Message(RecordDict({ARRAYS_KEY: secure.aggregate,
                                      METRICS_KEY: reply.content[METRICS_KEY]}),
                          reply_to=sent))
            for sent, reply in zip(self.asked_train, checked, strict=True)
            if not reply.has_error()
        ]
        arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
        return _with_dtypes(arrays, self.spec) if arrays is not None else None, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.asked_evaluate = list(
            self.strategy.configure_evaluate(server_round, arrays, config, grid)
        )
        return self.asked_evaluate

    def skip_evaluate(self, server_round: int) -> None:
        """Record the round as one in which no site was asked to evaluate."""
        self.asked_evaluate = []
        self.record.record_unevaluated(server_round)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        checked = checked_replies(
            self.asked_evaluate, replies, self.reply_timeout,
            lambda reply: check_evaluate_reply(reply.content),
        )
        accepted = [reply.content for reply in checked if not reply.has_error()]
        aggregated = aggregate_evaluate_metrics(accepted) if accepted else None
        self.record.record_evaluate(server_round, checked, aggregated)
        return aggregated


def checked_replies(
    asked: list[Message],
    replies: Iterable[Message],
    reply_timeout: float,
    check: Callable[[Message], None],
) -> list[Message]:
    """One reply per message sent, attributed to the node it was sent to, and checked.

    Errors the SuperLink generates (node unavailable, reply expired) carry the SuperLink's own
    node id, so they are re-issued from the node asked; a message without a reply becomes a
    ``NO_REPLY`` error, and content that ``check`` refuses a ``REJECTED`` error.
    """
    by_message = {reply.metadata.reply_to_message_id: reply for reply in replies}
    return [
        _checked(sent, by_message.get(sent.metadata.message_id), reply_timeout, check)
        for sent in asked
    ]


def strategy_state(checked: CheckedRounds) -> dict[str, dict[str, np.ndarray]]:
    """The state the wrapped strategy carries between rounds, for a checkpoint."""
    state = {}
    for name in STATE_ATTRIBUTES:
        value = getattr(checked.strategy, name, None)
        if value is not None and len(value):
            items = enumerate(value) if name in LIST_STATE else value.items()
            state[name] = {str(key): array for key, array in items}
    return state


def restore_strategy_state(
    checked: CheckedRounds, state: dict[str, dict[str, np.ndarray]]
) -> None:
    """Put checkpointed state back, so the next round continues as if never interrupted."""
    strategy = checked.strategy
    unknown = sorted(set(state) - {n for n in STATE_ATTRIBUTES if hasattr(strategy, n)})
    if unknown:
        raise ValueError(f"checkpoint holds state {unknown} that {strategy.__class__.__name__} "
                         "does not have: was it written by another strategy?")
    for name, arrays in state.items():
        if name in LIST_STATE:
            setattr(strategy, name, [arrays[key] for key in sorted(arrays, key=int)])
        else:
            setattr(strategy, name, dict(arrays))


def aggregate_train_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The largest epsilon any site has reached (``weight_key``: Flower's, unused)."""
    metrics = [next(iter(r.metric_records.values())) for r in records]
    return MetricRecord({"max-epsilon": max(float(m["epsilon"]) for m in metrics)})


def aggregate_evaluate_metrics(records: list[RecordDict]) -> MetricRecord:
    """Each aggregated evaluation metric, example-weighted over the replies that carry it: an
    exact evaluation sends macro-F1 and a DP one does not, so Flower's aggregation, which needs
    every reply to carry the same metrics, cannot take a round where both answered.

    A reply weighs at most ``EXAMPLES_RATIO`` times the others' median count
    (``capped_claims``): one site claiming 1e12 test rows set the run's accuracy (found in
    review). Capped, not rejected: a DP evaluation's counts are noisy, and rejecting the
    largest honest site's reply would drop it from the round."""
    metrics = [r[METRICS_KEY] for r in records]
    weights = capped_claims({index: float(m["num-examples"]) for index, m in enumerate(metrics)})
    aggregated = MetricRecord()
    for name in AGGREGATED_EVALUATE_METRICS:
        carrying = [index for index, m in enumerate(metrics) if name in m]
        if carrying:
            aggregated[name] = (sum(float(metrics[i][name]) * weights[i] for i in carrying)
                                / sum(weights[i] for i in carrying))
    return aggregated


def _checked(
    sent: Message,
    reply: Message | None,
    reply_timeout: float,
    check: Callable[[Message], None],
) -> Message:
    """The reply to ``sent`` if it passes ``check``, else an error from the node asked."""
    if reply is None:
        error = Error(code=NO_REPLY, reason=f"no reply within {reply_timeout:g}s")
    elif reply.has_error():
        error = reply.error
    elif reply.metadata.src_node_id != sent.metadata.dst_node_id:
        error = Error(code=REJECTED, reason=f"reply came from node {reply.metadata.src_node_id}, "
                      f"not from node {sent.metadata.dst_node_id}")
    else:
        try:
            check(reply)
            return reply
        except (InvalidReply, ArithmeticError, LookupError, TypeError, ValueError) as err:
            # a reply no check foresaw is still one site's reply: rejected, never the run's end
            error = Error(code=REJECTED, reason=f"rejected by the server: {err}")
    return Message(error, reply_to=sent)


def _cohort_checked(asked: list[Message], checked: list[Message]) -> list[Message]:
    """``checked`` (one reply per message ``asked``) with every accepted reply whose example
    count is out of proportion to the others' (``oversized_claims``) turned into a rejection."""
    claims = {index: float(reply.content[METRICS_KEY]["num-examples"])
              for index, reply in enumerate(checked) if not reply.has_error()}
    oversized = oversized_claims(claims)
    return [
        Message(Error(code=REJECTED, reason=f"rejected by the server: {oversized[index]}"),
                reply_to=sent) if index in oversized else reply
        for index, (sent, reply) in enumerate(zip(asked, checked, strict=True))
    ]


def _lean(reply: Message) -> Message:
    """The reply with only what aggregation uses, so differing extra metrics cannot stop it."""
    metrics = reply.content[METRICS_KEY]
    reply.content = RecordDict(
        {
            ARRAYS_KEY: reply.content[ARRAYS_KEY],
            METRICS_KEY: MetricRecord({k: metrics[k] for k in AGGREGATED_TRAIN_METRICS}),
        }
    )
    return reply


def _numpy(arrays: ArrayRecord) -> dict[str, np.ndarray]:
    return {key: array.numpy() for key, array in arrays.items()}


def _with_dtypes(arrays: ArrayRecord, spec: ArraySpec) -> ArrayRecord:
    """The aggregate in the model's own dtypes (FedAdam's server step promotes to float64)."""
    return ArrayRecord(
        {key: Array(np.asarray(arrays[key].numpy(), dtype=spec[key][1])) for key in spec}
    )
