"""Secure aggregation (``secure-aggregation = true``): the server learns the example-weighted mean
of a round's site updates, never one site's update.

Flower 1.41 implements SecAgg+ only for its legacy strategy API: ``SecAggPlusWorkflow`` runs a
round's four stages (setup, share keys, collect masked vectors, unmask) against a
``LegacyContext`` holding a legacy ``Strategy``. fedintent keeps its own round loop: each
training round runs one ``SecAggPlusWorkflow`` over the sites fedintent's strategy asked, with a
stand-in legacy strategy that only selects those sites and keeps the unmasked mean, and hands
the mean to fedintent's strategy (FedAvg takes it as the new model, FedAdam takes its server step
from it). Evaluation, the run record, checkpoints and the audit log work as in a plain round.
The site's side is ``fl_client/secure_aggregation.py``.

What the server then cannot do is check or record anything about one site's update: the
strategies that need every update (trimmed mean, median) and a fixed per-update norm bound
(``max-update-norm`` > 0) are refused, the derived one (0) does not apply, and ``metrics.json``
holds no per-site update norm. Each site's metrics are checked as in a plain round: its privacy
claims, and its ``num-examples`` (its weight in the masked sum, ``num-examples / MAX_WEIGHT``,
and under distributed DP the step's divisor) against the other sites'; one rejected site
drops the round's sum (``strategy.CheckedRounds.aggregate_secure_train``).

Masks come from a cryptographic generator (``fl_protocol/secagg_masks.py``), on this side too:
the server regenerates the masks it removes; and it rebuilds the sites' secrets from their
shares over the same prime field the sites split them in (``fl_protocol/secret_sharing.py``).
Sites send masked values as 32-bit words, which the server widens back to the int64 Flower
sums (``fl_protocol/distributed_sum.py``).

Under ``privacy-model = distributed`` (``fl_client/distributed_dp.py``) each site sends integers:
its clipped gradient sum at the global model plus its share of the noise. The sum is set up to
carry them exactly (``distributed_sum``) over the whole cohort, with a threshold of at least
``cohort - tolerated-sites``: fewer surviving sites cannot unmask anything, so this server
releases no sum with less than the planned noise (a server telling the sites different survivor
stories could; docs/PRIVACY.md, "What a lying server can and cannot get"). The server decodes
the sum and takes the gradient step itself (``distributed_step``): the new model is the global
model minus ``learning-rate`` times the summed gradient over the summed sites' example count,
the same step FedAvg of one full-batch DP-SGD step per site would take, with one noise instead
of one per site.
"""

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    bytes_to_ndarray,
    ndarray_to_bytes,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server import LegacyContext
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.strategy import Strategy as LegacyStrategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from fl_protocol.distributed_sum import (
    MODULUS,
    WEIGHT,
    decode,
    expand,
    integer_norm,
    sum_range,
)
from fl_protocol.secagg_masks import masks_bound_to, plan_binding, use_cryptographic_masks
from fl_protocol.secret_sharing import use_prime_field_sharing
from fl_protocol.wire import (
    ARRAYS_KEY,
    CONFIG_KEY,
    MAX_SECURE_SITES,
    METRICS_KEY,
    MIN_SECURE_SITES,
    NO_REPLY,
    REJECTED,
)
from fl_server.update_validation import ArraySpec

SECURE_STRATEGIES = ("fedavg", "fedadam")
"""The strategies SecAgg+ can serve: those that need only the sum of the updates."""
CLIPPING_RANGE = 64.0
MAX_WEIGHT = 10_000.0
"""A site sends each parameter times its weight, ``num-examples / MAX_WEIGHT``, clipped to
``CLIPPING_RANGE``; a site whose largest weighted parameter exceeds it refuses instead (it would
be clipped): 10 000 examples with parameters up to 64, or 64 000 with parameters up to 10. The
quantization error per coordinate grows with CLIPPING_RANGE x MAX_WEIGHT (about 0.3 / the mean
number of examples per site); below MAX_WEIGHT examples, Flower does not warn a site of a
possible overflow."""
QUANTIZATION_RANGE = 2**22
"""Flower's default: values are quantized to 22 bits and masked modulo ``MODULUS`` (2**32), so
the sum holds at most 2**10 - 1 sites and 2**10 x MAX_WEIGHT training examples in all; beyond,
it wraps."""
MAX_SITES = MODULUS // QUANTIZATION_RANGE - 1


