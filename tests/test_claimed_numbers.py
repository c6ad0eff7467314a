"""The server trusts no number a site claims: its example count (its weight in the average),
the size of its update (bounded by what its DP settings allow) and its privacy numbers (held
against the run's plan). One class of lie per test, each on a site that is otherwise honest."""

import json
import math

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from test_update_validation import FakeGrid, evaluate

from fl_client.dp_training import TrainingPlan, train_locally
from fl_client.privacy_accounting import epsilon_spent, plan_noise_multiplier, steps_per_round
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_config import RunConfigError, check_run_config
from fl_server.run_record import RunRecord
from fl_server.secure_aggregation import SecureRound, incompatibility
from fl_server.strategy import aggregate_evaluate_metrics, build_strategy
from fl_server.update_validation import (
    InvalidReply,
    RunPlan,
    array_spec,
    check_privacy_claims,
    check_train_reply,
    sufficient_noise,
)

pytestmark = pytest.mark.usefixtures("task_identity")

FEATURES, LABELS = 16, 5
CONFIG = RUN_CONFIG_DEFAULTS | {"num-rounds": 3, "learning-rate": 96.0, "target-epsilon": 8.0}
PLAN = RunPlan.from_run_config(CONFIG)


def dp_reply(units: int = 40, seed: int = 0, plan: RunPlan = PLAN) -> tuple[dict, dict, dict]:
    """(global model, honest update, honest metrics) of one round of local DP-SGD, trained the
    way a site trains, with the noise planned for the run's target epsilon."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(FEATURES, LABELS)
    start = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    features = torch.randn(units, FEATURES) * 3
    labels = torch.randint(0, LABELS, (units,))
    rate, steps = steps_per_round(units, plan.batch_size, plan.local_epochs)
    sigma = plan_noise_multiplier(plan.target_epsilon, 1e-5, rate, steps * plan.num_rounds, "rdp")
    train_locally(model, features, labels, TrainingPlan(
        noise_multiplier=sigma, clip_norm=plan.clip_norm, batch_size=plan.batch_size,
        local_epochs=plan.local_epochs, learning_rate=plan.learning_rate,
        charged=(rate, steps)), seed=seed)
    metrics = {
        "num-examples": units, "steps": steps, "delta": 1e-5,
        "epsilon": epsilon_spent([(sigma, rate, steps)], 1e-5, "rdp"),
        "noise-multiplier": sigma, "sample-rate": rate, "clip-norm": plan.clip_norm,
        "privacy-units": units, "max-epsilon": 8.0,
    }
    return start, {k: v.detach().numpy() for k, v in model.state_dict().items()}, metrics


def content(arrays: dict, metrics: dict) -> RecordDict:
    return RecordDict({"arrays": ArrayRecord({k: Array(np.asarray(v)) for k, v in arrays.items()}),
                       "metrics": MetricRecord(metrics)})


def check(start: dict, arrays: dict, metrics: dict, plan: RunPlan = PLAN) -> float:
    spec = array_spec(ArrayRecord({k: Array(v) for k, v in start.items()}))
    return check_train_reply(content(arrays, metrics), spec, start, max_update_norm=0.0,
                             plan=plan)


@pytest.mark.parametrize("units,epochs,batch", [(1, 1, 4096), (3, 1, 4096), (40, 1, 4096),
                                                (50, 2, 8), (7, 3, 2)])
def test_an_honest_dp_update_is_never_rejected(units, epochs, batch):
    plan = RunPlan.from_run_config(CONFIG | {"local-epochs": epochs, "batch-size": batch})
    for seed in range(3):
        start, update, metrics = dp_reply(units, seed, plan)
        check(start, update, metrics, plan)


@pytest.mark.parametrize("boost", [100.0, 3e38])
def test_an_update_beyond_what_dp_allows_is_rejected_by_default(boost):
    start, update, metrics = dp_reply()
    boosted = {k: start[k] + (update[k] - start[k]) * boost if boost < 1e30
               else np.full_like(update[k], boost) for k in start}
    with pytest.raises(InvalidReply, match="derived from the run's DP settings"):
        check(start, boosted, metrics)


def test_a_site_cannot_widen_its_bound_by_overstating_its_noise():
    start, update, metrics = dp_reply()
    with pytest.raises(InvalidReply, match="noise-multiplier"):
        check(start, update, metrics | {"noise-multiplier": 1e30})


def test_max_update_norm_encodings():
    start, update, metrics = dp_reply()
    boosted = {k: start[k] + (update[k] - start[k]) * 100 for k in start}
    spec = array_spec(ArrayRecord({k: Array(v) for k, v in start.items()}))
    reply = content(boosted, metrics)
    norm = check_train_reply(reply, spec, start, max_update_norm=math.inf, plan=PLAN)  # off
    with pytest.raises(InvalidReply, match=r"\(set\)"):
        check_train_reply(reply, spec, start, max_update_norm=norm / 2, plan=PLAN)
    for value in (0.0, 5.0, math.inf):
        assert check_run_config({"max-update-norm": value})["max-update-norm"] == value
    with pytest.raises(RunConfigError, match="max-update-norm must be >= 0"):
        check_run_config({"max-update-norm": -1.0})
    secure = CONFIG | {"secure-aggregation": True, "min-sites": 3}
    assert incompatibility(secure | {"max-update-norm": 0.0}) is None
    assert incompatibility(secure | {"max-update-norm": math.inf}) is None
    assert "max-update-norm" in incompatibility(secure | {"max-update-norm": 5.0})


@pytest.mark.parametrize("claims,reason", [
    ({"epsilon": -7.0}, "epsilon"),
    ({"epsilon": math.inf}, "above the run's target-epsilon"),
    ({"epsilon": 9.0}, "above the run's target-epsilon"),
    ({"delta": 0.9}, "delta"),
    ({"delta": 0.0}, "delta"),
    ({"delta": 2e-5}, "delta"),
    ({"clip-norm": 5.0}, "clip-norm"),
    ({"steps": 3}, "steps"),
    ({"sample-rate": 0.5}, "sample-rate"),
    ({"privacy-units": 4}, "units"),
    ({"noise-multiplier": math.inf}, "noise-multiplier"),
])
def test_privacy_claims_inconsistent_with_the_plan_are_rejected(claims, reason):
    start, update, metrics = dp_reply()
    check(start, update, metrics)
    with pytest.raises(InvalidReply, match=reason):
        check(start, update, metrics | claims)


@pytest.mark.parametrize("name", ["noise-multiplier", "sample-rate", "clip-norm", "steps",
                                  "privacy-units"])
def test_a_dp_claim_without_its_release_is_rejected(name):
    """A finite epsilon is only believed with the release it was computed for: without one, the
    claim could not be held to the plan, nor the update bound derived."""
    start, update, metrics = dp_reply()
    with pytest.raises(InvalidReply, match=rf"a DP claim \(epsilon .*\) without \['{name}'\]"):
        check(start, update, {key: value for key, value in metrics.items() if key != name})


@pytest.mark.parametrize("epsilon", [-1.0, -math.inf, math.nan])
def test_privacy_claims_held_alone_refuse_an_epsilon_no_release_has(epsilon):
    """``check_privacy_claims`` is a public check: it refuses a negative or NaN epsilon itself,
    not only behind the reply contract's (found by the stop-67 mutation pass)."""
    _, _, metrics = dp_reply()
    check_privacy_claims(MetricRecord(metrics), PLAN)
    with pytest.raises(InvalidReply, match="epsilon"):
        check_privacy_claims(MetricRecord(metrics | {"epsilon": epsilon}), PLAN)


