"""Distributed DP: each site's integers and noise share, the secure sum that carries them, and
the site's checks of the sum it is asked to join.

The secure rounds here run in-process: the server's ``secure_train_round`` drives Flower's real
``SecAggPlusWorkflow`` against sites that are the real ``egress_guard`` and
``secure_aggregation_mod`` around Flower's real ``secaggplus_mod`` (key exchange, cryptographic
masks, unmasking), connected by a loopback grid that can drop sites at any stage.
tests/test_secure_aggregation.py runs distributed DP end to end with Flower processes.
"""

import copy
import json
import math
import shutil
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from test_egress_guard import LABELS

import fl_client.distributed_dp
import fl_server.secure_aggregation as server_secagg
from fedintent.commands.progress import print_round
from fl_client.client_app import train
from fl_client.distributed_dp import (
    GRID_RANGE,
    NORM_BLOCK,
    ROUNDING_FAILURE,
    clipped_grid_sum,
    dimension,
    exact_column_sum,
    grid_step,
    l1_bound,
    likely_rounding_bound,
    noisy_integer_sum,
    rounding_bound,
    summable_dimension,
    unit_bound,
    unit_norms,
)
from fl_client.egress_guard import egress_guard
from fl_client.privacy_accounting import (
    MAX_SKELLAM_MU,
    BudgetExhausted,
    SkellamRelease,
    filter_order,
    skellam_releases_epsilon,
)
from fl_client.privacy_budget import charge_round
from fl_client.privacy_ledger import read_ledger, unit_epsilons
from fl_client.private_random import private_stream, stream_seed
from fl_client.secure_aggregation import secure_aggregation_mod
from fl_client.site_policy import (
    PolicyRefusal,
    RoundRequest,
    SitePolicy,
    check_request,
    round_request,
    site_policy,
)
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol.distributed_sum import (
    WEIGHT,
    decode,
    hide_wraps,
    integer_norm,
    sum_range,
    wrap,
)
from fl_protocol.wire import MAX_AUTO_DELTA, MAX_SECURE_SITES, REJECTED, RUN_CONFIG_DEFAULTS, Reason
from fl_server.run_config import RunConfigError, check_run_config
from fl_server.secure_aggregation import distributed_threshold
from fl_server.update_validation import array_spec
from models import get_model_family

pytestmark = pytest.mark.usefixtures("task_identity", "grid_root")

@pytest.fixture(autouse=True)
def site_state(tmp_path):
    """``tmp_path`` set up as a site's state folder (``fedintent init-site``): the ledger
    functions here charge it directly."""
    create_site_secret(tmp_path)



@pytest.fixture
def grid_root(tmp_path, monkeypatch):
    monkeypatch.setattr(LoopbackGrid, "root", tmp_path)

DISTRIBUTED = RUN_CONFIG_DEFAULTS | {"privacy-model": "distributed", "secure-aggregation": True,
                                     "tolerated-sites": 1, "min-sites": 4}


def head():
    return get_model_family("minilm-head").build_model(len(LABELS))


def global_arrays() -> ArrayRecord:
    return ArrayRecord({k: Array(v.numpy()) for k, v in head().state_dict().items()})


def site_integers(seed: int, scale: int = 10**5) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: rng.integers(-scale, scale, tuple(v.shape), dtype=np.int64)
            for k, v in head().state_dict().items()}


class LoopbackGrid:
    """Flower's grid between the server and in-process sites; ``drop`` names, per SecAgg+ stage,
    the sites that never answer it. Each site's state folder (its egress log) is under
    ``root``, a test's own folder (``grid_root``)."""

    root = Path()

    def __init__(self, sites: dict[int, dict[str, np.ndarray]], run_config: dict,
                 drop: dict[str, set[int]] | None = None) -> None:
        self.sites = sites
        for node in sites:  # each set up as ``fedintent init-site`` does
            create_site_secret(self.root / f"state-{node}")
        self.contexts = {node: Context(run_id=1, node_id=node, node_config={
            "data-path": str(self.root / f"data-{node}"),
            "state-dir": str(self.root / f"state-{node}")},
            state=RecordDict(), run_config=dict(run_config)) for node in sites}
        self.drop = drop or {}
        self.replies: list[Message] = []

    def send_and_receive(self, messages, *, timeout=None):
        replies = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex  # as the real grid does
            msg = copy.deepcopy(msg)  # as if serialized: nothing shared between sites
            node = msg.metadata.dst_node_id
            stage = str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
            if node in self.drop.get(stage, set()):
                continue
            site = self.handler(node)
            reply = egress_guard(msg, self.contexts[node],
                                 lambda m, c, site=site: secure_aggregation_mod(m, c, site))
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        self.replies += copy.deepcopy(replies)  # as they left the sites
        return replies

    def handler(self, node: int):
        def handle(msg: Message, context: Context) -> Message:
            metrics = MetricRecord({"num-examples": 100, "epsilon": 1.0,
                                    "epsilon-alone": 3.0, "delta": 1e-5})
            arrays = ArrayRecord({k: Array(v) for k, v in self.sites[node].items()})
            return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)
        return handle


def secure_round(sites: dict[int, dict[str, np.ndarray]], drop=None, run_config=DISTRIBUTED,
                 grid: LoopbackGrid | None = None):
    grid = grid or LoopbackGrid(sites, run_config, drop)
    server = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(),
                     run_config=dict(run_config))
    config = ConfigRecord({"labels": LABELS, "num-rounds": 3, "run-name": "r",
                           "server-round": 1})
    asked = [Message(RecordDict({"arrays": global_arrays(), "config": config}),
                     dst_node_id=node, message_type="train", group_id="1") for node in sites]
    spec = array_spec(global_arrays())
    return server_secagg.secure_train_round(grid, server, 1, asked, spec, timeout=10), grid


@pytest.fixture
def decoded(monkeypatch):
    """The integer sum the server decodes, captured before it takes the step."""
    seen = {}

    def capture(global_model, integer_sum, **kwargs):
        seen.update(integer_sum)
        return global_model
    monkeypatch.setattr(server_secagg, "distributed_step", capture)
    return seen