def incompatibility(cfg: dict) -> str | None:
    """Why this run configuration cannot run with secure aggregation; None when it can."""
    tolerated = cfg["tolerated-sites"]
    if isinstance(tolerated, bool) or int(tolerated) != tolerated or int(tolerated) < 0:
        return f"tolerated-sites must be a whole number >= 0, got {tolerated!r}"
    if cfg["privacy-model"] == "distributed":
        if not cfg["secure-aggregation"]:
            return ("privacy-model distributed needs secure-aggregation = true: each site adds "
                    "only a share of the noise, so the server may see only the sum")
        if int(cfg["min-sites"]) - int(tolerated) < 2:
            return (f"privacy-model distributed: min-sites ({cfg['min-sites']}) must exceed "
                    f"tolerated-sites ({tolerated}) by at least 2, so that the sites that add "
                    f"the noise are more than one")
        if not float(cfg["target-epsilon"]) < math.inf:
            return "privacy-model distributed needs a finite target-epsilon"
    if not cfg["secure-aggregation"]:
        return None
    if cfg["strategy"] not in SECURE_STRATEGIES:
        return (f"secure-aggregation: strategy {cfg['strategy']!r} needs every site's update, "
                f"which the server never sees with secure aggregation; use "
                f"{' or '.join(SECURE_STRATEGIES)}")
    if 0 < float(cfg["max-update-norm"]) < math.inf:
        return ("secure-aggregation: max-update-norm bounds each site's update, which the "
                "server never sees with secure aggregation; set it to 0 or inf")
    if int(cfg["min-sites"]) > MAX_SECURE_SITES:
        return (f"secure-aggregation: a site joins a secure sum of at most {MAX_SECURE_SITES} "
                f"sites (their key shares cost each site CPU with the square of the count); got "
                f"min-sites {cfg['min-sites']}")
    if int(cfg["min-sites"]) < MIN_SECURE_SITES:
        return (f"secure-aggregation needs at least {MIN_SECURE_SITES} sites (min-sites >= "
                f"{MIN_SECURE_SITES}): with two, each site learns the other's update from the "
                f"sum; got min-sites {cfg['min-sites']}")
    return None


def _plan(context: Context, sent: Message) -> bytes:
    """The plan the round's masks are bound to, as every site was sent it (the sites bind
    theirs to what they read: ``fl_client.secure_aggregation``)."""
    config, cfg = sent.content[CONFIG_KEY], context.run_config
    return plan_binding(str(config["run-name"]), int(config["server-round"]),
                        int(config["num-rounds"]), int(config["cohort-size"]),
                        float(cfg["target-epsilon"]), float(cfg["delta"]),
                        int(cfg["tolerated-sites"]))


def reconstruction_threshold(num_sites: int) -> int:
    """Sites whose key shares unmask a round: two thirds of those asked, and at least
    ``MIN_SECURE_SITES``. More than ``num_sites`` minus this many dropping out stops the round.
    A server that shows the honest sites differing survivor lists needs ``2 x threshold -
    num_sites`` colluding sites to unmask one site (each colluder gives up both its shares of
    that site's two secrets, an honest site one of them): a third of the sites."""
    return max(MIN_SECURE_SITES, math.ceil(2 * num_sites / 3))


