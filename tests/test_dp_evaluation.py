"""Evaluation under DP (node config ``evaluation = "dp"``): the release's sensitivity, its noise,
what leaves, and how it is charged, attacked through the real ClientApp by a server that
chooses the model, the run name, the round and the run config; then the server's side (checks,
aggregation, record, round line, model card) of a round where some sites answer with DP."""

import copy
import math

import numpy as np
import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from randomgen import ChaCha
from test_export import LABELS as EXPORTED_LABELS
from test_export import RUN_DOC
from test_site_privacy import (
    LABELS,
    context,
    evaluate_message,
    ledger,
    refused_with,
    rows,
    spend,
    train_message,
    write_rows,
)

import fl_client.client_app as client_app
from fedintent.cli import main
from fl_client.dp_evaluation import LOSS_CAP, NoisyScores, noisy_scores, unit_contributions
from fl_client.privacy_accounting import rdp_budget, rdp_epsilon
from fl_client.privacy_ledger import LEDGER_FILE
from fl_client.privacy_report import site_privacy_report
from fl_client.private_random import stream_seed
from fl_protocol.wire import EVALUATE_METRICS, MIN_DELTA, Reason
from fl_server.progress import round_lines
from fl_server.run_record import RunRecord
from fl_server.strategy import aggregate_evaluate_metrics
from fl_server.update_validation import InvalidReply, check_evaluate_reply
from models import get_model_family
from models.model_card import model_card

pytestmark = pytest.mark.usefixtures("task_identity")

DP = {"evaluation": "dp"}
TEST_ROWS = 40


@pytest.fixture
def site(tmp_path):
    """60 training and 40 test utterances: enough test units that an estimate is a continuous
    number, not an estimate clipped into range, at the noise these tests plan."""
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    write_rows(site_dir, rows(0, 60))
    write_rows(site_dir, rows(100, 100 + TEST_ROWS), name="test.csv")
    return site_dir


def scripted_model(logits: torch.Tensor) -> torch.nn.Module:
    """A "model" that answers the given logits for the rows of ``row_numbers``: what a hostile
    server could make a linear head do for chosen rows."""

    class Scripted(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return logits[features[:, 0].long()]

    return Scripted()


def row_numbers(rows: int) -> torch.Tensor:
    """Features that name their row, for ``scripted_model``."""
    return torch.arange(rows, dtype=torch.float32).unsqueeze(1)


# --- the release ---------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_every_units_contribution_has_norm_at_most_one_whatever_the_model(scale):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 5, generator=generator) * scale  # 1e6: losses far above the cap
    labels = torch.randint(0, 5, (50,), generator=generator)
    units = [f"customer-{i % 7}" for i in range(50)]
    contributions = unit_contributions(scripted_model(logits), row_numbers(50), labels, units)
    assert contributions.shape == (7, 3)
    assert contributions.norm(dim=1).max() <= 1 + 1e-12
    assert contributions.min() >= 0
    # the count component is exactly 1 / sqrt(3) for every unit, however many rows it has
    assert torch.allclose(contributions[:, 2], torch.full((7,), 1 / math.sqrt(3),
                                                          dtype=torch.float64))


def test_a_customer_weighs_as_one_whatever_their_number_of_rows():
    # customer a: 3 rows all right; customer b: 1 row wrong. Per customer: accuracy 1/2.
    logits = torch.tensor([[5.0, 0.0]] * 4)
    labels = torch.tensor([0, 0, 0, 1])
    contributions = unit_contributions(scripted_model(logits), row_numbers(4), labels,
                                       ["a", "a", "a", "b"])
    scores = noisy_scores(contributions, 0.0, seed=0)
    assert scores.accuracy == pytest.approx(0.5) and scores.units == 2
    wrong_loss = float(torch.nn.functional.cross_entropy(logits[3:], labels[3:]))
    right_loss = float(torch.nn.functional.cross_entropy(logits[:1], labels[:1]))
    assert scores.loss == pytest.approx((wrong_loss + right_loss) / 2)


def test_without_noise_the_scores_are_exact_and_a_loss_above_the_cap_counts_as_the_cap():
    logits = torch.tensor([[100.0, 0.0], [100.0, 0.0], [0.0, 3.0]])  # row 1: loss 100 > cap
    labels = torch.tensor([0, 1, 1])
    contributions = unit_contributions(scripted_model(logits), row_numbers(3), labels,
                                       ["x", "y", "z"])
    scores = noisy_scores(contributions, 0.0, seed=0)
    assert scores.accuracy == pytest.approx(2 / 3) and scores.units == 3
    third = float(torch.nn.functional.cross_entropy(logits[2:], labels[2:]))
    assert scores.loss == pytest.approx((0.0 + LOSS_CAP + third) / 3, abs=1e-6)


def test_rows_are_scored_with_the_model_in_evaluation_mode():
    """A model with dropout (``minilm-finetune``'s encoder has it) scores each row the same every
    time: in training mode dropout would draw from torch's global generator, not the release's
    seed, and the sum would no longer be a function of the rows alone."""
    generator = torch.Generator().manual_seed(3)
    features, labels = torch.randn(20, 8, generator=generator), torch.randint(0, 4, (20,))
    model = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(8, 4)).train()
    units = [f"u{i}" for i in range(20)]
    torch.manual_seed(0)
    first = unit_contributions(model, features, labels, units)
    torch.manual_seed(1)
    assert torch.equal(unit_contributions(model, features, labels, units), first)