def test_the_server_decodes_exactly_the_sum_of_the_sites_integers(decoded):
    sites = {101 + i: site_integers(i) for i in range(4)}
    secure, grid = secure_round(sites)
    assert secure.aggregate is not None
    assert secure.summary["sites_summed"] == 4 and secure.summary["reconstruction_threshold"] == 3
    for name in decoded:
        np.testing.assert_array_equal(decoded[name], sum(s[name] for s in sites.values()))
    # what left each site was masked, as 32-bit words, at the fixed weight
    masked = [r for r in grid.replies if Key.MASKED_PARAMETERS in
              r.content.config_records.get(RECORD_KEY_CONFIGS, {})]
    assert len(masked) == 4
    for reply in masked:
        assert dict(reply.content["fitres.num_examples"]) == {"num_examples": int(WEIGHT)}
        arrays = [bytes_to_ndarray(b)
                  for b in reply.content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        assert all(a.dtype == np.uint32 for a in arrays)
        plain = sites[reply.metadata.src_node_id]
        assert not any(np.array_equal(a, plain[k]) for a, k in zip(arrays[1:], plain,
                                                                  strict=True))


def test_the_unmasked_sum_shows_nothing_above_its_range(monkeypatch):
    """Found in review: SecAgg+ unmasks the sum modulo 2**32, at least T x (sites + 1); had each
    site sent its wrapped values as they are, the bits above T would count the sites whose
    value wrapped, each wrap a threshold on one site's value under its own noise share alone.
    One site's values sit just past T/2 and wrap, the others' bring the true sum back to 2: the
    server must still decode 2 exactly, while what it unmasks above T is the sites' random
    offsets, not the one wrap (-T before the fix, in every coordinate; the chance that the
    offsets of all 1,155 coordinates agree is below 2**-3000)."""
    target = sum_range(4)
    base = head().state_dict()
    values = (target // 2 + 5, -target // 4, -target // 4, -3)
    sites = {101 + i: {k: np.full(tuple(v.shape), value, dtype=np.int64)
                       for k, v in base.items()} for i, value in enumerate(values)}
    unmasked = {}
    real_decode = server_secagg.decode

    def capture(mean, num_sites, modulus):
        raw = np.rint(np.asarray(mean, dtype=np.float64) * num_sites).astype(np.int64)
        unmasked.setdefault("raw", []).append(raw.ravel())
        return real_decode(mean, num_sites, modulus)

    monkeypatch.setattr(server_secagg, "decode", capture)
    summed = {}
    monkeypatch.setattr(server_secagg, "distributed_step",
                        lambda global_model, integer_sum, **kwargs: summed.update(integer_sum)
                        or global_model)
    secure, _ = secure_round(sites)
    assert secure.aggregate is not None
    for name in summed:
        np.testing.assert_array_equal(summed[name], sum(site[name] for site in sites.values()))
    raw = np.concatenate(unmasked["raw"])
    truth = np.concatenate([sum(site[k] for site in sites.values()).ravel() for k in summed])
    unhidden = np.concatenate([sum(wrap(site[k], target) for site in sites.values()).ravel()
                               for k in summed])  # what the server unmasked before the fix
    assert raw.size > 1000 and np.all(np.mod(raw - truth, target) == 0)
    assert len(np.unique(raw - truth)) > 1 and not np.array_equal(raw, unhidden)


@pytest.mark.parametrize("told", [{"num-rounds": 40}, {"run-name": "other"}, {"server-round": 2}],
                         ids=["rounds", "run", "round"])
def test_sites_told_different_plans_give_the_server_only_noise(decoded, told):
    """Found in review: a site counts on the noise shares the other sites plan from the same
    values; told 40 rounds while the others were told 1, it would count on forty times the
    noise they add. The masks are bound to the plan each site read, so the sum unmasks as noise
    and the server learns nothing from a split plan."""
    sites = {101 + i: site_integers(i) for i in range(4)}
    grid = HostileGrid(sites, DISTRIBUTED, lambda stage, configs, node: None)
    real_send = grid.send_and_receive

    def send(messages, *, timeout=None):
        for msg in messages:
            if (msg.metadata.dst_node_id == 101 and "config" in msg.content.config_records
                    and str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
                    == Stage.COLLECT_MASKED_VECTORS):
                msg.content["config"] = ConfigRecord(dict(msg.content["config"]) | told)
        return real_send(messages, timeout=timeout)

    grid.send_and_receive = send
    secure, _ = secure_round(sites, grid=grid)
    assert secure.aggregate is not None  # nothing a site can see is wrong, but the sum is noise
    assert not any(r.has_error() for r in grid.answered[Stage.COLLECT_MASKED_VECTORS])
    true_sum = {k: sum(s[k] for s in sites.values()) for k in decoded}
    assert all(not np.array_equal(decoded[k], true_sum[k]) for k in decoded)


def test_sites_told_one_plan_sum_exactly(decoded):
    sites = {101 + i: site_integers(i) for i in range(4)}
    secure, _ = secure_round(sites)
    for name in decoded:
        np.testing.assert_array_equal(decoded[name], sum(s[name] for s in sites.values()))


def test_hiding_wraps_keeps_each_value_modulo_the_range_and_spreads_what_is_above():
    values = [np.arange(1000, dtype=np.int64), np.zeros((10, 10), dtype=np.int64)]
    hidden = hide_wraps(values, 2**29)
    for before, after in zip(values, hidden, strict=True):
        assert after.shape == before.shape and after.min() >= 0 and after.max() < 2**32
        np.testing.assert_array_equal(np.mod(after, 2**29), np.mod(before, 2**29))
        assert len(np.unique(after // 2**29)) == 8  # all 8 multiples drawn among 100+ values


def test_a_site_that_drops_is_left_out_of_an_exact_sum(decoded):
    sites = {101 + i: site_integers(i) for i in range(4)}
    secure, _ = secure_round(sites, drop={Stage.COLLECT_MASKED_VECTORS: {104}})
    assert secure.summary["sites_summed"] == 3
    for name in decoded:
        np.testing.assert_array_equal(decoded[name],
                                      sum(sites[n][name] for n in (101, 102, 103)))


class MalformedMaskGrid(LoopbackGrid):
    """Site 104's masked-vector reply rewritten on the way: ``damage(configs, metrics)``."""

    def __init__(self, sites, run_config, damage) -> None:
        super().__init__(sites, run_config)
        self.damage = damage

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
            if reply.metadata.src_node_id == 104 and configs and Key.MASKED_PARAMETERS in configs:
                self.damage(configs, reply.content["metrics"])
        return replies


@pytest.mark.parametrize("damage", [
    lambda configs, metrics: configs.__setitem__(Key.MASKED_PARAMETERS, [b"not an npy file"]),
    lambda configs, metrics: configs.__setitem__(Key.MASKED_PARAMETERS,
                                                 configs[Key.MASKED_PARAMETERS][:-1]),
    lambda configs, metrics: metrics.__setitem__("num-examples", math.inf),
], ids=["junk bytes", "an array short", "infinite examples"])
def test_a_malformed_masked_reply_is_rejected_and_the_others_are_summed(decoded, damage):
    """Found in review: one site's unreadable masked vectors (or an example count the sum step
    divides by) raised in the server and ended the run. The site is rejected and the sum
    unmasked without it, as for a site that dropped out."""
    sites = {101 + i: site_integers(i) for i in range(4)}
    secure, _ = secure_round(sites, grid=MalformedMaskGrid(sites, DISTRIBUTED, damage))
    assert secure.summary["sites_summed"] == 3
    for name in decoded:
        np.testing.assert_array_equal(decoded[name],
                                      sum(sites[n][name] for n in (101, 102, 103)))
    [rejected] = [r for r in secure.replies if r.has_error()]
    assert rejected.error.code == REJECTED and "rejected by the server" in rejected.error.reason


@pytest.mark.parametrize("stage", [Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS,
                                   Stage.UNMASK])
def test_no_sum_is_released_below_cohort_minus_tolerated(decoded, stage, capsys):
    """Two of four sites killed at any stage, one tolerated: three are needed to unmask, so no
    sum (nor anything else) is released, and the operator is told why."""
    sites = {101 + i: site_integers(i) for i in range(4)}
    secure, _ = secure_round(sites, drop={stage: {103, 104}})
    assert secure.aggregate is None and not decoded
    assert secure.summary["sites_summed"] == 0
    assert "3 are needed" in secure.summary["halted"]
    print_round({"round": 1, "sites_trained": 2, "sites_failed": 2,
                 "secure_aggregation": secure.summary}, 1)
    assert "no sum released, the model stays as it was" in capsys.readouterr().out


def test_sums_near_the_edge_of_the_range_decode_exactly():
    target = sum_range(4)
    values = np.array([target // 2 - 1, -(target // 2), 12345, -1], dtype=np.int64)
    shares = [values // 4 + k for k in range(3)] + [values - sum(values // 4 + k for k in range(3))]
    wrapped = [wrap(s, target) for s in shares]
    mean = sum(w.astype(np.float64) for w in wrapped) / 4
    np.testing.assert_array_equal(decode(mean, 4, target), values)


def setup_message(sample: int, share: int, threshold: int, target: int, clipping: float,
                  weight: float = WEIGHT, cohort: int = 4) -> Message:
    protocol = ConfigRecord({
        Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: sample, Key.SHARE_NUMBER: share,
        Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: clipping, Key.TARGET_RANGE: target,
        Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: weight,
    })
    config = ConfigRecord({"labels": LABELS, "num-rounds": 3, "run-name": "r",
                           "server-round": 1, "cohort-size": cohort})
    return Message(RecordDict({RECORD_KEY_CONFIGS: protocol, "config": config}),
                   dst_node_id=7, message_type="train")


@pytest.mark.parametrize("setup", [
    dict(sample=4, share=4, threshold=2),  # 2 < 4 - 1: three sites' noise not guaranteed
    dict(sample=3, share=3, threshold=3),  # fewer sites than the noise share was planned for
    dict(sample=4, share=3, threshold=3),  # a site left out of the key sharing
    dict(sample=4, share=4, threshold=3, weight=1000.0),  # would scale, not carry, integers
], ids=["low threshold", "smaller cohort", "partial shares", "scaled"])
def test_a_site_refuses_a_secure_sum_weaker_than_its_noise_share_needs(setup):
    target = sum_range(4)
    msg = setup_message(target=target, clipping=target / 2, **setup)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                      run_config=dict(DISTRIBUTED))
    reply = secure_aggregation_mod(msg, context, lambda m, c: None)
    assert reply.error.reason == Reason.MODEL_REFUSED.value
    good = setup_message(4, 4, 3, target, target / 2)
    assert not secure_aggregation_mod(good, context, lambda m, c: None).has_error()


def test_a_distributed_round_the_site_cannot_read_is_refused_at_its_setup():
    """Read as a local-DP round instead, its secure sum would go unchecked against the cohort
    and thresholds the noise share needs."""
    msg = setup_message(4, 4, 3, sum_range(4), sum_range(4) / 2)
    msg.content["config"]["a-setting-of-a-later-release"] = 1
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                      run_config=dict(DISTRIBUTED))
    reply = secure_aggregation_mod(msg, context, lambda m, c: None)
    assert reply.error.reason == Reason.SETTING_REFUSED.value


def test_a_site_configured_local_refuses_a_distributed_round(ctx):
    ctx.node_config["privacy-models"] = "local"
    ctx.run_config.update(DISTRIBUTED)
    msg = setup_message(4, 4, 3, sum_range(4), sum_range(4) / 2)
    with pytest.raises(PolicyRefusal) as refused:
        check_request(site_policy(ctx), round_request(msg, ctx))
    assert refused.value.reason == Reason.MODEL_REFUSED


@pytest.mark.parametrize("run", [{"tolerated-sites": 0}, {"tolerated-sites": 4}],
                         ids=["tolerates fewer than the site's minimum", "no honest site left"])
def test_a_site_refuses_a_run_tolerating_too_few_or_too_many(ctx, run):
    ctx.run_config.update(DISTRIBUTED | run)
    msg = setup_message(4, 4, 3, sum_range(4), sum_range(4) / 2)
    with pytest.raises(PolicyRefusal) as refused:
        check_request(site_policy(ctx), round_request(msg, ctx))
    assert refused.value.reason == Reason.MODEL_REFUSED


def test_the_common_noise_is_planned_at_the_runs_delta_or_the_largest_automatic_one(ctx):
    msg = setup_message(4, 4, 3, sum_range(4), sum_range(4) / 2)
    ctx.run_config.update(DISTRIBUTED | {"delta": 1e-7})
    assert round_request(msg, ctx).plan_delta == 1e-7
    ctx.run_config["delta"] = 0.0
    assert round_request(msg, ctx).plan_delta == MAX_AUTO_DELTA


def test_a_site_never_sends_its_noise_share_outside_a_secure_sum(ctx):
    """A server that asks for distributed DP in a plain round (even announcing a cohort) gets a
    refusal, before the site reads its data."""
    ctx.run_config.update(DISTRIBUTED)
    config = ConfigRecord({"labels": LABELS, "num-rounds": 3, "run-name": "r",
                           "server-round": 1, "cohort-size": 4})
    msg = Message(RecordDict({"arrays": global_arrays(), "config": config}), dst_node_id=7,
                  message_type="train")
    reply = train(msg, ctx)
    assert reply.error.reason == Reason.MODEL_REFUSED.value


def test_a_model_the_integer_sum_cannot_carry_is_refused_before_the_charge(ctx, monkeypatch):
    """Found in review: the grid's size limit was checked only in training, after the charge,
    so a server could burn the site's budget with a model too large for the sum."""
    data = Path(ctx.node_config["data-path"])
    data.mkdir()
    (data / "train.jsonl").write_text("".join(
        json.dumps({"id": f"r{i}", "text": f"row {i} about {label}", "label": label}) + "\n"
        for i, label in enumerate(LABELS * 4)))
    ctx.run_config.update(DISTRIBUTED)
    config = ConfigRecord({"labels": LABELS, "num-rounds": 3, "run-name": "r",
                           "server-round": 1, "cohort-size": 4})
    stage = ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS})
    msg = Message(RecordDict({"arrays": global_arrays(), "config": config,
                              RECORD_KEY_CONFIGS: stage}), dst_node_id=7, message_type="train")
    monkeypatch.setattr(fl_client.distributed_dp, "GRID_RANGE", 2**10)  # the head is too large
    reply = train(msg, ctx)
    assert reply.error.reason == Reason.MODEL_REFUSED.value
    assert not (Path(ctx.node_config["state-dir"]) / "privacy-ledger.json").exists()


def test_only_a_model_of_trained_parameters_within_the_grid_is_summable():
    assert summable_dimension(head()) == dimension(head())
    with pytest.raises(PolicyRefusal, match="up to 67,108,864 exchanged numbers"):
        summable_dimension(torch.nn.Linear(8192, 8193, bias=False, device="meta"))
    with_buffer = torch.nn.BatchNorm1d(4)
    with pytest.raises(PolicyRefusal, match="all trained parameters"):
        summable_dimension(with_buffer)


def units(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n, 384, generator=generator), dim=1)
    return features, torch.randint(0, len(LABELS), (n,), generator=generator)


def flat(vectors: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.ravel() for v in vectors.values()])


def test_one_unit_moves_the_rounded_sum_by_at_most_the_sensitivity_whatever_the_draws():
    """The accountants' sensitivities, checked on the mechanism itself: with the same rounding
    draws (the same seed), a site's integer vector with and without one unit differs by
    ``floor(v)`` or ``floor(v) + 1`` in each coordinate (``v`` the unit's own scaled vector), by
    at most ``rounding_bound`` in L2 and ``l1_bound`` in L1, and by at most
    ``likely_rounding_bound`` (which fails with probability e**-200, so never here). Clip norm
    0.01 clips every unit, so each is at the full ``integer_norm``."""
    model = head()
    features, labels = units(96, 3)
    dim = dimension(model)
    norm = integer_norm(dim)
    bound = rounding_bound(norm, dim)
    likely = likely_rounding_bound(norm, dim)
    assert bound < 1.03 * norm and l1_bound(bound, dim) == pytest.approx(math.sqrt(dim) * bound)
    assert unit_bound(norm, dim) < likely < 1.01 * norm < bound
    for removed in (0, 40, 95):
        kept = [i for i in range(len(labels)) if i != removed]
        with_unit = clipped_grid_sum(model, features, labels, 0.01)
        without = clipped_grid_sum(model, features[kept], labels[kept], 0.01)
        alone = clipped_grid_sum(model, features[[removed]], labels[[removed]], 0.01)
        unit = torch.cat([(with_unit[name] - without[name]).flatten() for name in with_unit])
        # the unit's own grid vector (computed alone, a float32 matrix product of another
        # shape: the last bit may differ, and so one grid step)
        assert (unit - torch.cat([v.flatten() for v in alone.values()])).abs().max() <= 1
        steps = unit.double().numpy() * grid_step(norm)  # the unit's vector in integers
        assert np.linalg.norm(steps) <= unit_bound(norm, dim)
        assert np.linalg.norm(steps) > 0.99 * norm  # clipped to the full norm
        for seed in range(5):
            diff = (flat(noisy_integer_sum(model, features, labels, 0.01, 0.0, seed))
                    - flat(noisy_integer_sum(model, features[kept], labels[kept], 0.01, 0.0,
                                             seed)))
            assert np.linalg.norm(diff) <= bound and np.abs(diff).sum() <= l1_bound(bound, dim)
            assert np.all((diff == np.floor(steps)) | (diff == np.floor(steps) + 1))
            assert np.linalg.norm(diff) <= likely


def test_one_units_move_is_its_own_randomized_rounding():
    """The coupling behind ``likely_rounding_bound``: with shared offsets, the rounded sum moves
    by ``floor(v) + B``, ``B_i`` Bernoulli of mean ``frac(v_i)`` and independent. Over 400
    seeds, every coordinate's share of ``+1`` is within 5 standard deviations of its fraction
    (a false alarm below 1e-6 per coordinate), and the squared norm's excess over ``||v||**2``
    averages ``sum frac (1 - frac)``, the mean the Hoeffding bound starts from."""
    generator = torch.Generator().manual_seed(3)
    others = torch.randint(-10**6, 10**6, (4, 500), generator=generator).double() / 32
    unit = torch.randint(-4000, 4000, (500,), generator=generator).double() / 32
    draws = 400
    moves = np.stack([
        rounded(others.sum(0) + unit, seed) - rounded(others.sum(0), seed)
        for seed in range(draws)])
    v = unit.numpy()
    frac = v - np.floor(v)
    assert np.all((moves == np.floor(v)) | (moves == np.floor(v) + 1))
    share = (moves == np.floor(v) + 1).mean(axis=0)
    assert np.all(np.abs(share - frac) <= 5 * np.sqrt(frac * (1 - frac) / draws) + 1e-12)
    excess = (moves**2).sum(axis=1) - (v**2).sum()
    expected = (frac * (1 - frac)).sum()
    spread = np.sqrt(((2 * np.abs(v) + 1) ** 2).sum() / 4 / draws)  # Hoeffding's scale
    assert abs(excess.mean() - expected) < 5 * spread


def rounded(total: torch.Tensor, seed: int) -> np.ndarray:
    """The site's rounding of a sum on the 1/32 grid, as ``noisy_integer_sum`` draws it."""
    steps = 32
    grid = torch.round(total * steps).to(torch.int64)
    up = torch.from_numpy(private_stream(stream_seed(seed, "rounding")).integers(0, steps,
                                                                                len(grid)))
    return torch.div(grid + up, steps, rounding_mode="floor").numpy().astype(float)


def test_unit_norms_stay_within_their_stated_error_at_any_dimension():
    generator = torch.Generator().manual_seed(4)
    rows = [torch.rand(8, 200_003, generator=generator) * 1e3,
            torch.rand(8, 77, generator=generator)]
    exact = torch.sqrt(sum((r.double() ** 2).sum(dim=1) for r in rows))
    assert torch.all((unit_norms(rows) - exact).abs() <= exact * (NORM_BLOCK + 1) * 2**-25)
    # every column counts, the ragged last block's included
    ragged = torch.zeros(2, 2 * NORM_BLOCK + 2)
    ragged[:, -2:] = torch.tensor([3.0, 4.0])
    ragged[1, 0] = 12.0
    assert unit_norms([ragged]).tolist() == [5.0, 13.0]


def test_the_grid_sum_is_exact_in_any_order():
    generator = torch.Generator().manual_seed(6)
    rows = torch.randint(-2 * GRID_RANGE, 2 * GRID_RANGE + 1, (1000, 300),
                         generator=generator).float()
    exact = rows.to(torch.int64).sum(dim=0)
    assert torch.equal(exact_column_sum(rows).to(torch.int64), exact)
    shuffled = rows[torch.randperm(len(rows), generator=generator)]
    assert torch.equal(exact_column_sum(shuffled).to(torch.int64), exact)
    # a plain float32 sum of the same rows is not exact: the test can tell
    assert not torch.equal(rows.sum(dim=0).to(torch.int64), exact)


def test_randomized_rounding_of_the_sum_is_unbiased():
    model = head()
    features, labels = units(64, 4)
    dim = dimension(model)
    norm = integer_norm(dim)
    exact = torch.cat([v.flatten() for v in clipped_grid_sum(model, features, labels, 1.0)
                       .values()]).double().numpy() * grid_step(norm)
    draws = np.stack([flat(noisy_integer_sum(model, features, labels, 1.0, 0.0, seed))
                      for seed in range(20)])
    errors = draws - exact
    assert np.all(np.abs(errors) < 1)  # each coordinate to a neighbouring integer
    assert np.all(draws == np.floor(exact) + (errors > 0))  # floor or ceiling, nothing else
    # unbiased: the mean of 20 x dim rounding errors (each in (-1, 1), sd <= 1/2) is ~0; 6 sd
    assert abs(errors.mean()) < 6 * 0.5 / math.sqrt(errors.size)


def test_the_integers_are_the_clipped_scaled_gradient_sum_and_the_noise_has_the_planned_variance():
    model = head()
    features, labels = units(200, 1)
    dim = dimension(model)
    norm = integer_norm(dim)
    clean = noisy_integer_sum(model, features, labels, 1.0, 0.0, seed=5)
    # the same sum in floats: per-example gradients clipped to 1, scaled to ``norm``
    reference = torch.zeros(dim, dtype=torch.float64)
    for x, y in zip(features, labels, strict=True):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[None]), y[None]).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
        reference += grad * min(1.0, 1.0 / float(grad.norm())) * norm
    integers = flat(clean)
    # the sum rounded once: within 1 of the float sum per coordinate, plus half a grid step
    # per unit and the float32 arithmetic of 200 gradients
    deviation = np.abs(integers - reference.numpy())
    assert deviation.max() < 1 + 200 * grid_step(norm) / 2 + 1e-3
    assert deviation.mean() < 0.6

    # the noise: the same seed draws the same rounding, so the difference is the noise alone;
    # 77 intents for a realistic dimension (29,645 draws per site)
    model = get_model_family("minilm-head").build_model(77)
    labels = torch.randint(0, 77, (len(labels),), generator=torch.Generator().manual_seed(2))
    mu_share, sites = 5e6, 8
    noise = sum(
        np.concatenate([v.ravel() for v in noisy_integer_sum(
            model, features, labels, 1.0, mu_share, seed=s).values()])
        - np.concatenate([v.ravel() for v in noisy_integer_sum(
            model, features, labels, 1.0, 0.0, seed=s).values()])
        for s in range(sites)
    )
    planned = 2 * mu_share * sites  # Skellam(k mu): variance 2 k mu
    # sample variance of n draws: relative sd sqrt(2 / n) (the Skellam's excess kurtosis,
    # 1 / (2 k mu), is negligible). 6 sd: a false alarm once in 5e8 runs.
    n = noise.size
    assert abs(noise.var() / planned - 1) < 6 * math.sqrt(2 / n)
    assert abs(noise.mean()) < 6 * math.sqrt(planned / n)


