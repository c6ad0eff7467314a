"""Per-site evaluation: each site's macro-F1 (one scalar, computed at the site), the server's
per-site record, the worst site's accuracy and the example-weighted macro-F1, and how a round
line and the final summary show them. A model that fails a small site must show it even when
the example-weighted accuracy looks fine."""

from pathlib import Path

import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from sklearn.metrics import f1_score

from fl_client.dp_training import evaluate, macro_f1
from fl_protocol.wire import Reason, error_reply
from fl_server.progress import round_lines
from fl_server.run_record import RunRecord, final_summary

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.mark.parametrize("seed", range(5))
def test_macro_f1_is_scikit_learns(seed):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 7, (40,), generator=generator)
    predictions = torch.randint(0, 9, (40,), generator=generator)  # some never true
    expected = f1_score(labels.numpy(), predictions.numpy(), average="macro")
    assert macro_f1(predictions, labels) == pytest.approx(expected)


def test_macro_f1_weighs_a_rare_class_like_a_common_one():
    labels = torch.tensor([0] * 9 + [1])
    always_common = torch.zeros(10, dtype=torch.long)
    assert macro_f1(always_common, labels) == pytest.approx((18 / 19) / 2)
    assert macro_f1(labels, labels) == 1.0


def test_evaluate_returns_loss_accuracy_and_macro_f1():
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
        model.bias.zero_()
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    scores = evaluate(model, features, torch.tensor([0, 1, 1]))
    assert scores.accuracy == pytest.approx(2 / 3)
    assert scores.macro_f1 == pytest.approx((2 / 3 + 2 / 3) / 2)


def evaluation_reply(node: int, examples: int, accuracy: float, f1: float) -> Message:
    asked = Message(RecordDict(), dst_node_id=node, message_type="evaluate")
    metrics = {"num-examples": examples, "loss": 1.0, "accuracy": accuracy, "macro-f1": f1}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=asked)


def train_reply(node: int, site_key: int) -> Message:
    asked = Message(RecordDict(), dst_node_id=node, message_type="train")
    metrics = {"num-examples": 10, "epsilon": 1.0, "site-key": site_key}
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=asked)


@pytest.fixture
def recorded(tmp_path) -> RunRecord:
    """A round where a large site does well and a small site (which trained in round 1 only,
    so the server knows its pseudonym from then) fails."""
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a", "b"])
    record.record_train(1, [train_reply(7, 0xAB), train_reply(8, 0xCD)], {})
    record.record_evaluate(1, [evaluation_reply(7, 90, 0.9, 0.8),
                               evaluation_reply(8, 10, 0.1, 0.05)], None)
    record.record_train(2, [train_reply(7, 0xAB)], {})
    # the example-weighted means, as Flower's FedAvg aggregates the two replies
    aggregated = MetricRecord({"accuracy": 0.82, "loss": 1.0, "macro-f1": 0.725})
    record.record_evaluate(2, [evaluation_reply(7, 90, 0.9, 0.8),
                               evaluation_reply(8, 10, 0.1, 0.05)], aggregated)
    return record


def test_the_record_keeps_each_sites_evaluation_and_the_worst_site(recorded):
    entry = recorded.doc["rounds"][1]
    small = f"site-{0xCD:012x}"
    assert entry["worst_site"] == small and entry["worst_site_accuracy"] == 0.1
    assert entry["macro_f1"] == pytest.approx(0.8 * 0.9 + 0.05 * 0.1)
    assert entry["evaluation"][small] == {"num_examples": 10, "loss": 1.0, "accuracy": 0.1,
                                          "macro_f1": 0.05, "node_id": "8"}
    final = final_summary(recorded.doc)
    assert final["accuracy"] == 0.82 and final["worst_site"] == small
    assert final["evaluation"] == entry["evaluation"]