def test_one_confident_right_unit_reads_back_exactly():
    """The smallest split: one unit, a loss far below 1, no noise; each reading is its own."""
    logits = torch.tensor([[8.0, 0.0]])
    contributions = unit_contributions(scripted_model(logits), row_numbers(1),
                                       torch.tensor([0]), ["only"])
    scores = noisy_scores(contributions, 0.0, seed=0)
    assert (scores.accuracy, scores.units) == (1.0, 1)
    assert scores.loss == pytest.approx(float(torch.nn.functional.cross_entropy(
        logits, torch.tensor([0]))), rel=1e-6)


def evaluation_noise(std: float, seed: int) -> torch.Tensor:
    """The release's noise, drawn independently of the module: four standard normals from the
    ChaCha20 stream keyed by the seed's ``"evaluation"`` stream seed, summed and halved, then
    scaled (floating-point robust, as Opacus' ``secure_mode``)."""
    stream = np.random.Generator(ChaCha(key=stream_seed(seed, "evaluation"), rounds=20))
    draws = [stream.standard_normal(3) for _ in range(4)]
    return torch.from_numpy((draws[0] + draws[1] + draws[2] + draws[3]) * (std / 2))


def test_a_count_the_noise_drove_to_zero_or_below_reads_as_nothing_learned():
    """When the noisy count is not positive no ratio means anything: the reply is accuracy 0,
    the loss cap and one unit, the same whatever the sums held."""
    contributions = torch.full((2, 3), 1 / math.sqrt(3), dtype=torch.float64)
    swamped = [seed for seed in range(200)
               if evaluation_noise(50.0, seed)[2] + 2 / math.sqrt(3) <= 0]
    assert swamped
    for seed in swamped[:5]:
        assert noisy_scores(contributions, 50.0, seed) == NoisyScores(0.0, LOSS_CAP, 1)


def test_the_noise_is_the_planned_gaussian_and_fresh_for_every_seed():
    """The noise on each sum has the standard deviation the ledger was charged for: read back
    from the count estimate over many seeds (a unit count of n is n / sqrt(3) in the sum)."""
    contributions = torch.full((300, 3), 1 / math.sqrt(3), dtype=torch.float64)
    counts = torch.tensor([noisy_scores(contributions, 4.0, seed).units
                           for seed in range(2000)], dtype=torch.float64)
    spread = (counts / math.sqrt(3)).std().item()
    assert spread == pytest.approx(4.0, rel=0.06)  # 2000 draws: 1.6% standard error
    assert counts.mean().item() == pytest.approx(300, abs=1)
    assert noisy_scores(contributions, 4.0, 1) != noisy_scores(contributions, 4.0, 2)
    assert noisy_scores(contributions, 4.0, 1) == noisy_scores(contributions, 4.0, 1)