def test_the_integers_are_the_grid_sum_rounded_with_the_seeds_offsets_plus_its_skellam_draws():
    """Known answer (stop 68): per array, in the model's order, the exact grid sum plus offsets
    drawn from ``[0, steps)`` of the ``"rounding"`` stream, floor-divided by the grid steps per
    integer, plus the array's own slice of one Skellam vector from the ``"skellam"`` stream (a
    Poisson draw minus a second); int64 throughout. Each coordinate gets a noise draw of its own:
    an array that reused another's draws (the variance test above cannot tell) would let the
    server subtract the noise out of their difference."""
    model = head()
    features, labels = units(64, 4)
    dim = dimension(model)
    steps = GRID_RANGE // integer_norm(dim)
    grid = clipped_grid_sum(model, features, labels, 1.0)
    mu_share, seed = 40.0, 7
    rounding = private_stream(stream_seed(seed, "rounding"))
    noise = private_stream(stream_seed(seed, "skellam"))
    skellam = noise.poisson(mu_share, dim) - noise.poisson(mu_share, dim)
    out = noisy_integer_sum(model, features, labels, 1.0, mu_share, seed)
    assert list(out) == list(model.state_dict()) == list(grid)
    offset = 0
    for name, total in grid.items():
        total = total.flatten().numpy()
        up = rounding.integers(0, steps, len(total))
        expected = np.floor_divide(total + up, steps) + skellam[offset:offset + len(total)]
        assert out[name].dtype == np.int64
        assert np.array_equal(out[name].ravel(), expected)
        offset += len(total)
    assert offset == dim
    # the noise alone (the same seed rounds the same): every coordinate its own draw
    clean = noisy_integer_sum(model, features, labels, 1.0, 0.0, seed)
    drawn = flat(out) - flat(clean)
    assert np.array_equal(drawn, skellam)


