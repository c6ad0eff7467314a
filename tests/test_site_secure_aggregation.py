"""The site's side of SecAgg+, in-process: what the site hands Flower's ``secaggplus_mod`` to
mask is the guarded plaintext update in the server's order, and anything else (a failure, an
update the egress guard would block, one SecAgg+ would clip) is refused with a fixed reason.

Flower's own ``secaggplus_mod`` (the key exchange and masking) is replaced by a pass-through
here, so these tests see exactly what it would be given; tests/test_secure_aggregation.py runs
the real protocol end to end.
"""

import importlib

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
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
from flwr.common import bytes_to_ndarray, parameters_to_ndarrays
from flwr.common.secure_aggregation.crypto.symmetric_encryption import (
    encrypt,
    generate_shared_key,
)
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.common.secure_aggregation.secaggplus_utils import share_keys_plaintext_concat
from flwr.compat.common.recorddict_compat import recorddict_to_fitres
from flwr.supercore.primitives.asymmetric import (
    generate_key_pairs,
    private_key_to_bytes,
    public_key_to_bytes,
)
from test_egress_guard import LABELS, head_state

import fl_client.secure_aggregation as secure_aggregation
from fl_client.egress_guard import check_secagg_reply
from fl_protocol.secagg_masks import mask_arrays
from fl_protocol.secret_sharing import split_secret
from fl_protocol.wire import REASON_CODES, RUN_CONFIG_DEFAULTS, Reason

pytestmark = pytest.mark.usefixtures("task_identity")

METRICS = {"num-examples": 40, "epsilon": 1.0, "delta": 1e-5}
RSA_PUBLIC_KEY = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key() \
    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def model_state(value: float = 0.0) -> dict[str, np.ndarray]:
    return {name: np.full(tuple(t.shape), value, np.float32) for name, t in head_state().items()}


def arrays(value: float = 0.0, order: tuple[str, ...] = ("weight", "bias")) -> ArrayRecord:
    state = model_state(value)
    return ArrayRecord({name: Array(state[name]) for name in order})


SITES = (7, 8, 9)
"""This site (7) and its two peers, each with the two key pairs SecAgg+ gives it."""
KEYS = {site: (generate_key_pairs(), generate_key_pairs()) for site in SITES}


def public(site: int, pair: int) -> bytes:
    return public_key_to_bytes(KEYS[site][pair][1])


def key_share(source: int, receiver: int = 7, named: tuple[int, int] | None = None) -> bytes:
    """What peer ``source`` sends ``receiver`` at the share-keys stage, as SecAgg+ encrypts it
    (``named``: the pair of sites its plaintext names, if not those two)."""
    shared = generate_shared_key(KEYS[source][1][0], KEYS[receiver][1][1])
    sender, to = named or (source, receiver)
    return encrypt(shared, share_keys_plaintext_concat(sender, to, b"seed", b"key"))


def round_state() -> ConfigRecord:
    """Site 7's SecAgg+ state after the share-keys stage, as Flower's mod stores it."""
    peers = [site for site in SITES if site != 7]
    return ConfigRecord({
        "clipping_range": 8.0, "max_weight": 1000.0, "target_range": 1 << 16,
        "mod_range": 2**32, "sample_num": 3, "share_num": 3, "threshold": 3, "nid": 7,
        "sk1": private_key_to_bytes(KEYS[7][0][0]),
        "public_keys_dict:K": list(SITES),
        "public_keys_dict:V": [public(site, pair) for site in SITES for pair in (0, 1)],
        "ss2_dict:K": peers,
        "ss2_dict:V": [generate_shared_key(KEYS[7][1][0], KEYS[peer][1][1]) for peer in peers],
    })


@pytest.fixture
def context() -> Context:
    return Context(run_id=1, node_id=7, node_config={},
                   state=RecordDict({RECORD_KEY_STATE: round_state()}),
                   run_config=dict(RUN_CONFIG_DEFAULTS))


@pytest.fixture(autouse=True)
def unmasked(monkeypatch):
    """Flower's masking replaced by a pass-through to the update it would mask."""
    monkeypatch.setattr(secure_aggregation, "secaggplus_mod",
                        lambda msg, context, call_next: call_next(msg, context))


