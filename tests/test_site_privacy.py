"""The site's privacy promises, exercised through the real ClientApp (no Flower processes).

Every test drives ``fl_client.client_app.app`` with hand-made train messages, the way a
SuperNode would, and checks the ledger, the reply and the budget.
"""

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from opacus.accountants import PRVAccountant

import fl_client.client_app as client_app
from fl_client.egress_guard import DECLINED, SITE_ERROR
from fl_client.privacy_ledger import read_ledger
from fl_client.site_data import load_site
from fl_client.site_secret import site_secret
from fl_server.run_config import DEFAULTS
from models import get_model_family

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["card_lost", "refund"]


@pytest.fixture
def site(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    lines = ["text,label,customer_id"]
    for i in range(60):
        label = LABELS[i % 2]
        text = "I lost my card" if label == "card_lost" else "please refund my order"
        lines.append(f"{text} number {i},{label},cust-{i // 3}")
    (site_dir / "train.csv").write_text("\n".join(lines) + "\n")
    (site_dir / "test.csv").write_text("text,label\nlost card,card_lost\nrefund,refund\n")
    return site_dir


def context(site_dir, state_dir, max_epsilon=10.0, **run_config) -> Context:
    node = {"data-path": str(site_dir), "state-dir": str(state_dir), "max-epsilon": max_epsilon}
    config = DEFAULTS | {"target-epsilon": 4.0, "batch-size": 16, "local-epochs": 1} | run_config
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config)


def train_message(run="run-a", server_round=1, num_rounds=3) -> Message:
    head = get_model_family("minilm-head").build_model(len(LABELS))
    config = ConfigRecord({"labels": LABELS, "server-round": server_round,
                           "num-rounds": num_rounds, "run-name": run})
    return Message(content=RecordDict({"arrays": ArrayRecord(head.state_dict()),
                                       "config": config}), dst_node_id=7, message_type="train")


def run_rounds(ctx, run, rounds, num_rounds=None) -> list[Message]:
    return [client_app.app(train_message(run, r, num_rounds or rounds), ctx)
            for r in range(1, rounds + 1)]


def ledger_releases(site_dir, state_dir):
    data = load_site(site_dir, LABELS)
    fingerprint = data.fingerprint()
    path = next(state_dir.glob("privacy-ledger-*.json"))
    return read_ledger(path, fingerprint, site_secret(state_dir))


def test_reported_epsilon_equals_an_independent_accountant(site, tmp_path):
    replies = run_rounds(context(site, tmp_path / "state"), "run-a", 3)
    epsilons = [r.content["metrics"]["epsilon"] for r in replies]
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 4.0
    releases = ledger_releases(site, tmp_path / "state")
    assert len(releases) == 3
    independent = PRVAccountant()
    for release in releases:
        independent.history.append(release.release)
    assert epsilons[-1] == pytest.approx(independent.get_epsilon(delta=releases[0].delta),
                                         rel=1e-6)


def test_two_runs_on_the_same_data_accumulate_and_stay_within_the_budget(site, tmp_path):
    ctx = context(site, tmp_path / "state", max_epsilon=5.0)
    first = run_rounds(ctx, "run-a", 3)[-1].content["metrics"]
    second = run_rounds(ctx, "run-b", 3)[-1].content["metrics"]
    assert first["epsilon-all-runs"] == pytest.approx(first["epsilon"])
    assert second["epsilon-all-runs"] > first["epsilon-all-runs"]
    assert 4.9 < second["epsilon-all-runs"] <= 5.0
    assert second["epsilon"] < 4.0  # planned from the budget that remained, so noisier
    assert second["noise-multiplier"] > first["noise-multiplier"]


def test_budget_exactly_at_the_edge_then_declines(site, tmp_path):
    state = tmp_path / "state"
    ctx = context(site, state, max_epsilon=4.0)
    replies = run_rounds(ctx, "run-a", 3)
    assert not any(r.has_error() for r in replies)
    assert replies[-1].content["metrics"]["epsilon-all-runs"] <= 4.0
    # A fourth round was never planned for: it would exceed the site's budget.
    extra = client_app.app(train_message("run-a", 4, num_rounds=3), ctx)
    assert extra.has_error() and extra.error.code == DECLINED
    assert "declined" in extra.error.reason and "max-epsilon 4" in extra.error.reason
    assert len(ledger_releases(site, state)) == 3  # nothing charged for a declined round
    # A new run may only use the sliver of budget left: it is planned with far more noise.
    again = client_app.app(train_message("run-b", 1), ctx).content["metrics"]
    assert again["epsilon-all-runs"] <= 4.0
    assert again["noise-multiplier"] > 5 * replies[0].content["metrics"]["noise-multiplier"]