def test_a_resumed_run_allows_the_epsilon_of_the_rounds_it_trains_again():
    """Rounds a resume trains again are charged twice by the sites: 4 charges of a 3-round plan
    at target 8 may reach 8 x 4 / 3, and no more."""
    start, update, metrics = dp_reply()
    resumed = RunPlan.from_run_config(CONFIG, retrained_rounds=1)
    check(start, update, metrics | {"epsilon": 10.0}, resumed)
    with pytest.raises(InvalidReply, match="with the 1 rounds a resume trains again"):
        check(start, update, metrics | {"epsilon": 11.0}, resumed)
    with pytest.raises(InvalidReply, match="above the run's target-epsilon"):
        check(start, update, metrics | {"epsilon": 10.0})


def test_privacy_claims_of_runs_without_dp_and_with_a_run_delta():
    no_dp = RunPlan.from_run_config(CONFIG | {"target-epsilon": math.inf})
    check_privacy_claims(MetricRecord({"num-examples": 5, "epsilon": math.inf, "delta": 0.0}),
                         no_dp)
    with pytest.raises(InvalidReply, match="delta"):
        check_privacy_claims(MetricRecord({"num-examples": 5, "epsilon": math.inf,
                                           "delta": 0.9}), no_dp)
    run_delta = RunPlan.from_run_config(CONFIG | {"delta": 1e-3})
    _, _, metrics = dp_reply()
    check_privacy_claims(MetricRecord(metrics | {"delta": 1e-3}), run_delta)
    with pytest.raises(InvalidReply, match="delta"):
        check_privacy_claims(MetricRecord(metrics | {"delta": 2e-3}), run_delta)