def distributed_threshold(num_sites: int, tolerated_sites: int) -> int:
    """The threshold of a distributed-DP round: at least ``num_sites - tolerated_sites`` (the
    sum must hold the noise shares the sites count on), and above half of ``num_sites +
    tolerated_sites``, so that the ``tolerated_sites`` colluders the guarantee survives cannot
    unmask one site however the survivor lists are told (``reconstruction_threshold``). Each
    site refuses a lower one (``fl_client.secure_aggregation.secure_sum_problem``)."""
    return max(reconstruction_threshold(num_sites), num_sites - tolerated_sites,
               (num_sites + tolerated_sites) // 2 + 1)


def distributed_step(
    global_model: dict[str, np.ndarray],
    integer_sum: dict[str, np.ndarray],
    examples: int,
    clip_norm: float,
    learning_rate: float,
) -> dict[str, np.ndarray]:
    """The new model from the decoded secure sum of a distributed-DP round: the sites' summed
    integers back in gradient units (``integer_norm / clip_norm`` per unit), averaged over the
    summed sites' examples, one step of ``learning_rate``."""
    dim = sum(value.size for value in global_model.values())
    scale = integer_norm(dim) / clip_norm
    return {
        name: global_model[name].astype(np.float64)
        - learning_rate * integer_sum[name].astype(np.float64) / scale / max(examples, 1)
        for name in global_model
    }


@dataclass
class SecureRound:
    replies: list[Message]
    """One per site asked: its metrics (it trained and its update is in the sum) or its error."""
    aggregate: ArrayRecord | None
    """The example-weighted mean of the summed updates; None when the protocol stopped."""
    summary: dict
    """Sites asked and summed, the reconstruction threshold, why the protocol stopped."""


def secure_train_round(
    grid: Grid,
    context: Context,
    server_round: int,
    asked: list[Message],
    spec: ArraySpec,
    timeout: float,
) -> SecureRound:
    """Train on the sites ``asked`` (as fedintent's strategy configured them) through SecAgg+."""
    by_node = {msg.metadata.dst_node_id: msg for msg in asked}
    most = min(MAX_SITES, MAX_SECURE_SITES)  # the sum's range; what a site joins
    if len(by_node) > most:  # found in review: past the sites' own cap each refused at setup
        raise RuntimeError(f"secure aggregation sums at most {most} sites in a round; "
                           f"{len(by_node)} are connected")
    distributed = context.run_config["privacy-model"] == "distributed"
    threshold = reconstruction_threshold(len(by_node))
    quantization = dict(max_weight=MAX_WEIGHT, clipping_range=CLIPPING_RANGE,
                        quantization_range=QUANTIZATION_RANGE)
    if distributed:
        threshold = distributed_threshold(len(by_node), int(context.run_config["tolerated-sites"]))
        target = sum_range(len(by_node))
        quantization = dict(max_weight=WEIGHT, clipping_range=target / 2,
                            quantization_range=target)
        for msg in by_node.values():
            msg.content[CONFIG_KEY]["cohort-size"] = len(by_node)
    relay = _Relay(grid, by_node)
    collector = _Collector([GridClientProxy(node, grid, context.run_id) for node in by_node])
    legacy = LegacyContext(
        Context(context.run_id, context.node_id, {}, RecordDict(), dict(context.run_config)),
        strategy=collector,
    )
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: server_round}
    )
    legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    use_cryptographic_masks()
    use_prime_field_sharing()
    with masks_bound_to(_plan(context, next(iter(by_node.values()))) if distributed else b""):
        SecAggPlusWorkflow(
            num_shares=1.0,  # every site holds a share of every other site's keys
            reconstruction_threshold=threshold / len(by_node),
            modulus_range=MODULUS,
            timeout=timeout,
            **quantization,
        )(relay, legacy)

    aggregate = None
    if collector.mean is not None:
        sent = next(iter(by_node.values()))
        names = list(sent.content[ARRAYS_KEY].keys())
        mean = dict(zip(names, parameters_to_ndarrays(collector.mean), strict=True))
        if distributed:
            summed = [relay.trained[node].content[METRICS_KEY] for node in relay.trained]
            mean = distributed_step(
                {name: sent.content[ARRAYS_KEY][name].numpy() for name in names},
                {name: decode(values, len(summed), quantization["quantization_range"])
                 for name, values in mean.items()},
                examples=sum(int(m["num-examples"]) for m in summed),
                clip_norm=float(context.run_config["clip-norm"]),
                learning_rate=float(context.run_config["learning-rate"]),
            )
        aggregate = ArrayRecord({
            name: Array(np.asarray(values, dtype=spec[name][1])) for name, values in mean.items()
        })
    halted = None if aggregate is not None else relay.halted(threshold)
    replies = [relay.outcome(node, sent, halted) for node, sent in by_node.items()]
    summary = {
        "sites_asked": len(by_node),
        "reconstruction_threshold": threshold,
        "sites_summed": len(relay.trained) if aggregate is not None else 0,
        "halted": halted,
    }
    return SecureRound(replies, aggregate, summary)