def test_the_release_is_the_sums_plus_the_seeds_gaussian_on_every_component():
    """Known answer: each of the three sums gets its own draw of the planned Gaussian from the
    seed (four normals, halved), the scores are the noisy sums' ratios (no clamp is reached at
    these values). The spread test above reads only the count's noise (found in review: the
    loss sum sent without noise, the exact-loss oracle this release closes, passed every
    test)."""
    contributions = torch.rand(50, 3, generator=torch.Generator().manual_seed(5),
                               dtype=torch.float64) / math.sqrt(3)
    contributions[:, 2] = 1 / math.sqrt(3)
    for seed in range(20):
        correct, loss, count = (contributions.sum(dim=0) + evaluation_noise(2.0, seed)).tolist()
        assert 0 < correct / count < 1 and 0 < loss / count < 1
        assert noisy_scores(contributions, 2.0, seed) == NoisyScores(
            accuracy=correct / count, loss=LOSS_CAP * loss / count,
            units=round(math.sqrt(3) * count))


def test_the_noise_depends_on_every_bit_of_the_seed():
    """Found in review: torch's ``manual_seed`` kept a seed's low 32 bits, so a release's noise
    was one of 2^32 streams, and a server that tried them all found the one whose removal left
    the sums whole numbers: the exact counts. Seeds alike in their low 32 or 64 bits, or in
    all but the top one of 256, now draw noise of their own."""
    contributions = torch.full((100, 3), 1 / math.sqrt(3), dtype=torch.float64)
    contributions[:, 0] /= 2  # half right: no clamp
    seed = 2**255 + 12345
    scores = {noisy_scores(contributions, 4.0, other).accuracy
              for other in (seed, seed % 2**32, seed + 2**32, seed + 2**64, seed ^ 2**200)}
    assert len(scores) == 5
    assert noisy_scores(contributions, 4.0, seed) == noisy_scores(contributions, 4.0, seed)


def test_scores_from_noise_that_swamps_the_count_stay_in_range():
    contributions = torch.full((2, 3), 1 / math.sqrt(3), dtype=torch.float64)
    for seed in range(200):
        scores = noisy_scores(contributions, 50.0, seed)
        assert 0 <= scores.accuracy <= 1 and 0 <= scores.loss <= LOSS_CAP and scores.units >= 1


def test_a_count_of_exactly_zero_reads_as_nothing_learned():
    """The boundary of the rule above (stop 68): no units and no noise give a count of exactly
    0, which is no more a count to divide by than a negative one."""
    assert noisy_scores(torch.zeros((0, 3), dtype=torch.float64), 0.0, seed=0) == NoisyScores(
        0.0, LOSS_CAP, 1)
    assert noisy_scores(torch.zeros((2, 3), dtype=torch.float64), 0.0, seed=0) == NoisyScores(
        0.0, LOSS_CAP, 1)


def test_a_positive_count_below_half_a_unit_still_reads_as_one_unit():
    """A noisy count above 0 but below half a unit (sqrt(3) x count rounds to 0) is sent as one
    unit, never zero (stop 68): found among seeded draws of the release's own noise."""
    contributions = torch.full((2, 3), 1 / math.sqrt(3), dtype=torch.float64)
    tiny = [seed for seed in range(3000)
            if 0 < math.sqrt(3) * (evaluation_noise(50.0, seed)[2] + 2 / math.sqrt(3)) < 0.5]
    assert tiny
    for seed in tiny[:3]:
        assert noisy_scores(contributions, 50.0, seed).units == 1


# --- the site, attacked ----------------------------------------------------------------------


def evaluation_releases(state_dir, run="run-a"):
    return [r for r in ledger(state_dir).releases if r.run == f"{run} (evaluation)"]


def test_a_dp_site_sends_estimates_and_epsilon_only_and_charges_its_ledger(site, tmp_path,
                                                                           capsys):
    state = tmp_path / "state"
    ctx = context(site, state, node=DP | {"evaluation-epsilon": 2.0})
    assert not client_app.app(train_message(num_rounds=3), ctx).has_error()
    replies = [client_app.app(evaluate_message(), ctx) for _ in range(3)]
    for reply in replies:
        assert not reply.has_error(), reply.error
        assert set(reply.content["metrics"]) == {"num-examples", "loss", "accuracy", "epsilon"}
        check_evaluate_reply(reply.content)  # and the server accepts it
    epsilons = [reply.content["metrics"]["epsilon"] for reply in replies]
    assert epsilons[0] < epsilons[1] < epsilons[2] <= 2.0
    assert epsilons[2] > 0.9 * 2.0  # planned over the run's 3 rounds, all of it spent by then
    released = evaluation_releases(state)
    assert len(released) == 3
    assert {(r.sample_rate, r.steps, r.clip_norm, r.units) for r in released} == {
        (1.0, 1, 1.0, TEST_ROWS)}
    report = site_privacy_report(state, 10.0)
    assert [(run.run, run.rounds) for run in report.runs] == [("run-a", 1),
                                                              ("run-a (evaluation)", 3)]
    evaluations = report.evaluations
    assert (evaluations.dp, evaluations.sent, evaluations.declined) == (3, 0, 0)
    assert main(["privacy-report", str(state), "--max-epsilon", "10"]) == 0
    printed = capsys.readouterr().out
    assert "evaluate replies (egress log):\n  3 with DP estimates, counted above as the runs " \
        "named '(evaluation)'\n" in printed
    assert "exact metrics" not in printed and "declined" not in printed
    assert "left no reply" not in printed  # each release's reply is in the egress log