def train_round(tmp_path, answers: dict, plan: RunPlan = PLAN) -> tuple[ArrayRecord | None, dict]:
    """One plain round over sites that answer ``answers[node]`` (update, metrics)."""
    start, _, _ = dp_reply()
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    spec = array_spec(ArrayRecord({k: Array(v) for k, v in start.items()}))
    strategy = build_strategy("fedavg", record, spec, min_sites=1, server_learning_rate=1.0,
                              max_update_norm=0.0, reply_timeout=5.0, plan=plan)
    grid = FakeGrid(list(answers))
    begin = ArrayRecord({k: Array(v) for k, v in start.items()})
    messages = strategy.configure_train(1, begin, ConfigRecord({}), grid)
    arrays, _ = strategy.aggregate_train(1, grid.send_and_receive(
        messages, lambda m: Message(content(*answers[m.metadata.dst_node_id]), reply_to=m)))
    evaluate(strategy, grid, arrays if arrays is not None else begin)
    return arrays, json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]


def test_a_site_claiming_far_more_examples_than_the_others_is_rejected_and_recorded(tmp_path):
    _, update, _ = dp_reply()
    metrics = {"num-examples": 40, "epsilon": math.inf, "delta": 0.0}
    inflated = metrics | {"num-examples": 1e9}
    no_dp = RunPlan.from_run_config(CONFIG | {"target-epsilon": math.inf})
    arrays, entry = train_round(tmp_path, {1: (update, metrics), 2: (update, inflated),
                                           3: (update, metrics | {"num-examples": 500})}, no_dp)
    failures = {f["node_id"]: (f["kind"], f["reason"]) for f in entry["failures"]}
    assert entry["sites_trained"] == 2 and failures["2"][0] == "rejected"
    assert "num-examples 1e+09 is above 20 x the other sites' median 270" in failures["2"][1]
    np.testing.assert_allclose(arrays["weight"].numpy(), update["weight"], rtol=1e-6)


def test_a_boosted_update_and_a_false_epsilon_are_rejected_and_recorded(tmp_path):
    start, update, metrics = dp_reply()
    boosted = {k: start[k] + (update[k] - start[k]) * 100 for k in start}
    _, entry = train_round(tmp_path, {1: (update, metrics), 2: (boosted, metrics),
                                      3: (update, metrics | {"epsilon": -7.0})})
    failures = {f["node_id"]: (f["kind"], f["reason"]) for f in entry["failures"]}
    assert entry["sites_trained"] == 1 and set(failures) == {"2", "3"}
    assert "max-update-norm" in failures["2"][1] and "epsilon" in failures["3"][1]