class _Relay:
    """The grid as ``SecAggPlusWorkflow`` uses it, between the workflow and the sites.

    Every message the workflow sends a site also carries the site config fedintent's strategy
    gave that site (labels, run name, round, and in a simulation the data folder), and the
    masked-update stage carries the global model as ``arrays``, as a plain train message does;
    the workflow's own legacy copy of them goes. Every reply is kept, so each site's outcome
    can be recorded.
    """

    def __init__(self, grid: Grid, asked: dict[int, Message]) -> None:
        self.grid = grid
        self.asked = asked
        self.trained: dict[int, Message] = {}
        self.errors: dict[int, Error] = {}
        self.answered: dict[str, int] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        stage = ""
        for msg in messages:
            sent = self.asked[msg.metadata.dst_node_id].content
            protocol = msg.content[RECORD_KEY_CONFIGS]
            stage = str(protocol[Key.STAGE])
            content = {RECORD_KEY_CONFIGS: protocol, CONFIG_KEY: sent[CONFIG_KEY]}
            if stage == Stage.COLLECT_MASKED_VECTORS:
                content[ARRAYS_KEY] = sent[ARRAYS_KEY]
            msg.content = RecordDict(content)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if stage == Stage.COLLECT_MASKED_VECTORS:
            by_message = {msg.metadata.message_id: msg for msg in messages}
            replies = [self._expanded(reply, by_message.get(reply.metadata.reply_to_message_id))
                       for reply in replies]
        by_id = {reply.metadata.reply_to_message_id: reply for reply in replies}
        for msg in messages:
            node, reply = msg.metadata.dst_node_id, by_id.get(msg.metadata.message_id)
            if reply is None:
                self.errors[node] = Error(NO_REPLY, f"no reply within {timeout:g}s "
                                                    f"(secure aggregation stage {stage})")
            elif reply.has_error():
                self.errors[node] = reply.error
            elif stage == Stage.COLLECT_MASKED_VECTORS:
                self.trained[node] = reply
        self.answered[stage] = sum(1 for reply in replies if not reply.has_error())
        return replies

    def _expanded(self, reply: Message, msg: Message | None) -> Message:
        """A masked-vector reply with its 32-bit words as the int64 arrays Flower sums, or, for
        vectors that are unreadable or not the model's shapes, or an example count that is not
        a positive number, a rejection: the workflow then unmasks the sum without the site, as
        for one that dropped out (found in review: such a reply stopped the whole run)."""
        if reply.has_error() or msg is None:
            return reply
        try:
            protocol = reply.content[RECORD_KEY_CONFIGS]
            masked = [bytes_to_ndarray(b) for b in protocol[Key.MASKED_PARAMETERS]]
            shapes = [tuple(array.shape) for array in masked]
            sent = self.asked[msg.metadata.dst_node_id].content[ARRAYS_KEY]
            model = [tuple(array.shape) for array in sent.values()]
            if shapes != [(1,), *model]:  # SecAgg+'s masked weight, then the model's arrays
                raise ValueError(f"masked vectors of shapes {shapes}, the model's are {model}")
            examples = reply.content[METRICS_KEY]["num-examples"]
            if isinstance(examples, bool) or not (isinstance(examples, int | float)
                                                  and math.isfinite(examples) and examples > 0):
                raise ValueError(f"num-examples {examples!r} is not a positive number")
            protocol[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in expand(masked)]
        except (ValueError, TypeError, KeyError) as err:
            return Message(Error(REJECTED, f"rejected by the server: {err}"), reply_to=msg)
        return reply

    def halted(self, threshold: int) -> str:
        """Why the workflow stopped without a sum."""
        short = [stage for stage, count in self.answered.items() if count < threshold]
        if short:
            return (f"only {self.answered[short[0]]} sites answered secure aggregation stage "
                    f"{short[0]}; {threshold} are needed to unmask the sum")
        return "secure aggregation stopped without a sum (see the server log)"

    def outcome(self, node: int, sent: Message, halted: str | None) -> Message:
        """The site's reply as the run record takes it: its metrics, or why it has none."""
        if node in self.trained:
            metrics = self.trained[node].content[METRICS_KEY]
            return Message(RecordDict({METRICS_KEY: metrics}), reply_to=sent)
        error = self.errors.get(node) or Error(
            NO_REPLY, f"did not train: {halted or 'secure aggregation went on without it'}"
        )
        return Message(error, reply_to=sent)


class _Collector(LegacyStrategy):
    """The legacy strategy ``SecAggPlusWorkflow`` needs: it selects the sites fedintent's
    strategy asked and keeps the unmasked mean; fedintent's strategy does the rest."""

    def __init__(self, proxies: list[ClientProxy]) -> None:
        self.proxies = proxies
        self.mean: Parameters | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        # the relay replaces these with fedintent's own train message content
        return [(proxy, FitIns(Parameters([], ""), {})) for proxy in self.proxies]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[Any],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        # SecAggPlusWorkflow has set every result's parameters to the unmasked weighted mean
        if results:
            self.mean = results[0][1].parameters
        return self.mean, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list:
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list, failures: list
    ) -> tuple[float | None, dict[str, Scalar]]:
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        return None