def secagg_message() -> Message:
    config = ConfigRecord({"labels": LABELS, "server-round": 1, "run-name": "r"})
    content = RecordDict({
        "arrays": arrays(order=("bias", "weight")),  # the server's order
        "config": config,
        RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                                          Key.SOURCE_LIST: [8, 9],  # both peers' key shares
                                          Key.CIPHERTEXT_LIST: [key_share(8), key_share(9)]}),
    })
    return Message(content=content, dst_node_id=7, message_type="train")


def handler(content: RecordDict | Error):
    def train(msg: Message, context: Context) -> Message:
        return Message(content, reply_to=msg)
    return train


def trained(value: float = 0.01, **metrics) -> RecordDict:
    return RecordDict({"arrays": arrays(value), "metrics": MetricRecord(METRICS | metrics)})


def test_a_plain_message_passes_through_untouched(context):
    plain = Message(RecordDict({"config": ConfigRecord({"x": 1})}), dst_node_id=7,
                    message_type="train")
    reply = secure_aggregation.secure_aggregation_mod(plain, context, handler(trained()))
    assert set(reply.content.keys()) == {"arrays", "metrics"}


def test_the_guarded_update_is_handed_to_masking_in_the_servers_order(context):
    reply = secure_aggregation.secure_aggregation_mod(secagg_message(), context,
                                                      handler(trained(0.25)))
    assert not reply.has_error()
    fitres = recorddict_to_fitres(reply.content, keep_input=True)
    arrays = parameters_to_ndarrays(fitres.parameters)
    assert [a.shape for a in arrays] == [(3,), model_state()["weight"].shape]  # bias, weight
    assert all(np.all(a == np.float32(0.25)) for a in arrays)
    assert fitres.num_examples == 40
    assert dict(reply.content["metrics"]) == METRICS


def test_a_secure_aggregation_stage_not_typed_train_is_refused_untrained(context):
    """Found in review: Flower's SecAgg+ mod masks only a message typed exactly "train", and
    passes a "train.default" one on, so the site trained (and charged) an update for a secure
    sum that would have left unmasked but for the egress guard."""
    stage = secagg_message()
    retyped = Message(content=stage.content, dst_node_id=7, message_type="train.default")
    called = []
    reply = secure_aggregation.secure_aggregation_mod(
        retyped, context, lambda msg, ctx: called.append(msg) or Message(trained(), reply_to=msg))
    assert reply.error.reason == Reason.MODEL_REFUSED.value and not called


@pytest.mark.parametrize("reason", list(Reason))
def test_a_site_failure_keeps_its_fixed_reason(context, reason):
    error = Error(code=REASON_CODES[reason], reason=reason.value)
    reply = secure_aggregation.secure_aggregation_mod(secagg_message(), context, handler(error))
    assert (reply.error.code, reply.error.reason) == (REASON_CODES[reason], reason.value)


def test_a_failure_outside_the_vocabulary_leaves_as_internal(context):
    error = Error(code=1001, reason="could not parse 'CANARY-73 card 4111 1111'")
    reply = secure_aggregation.secure_aggregation_mod(secagg_message(), context, handler(error))
    assert reply.error.reason == Reason.INTERNAL.value


@pytest.mark.parametrize("bad", [
    RecordDict({"arrays": arrays(),
                "metrics": MetricRecord(METRICS | {"customer-phone": 13812345678})}),
    RecordDict({"arrays": arrays(np.nan), "metrics": MetricRecord(METRICS)}),
    RecordDict({"arrays": arrays(), "metrics": MetricRecord(METRICS),
                "config": ConfigRecord({"utterance": "my card is 4111 1111 1111 1111"})}),
], ids=["metric off the allow-list", "NaN parameter", "a config record"])
def test_what_the_egress_guard_would_block_is_never_masked(context, bad):
    reply = secure_aggregation.secure_aggregation_mod(secagg_message(), context, handler(bad))
    assert reply.error.reason == Reason.EGRESS_BLOCKED.value