def test_the_server_cannot_raise_the_evaluation_epsilon(site, tmp_path):
    """The epsilon is the site's ``evaluation-epsilon``: a run asking for a huge target-epsilon
    (which training holds against max-epsilon) gets the same evaluation noise as a modest one."""
    noise = []
    for name, target in (("modest", 1.0), ("greedy", 1e4)):
        ctx = context(site, tmp_path / name, max_epsilon=math.inf, node=DP,
                      **{"target-epsilon": target})
        assert not client_app.app(evaluate_message(), ctx).has_error()
        noise.append(evaluation_releases(tmp_path / name)[0].noise_multiplier)
    assert noise[0] == noise[1] > 0


def test_a_site_with_a_small_lifetime_budget_evaluates_within_it(site, tmp_path):
    """Found in review: a site that lowered max-epsilon to 2 and kept the default
    evaluation-epsilon (8) declined every evaluation, its lifetime budget needing 3.6 times the
    noise of the evaluation's plan. A run's evaluations are planned for at most max-epsilon."""
    state = tmp_path / "state"
    ctx = context(site, state, max_epsilon=2.0, node=DP)
    reply = client_app.app(evaluate_message(), ctx)
    assert not reply.has_error(), reply.error
    [release] = evaluation_releases(state)
    assert release.target_epsilon == 2.0
    assert 0 < reply.content["metrics"]["epsilon"] <= 2.0


def test_the_same_model_asked_again_gets_fresh_noise_and_is_charged_again(site, tmp_path):
    state = tmp_path / "state"
    ctx = context(site, state, node=DP | {"evaluation-epsilon": 8.0})
    asked = evaluate_message()
    estimates = set()
    for _ in range(2):
        again = Message(content=asked.content, dst_node_id=7, message_type="evaluate")
        metrics = client_app.app(again, ctx).content["metrics"]
        estimates.add((metrics["accuracy"], metrics["loss"], metrics["num-examples"]))
    assert len(estimates) == 2  # the second answer is a second draw, not the first repeated
    assert len(evaluation_releases(state)) == 2


def probe(ctx, attempt: int, labels=LABELS) -> Message:
    """A DP evaluation under a new run name, planned for one round: each a fresh epsilon."""
    message = evaluate_message(labels)
    message.content["config"]["run-name"] = f"probe-{attempt}"
    message.content["config"]["num-rounds"] = 1
    return client_app.app(message, ctx)


def test_a_server_averaging_the_noise_away_runs_into_the_lifetime_budget(site, tmp_path,
                                                                        monkeypatch):
    """Asking again and again under new run names, each with a fresh evaluation epsilon, is the
    oracle attack: every answer is charged to the same test units, so once their lifetime budget
    is spent they are left out of the release, and no unit's lifetime epsilon ever passes
    max-epsilon. The site still answers (noise alone, charging nobody): a decline would say
    that no unit with budget is there. What each release sums and the noise it adds are the
    units and the noise its ledger entry was charged for (found in review: a release of every
    test unit, or at half the charged noise, passed, since only the ledger was read)."""
    summed, noised = [], []

    def contributions(model, features, labels, units, passes):
        summed.append(len(set(units)))
        return unit_contributions(model, features, labels, units, passes)

    def scores(contributions, noise_multiplier, seed):
        noised.append(noise_multiplier)
        return noisy_scores(contributions, noise_multiplier, seed)

    monkeypatch.setattr(client_app, "unit_contributions", contributions)
    monkeypatch.setattr(client_app, "noisy_scores", scores)
    state = tmp_path / "state"
    ctx = context(site, state, max_epsilon=3.0, node=DP | {"evaluation-epsilon": 1.0,
                                                         "max-noise-ratio": math.inf})
    replies = [probe(ctx, attempt) for attempt in range(12)]
    assert not any(reply.has_error() for reply in replies)
    released = [r.units for r in ledger(state).releases]
    assert released[0] == TEST_ROWS and released[-1] == 0  # spent, then left out
    assert summed == released
    assert noised == [r.noise_multiplier for r in ledger(state).releases]
    book = ledger(state)
    budget = rdp_budget(3.0, book.delta, book.order)
    assert book.spend and max(book.spend.values()) <= budget
    assert max(rdp_epsilon(s, book.order, book.delta) for s in book.spend.values()) <= 3.0