def distributed_request(server_round: int, **changes) -> RoundRequest:
    return RoundRequest(
        run_name="run-d", server_round=server_round, num_rounds=3, target_epsilon=3.0,
        delta=1e-5, accountant="prv", privacy_unit="utterance", clip_norm=1.0,
        batch_size=4096, local_epochs=1, privacy_model="distributed", tolerated_sites=2,
        cohort_size=10,
    ) if not changes else replace(distributed_request(server_round), **changes)


POLICY = SitePolicy(max_epsilon=10.0, max_delta=1e-5, privacy_unit=None)
UNITS = [f"u{i}" for i in range(50)]
HEAD_DIM = 77 * 385


def test_a_distributed_run_is_charged_its_target_and_records_both_numbers(tmp_path):
    charges = [charge_round(tmp_path, UNITS, distributed_request(r), POLICY, HEAD_DIM)
               for r in (1, 2, 3)]
    last = charges[-1]
    assert 0.97 * 3.0 < last.epsilon_this_run <= 3.0  # the whole run within its target
    assert [c.epsilon_this_run for c in charges] == sorted(c.epsilon_this_run for c in charges)
    assert last.epsilon_alone_this_run > 2 * last.epsilon_this_run  # one share of eight
    assert last.epsilon_all_runs >= last.epsilon_this_run
    assert last.epsilon_alone_all_runs >= last.epsilon_alone_this_run
    assert (last.sample_rate, last.steps, len(last.trained)) == (1.0, 1, len(UNITS))
    ledger = read_ledger(tmp_path, site_secret(tmp_path))
    [release] = {(r.skellam_mu, r.skellam_mu_share, r.l1, r.l2) for r in ledger.releases}
    mu, share, l1, l2 = release
    assert share == pytest.approx(mu / 8) and last.skellam_mu_share == share
    norm = integer_norm(HEAD_DIM)
    assert l2 == rounding_bound(norm, HEAD_DIM) and l1 == l1_bound(l2, HEAD_DIM)
    [likely] = {(r.likely_l1, r.likely_l2, r.rounding_failure) for r in ledger.releases}
    assert likely == (l1_bound(likely[1], HEAD_DIM), likely_rounding_bound(norm, HEAD_DIM),
                      ROUNDING_FAILURE)
    assert likely[1] < 1.002 * norm < 1.02 * norm < l2  # the head: 0.16% above, against 2.1%
    # the reported numbers are the accountant's, recomputed from the ledger alone
    assert last.epsilon_this_run == skellam_releases_epsilon(
        [SkellamRelease(mu, l1, l2, *likely)] * 3, 1e-5)
    assert last.epsilon_alone_this_run == skellam_releases_epsilon(
        [SkellamRelease(share, l1, l2, *likely)] * 3, 1e-5)