def test_a_site_the_server_never_saw_train_is_named_by_node_id(tmp_path):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a"])
    record.record_evaluate(1, [evaluation_reply(5, 4, 0.5, 0.5)], None)
    assert record.doc["rounds"][0]["worst_site"] == "5"


def test_a_site_that_declines_after_training_is_named_by_its_pseudonym(recorded):
    """Found in review: a decline carries no site key, so the round line named the site by its
    node id next to lines naming it by its pseudonym. A node id that trained earlier in the run
    is the site it trained as; one never seen to train keeps its node id."""
    small = f"site-{0xCD:012x}"
    asked = {node: Message(RecordDict(), dst_node_id=node, message_type=kind)
             for node, kind in ((7, "train"), (8, "train"), (9, "evaluate"))}
    entry = recorded.record_train(3, [error_reply(asked[8], Reason.BUDGET_EXHAUSTED),
                                      error_reply(asked[7], Reason.INTERNAL)], {})
    assert [failure.get("site") for failure in entry["failures"]] == [
        small, f"site-{0xAB:012x}"]
    recorded.record_evaluate(3, [error_reply(asked[9], Reason.EVALUATION_REFUSED)], None)
    entry = recorded.doc["rounds"][-1]
    assert "site" not in entry["evaluation_failures"][0]
    assert round_lines(entry, 3, {small: "site-03"})[1:] == [
        f"  site {small} (site-03) did not train: {Reason.BUDGET_EXHAUSTED.value}",
        f"  site site-{0xAB:012x} did not train: {Reason.INTERNAL.value}",
        f"  site 9 did not evaluate: {Reason.EVALUATION_REFUSED.value}",
    ]


def test_the_round_line_shows_macro_f1_and_the_worst_site(recorded):
    small = f"site-{0xCD:012x}"
    [line] = round_lines(recorded.doc["rounds"][1], 2, {small: "site-03"})
    assert (f"eval accuracy 0.8200  macro-F1 0.7250  worst site 0.1000 ({small} (site-03))"
            in line)


def test_a_round_recorded_before_per_site_evaluation_prints_as_before():
    entry = {"round": 1, "sites_trained": 1, "sites_failed": 0, "accuracy": 0.5,
             "max_epsilon": 1.0}
    assert round_lines(entry, 1) == [
        "round   1/1  sites trained 1/1  eval accuracy 0.5000  max epsilon 1.000"]


def test_a_site_that_declines_evaluation_gets_a_line_and_one_that_did_not_train_no_second():
    crashed = {"node_id": "7", "kind": "failed", "reason": Reason.INTERNAL.value}
    declined = {"node_id": "8", "kind": "declined", "reason": Reason.EVALUATION_REFUSED.value}
    entry = {"round": 1, "sites_trained": 1, "sites_failed": 1, "max_epsilon": 1.0,
             "failures": [crashed], "evaluation_failures": [crashed, declined]}
    assert round_lines(entry, 1, {"8": "site-08"})[1:] == [
        f"  site 7 did not train: {Reason.INTERNAL.value}",
        f"  site 8 (site-08) did not evaluate: {Reason.EVALUATION_REFUSED.value}",
    ]


def test_the_readmes_sample_progress_is_what_a_round_prints():
    """README.md shows a round with one site declining; the lines are the code's, column for
    column (upload included)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sample = readme.split("Progress looks like this:\n\n```\n", 1)[1].split("```", 1)[0]
    worst, node = "site-4b2893d0ef09", "8035271513367297810"
    entry = {"round": 3, "sites_trained": 3, "sites_failed": 1, "accuracy": 0.4714,
             "macro_f1": 0.4102, "worst_site_accuracy": 0.3125, "worst_site": worst,
             "max_epsilon": 4.4834, "upload_bytes_per_site": 69961.0,
             "failures": [{"node_id": node, "kind": "declined", "reason": Reason.BUDGET_EXHAUSTED}]}
    assert sample.splitlines() == round_lines(entry, 40, {worst: "site-02", node: "site-02"})