def test_whether_a_test_unit_is_there_does_not_decide_whether_the_site_answers(site, tmp_path):
    """Once every test unit's budget is spent, a new test utterance arriving must not turn
    declines into answers (which would say, outside DP, that it arrived): the site answered
    before it came and answers after, the new unit alone charged."""
    state = tmp_path / "state"
    ctx = context(site, state, max_epsilon=3.0, node=DP | {"evaluation-epsilon": 1.0,
                                                         "max-noise-ratio": math.inf})
    attempt = 0
    while ledger(state) is None or ledger(state).releases[-1].units:
        assert not probe(ctx, attempt).has_error()
        attempt += 1
    spent = dict(ledger(state).spend)
    assert not probe(ctx, attempt).has_error()
    assert ledger(state).spend == spent and ledger(state).releases[-1].units == 0
    write_rows(site, rows(100, 100 + TEST_ROWS + 1), name="test.csv")
    assert not probe(ctx, attempt + 1).has_error()
    assert ledger(state).releases[-1].units == 1
    after = ledger(state).spend
    assert len(after) == len(spent) + 1 and all(after[key] == spent[key] for key in spent)


def test_the_evaluation_delta_never_depends_on_the_number_of_test_units(tmp_path):
    """Under the run's delta 0 the evaluation's delta is 1e-5 (the site's max-delta if lower)
    whatever its test split (a delta chosen from the count would show it in the epsilon sent),
    and a delta the run asks for is never refused for being large next to the count (a server
    could search deltas and read the count off the refusals)."""
    answers = {}
    for tests in (4, 40):
        site_dir = tmp_path / f"site-{tests}"
        site_dir.mkdir()
        write_rows(site_dir, rows(0, 60))
        write_rows(site_dir, rows(100, 100 + tests), name="test.csv")
        ctx = context(site_dir, tmp_path / f"state-{tests}", node=DP | {"max-delta": 1e-2})
        assert not client_app.app(evaluate_message(), ctx).has_error()
        [release] = ledger(tmp_path / f"state-{tests}").releases
        asked = context(site_dir, tmp_path / f"asked-{tests}", node=DP | {"max-delta": 1e-2},
                        delta=5e-3)  # above 1 / (10 x 40): refused before, whatever the count
        answers[tests] = (release.delta, release.noise_multiplier,
                          client_app.app(evaluate_message(), asked).has_error())
    assert answers[4] == answers[40] == (1e-5, answers[4][1], False)


@pytest.mark.parametrize("every", [0, -3, "often"])
def test_a_malformed_evaluate_every_is_refused_before_a_ledger_is_started(site, tmp_path, every):
    ctx = context(site, tmp_path / "state", node=DP, **{"evaluate-every": every})
    assert refused_with(client_app.app(evaluate_message(), ctx), Reason.SETTING_REFUSED)
    assert not (tmp_path / "state" / LEDGER_FILE).exists()


def test_a_delta_below_the_sites_floor_is_refused_before_a_ledger_is_started(site, tmp_path):
    """A first release at delta 1e-100 would fix the ledger's Rényi order, and with it a
    lifetime budget far below max-epsilon, for good."""
    ctx = context(site, tmp_path / "state", delta=1e-100)
    assert refused_with(client_app.app(train_message(), ctx), Reason.SETTING_REFUSED)
    assert not (tmp_path / "state" / LEDGER_FILE).exists()
    floor = context(site, tmp_path / "floor", delta=MIN_DELTA)
    assert not client_app.app(train_message(), floor).has_error()