def test_no_plan_asks_the_sampler_for_more_noise_than_it_draws_exactly(tmp_path):
    """Found in review: a tiny target planned a Skellam mu of 5.7e14, where numpy's Poisson
    draws are neither of the planned variance nor Poisson, and past 2**53 on a lattice whose
    low bits carry no noise. The plan stops at MAX_SKELLAM_MU: such a round is declined,
    uncharged; the defaults plan far below it."""
    with pytest.raises(BudgetExhausted):
        charge_round(tmp_path, UNITS, distributed_request(1, target_epsilon=0.02, cohort_size=3),
                     POLICY, HEAD_DIM)
    assert read_ledger(tmp_path, site_secret(tmp_path)) is None
    default = charge_round(tmp_path, UNITS, distributed_request(1), POLICY, HEAD_DIM)
    assert 0 < default.skellam_mu_share < MAX_SKELLAM_MU / 1000


def test_a_site_needing_more_noise_adds_it_itself_and_counts_only_the_others_common_shares(
        tmp_path):
    """Two sites of one run: B at the default budget adds the common share; A, whose smaller
    lifetime budget needs more noise than the run's plan, adds the difference itself. A counts
    on its own share plus the other 7 counted sites' common shares (what B adds), never on its
    own larger plan for them: had every site planned A's total, the sum would hold more noise
    than it does and A would be charged less than the sum gives it."""
    tight = replace(POLICY, max_epsilon=2.0, max_noise_ratio=math.inf)
    for site in ("a", "b"):
        create_site_secret(tmp_path / site)
    a = charge_round(tmp_path / "a", UNITS, distributed_request(1), tight, HEAD_DIM)
    b = charge_round(tmp_path / "b", UNITS, distributed_request(1), POLICY, HEAD_DIM)
    [release_a] = read_ledger(tmp_path / "a", site_secret(tmp_path / "a")).releases
    [release_b] = read_ledger(tmp_path / "b", site_secret(tmp_path / "b")).releases
    assert release_b.skellam_mu == pytest.approx(8 * b.skellam_mu_share)
    assert a.skellam_mu_share > b.skellam_mu_share
    assert release_a.skellam_mu == pytest.approx(a.skellam_mu_share + 7 * b.skellam_mu_share)
    assert release_a.skellam_mu < 8 * a.skellam_mu_share


def test_every_site_plans_the_common_noise_at_the_runs_delta_not_its_own(tmp_path):
    """A site large enough for a smaller automatic delta still adds the common share planned
    at the run's (public) delta, and makes up the rest of its own target at its delta itself."""
    for site in ("small", "large"):
        create_site_secret(tmp_path / site)
    small = charge_round(tmp_path / "small", UNITS, distributed_request(1, plan_delta=1e-5),
                         POLICY, HEAD_DIM)
    large = charge_round(tmp_path / "large", UNITS,
                         distributed_request(1, delta=1e-6, plan_delta=1e-5), POLICY, HEAD_DIM)
    [release] = read_ledger(tmp_path / "large", site_secret(tmp_path / "large")).releases
    assert large.skellam_mu_share > small.skellam_mu_share
    assert release.skellam_mu == pytest.approx(large.skellam_mu_share
                                               + 7 * small.skellam_mu_share)


def test_a_noise_share_whose_epsilon_alone_exceeds_the_sites_bound_is_refused(tmp_path):
    strict = replace(POLICY, max_epsilon_alone=5.0)
    with pytest.raises(PolicyRefusal) as refused:  # 1/8 of the noise: alone far above 5
        charge_round(tmp_path, UNITS, distributed_request(1), strict, HEAD_DIM)
    assert refused.value.reason == Reason.MODEL_REFUSED
    assert not (tmp_path / "privacy-ledger.json").exists()  # nothing charged
    # a server announcing a huge cohort (so a tiny share) is caught the same way
    with pytest.raises(PolicyRefusal):
        charge_round(tmp_path, UNITS, distributed_request(1, cohort_size=1000), POLICY,
                     HEAD_DIM)
    # with fewer sites sharing the noise, the same bound is met
    charge = charge_round(tmp_path, UNITS, distributed_request(1, cohort_size=3), strict,
                          HEAD_DIM)
    assert charge.epsilon_alone_this_run <= 5.0


def test_a_site_refuses_a_cohort_larger_than_a_secure_sum_it_joins():
    check_request(POLICY, distributed_request(1, cohort_size=MAX_SECURE_SITES))
    with pytest.raises(PolicyRefusal, match=f"more than the {MAX_SECURE_SITES} a site joins"):
        check_request(POLICY, distributed_request(1, cohort_size=MAX_SECURE_SITES + 1))


def test_a_run_cannot_switch_privacy_model_after_its_first_release(tmp_path):
    charge_round(tmp_path, UNITS, distributed_request(1), POLICY, HEAD_DIM)
    with pytest.raises(PolicyRefusal) as refused:
        charge_round(tmp_path, UNITS, distributed_request(2, privacy_model="local"), POLICY,
                     HEAD_DIM)
    assert refused.value.reason == Reason.MODEL_REFUSED


