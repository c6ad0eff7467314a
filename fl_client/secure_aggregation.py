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
before quantizing it, which would corrupt the sum without anyone noticing. Nor does it train
for a round whose forwarded key shares or peers' keys Flower's mod would fail on only after
training (``key_shares_problem``): that round would be charged with nothing sent. A refusing
site drops out of the round like any other failed site.

Every mask comes from a cryptographic generator keyed with the whole secret
(``fl_protocol/secagg_masks.py``), not Flower's 32-bit-seeded Mersenne Twister, the site's
secrets are shared over a prime field (``fl_protocol/secret_sharing.py``), and the masked
values leave as 32-bit words (``fl_protocol/distributed_sum.compact``).

Under distributed DP the handler's reply holds the site's integers (its clipped gradients and
its noise share, ``distributed_dp.py``), which this mod wraps into the sum's range and sends at
weight ``WEIGHT`` so that SecAgg+ carries them exactly (``fl_protocol/distributed_sum.py``).
Before the keys are exchanged, and again before its share is masked, the site checks the
secure sum against what its noise share was planned for (``secure_sum_problem``): a sum over
exactly the announced cohort, that no fewer than ``cohort - tolerated-sites`` sites can unmask,
carried exactly. Otherwise it refuses the round.

SecAgg+ hides one site's update only while the server never holds both secrets of that site:
the seed of its self-mask (whose shares the other sites give for a site that sent its masked
vector) and its pairwise-mask key (whose shares they give for a site that dropped out). Flower's
mod gives whatever the server's lists ask for, so the site checks them first
(``share_problem``, ``unmask_problem``): a threshold above half the sites sharing keys, so that
a server telling some sites one site survived and the others that it dropped cannot gather a
threshold of both; no more peers than the round set up, each named once; a site either survived
or dropped, never both; only peers it shared keys with; itself among the survivors. Since the
survivors must reach the threshold, at most ``cohort - threshold`` (under distributed DP, at
most ``tolerated-sites``) can be named as dropped. Those checks hold each site's lists on their
own; a server telling each site a different story could still rebuild one site's pairwise masks
from its *partners'* keys, if it had made it mask with few of them, so at the collect stage the
site masks with every peer it shared keys with or not at all (``partners_problem``). And no
threshold below ``MIN_SECURE_SITES``. Otherwise it declines with ``Reason.UNMASK_REFUSED``,
giving no share and training nothing. What these checks cannot stop, without a consistency
round (signed survivor lists, which Flower's SecAgg+ lacks): a server telling the sites
different stories can still unmask a partial sum of a few sites, or one site using more real
sites than that site shared keys with (docs/PRIVACY.md). What no site can check alone: that the
public keys it is sent are the other sites' and not the server's own (docs/PRIVACY.md).
"""

import math
from collections.abc import Mapping
from logging import WARNING

import numpy as np
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import InvalidToken
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitRes,
    MessageType,
    Status,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
)
from flwr.common.logger import log
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    decrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_separate
from flwr.compat.common.recorddict_compat import fitres_to_recorddict
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from fl_client.egress_guard import EgressViolation, check_reply
from fl_client.site_policy import PolicyRefusal, RoundRequest, round_request
from fl_protocol.distributed_sum import MODULUS, WEIGHT, compact, hide_wraps, sum_range, wrap
from fl_protocol.secagg_masks import masks_bound_to, plan_binding, use_cryptographic_masks
from fl_protocol.secret_sharing import use_prime_field_sharing
from fl_protocol.wire import (
    ARRAYS_KEY,
    MAX_RUN_NAME,
    MAX_SECURE_SITES,
    METRICS_KEY,
    MIN_SECURE_SITES,
    Reason,
    error_reply,
    loggable,
)


class _Refused(Exception):
    """The handler's reply may not be masked and sent; ``reason`` goes to the server instead."""

    def __init__(self, reason: Reason) -> None:
        super().__init__(reason.value)
        self.reason = reason


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Answer a SecAgg+ stage; pass any other message straight to ``call_next``."""
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, context)
    if msg.metadata.message_type != MessageType.TRAIN:
        # Flower's mod masks only a message typed exactly "train" and passes any other on
        # (found in review: a stage sent as "train.default" was trained and charged unmasked)
        return error_reply(msg, Reason.MODEL_REFUSED)
    use_cryptographic_masks()
    use_prime_field_sharing()
    stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE))
    try:
        if stage == Stage.SETUP:
            _check_secure_sum(msg, context, msg.content.config_records[RECORD_KEY_CONFIGS])
        if stage in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS, Stage.UNMASK):
            _check_shares_asked(stage, msg, context)
        with masks_bound_to(_plan(msg, context, stage)):
            reply = secaggplus_mod(msg, context, lambda m, c: _update_to_mask(m, c, call_next))
    except _Refused as refused:
        return error_reply(msg, refused.reason)
    protocol = None if reply.has_error() else reply.content.config_records.get(RECORD_KEY_CONFIGS)
    if stage == Stage.COLLECT_MASKED_VECTORS and protocol is not None:
        masked = [bytes_to_ndarray(b) for b in protocol[Key.MASKED_PARAMETERS]]
        if str(context.run_config["privacy-model"]) == "distributed":
            target = int(context.state.config_records[RECORD_KEY_STATE]["target_range"])
            masked = masked[:1] + hide_wraps(masked[1:], target)
        protocol[Key.MASKED_PARAMETERS] = [ndarray_to_bytes(a) for a in compact(masked)]
    return reply


def secure_sum_problem(settings: Mapping[str, object], request: RoundRequest | None) -> str | None:
    """Why the secure sum set up with ``settings`` (SecAgg+'s setup values) may not carry this
    site's update, or None. Every secure round: a modulus whose values fit the 32-bit words the
    site sends, a finite weight of at least 1, a positive finite clipping range and a
    quantization range from 1 to the modulus, which Flower does not check (found in review: a
    negative weight negated the update, an infinite one zeroed it, and a zero or tiny one failed
    after the round was charged).
    Distributed DP (``request`` given): a sum over exactly the cohort the noise share is
    planned for, that fewer than ``cohort - tolerated-sites`` sites cannot unmask, whose
    threshold is above half of ``cohort + tolerated-sites`` (a colluding site gives up both its
    shares of a site's two secrets, an honest one only the one its survivor list asks for, so
    k colluders rebuild both when ``2 x threshold <= cohort + k``; found in review), and that
    carries the site's integers exactly."""
    if int(settings[Key.MOD_RANGE]) != MODULUS:
        return f"modulus {settings[Key.MOD_RANGE]}, expected {MODULUS}"
    weight, clipping = settings.get(Key.MAX_WEIGHT), settings.get(Key.CLIPPING_RANGE)
    levels = settings.get(Key.TARGET_RANGE)
    if not (_positive_number(weight) and weight >= 1 and _positive_number(clipping)
            and type(levels) is int and 1 <= levels <= MODULUS):
        return (f"quantization (range {levels}, clipping {clipping}, weight {weight}): a "
                f"range from 1 to {MODULUS}, a positive finite clipping range and a finite "
                "weight of at least 1")
    if request is None:
        return None
    cohort, needed = request.cohort_size, request.cohort_size - request.tolerated_sites
    if int(settings[Key.SAMPLE_NUMBER]) != cohort or int(settings[Key.SHARE_NUMBER]) != cohort:
        return (f"a secure sum over {settings[Key.SAMPLE_NUMBER]} sites sharing keys with "
                f"{settings[Key.SHARE_NUMBER]}; the noise share is planned for all {cohort}")
    if int(settings[Key.THRESHOLD]) < needed:
        return (f"threshold {settings[Key.THRESHOLD]}: fewer than {needed} sites (cohort "
                f"{cohort} - tolerated {request.tolerated_sites}) could unmask the sum")
    if 2 * int(settings[Key.THRESHOLD]) <= cohort + request.tolerated_sites:
        return (f"threshold {settings[Key.THRESHOLD]} of {cohort}: {request.tolerated_sites} "
                "colluding sites (the tolerated number), each handing over both its shares of "
                "one site's secrets while the honest sites are shown differing survivor lists, "
                "could rebuild both and unmask that site")
    target = sum_range(cohort)
    if (int(settings[Key.TARGET_RANGE]) != target
            or float(settings[Key.CLIPPING_RANGE]) != target / 2
            or float(settings[Key.MAX_WEIGHT]) != WEIGHT):
        return (f"quantization (range {settings[Key.TARGET_RANGE]}, clipping "
                f"{settings[Key.CLIPPING_RANGE]}, weight {settings[Key.MAX_WEIGHT]}) would not "
                f"carry integers exactly; expected {target}, {target / 2:g}, {WEIGHT:g}")
    return None


def _positive_number(value: object) -> bool:
    return type(value) in (int, float) and 0 < value < math.inf


def _distributed_request(msg: Message, context: Context) -> RoundRequest | None:
    """The round's asks under distributed DP (None under local DP), or ``_Refused``."""
    if str(context.run_config["privacy-model"]) != "distributed":
        return None
    try:
        return round_request(msg, context)
    except PolicyRefusal as refusal:
        log(WARNING, "secure aggregation: %s", loggable(str(refusal)))
        raise _Refused(refusal.reason) from refusal


def _plan(msg: Message, context: Context, stage: str) -> bytes:
    """What the masks of a distributed-DP round are bound to (``plan_binding``): the plan this
    site reads from the message and run config that it plans its noise share by, so that sites
    told different plans produce a sum that is noise. Only the collect stage draws masks."""
    request = _distributed_request(msg, context) if stage == Stage.COLLECT_MASKED_VECTORS \
        else None
    if request is None:
        return b""
    return plan_binding(request.run_name, request.server_round, request.num_rounds,
                        request.cohort_size, request.target_epsilon, request.delta,
                        request.tolerated_sites)


def _check_secure_sum(msg: Message, context: Context, settings: Mapping[str, object]) -> None:
    """Refuse (``_Refused``) a secure sum this site's update may not go into."""
    request = _distributed_request(msg, context)
    problem = secure_sum_problem(settings, request)
    if problem:
        log(WARNING, "secure aggregation refused: %s", loggable(problem))
        raise _Refused(Reason.OUT_OF_RANGE if request is None else Reason.MODEL_REFUSED)


def threshold_problem(threshold: int, share_num: int, sample_num: int) -> str | None:
    """Why a round whose secrets are split ``share_num`` ways, ``threshold`` shares rebuilding
    one, among ``sample_num`` sites, may not be joined, or None: at most half, and a server
    could ask half the sites for one site's self-mask shares and the other half for its key
    shares, and rebuild both; below ``MIN_SECURE_SITES``, and a sum of two sites could be
    unmasked, from which each learns the other's update; over ``MAX_SECURE_SITES`` sites, whose
    shares would cost this site hours of CPU."""
    if max(share_num, sample_num) > MAX_SECURE_SITES:
        return (f"{max(share_num, sample_num)} sites sharing keys, more than the "
                f"{MAX_SECURE_SITES} a site joins")
    if 2 * threshold <= share_num:
        return f"threshold {threshold} of {share_num}: at most half the sites sharing keys"
    if threshold < MIN_SECURE_SITES:
        return (f"threshold {threshold}: a sum of fewer than {MIN_SECURE_SITES} sites could be "
                f"unmasked")
    return None


def partners_problem(sources: list[int], peers: list[int], own_id: int) -> str | None:
    """Why this site may not mask its update with the pairwise masks of ``sources`` (the peers
    whose key shares the collect stage forwards it), or None: anything but every peer it shared
    keys with, each once.

    A site masked with few partners can be unmasked by a server that tells each other site a
    different, self-consistent story at the unmask stage: that the site survived (shares of its
    self-mask seed) and that each partner dropped (shares of the partner's pairwise-mask key,
    which with the site's public key rebuild their mask). Masking with every peer makes that
    need more key shares than the sites this site shared keys with can give (each names at most
    its threshold - 1 peers as dropped, and its threshold is above half its peers), whatever
    thresholds the server told each of them. It costs an honest round nothing: a peer missing
    here dropped out while keys were shared, and Flower 1.41 completes no such round (the
    unmask stage then asks for shares no site holds)."""
    if len(set(sources)) < len(sources):
        return "a peer's key shares forwarded twice"
    others = set(peers) - {own_id}
    if set(sources) != others:
        return (f"masking with {len(sources)} of its {len(others)} peers: only every peer it "
                f"shared keys with hides its update")
    return None


def share_problem(peers: list[str], own_id: int, share_num: int) -> str | None:
    """Why this site may not share its secrets with ``peers`` (the node ids whose public keys
    the share-keys stage sends), or None: more peers than the round set up, a node id written
    two ways (Flower reads ``"07"`` and ``"7"`` as one), or a list without this site."""
    if any(not peer.isdigit() or str(int(peer)) != peer for peer in peers):
        return "a peer id that is not a plain node id"
    if len(peers) > share_num:
        return f"{len(peers)} peers for a round set up to share with {share_num}"
    if str(own_id) not in peers:
        return "a peer list without this site"
    return None


def unmask_problem(active: list[int], dead: list[int], peers: list[int],
                   own_id: int) -> str | None:
    """Why this site may not give the shares the unmask stage asks for, or None: a site named
    twice, named both as survived (``active``: the share of its self-mask seed) and as dropped
    (``dead``: the share of its pairwise-mask key), which together unmask its update; a site it
    shared no keys with; or this site, which sent its masked vector, missing from the
    survivors."""
    if len(set(active)) < len(active) or len(set(dead)) < len(dead):
        return "a site named twice in one list"
    both = set(active) & set(dead)
    if both:
        return f"{len(both)} site(s) named as both survived and dropped"
    if not set(active) | set(dead) <= set(peers):
        return "a site this site shared no keys with"
    if own_id not in active:
        return "this site, which sent its masked vector, not among the survivors"
    return None


def key_shares_problem(state: Mapping[str, object], sources: list[int],
                       ciphertexts: list[object]) -> str | None:
    """Why the collect stage's key shares (each peer's shares of its secrets, encrypted to this
    site) could not be taken, or None. Flower's mod reads them, and the peers' public keys it
    masks with, only after the handler has trained and charged the round, so a list of the
    wrong length, a share that does not decrypt or names another pair of sites, or a key that
    is none cost a release that never left (found in review). Checked here, before training,
    exactly as Flower's mod will read them."""
    if len(ciphertexts) != len(sources):
        return "key shares forwarded without their sources, or sources without shares"
    round_state = SecAggPlusState(**state)
    if len(ciphertexts) + 1 < round_state.threshold:
        return (f"{len(ciphertexts)} peers' key shares, where threshold "
                f"{round_state.threshold} needs {round_state.threshold - 1}")
    for source, ciphertext in zip(sources, ciphertexts, strict=True):
        try:
            sender, receiver, _, _ = share_keys_plaintext_separate(
                decrypt(round_state.ss2_dict[source], ciphertext))
            generate_shared_key(bytes_to_private_key(round_state.sk1),
                                bytes_to_public_key(round_state.public_keys_dict[source][0]))
        except (InvalidToken, KeyError, TypeError, UnsupportedAlgorithm, ValueError):
            return f"the key share of peer {source}, or its public key, cannot be read"
        if (sender, receiver) != (source, round_state.nid):
            return f"the key share of peer {source} is one from {sender} to {receiver}"
    return None


def _check_shares_asked(stage: str, msg: Message, context: Context) -> None:
    """Refuse (``_Refused``) a request of any stage that could reveal one site's update (module
    docstring), before Flower's mod answers it (at the collect stage: before training)."""
    state = context.state.config_records.get(RECORD_KEY_STATE)
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    if stage == Stage.SETUP:
        problem = threshold_problem(int(configs[Key.THRESHOLD]), int(configs[Key.SHARE_NUMBER]),
                                    int(configs[Key.SAMPLE_NUMBER]))
    elif state is None:
        problem = "no secure-aggregation round set up"
    elif stage == Stage.SHARE_KEYS:
        problem = share_problem([k for k in configs if k != Key.STAGE], int(state["nid"]),
                                int(state["share_num"]))
    elif stage == Stage.COLLECT_MASKED_VECTORS:
        sources = list(configs.get(Key.SOURCE_LIST, []))
        problem = (partners_problem(sources, list(state.get("public_keys_dict:K", [])),
                                    int(state["nid"]))
                   or key_shares_problem(state, sources,
                                         list(configs.get(Key.CIPHERTEXT_LIST, []))))
    else:
        problem = unmask_problem(list(configs.get(Key.ACTIVE_NODE_ID_LIST, [])),
                                 list(configs.get(Key.DEAD_NODE_ID_LIST, [])),
                                 list(state.get("public_keys_dict:K", [])), int(state["nid"]))
    if problem:
        log(WARNING, "secure aggregation: %s refused: %s", loggable(stage, MAX_RUN_NAME), problem)
        raise _Refused(Reason.UNMASK_REFUSED)


def _update_to_mask(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Train as in a plain round; return the update in the form ``secaggplus_mod`` masks."""
    settings = context.state.config_records[RECORD_KEY_STATE]  # as set up in this round
    _check_secure_sum(msg, context, {
        Key.MOD_RANGE: settings["mod_range"], Key.SAMPLE_NUMBER: settings["sample_num"],
        Key.SHARE_NUMBER: settings["share_num"], Key.THRESHOLD: settings["threshold"],
        Key.TARGET_RANGE: settings["target_range"], Key.CLIPPING_RANGE: settings["clipping_range"],
        Key.MAX_WEIGHT: settings["max_weight"],
    })
    distributed = str(context.run_config["privacy-model"]) == "distributed"
    reply = call_next(msg, context)
    if reply.has_error():
        reason = reply.error.reason
        raise _Refused(Reason(reason) if reason in set(Reason) else Reason.INTERNAL)
    try:
        check_reply(msg, reply, str(context.run_config["model"]), integers=distributed)
    except EgressViolation as err:
        log(WARNING, "egress guard blocked an update before masking: %s", loggable(str(err)))
        raise _Refused(Reason.EGRESS_BLOCKED) from err
    names = list(msg.content[ARRAYS_KEY].keys())  # the server's order, which it unmasks in
    arrays = [reply.content[ARRAYS_KEY][name].numpy() for name in names]
    num_examples = int(reply.content[METRICS_KEY]["num-examples"])
    if distributed:
        arrays = [wrap(a, int(settings["target_range"])) for a in arrays]
        num_examples = int(WEIGHT)
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