def test_an_update_secure_aggregation_would_clip_is_refused(context):
    # weight 40 / 1000: a parameter of 100 becomes 4 (fits 8), one of 300 becomes 12 (clipped)
    fits = secure_aggregation.secure_aggregation_mod(secagg_message(), context,
                                                     handler(trained(100.0)))
    assert not fits.has_error()
    clipped = secure_aggregation.secure_aggregation_mod(secagg_message(), context,
                                                        handler(trained(300.0)))
    assert clipped.error.reason == Reason.OUT_OF_RANGE.value


@pytest.mark.parametrize("setting", [
    {"max_weight": -1.0}, {"max_weight": 0.0}, {"max_weight": 1e-300}, {"max_weight": float("inf")},
    {"max_weight": float("nan")}, {"max_weight": True}, {"clipping_range": 0.0},
    {"clipping_range": -8.0}, {"target_range": 0}, {"target_range": 2**32 + 1},
    {"target_range": 65536.0}, {"mod_range": 2**16},
], ids=lambda setting: f"{next(iter(setting))}={next(iter(setting.values()))}")
def test_a_quantization_that_would_distort_the_update_is_refused_untrained(context, setting):
    """Found in review: Flower checks none of these, so a negative weight negated the site's
    update, an infinite one zeroed it, and a zero or tiny one or a zero range failed after the
    round was trained and charged. Refused before the handler runs, at the collect stage (the
    values the setup kept), by the check the setup stage runs too (``secure_sum_problem``)."""
    context.state[RECORD_KEY_STATE] = ConfigRecord(
        dict(context.state[RECORD_KEY_STATE]) | setting)
    called = []
    reply = secure_aggregation.secure_aggregation_mod(
        secagg_message(), context,
        lambda msg, ctx: called.append(msg) or Message(trained(), reply_to=msg))
    assert reply.error.reason == Reason.OUT_OF_RANGE.value and not called
    kept = context.state[RECORD_KEY_STATE]
    settings = {Key.MOD_RANGE: kept["mod_range"], Key.TARGET_RANGE: kept["target_range"],
                Key.CLIPPING_RANGE: kept["clipping_range"], Key.MAX_WEIGHT: kept["max_weight"]}
    assert secure_aggregation.secure_sum_problem(settings, None)
    for levels, clipping in ((1, 0.5), (1 << 16, 8.0), (2**32, 64.0)):  # the edges allowed
        assert secure_aggregation.secure_sum_problem(
            {Key.MOD_RANGE: 2**32, Key.TARGET_RANGE: levels, Key.CLIPPING_RANGE: clipping,
             Key.MAX_WEIGHT: 1}, None) is None


def test_key_shares_forwarded_without_their_sources_are_refused_untrained(context):
    """Flower pairs the collect stage's key shares with their sources only after the handler
    has trained and charged the round: a list of the wrong length cost a release for
    nothing."""
    stage = secagg_message()
    stage.content[RECORD_KEY_CONFIGS][Key.CIPHERTEXT_LIST] = [b""]
    called = []
    reply = secure_aggregation.secure_aggregation_mod(
        stage, context, lambda msg, ctx: called.append(msg) or Message(trained(), reply_to=msg))
    assert reply.error.reason == Reason.UNMASK_REFUSED.value and not called


@pytest.mark.parametrize("shares", [
    lambda: [key_share(8), b"not a share"],
    lambda: [key_share(8), key_share(8)],
    lambda: [key_share(8), key_share(9, receiver=8)],
    lambda: [8, 9],
    lambda: [key_share(8), key_share(9, named=(8, 7))],
    lambda: [key_share(8), key_share(9, named=(9, 8))],
], ids=["a share that does not decrypt", "peer 8's share given as peer 9's",
        "a share for another site", "numbers", "peer 9's share naming peer 8 its sender",
        "peer 9's share naming another receiver"])
def test_key_shares_flower_would_fail_on_after_training_are_refused_untrained(context, shares):
    """Found in review: Flower's mod decrypts the peers' key shares only after the handler has
    trained and charged the round, so a share it cannot take cost a release that never left."""
    stage = secagg_message()
    stage.content[RECORD_KEY_CONFIGS][Key.CIPHERTEXT_LIST] = shares()
    called = []
    reply = secure_aggregation.secure_aggregation_mod(
        stage, context, lambda msg, ctx: called.append(msg) or Message(trained(), reply_to=msg))
    assert reply.error.reason == Reason.UNMASK_REFUSED.value and not called