def test_local_releases_keep_their_ledger_format_beside_distributed_ones(tmp_path):
    local = replace(distributed_request(1), run_name="run-l", privacy_model="local",
                    cohort_size=0)
    charge_round(tmp_path, UNITS, local, POLICY, HEAD_DIM)
    charge_round(tmp_path, UNITS, distributed_request(1), POLICY, HEAD_DIM)
    records = json.loads((tmp_path / "privacy-ledger.json").read_text())["releases"]
    assert "privacy_model" not in records[0] and "rdp_alone" not in records[0]
    assert records[1]["privacy_model"] == "distributed"
    ledger = read_ledger(tmp_path, site_secret(tmp_path))  # both verify
    assert [r.distributed for r in ledger.releases] == [False, True]


@pytest.mark.parametrize("override,message", [
    ({"secure-aggregation": False}, "needs secure-aggregation = true"),
    ({"min-sites": 3, "tolerated-sites": 2}, "must exceed tolerated-sites"),
    ({"tolerated-sites": -1}, "tolerated-sites must be a whole number"),
    ({"target-epsilon": math.inf}, "finite target-epsilon"),
], ids=["no secure aggregation", "one noise-adding site", "negative", "no noise"])
def test_the_server_refuses_a_distributed_run_that_cannot_carry_the_guarantee(override,
                                                                              message):
    with pytest.raises(RunConfigError, match=message):
        check_run_config(DISTRIBUTED | override)
    check_run_config(DISTRIBUTED)


def test_a_round_asked_past_its_plan_still_counts_against_max_epsilon_alone(tmp_path):
    """A run's releases past its planned rounds (a replay, or rounds a resume trains again) add
    the site's own-noise spend like any other: under a bound the planned rounds just met, every
    unit sits out one more release, and a unit new to the site takes part in it."""
    small = distributed_request(1, cohort_size=3, tolerated_sites=1)
    charges = [charge_round(tmp_path, UNITS, replace(small, server_round=r), POLICY, HEAD_DIM)
               for r in (1, 2, 3)]
    met = replace(POLICY, max_epsilon_alone=charges[-1].epsilon_alone_all_runs * 1.001)
    with pytest.raises(BudgetExhausted, match="max-epsilon-alone"):
        charge_round(tmp_path, UNITS, replace(small, server_round=3), met, HEAD_DIM)
    assert len(read_ledger(tmp_path, site_secret(tmp_path)).releases) == 3
    again = charge_round(tmp_path, [*UNITS, "new"], replace(small, server_round=3), met,
                         HEAD_DIM)
    assert again.trained == [len(UNITS)]


def test_the_max_epsilon_alone_bound_does_not_tell_whether_the_oldest_unit_is_still_there(
        tmp_path):
    """Found in review: the bound counted the spend of the units present, so a run just past it
    was declined, charged nothing, while the longest-present unit remained and charged once it
    had been erased: a free probe, repeatable, of an erasure or an expiry. The site declines
    only a run too much for a unit new to it; a unit the run would take past the bound sits
    out, so the oldest unit's presence changes nothing the server sees."""
    small = distributed_request(1, cohort_size=4, tolerated_sites=1)
    create_site_secret(tmp_path / "before")
    for server_round in (1, 2, 3):
        charge_round(tmp_path / "before", ["old"], replace(small, server_round=server_round),
                     POLICY, HEAD_DIM)
    later, newcomers = replace(small, run_name="run-later"), UNITS[:10]
    unbounded = replace(POLICY, max_epsilon=1e3)
    shutil.copytree(tmp_path / "before", tmp_path / "measure")
    for server_round in (1, 2, 3):  # what the run costs the newcomers alone, own noise only
        reached = charge_round(tmp_path / "measure", newcomers,
                               replace(later, server_round=server_round), unbounded, HEAD_DIM)
    bound = replace(unbounded, max_epsilon_alone=reached.epsilon_alone_all_runs * 1.001)
    outcomes = []
    for present in (["old", *newcomers], newcomers):  # "old" still there, or erased
        state = tmp_path / f"after-{len(present)}"
        shutil.copytree(tmp_path / "before", state)
        charge = charge_round(state, present, later, bound, HEAD_DIM)
        [release] = [r for r in read_ledger(state, site_secret(state)).releases
                     if r.run == "run-later"]
        outcomes.append((charge.noise_multiplier, release.units, len(charge.trained)))
        assert "old" not in [present[i] for i in charge.trained]
    assert outcomes[0] == outcomes[1]


def test_a_bound_the_planned_rounds_just_meet_lets_each_of_them_through(tmp_path):
    """The other side of the test above: the bound counts this run's releases to come, not
    more (a site counting its past rounds again would refuse the last of them)."""
    small = distributed_request(1, cohort_size=3, tolerated_sites=1)
    policy = replace(POLICY, max_epsilon_alone=5.0)  # below max-epsilon: it fixes the order
    setup = replace(small, run_name="run-setup", privacy_model="local", cohort_size=0)
    for site in ("probe", "site", "short"):  # one order for the three ledgers, fixed here
        create_site_secret(tmp_path / site)
        charge_round(tmp_path / site, ["someone-else"], setup, policy, HEAD_DIM)
    probe = [charge_round(tmp_path / "probe", UNITS, replace(small, server_round=r), policy,
                          HEAD_DIM) for r in (1, 2, 3)]
    met = replace(policy, max_epsilon_alone=probe[-1].epsilon_alone_all_runs * 1.001)
    assert met.max_epsilon_alone < met.max_epsilon
    for server_round in (1, 2, 3):
        charge_round(tmp_path / "site", UNITS, replace(small, server_round=server_round), met,
                     HEAD_DIM)
    assert len(read_ledger(tmp_path / "site", site_secret(tmp_path / "site")).releases) == 4
    # and a bound just short of them refuses the run for a unit new to the site, and, for
    # units that trained, lets them train until the last round, which they sit out
    short = replace(policy, max_epsilon_alone=probe[-1].epsilon_alone_all_runs * 0.999)
    with pytest.raises(PolicyRefusal):
        charge_round(tmp_path / "short", UNITS, small, short, HEAD_DIM)
    charge_round(tmp_path / "short", UNITS, small, policy, HEAD_DIM)
    charge_round(tmp_path / "short", UNITS, replace(small, server_round=2), short, HEAD_DIM)
    with pytest.raises(BudgetExhausted):
        charge_round(tmp_path / "short", UNITS, replace(small, server_round=3), short, HEAD_DIM)


def test_local_releases_hold_each_unit_to_max_epsilon_alone_too(tmp_path):
    """Found in review: only distributed releases checked the own-noise account, so local
    rounds (or DP evaluations) after distributed ones took a unit past max-epsilon-alone, which
    the site states as a per-unit bound over all its releases. A local release's noise is all
    the site's own: the units a distributed run took to the bound sit out, a new one trains."""
    first = charge_round(tmp_path, UNITS, distributed_request(1), POLICY, HEAD_DIM)
    bound = replace(POLICY, max_epsilon_alone=first.epsilon_alone_all_runs * 1.001)
    local = replace(distributed_request(1), run_name="run-l", privacy_model="local",
                    cohort_size=0)
    charge = charge_round(tmp_path, [*UNITS, "new"], local, bound, HEAD_DIM)
    assert charge.trained == [len(UNITS)]
    with pytest.raises(BudgetExhausted):
        charge_round(tmp_path, UNITS, replace(local, run_name="run-m"), bound, HEAD_DIM)


@pytest.mark.parametrize("max_epsilon", [math.inf, 60.0])
def test_a_site_that_never_made_a_distributed_release_is_held_to_max_epsilon_only(tmp_path,
                                                                                  max_epsilon):
    """Found in review: held to max-epsilon-alone too, a site whose max-epsilon was inf (or
    above max-epsilon-alone) trained no unit, or stopped part way: the bound converts badly at
    the Rényi order its max-epsilon fixed, and without a distributed release both accounts are
    the spend anyway."""
    policy = replace(POLICY, max_epsilon=max_epsilon)
    local = replace(distributed_request(1), run_name="run-l", privacy_model="local",
                    cohort_size=0)
    for server_round in (1, 2, 3):
        charge = charge_round(tmp_path, UNITS, replace(local, server_round=server_round),
                              policy, HEAD_DIM)
        assert charge.trained == list(range(len(UNITS)))