@pytest.mark.parametrize("first", ["train", "evaluate"])
def test_a_run_at_the_delta_floor_does_not_begin_the_ledger_there(site, tmp_path, first):
    """Found in review: a new ledger began at the first run's delta, and a run may ask for the
    floor, 1e-10: every later run's lifetime budget was fixed there, a sixth of the site's
    own, for good. A training round begins it at the site's own delta for its units, a DP
    evaluation at the site's evaluation delta; the run's release is still at the run's."""
    ctx = context(site, tmp_path / "state", node=DP, delta=MIN_DELTA)
    message = train_message() if first == "train" else evaluate_message()
    assert not client_app.app(message, ctx).has_error()
    book = ledger(tmp_path / "state")
    assert book.delta == 1e-5 and [r.delta for r in book.releases] == [MIN_DELTA]


def test_an_evaluation_beyond_the_runs_rounds_or_with_a_weaker_delta_is_declined_unread(
        site, tmp_path, monkeypatch):
    ctx = context(site, tmp_path / "state", node=DP | {"max-delta": 1e-6})
    read = []
    real_load = client_app.load_site
    monkeypatch.setattr(client_app, "load_site",
                        lambda *args, **kwargs: read.append(args) or real_load(*args, **kwargs))
    beyond = evaluate_message()
    beyond.content["config"]["server-round"] = 4
    beyond.content["config"]["num-rounds"] = 3
    assert refused_with(client_app.app(beyond, ctx), Reason.ROUND_REFUSED)
    weak = context(site, tmp_path / "state", node=DP | {"max-delta": 1e-6}, delta=1e-5)
    assert refused_with(client_app.app(evaluate_message(), weak), Reason.SETTING_REFUSED)
    assert not read and not (tmp_path / "state" / LEDGER_FILE).exists()


@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan", "lots", "0.05", "101"])
def test_an_unusable_evaluation_epsilon_stops_the_site(site, tmp_path, value):
    """Found in review: one outside every accountant's range was declined run by run as if the
    server had asked for it, not reported as the site's own setting."""
    ctx = context(site, tmp_path / "state", node=DP | {"evaluation-epsilon": value})
    assert refused_with(client_app.app(evaluate_message(), ctx), Reason.SITE_CONFIG_INVALID)


def test_an_evaluation_epsilon_one_accountant_cannot_plan_declines_only_its_runs(site, tmp_path,
                                                                               caplog):
    node = DP | {"evaluation-epsilon": 0.2}  # PRV plans down to 0.1, RDP to 0.5
    rdp = context(site, tmp_path / "rdp", node=node, accountant="rdp")
    assert refused_with(client_app.app(evaluate_message(), rdp), Reason.EVALUATION_REFUSED)
    assert ("the epsilon this site's evaluations may spend, 0.2 (its evaluation-epsilon, at "
            "most its max-epsilon and max-epsilon-alone), is outside [0.5, 100]") in caplog.text
    prv = context(site, tmp_path / "prv", node=node, accountant="prv")
    assert not client_app.app(evaluate_message(), prv).has_error()


def test_a_site_with_a_small_own_noise_budget_evaluates_within_it(site, tmp_path):
    """Found in review: the evaluations' cap followed max-epsilon only, so a site whose
    max-epsilon-alone was the smaller still declined every evaluation. A DP evaluation's noise
    is all the site's own."""
    state = tmp_path / "state"
    ctx = context(site, state, node=DP | {"max-epsilon-alone": 2.0})
    reply = client_app.app(evaluate_message(), ctx)
    assert not reply.has_error(), reply.error
    assert evaluation_releases(state)[0].target_epsilon == 2.0