def test_an_exhausted_budget_declines_before_charging(site, tmp_path):
    state = tmp_path / "state"
    run_rounds(context(site, state, max_epsilon=10.0), "run-a", 3)
    spent = ledger_releases(site, state)
    lowered = context(site, state, max_epsilon=3.0)  # the site lowered its budget since
    reply = client_app.app(train_message("run-b", 1), lowered)
    assert reply.has_error() and reply.error.code == DECLINED
    assert "exhausted" in reply.error.reason
    assert ledger_releases(site, state) == spent


def test_the_server_cannot_raise_the_site_budget(site, tmp_path):
    ctx = context(site, tmp_path / "state", max_epsilon=2.0, **{"site-max-epsilon": 100.0})
    replies = run_rounds(ctx, "run-a", 2)
    assert all(r.content["metrics"]["epsilon-all-runs"] <= 2.0 for r in replies)


def test_a_crash_after_charging_over_counts_never_under_counts(site, tmp_path, monkeypatch):
    state = tmp_path / "state"
    ctx = context(site, state)

    def crash(*args, **kwargs):
        raise RuntimeError("power cut while training: secret text must not leak")

    with monkeypatch.context() as patched:
        patched.setattr(client_app, "train_locally", crash)
        crashed = client_app.app(train_message("run-a", 1), ctx)
    assert crashed.has_error() and crashed.error.code == SITE_ERROR
    assert "secret text" not in crashed.error.reason
    assert len(ledger_releases(site, state)) == 1  # charged although nothing was sent

    retried = client_app.app(train_message("run-a", 1), ctx)
    single = run_rounds(context(site, tmp_path / "fresh"), "run-a", 1, num_rounds=3)[0]
    assert retried.content["metrics"]["epsilon"] > single.content["metrics"]["epsilon"]


def test_a_tampered_ledger_stops_the_site(site, tmp_path):
    state = tmp_path / "state"
    ctx = context(site, state)
    run_rounds(ctx, "run-a", 2, num_rounds=3)
    path = next(state.glob("privacy-ledger-*.json"))
    document = json.loads(path.read_text())
    document["releases"].pop()
    path.write_text(json.dumps(document))
    reply = client_app.app(train_message("run-a", 3), ctx)
    assert reply.has_error() and "refusing to train" in reply.error.reason


def test_delta_default_and_refusal(site, tmp_path):
    ok = run_rounds(context(site, tmp_path / "a"), "run-a", 1)[0]
    assert ok.content["metrics"]["delta"] == pytest.approx(1e-5)  # min(1e-5, 1/(10 x 60))
    refused = client_app.app(train_message(), context(site, tmp_path / "b", delta=0.01))
    assert refused.has_error() and "delta 0.01 is too large" in refused.error.reason


def test_customer_privacy_unit_counts_customers(site, tmp_path):
    ctx = context(site, tmp_path / "state", **{"privacy-unit": "customer"})
    reply = run_rounds(ctx, "run-a", 1)[0]
    metrics = reply.content["metrics"]
    assert metrics["privacy-units"] == 20 and metrics["num-examples"] == 60
    assert math.isfinite(metrics["epsilon"])
    mixed = client_app.app(train_message("run-b", 1), context(site, tmp_path / "state"))
    assert mixed.has_error() and "mixing units" in mixed.error.reason


def test_training_without_dp_reports_infinite_epsilon_and_charges_nothing(site, tmp_path):
    reply = run_rounds(context(site, tmp_path / "state", **{"target-epsilon": math.inf}),
                       "run-a", 1)[0]
    assert math.isinf(reply.content["metrics"]["epsilon"])
    assert not list((tmp_path / "state").glob("privacy-ledger-*.json"))
    head = reply.content["arrays"].to_torch_state_dict()
    assert head["weight"].shape == torch.Size([2, 384])