@pytest.mark.parametrize("max_epsilon", [math.inf, 50.0])
def test_a_site_whose_max_epsilon_alone_binds_fixes_its_renyi_order_for_it(tmp_path,
                                                                          max_epsilon):
    """Found in review: the ledger's order was fixed for max-epsilon alone (1.1 for inf, 1.7
    for 50), where max-epsilon-alone 14 (or the default 50, under inf) converts to little or no
    Rényi budget: the site declined every distributed run, even one that costs a unit new to
    it 7 of the 14. Fixed for the smaller bound, it trains every unit in every round."""
    policy = replace(POLICY, max_epsilon=max_epsilon, max_epsilon_alone=14.0, max_delta=1e-5)
    small = distributed_request(1, cohort_size=3, tolerated_sites=1, delta=1e-6,
                                plan_delta=1e-5)  # the site's own delta fixes the order
    for server_round in (1, 2, 3):
        charge = charge_round(tmp_path, UNITS, replace(small, server_round=server_round),
                              policy, HEAD_DIM)
        assert charge.trained == list(range(len(UNITS)))
    assert charge.epsilon_alone_all_runs <= 14.0
    ledger = read_ledger(tmp_path, site_secret(tmp_path))
    assert ledger.order == filter_order(14.0, 1e-6) != filter_order(14.0, 1e-5)
    # a site that takes no part in distributed DP keeps the order best for its max-epsilon
    local_only = replace(policy, max_epsilon=50.0, privacy_models=("local",))
    local = replace(small, privacy_model="local", cohort_size=0, tolerated_sites=0)
    create_site_secret(tmp_path / "local")
    charge_round(tmp_path / "local", UNITS, local, local_only, HEAD_DIM)
    local_ledger = read_ledger(tmp_path / "local", site_secret(tmp_path / "local"))
    assert local_ledger.order == filter_order(50.0, local_ledger.delta) < ledger.order


def test_local_runs_after_distributed_ones_plan_their_noise_for_max_epsilon_alone(tmp_path):
    """Found in review: a local run planned its noise for max-epsilon only, so on a site whose
    max-epsilon-alone is the smaller bound (which holds local releases once the site has made a
    distributed one) units new to the site sat out the run's last rounds at max-epsilon-alone.
    Planned for the smaller budget, a new unit finishes the run within it; a run that needs
    far more noise than its plan for that is declined up front, naming the bound."""
    policy = replace(POLICY, max_epsilon=20.0, max_epsilon_alone=8.0)
    charge_round(tmp_path, UNITS, distributed_request(1, cohort_size=3, tolerated_sites=1),
                 policy, HEAD_DIM)
    local = replace(distributed_request(1), run_name="run-l", privacy_model="local",
                    cohort_size=0, tolerated_sites=0, target_epsilon=9.0, num_rounds=5)
    newcomers = [f"new{i}" for i in range(20)]
    for server_round in range(1, 6):
        charge = charge_round(tmp_path, newcomers, replace(local, server_round=server_round),
                              policy, HEAD_DIM)
        assert charge.trained == list(range(len(newcomers)))
    assert 7.9 < charge.epsilon_alone_all_runs <= 8.0
    with pytest.raises(PolicyRefusal, match="max-epsilon-alone 8 ") as refused:
        charge_round(tmp_path, newcomers, replace(local, run_name="run-m", target_epsilon=30.0),
                     policy, HEAD_DIM)
    assert refused.value.reason == Reason.NOISE_REFUSED
    # the smaller bound, not max-epsilon-alone: where max-epsilon is the smaller, it decides
    larger_alone = replace(policy, max_epsilon_alone=50.0)
    with pytest.raises(PolicyRefusal, match="max-epsilon 20 ") as refused:
        charge_round(tmp_path, newcomers, replace(local, run_name="run-n", target_epsilon=60.0),
                     larger_alone, HEAD_DIM)
    assert refused.value.reason == Reason.NOISE_REFUSED


def test_a_distributed_round_leaves_out_the_units_whose_budget_is_spent(tmp_path):
    policy = replace(POLICY, max_epsilon=3.5)
    for server_round in (1, 2, 3):
        charge_round(tmp_path, UNITS[:25], distributed_request(server_round), policy, HEAD_DIM)
    later = charge_round(tmp_path, UNITS, replace(distributed_request(1), run_name="run-e"),
                         policy, HEAD_DIM)
    assert later.trained == list(range(25, 50))
    assert max(unit_epsilons(read_ledger(tmp_path, site_secret(tmp_path)))) <= 3.5


class HostileGrid(LoopbackGrid):
    """A server that rewrites, per site, what one SecAgg+ stage asks (``rewrite(stage,
    configs, node)`` edits the configs in place); every reply that left a site is kept."""

    def __init__(self, sites, run_config, rewrite) -> None:
        super().__init__(sites, run_config)
        self.rewrite = rewrite
        self.answered: dict[str, list[Message]] = {}

    def send_and_receive(self, messages, *, timeout=None):
        stage = str(messages[0].content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        for msg in messages:
            self.rewrite(stage, msg.content.config_records[RECORD_KEY_CONFIGS],
                         msg.metadata.dst_node_id)
        replies = super().send_and_receive(messages, timeout=timeout)
        self.answered[stage] = copy.deepcopy(replies)
        return replies


def in_both_lists(stage, configs, node):
    """Site 101 named as survived and dropped: its self-mask share and its key share."""
    if stage == Stage.UNMASK:
        configs[Key.DEAD_NODE_ID_LIST] = [*configs[Key.DEAD_NODE_ID_LIST], 101]


def named_twice(stage, configs, node):
    if stage == Stage.UNMASK:
        configs[Key.ACTIVE_NODE_ID_LIST] = [*configs[Key.ACTIVE_NODE_ID_LIST], 101]


def unknown_peer(stage, configs, node):
    if stage == Stage.UNMASK:
        configs[Key.DEAD_NODE_ID_LIST] = [*configs[Key.DEAD_NODE_ID_LIST], 999]


def itself_dropped(stage, configs, node):
    """Each site told it dropped (its own key share) although it sent its masked vector."""
    if stage == Stage.UNMASK:
        configs[Key.ACTIVE_NODE_ID_LIST] = [n for n in configs[Key.ACTIVE_NODE_ID_LIST]
                                            if n != node]
        configs[Key.DEAD_NODE_ID_LIST] = [*configs[Key.DEAD_NODE_ID_LIST], node]


def extra_peer(stage, configs, node):
    """One more site than the round set up: a sybil whose keys the server holds."""
    if stage == Stage.SHARE_KEYS:
        configs["999"] = [b"k" * 32, b"l" * 32]


def peer_written_twice(stage, configs, node):
    """Site 102's keys again under "0102" (Flower reads both as node 102)."""
    if stage == Stage.SHARE_KEYS and "102" in configs:
        configs["0102"] = [b"k" * 32, b"l" * 32]


@pytest.mark.parametrize("rewrite", [in_both_lists, named_twice, unknown_peer, itself_dropped,
                                     extra_peer, peer_written_twice])
@pytest.mark.parametrize("privacy_model", ["distributed", "local"])
def test_a_site_gives_no_share_to_a_server_that_could_unmask_one_update(decoded, rewrite,
                                                                        privacy_model):
    """Each rewrite would give a hostile server both secrets of one site (its self-mask seed and
    its pairwise-mask key), or a share of them to a peer it invented. Every site asked declines
    with the fixed reason and gives no share; no sum is released."""
    if privacy_model == "distributed":
        run_config, sites = DISTRIBUTED, {101 + i: site_integers(i) for i in range(4)}
    else:  # DP-SGD updates, masked as they are
        run_config = RUN_CONFIG_DEFAULTS | {"secure-aggregation": True, "min-sites": 4}
        sites = {101 + i: {k: (v / 10**6).astype(np.float32)
                           for k, v in site_integers(i).items()} for i in range(4)}
    secure, grid = secure_round(sites, run_config=run_config,
                                grid=HostileGrid(sites, run_config, rewrite))
    assert secure.aggregate is None and not decoded
    stage = Stage.SHARE_KEYS if rewrite in (extra_peer, peer_written_twice) else Stage.UNMASK
    answers = grid.answered[stage]
    assert len(answers) == 4 and all(r.has_error() for r in answers)
    assert {r.error.reason for r in answers} == {Reason.UNMASK_REFUSED.value}
    assert Stage.UNMASK not in grid.answered or stage == Stage.UNMASK


@pytest.mark.parametrize("privacy_model", ["distributed", "local"])
def test_a_site_refuses_a_threshold_of_half_the_sites_or_fewer(privacy_model):
    """With 3 of 6, a server could ask three sites for one site's self-mask shares and the
    other three for its key shares: a threshold of each."""
    run_config = DISTRIBUTED | {"privacy-model": privacy_model, "tolerated-sites": 3}
    target = sum_range(6)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                      run_config=run_config)
    half = setup_message(6, 6, 3, target, target / 2, cohort=6)
    assert secure_aggregation_mod(half, context, lambda m, c: None).error.reason == (
        Reason.MODEL_REFUSED if privacy_model == "distributed" else Reason.UNMASK_REFUSED).value
    majority = setup_message(6, 6, distributed_threshold(6, 3) if privacy_model == "distributed"
                             else 4, target, target / 2, cohort=6)
    assert not secure_aggregation_mod(majority, context, lambda m, c: None).has_error()