def test_a_secure_round_with_an_inflated_claim_is_dropped_and_recorded(tmp_path):
    start, _, _ = dp_reply()
    metrics = {"num-examples": 40, "epsilon": math.inf, "delta": 0.0}
    no_dp = RunPlan.from_run_config(CONFIG | {"target-epsilon": math.inf})
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    spec = array_spec(ArrayRecord({k: Array(v) for k, v in start.items()}))
    strategy = build_strategy("fedavg", record, spec, min_sites=1, server_learning_rate=1.0,
                              max_update_norm=0.0, reply_timeout=5.0, plan=no_dp)
    grid = FakeGrid([1, 2, 3])
    begin = ArrayRecord({k: Array(v) for k, v in start.items()})
    asked = list(strategy.configure_train(1, begin, ConfigRecord({}), grid))
    for number, message in enumerate(asked):
        message.metadata.__dict__["_message_id"] = f"m{number}"
    claims = {1: metrics, 2: metrics, 3: metrics | {"num-examples": 1e9}}
    replies = [Message(RecordDict({"metrics": MetricRecord(claims[m.metadata.dst_node_id])}),
                       reply_to=m) for m in asked]
    secure = SecureRound(replies, begin, {"sites_asked": 3})
    assert strategy.aggregate_secure_train(1, secure) == (None, None)
    evaluate(strategy, grid, begin)
    entry = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert [f["node_id"] for f in entry["failures"]] == ["3"]
    assert "num-examples 1e+09 is above 20 x" in entry["failures"][0]["reason"]
    assert "dropped" in entry["secure_aggregation"]


def test_the_record_counts_the_rounds_each_resume_trains_again(tmp_path):
    path = tmp_path / "metrics.json"
    RunRecord.start(path, 1, CONFIG, ["a", "b"])
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(doc | {"status": "failed", "rounds": [{"round": 1}, {"round": 2}]}))
    # Resumed from the round-1 checkpoint: round 2 is dropped, and a round the crash cut off
    # before it was recorded may have been charged too.
    assert RunRecord.resume(path, 2, 1, CONFIG, {}).retrained_rounds() == 2
    assert RunRecord.start(tmp_path / "fresh.json", 3, CONFIG, ["a"]).retrained_rounds() == 0


@pytest.mark.parametrize("noise", [1e150, 1e200])
def test_a_site_cannot_widen_its_bound_by_claiming_huge_noise_at_epsilon_zero(noise):
    """Found in review: an epsilon no larger than the noise allows passed, however small, so
    noise 1e150 at epsilon 0 widened the site's own bound until any finite update fit (and 1e200
    overflowed the check). The noise claimed is held to ``MAX_NOISE_RATIO`` times a noise that
    suffices for the run's target."""
    start, update, metrics = dp_reply()
    poison = {k: np.full_like(v, 1e30) for k, v in start.items()}
    with pytest.raises(InvalidReply, match="noise-multiplier .* is above 10 x"):
        check(start, poison, metrics | {"noise-multiplier": noise, "epsilon": 0.0})


def test_the_noise_cap_lets_an_honest_site_through_at_ten_times_its_plan():
    """A site whose budget needs far more noise than the run planned (its ``max-noise-ratio``
    raised) still passes while its noise is within the cap: the sufficient noise is above any
    accountant's plan."""
    start, update, metrics = dp_reply()
    sigma = metrics["noise-multiplier"]
    bound = sufficient_noise(PLAN.target_epsilon, metrics["delta"],
                             metrics["steps"] * PLAN.num_rounds)
    assert sigma < bound < 1.5 * sigma
    check(start, update, metrics | {"noise-multiplier": 9.9 * sigma, "epsilon": 0.5})
    with pytest.raises(InvalidReply, match="noise-multiplier"):
        check(start, update, metrics | {"noise-multiplier": 10.01 * bound, "epsilon": 0.5})


@pytest.mark.parametrize("claims", [
    {"privacy-units": math.inf}, {"privacy-units": math.nan}, {"steps": 1.5},
    {"site-key": math.inf}, {"site-key": -1}, {"site-key": 2.0**49},
    {"sample-rate": 0.0}, {"epsilon-all-runs": math.nan}, {"epsilon-alone": -1.0},
    {"max-epsilon": math.nan}, {"delta": math.inf}, {"clip-norm": math.inf},
], ids=lambda claims: "-".join(f"{k}={v}" for k, v in claims.items()))
def test_every_number_a_site_sends_is_checked_before_anything_uses_it(claims):
    """Found in review: unchecked numbers (an infinite unit count or site key) raised outside
    the reply check, and one site's reply ended the whole run."""
    start, update, metrics = dp_reply()
    with pytest.raises(InvalidReply):
        check(start, update, metrics | claims)