def test_a_customer_in_both_splits_composes_both_spends(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    write_rows(site_dir, rows(0, 60))
    write_rows(site_dir, [("t-1", "lost my card again", "card_lost", "cust-0"),
                          ("t-2", "refund please", "refund", "cust-99")], name="test.csv")
    state = tmp_path / "state"
    ctx = context(site_dir, state, node=DP, **{"privacy-unit": "customer"})
    assert not client_app.app(train_message(), ctx).has_error()
    trained_only = spend(state, "cust-0")
    assert not client_app.app(evaluate_message(), ctx).has_error()
    [release] = evaluation_releases(state)
    assert release.units == 2
    assert spend(state, "cust-0") == pytest.approx(trained_only + release.rdp)
    assert spend(state, "cust-99") == pytest.approx(release.rdp)


def evaluation_at(server_round: int, num_rounds: int, run: str = "run-a") -> Message:
    message = evaluate_message()
    message.content["config"]["server-round"] = server_round
    message.content["config"]["num-rounds"] = num_rounds
    message.content["config"]["run-name"] = run
    return message


def test_evaluating_every_k_rounds_plans_over_those_evaluations_and_declines_the_others(
        site, tmp_path, monkeypatch):
    """``evaluate-every`` 5 over 12 rounds: the site evaluates in rounds 5, 10 and 12 only,
    plans its evaluation epsilon over those 3 releases (less noise each than over 12), and
    declines round 3 unread and uncharged."""
    state = tmp_path / "state"
    ctx = context(site, state, node=DP, **{"evaluate-every": 5})
    read = []
    real_load = client_app.load_site
    monkeypatch.setattr(client_app, "load_site",
                        lambda *args, **kwargs: read.append(args) or real_load(*args, **kwargs))
    assert refused_with(client_app.app(evaluation_at(3, 12), ctx), Reason.ROUND_REFUSED)
    assert not read and not (state / LEDGER_FILE).exists()
    replies = [client_app.app(evaluation_at(r, 12), ctx) for r in (5, 10, 12)]
    assert not any(reply.has_error() for reply in replies)
    released = evaluation_releases(state)
    assert [(r.server_round, r.num_rounds) for r in released] == [(1, 3), (2, 3), (3, 3)]
    assert replies[-1].content["metrics"]["epsilon"] == pytest.approx(8.0, rel=0.05)
    every_round = tmp_path / "every-round"
    assert not client_app.app(evaluation_at(5, 12), context(site, every_round, node=DP)).has_error()
    assert evaluation_releases(every_round)[0].num_rounds == 12
    ratio = released[0].noise_multiplier / evaluation_releases(every_round)[0].noise_multiplier
    assert 0.4 < ratio < 0.6  # about sqrt(3 / 12): the epsilon goes to fewer releases


def test_a_server_changing_evaluate_every_within_a_run_is_declined(site, tmp_path):
    """The evaluation run's noise was planned for the evaluations it first announced: a run of
    the same name announcing more (evaluate-every 5, then 1) is declined, nothing charged."""
    state = tmp_path / "state"
    sparse = context(site, state, node=DP, **{"evaluate-every": 5})
    assert not client_app.app(evaluation_at(5, 12), sparse).has_error()
    dense = context(site, state, node=DP, **{"evaluate-every": 1})
    assert refused_with(client_app.app(evaluation_at(6, 12), dense), Reason.ROUND_REFUSED)
    assert len(evaluation_releases(state)) == 1


@pytest.mark.parametrize("value", [0, -3, "often", None])
def test_an_unusable_evaluate_every_is_declined(site, tmp_path, value):
    run_config = {} if value is None else {"evaluate-every": value}
    ctx = context(site, tmp_path / "state", node=DP, **run_config)
    if value is None:
        del ctx.run_config["evaluate-every"]
    assert refused_with(client_app.app(evaluate_message(), ctx), Reason.SETTING_REFUSED)
    assert not (tmp_path / "state" / LEDGER_FILE).exists()


def test_a_server_skipping_evaluations_records_and_prints_them_as_not_evaluated(tmp_path):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a", "b"])
    record.record_unevaluated(1)
    replies = [reply_of(7, NOISY)]
    record.record_evaluate(2, replies, aggregate_evaluate_metrics([r.content for r in replies]))
    first, second = record.doc["rounds"]
    assert first == {"round": 1, "evaluated": False}
    assert "evaluated" not in second and second["accuracy"] == pytest.approx(0.5)
    [line] = round_lines(first, 2)
    assert "not evaluated (evaluate-every)" in line and "eval accuracy" not in line
    doc = copy.deepcopy(RUN_DOC)
    doc["rounds"][0] = {"round": 1, "sites_trained": 2, "evaluated": False}
    card = model_card(doc, get_model_family("ngram"), EXPORTED_LABELS)
    assert "In 1 of the 2 rounds (the run's evaluate-every, and always the last)" in card
    assert "| 1 | 2 | not evaluated |" in card


def test_exact_evaluation_is_unchanged_and_charges_nothing(site, tmp_path):
    state = tmp_path / "state"
    ctx = context(site, state, node={"evaluation": "exact"})
    reply = client_app.app(evaluate_message(labels=LABELS), ctx)
    assert set(reply.content["metrics"]) == {"num-examples", "loss", "accuracy", "macro-f1"}
    assert not (state / LEDGER_FILE).exists()


# --- the server ------------------------------------------------------------------------------


def reply_of(node: int, metrics: dict) -> Message:
    asked = Message(RecordDict(), dst_node_id=node, message_type="evaluate")
    return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=asked)