def test_a_site_refuses_a_threshold_its_tolerated_colluders_could_unmask_it_under():
    """Found in review: at 9 sites tolerating 3, threshold 6 (two thirds, and 9 - 3) let the 3
    colluders the guarantee survives hand over both their shares of one site's two secrets
    while the honest sites, shown differing survivor lists, gave 3 of each: 6 and 6, the site
    unmasked with only its own noise share. 2 x threshold must exceed 9 + 3."""
    run_config = DISTRIBUTED | {"tolerated-sites": 3, "min-sites": 9}
    target = sum_range(9)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                      run_config=run_config)
    six = setup_message(9, 9, 6, target, target / 2, cohort=9)
    assert secure_aggregation_mod(six, context, lambda m, c: None).error.reason == \
        Reason.MODEL_REFUSED.value
    assert distributed_threshold(9, 3) == 7
    seven = setup_message(9, 9, 7, target, target / 2, cohort=9)
    assert not secure_aggregation_mod(seven, context, lambda m, c: None).has_error()
    # below a third of the cohort tolerated, cohort - tolerated already suffices
    assert [distributed_threshold(n, t) for n, t in ((5, 1), (10, 2), (10, 3), (10, 4))] == \
        [4, 8, 7, 8]


def test_a_site_refuses_a_threshold_that_could_unmask_a_sum_of_two():
    """2 of 3 is a majority, but a sum of two sites could then be unmasked, and each of the two
    learns the other's update from it."""
    target = sum_range(3)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                      run_config=RUN_CONFIG_DEFAULTS | {"secure-aggregation": True})
    two = setup_message(3, 3, 2, target, target / 2, cohort=3)
    assert secure_aggregation_mod(two, context, lambda m, c: None).error.reason == \
        Reason.UNMASK_REFUSED.value
    three = setup_message(3, 3, 3, target, target / 2, cohort=3)
    assert not secure_aggregation_mod(three, context, lambda m, c: None).has_error()



@pytest.mark.parametrize("sample,share", [(MAX_SECURE_SITES + 1, 3),
                                          (MAX_SECURE_SITES + 1, MAX_SECURE_SITES + 1)])
def test_a_site_joins_no_secure_sum_of_more_sites_than_it_can_share_keys_with(sample, share):
    """Found in review: the secret shares cost a site the square of the peer count, before it
    can check one peer's key (2,000 peers: 30 s of CPU); a round set up with more than
    MAX_SECURE_SITES is refused at setup, and so its key sharing never starts."""
    target = sum_range(3)
    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(),
                      run_config=RUN_CONFIG_DEFAULTS | {"secure-aggregation": True})
    many = setup_message(sample, share, share, target, target / 2, cohort=3)
    assert secure_aggregation_mod(many, context, lambda m, c: None).error.reason == \
        Reason.UNMASK_REFUSED.value
    at_most = setup_message(MAX_SECURE_SITES, MAX_SECURE_SITES, MAX_SECURE_SITES, target,
                            target / 2, cohort=3)
    assert not secure_aggregation_mod(at_most, context, lambda m, c: None).has_error()


VICTIM, PARTNERS = 101, (102, 103)


def few_partners(stage, configs, node):
    """Threshold 4 of 5 (the least that 5 sites tolerating 2 allow), and at the collect stage
    the victim is forwarded the key shares of two peers only (Flower's mod asks for threshold -
    1): it would mask with those two, whose keys the other sites' dropped lists could rebuild
    (each list consistent on its own), unmasking the victim alone."""
    if stage == Stage.SETUP:
        configs[Key.THRESHOLD] = 4
    if stage == Stage.COLLECT_MASKED_VECTORS and node == VICTIM:
        kept = [i for i, src in enumerate(configs[Key.SOURCE_LIST]) if src in PARTNERS]
        configs[Key.SOURCE_LIST] = [configs[Key.SOURCE_LIST][i] for i in kept]
        configs[Key.CIPHERTEXT_LIST] = [configs[Key.CIPHERTEXT_LIST][i] for i in kept]


def all_but_one_partner(stage, configs, node):
    """The server's own threshold (4 of 5), the victim forwarded all its peers' shares but one:
    with other thresholds told to the other sites (which a site cannot see), few partners are
    enough to rebuild every partner's key, so only all of them hide the update."""
    if stage == Stage.COLLECT_MASKED_VECTORS and node == VICTIM:
        configs[Key.SOURCE_LIST] = configs[Key.SOURCE_LIST][:-1]
        configs[Key.CIPHERTEXT_LIST] = configs[Key.CIPHERTEXT_LIST][:-1]


def repeated_partner(stage, configs, node):
    """One peer's key shares forwarded twice, to count as two partners."""
    if stage == Stage.COLLECT_MASKED_VECTORS and node == VICTIM:
        configs[Key.SOURCE_LIST] = [*configs[Key.SOURCE_LIST], configs[Key.SOURCE_LIST][0]]
        configs[Key.CIPHERTEXT_LIST] = [*configs[Key.CIPHERTEXT_LIST],
                                        configs[Key.CIPHERTEXT_LIST][0]]


@pytest.mark.parametrize("rewrite", [few_partners, all_but_one_partner, repeated_partner])
@pytest.mark.parametrize("privacy_model", ["distributed", "local"])
def test_a_site_masks_with_too_few_partners_for_no_update_and_trains_nothing(decoded, rewrite,
                                                                             privacy_model):
    """The victim declines the collect stage with the fixed reason before its train handler
    runs (nothing trained, charged or masked); the other sites, forwarded every peer's shares,
    answer as usual."""
    run_config = DISTRIBUTED | {"privacy-model": privacy_model, "tolerated-sites": 2,
                                "min-sites": 5}
    sites = {101 + i: site_integers(i) for i in range(5)}
    if privacy_model == "local":  # DP-SGD updates, masked as they are
        sites = {node: {k: (v / 10**6).astype(np.float32) for k, v in update.items()}
                 for node, update in sites.items()}
    grid = HostileGrid(sites, run_config, rewrite)
    trained = []
    honest_handler = grid.handler
    grid.handler = lambda node: (lambda m, c: trained.append(node) or honest_handler(node)(m, c))
    secure_round(sites, run_config=run_config, grid=grid)
    answers = {r.metadata.src_node_id: r for r in grid.answered[Stage.COLLECT_MASKED_VECTORS]}
    assert answers[VICTIM].has_error()
    assert answers[VICTIM].error.reason == Reason.UNMASK_REFUSED.value
    assert VICTIM not in trained and sorted(trained) == [102, 103, 104, 105]
    assert not any(answers[node].has_error() for node in (102, 103, 104, 105))