@pytest.mark.parametrize("public_key", [b"not a key", RSA_PUBLIC_KEY],
                         ids=["no key", "a key of another kind"])
def test_a_peer_public_key_flower_would_fail_on_after_training_is_refused_untrained(
        context, public_key):
    """The peers' first public keys (their pairwise masks') are read by Flower's mod only
    after training too."""
    state = context.state.config_records[RECORD_KEY_STATE]
    keys = list(state["public_keys_dict:V"])
    keys[4] = public_key  # peer 9's first key
    state["public_keys_dict:V"] = keys
    called = []
    reply = secure_aggregation.secure_aggregation_mod(
        secagg_message(), context,
        lambda msg, ctx: called.append(msg) or Message(trained(), reply_to=msg))
    assert reply.error.reason == Reason.UNMASK_REFUSED.value and not called


def test_fewer_key_shares_than_the_threshold_needs_are_refused(context):
    state = context.state.config_records[RECORD_KEY_STATE]
    assert secure_aggregation.key_shares_problem(state, [8, 9], [key_share(8), key_share(9)]) \
        is None
    state["threshold"] = 4
    assert secure_aggregation.key_shares_problem(state, [8, 9], [key_share(8), key_share(9)]) \
        == "2 peers' key shares, where threshold 4 needs 3"


def test_every_stage_masks_and_shares_with_the_sites_own_primitives(context, monkeypatch):
    """Flower's SecAgg+ draws masks from a Mersenne Twister seeded with 32 bits and shares
    secrets over GF(2^128); the site's mod swaps its own into Flower's module before it answers
    any stage, since a fresh ClientApp process may answer a stage before anything else ran."""
    flower = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    monkeypatch.setattr(flower, "pseudo_rand_gen", "Flower's generator")
    monkeypatch.setattr(flower, "create_shares", "Flower's sharing")
    secure_aggregation.secure_aggregation_mod(secagg_message(), context, handler(trained()))
    assert flower.pseudo_rand_gen is mask_arrays and flower.create_shares is split_secret


@pytest.mark.parametrize("order", [("weight", "bias"), ("bias", "weight")])
def test_an_update_masked_by_flowers_mod_in_the_servers_order_leaves(context, monkeypatch,
                                                                      order):
    """The site masks in the order the server sent the model, which the server unmasks in; the
    egress guard expected the family's, and blocked a model sent in another after the round
    was charged (review 123 L1)."""
    monkeypatch.setattr(secure_aggregation, "secaggplus_mod",
                        importlib.import_module("flwr.client.mod").secaggplus_mod)
    state = context.state[RECORD_KEY_STATE]
    state["current_stage"], state["rd_seed"] = Stage.SHARE_KEYS, b"\x01" * 32
    for name in ("rd_seed_share_dict", "sk1_share_dict"):
        state[f"{name}:K"], state[f"{name}:V"] = [], []
    msg = secagg_message()
    msg.content["arrays"] = arrays(order=order)
    reply = secure_aggregation.secure_aggregation_mod(msg, context, handler(trained()))
    assert not reply.has_error()
    check_secagg_reply(Stage.COLLECT_MASKED_VECTORS, msg, reply, str(RUN_CONFIG_DEFAULTS["model"]))
    masked = reply.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]
    assert [bytes_to_ndarray(b).shape for b in masked] == [(1,)] + [
        model_state()[name].shape for name in order]


def test_a_stage_of_a_round_never_set_up_is_refused_untrained(context):
    context.state = RecordDict()
    called = []
    reply = secure_aggregation.secure_aggregation_mod(
        secagg_message(), context,
        lambda msg, ctx: called.append(msg) or Message(trained(), reply_to=msg))
    assert reply.error.reason == Reason.UNMASK_REFUSED.value and not called


@pytest.mark.parametrize("peers", [["7", "08", "9"], ["8", "9"], ["7", "8", "9", "10"]],
                         ids=["a peer written with a leading zero", "without this site",
                              "more peers than set up"])
def test_a_peer_list_the_site_cannot_hold_the_round_to_is_refused(peers):
    assert secure_aggregation.share_problem(peers, 7, 3)
    assert secure_aggregation.share_problem(["7", "8", "9"], 7, 3) is None