EXACT = {"num-examples": 30, "loss": 1.0, "accuracy": 0.9, "macro-f1": 0.8}
NOISY = {"num-examples": 10, "loss": 2.0, "accuracy": 0.5, "epsilon": 0.7}


@pytest.mark.parametrize("metrics", [
    {k: v for k, v in NOISY.items() if k != "accuracy"},
    NOISY | {"epsilon": 0.0}, NOISY | {"epsilon": math.nan}, NOISY | {"epsilon": math.inf},
    EXACT | {"macro-f1": 1.5}, NOISY | {"accuracy": -0.1},
])
def test_the_server_checks_an_optional_metric_when_it_is_there(metrics):
    with pytest.raises(InvalidReply):
        check_evaluate_reply(reply_of(1, metrics).content)


def test_each_metric_is_averaged_over_the_replies_that_carry_it():
    aggregated = aggregate_evaluate_metrics([reply_of(1, EXACT).content,
                                             reply_of(2, NOISY).content])
    assert aggregated["accuracy"] == pytest.approx((30 * 0.9 + 10 * 0.5) / 40)
    assert aggregated["loss"] == pytest.approx((30 * 1.0 + 10 * 2.0) / 40)
    assert aggregated["macro-f1"] == pytest.approx(0.8)  # the exact site's alone
    assert "epsilon" not in aggregated
    only_dp = aggregate_evaluate_metrics([reply_of(2, NOISY).content])
    assert set(only_dp) == {"accuracy", "loss"}
    assert {m.name for m in EVALUATE_METRICS if m.optional} == {"macro-f1", "epsilon"}


def test_the_record_the_round_line_and_the_model_card_say_which_sites_sent_dp_estimates(
        tmp_path):
    record = RunRecord.start(tmp_path / "metrics.json", 1, {}, ["a", "b"])
    replies = [reply_of(7, NOISY), reply_of(8, NOISY | {"accuracy": 0.7})]
    record.record_evaluate(1, replies, aggregate_evaluate_metrics([r.content for r in replies]))
    entry = record.doc["rounds"][0]
    assert entry["sites_evaluated_with_dp"] == 2 and "macro_f1" not in entry
    assert entry["evaluation"]["7"]["epsilon"] == 0.7
    [line] = round_lines(entry, 3)
    assert "eval accuracy 0.6000 (DP estimates from 2 sites)  macro-F1 n/a" in line
    doc = copy.deepcopy(RUN_DOC)
    doc["final"]["evaluation"]["site-aaa"] = {"num_examples": 48, "accuracy": 0.5,
                                              "epsilon": 0.7}
    card = model_card(doc, get_model_family("ngram"), EXPORTED_LABELS)
    assert "| site-aaa | 48 | 0.5 | not recorded | DP, epsilon 0.7 |" in card
    assert "| site-bbb | 8 | 0.125 | 0.1 | exact |" in card and "carry noise" in card


def test_the_benchmark_measures_the_estimates_error_the_noise_predicts(benchmark_script):
    """``benchmarks/dp_evaluation.py``: without noise its errors are 0; with noise, a site's
    measured error agrees with the formula docs/PRIVACY.md gives, and averaging sites shrinks it."""
    bench = benchmark_script("dp_evaluation")
    generator = torch.Generator().manual_seed(0)
    sites = []
    for units in (60, 100, 140):
        correct = (torch.rand(units, generator=generator) < 0.8).double()
        sites.append(torch.stack([correct, correct * 0.1, torch.ones(units, dtype=torch.float64)],
                                 dim=1) / math.sqrt(3))
    exact = bench.estimate_errors(sites, [0.0] * 3, draws=3)
    assert exact["site_error"] == exact["federation_error"] == 0.0
    noisy = bench.estimate_errors(sites, [2.0] * 3, draws=600)
    assert noisy["site_error"] == pytest.approx(noisy["site_error_predicted"], rel=0.1)
    assert noisy["federation_error"] < noisy["site_error"]