def test_malformed_and_poisoned_replies_are_rejected_and_the_round_goes_on(tmp_path):
    start, honest, metrics = dp_reply(40, 0)
    _, other, other_metrics = dp_reply(40, 1)
    poison = {k: np.full_like(v, 1e30) for k, v in start.items()}
    arrays, entry = train_round(tmp_path, {
        1: (honest, metrics | {"site-key": 1234}),
        2: (other, other_metrics | {"site-key": 99}),
        3: (poison, metrics | {"noise-multiplier": 1e150, "epsilon": 0.0}),
        4: (honest, metrics | {"noise-multiplier": 1e200}),
        5: (honest, metrics | {"site-key": math.inf}),
        6: (honest, metrics | {"privacy-units": math.nan}),
    })
    failures = {f["node_id"]: f["kind"] for f in entry["failures"]}
    assert failures == {"3": "rejected", "4": "rejected", "5": "rejected", "6": "rejected"}
    assert entry["sites_trained"] == 2
    assert max(np.abs(arrays[k].numpy()).max() for k in arrays) < 100


def test_a_site_claiming_another_sites_key_is_recorded_beside_it_not_over_it(tmp_path):
    """Found in review: the record keyed sites by the key they claim, so a second claim of one
    key overwrote the first: three updates averaged, two recorded."""
    start, honest, metrics = dp_reply(40, 0)
    _, other, other_metrics = dp_reply(40, 1)
    _, entry = train_round(tmp_path, {1: (honest, metrics | {"site-key": 1234}),
                                      2: (other, other_metrics | {"site-key": 99}),
                                      3: (other, other_metrics | {"site-key": 1234})})
    assert entry["sites_trained"] == 3
    by_node = {site["node_id"]: site for site in entry["sites"].values()}
    assert set(by_node) == {"1", "2", "3"}
    flagged = {node for node, site in by_node.items() if "duplicate_site_key" in site}
    assert len(flagged) == 1 and flagged <= {"1", "3"}  # the second of the two, in reply order


def test_one_site_cannot_set_the_rounds_accuracy_by_claiming_a_huge_test_split(tmp_path):
    """Found in review: evaluation replies weigh in by their claimed count, which had no bound,
    so one site claiming 1e12 test rows at accuracy 1.0 set the run's reported accuracy."""
    start, update, metrics = dp_reply()
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    spec = array_spec(ArrayRecord({k: Array(v) for k, v in start.items()}))
    strategy = build_strategy("fedavg", record, spec, min_sites=1, server_learning_rate=1.0,
                              max_update_norm=0.0, reply_timeout=5.0, plan=PLAN)
    grid = FakeGrid([1, 2, 3, 4])
    begin = ArrayRecord({k: Array(v) for k, v in start.items()})
    strategy.configure_train(1, begin, ConfigRecord({}), grid)
    honest = {"num-examples": 200, "loss": 2.0, "accuracy": 0.31, "macro-f1": 0.2}
    answers = {1: honest, 2: honest, 3: honest,
               4: {"num-examples": 1e12, "loss": 0.01, "accuracy": 1.0, "macro-f1": 1.0}}
    messages = strategy.configure_evaluate(1, begin, ConfigRecord({}), grid)
    replies = grid.send_and_receive(messages, lambda m: Message(
        RecordDict({"metrics": MetricRecord(answers[m.metadata.dst_node_id])}), reply_to=m))
    aggregated = strategy.aggregate_evaluate(1, replies)
    # capped at 20 x the others' median, not rejected (a DP evaluation's counts are noisy, so
    # the largest honest site would be dropped: found in review of the first fix)
    assert aggregated["accuracy"] == pytest.approx((3 * 200 * 0.31 + 20 * 200 * 1.0)
                                                   / (3 * 200 + 20 * 200))
    entry = json.loads((tmp_path / "metrics.json").read_text())["rounds"][0]
    assert not any(f["kind"] == "rejected" for f in entry.get("failures", []))
    honest_alone = aggregate_evaluate_metrics(
        [RecordDict({"metrics": MetricRecord(m)}) for m in (honest, honest | {"num-examples": 400},
                                                             honest | {"num-examples": 9})])
    assert honest_alone["accuracy"] == pytest.approx(0.31)  # every weight kept or capped
