"""The privacy audit (``fedintent audit-privacy``, docs/PRIVACY_AUDIT.md): the attacks find
memorisation where there is some, not where DP forbids it; the lower bound's arithmetic; the
bound never above the accountant's epsilon; the command's errors."""

import json
import math
from dataclasses import asdict
from functools import partial

import numpy as np
import pytest
import torch
from scipy.stats import binom

from fedintent.audit.analysis import analyse
from fedintent.audit.attacks import confidence_scores, lira_leave_one_out, roc_metrics
from fedintent.audit.bounds import (
    audit_guesses,
    choose_guess_counts,
    epsilon_lower_bound,
    guesses,
    p_value,
)
from fedintent.audit.game import (
    CANARY,
    NATURAL,
    Game,
    audited_privacy,
    make_audit_set,
    run_models,
    site_plans,
)
from fedintent.audit.report import markdown, rows
from fedintent.audit.run import AuditError, AuditSpec, run_audit, settings_for
from fedintent.cli import main
from fedintent.partition import read_labeled_csv
from fl_server.run_config import site_size_rate, tuned_settings
from models import get_model_family

LABELS = 5
EMBEDDING_DIM = 384
SITES = 4


def _game(seed: int = 0) -> Game:
    """Four small sites of clustered 384-d "embeddings", 40 canaries and 40 natural examples."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(LABELS, EMBEDDING_DIM, generator=gen),
                                            dim=1)

    def rows(n: int):
        y = torch.randint(0, LABELS, (n,), generator=gen)
        x = centres[y] + 0.06 * torch.randn(n, EMBEDDING_DIM, generator=gen)
        return torch.nn.functional.normalize(x, dim=1), y

    train = [rows(60) for _ in range(SITES)]
    test = [rows(25) for _ in range(SITES)]
    audit, holdout = make_audit_set(test, LABELS, canaries=40, natural=40, seed=seed)
    torch.manual_seed(seed)
    initial = torch.nn.Linear(EMBEDDING_DIM, LABELS).state_dict()
    build = partial(torch.nn.Linear, EMBEDDING_DIM, LABELS)
    return Game(train, audit, holdout, initial, build, seed)


OVERFIT = {"num-rounds": 2, "local-epochs": 6, "batch-size": 32, "learning-rate": 4.0,
           "clip-norm": 1.0, "site-max-epsilon": 10.0}
"""Non-private and far past convergence: the random-label canaries get memorised."""
PRIVATE = {"num-rounds": 4, "local-epochs": 1, "batch-size": 4096, "learning-rate": 2.0,
           "clip-norm": 1.0, "site-max-epsilon": 10.0}
"""Epsilon 0.3 with full-batch steps: membership should be invisible."""
STRONG_EPSILON = 0.3
MODELS = 8
AUDITED_EPSILON = 0.2
"""The OVERFIT game trained under DP at this epsilon: the bound test's setting. Without noise
the same training memorises enough for the bound to exceed it (0.26 LiRA, 0.34 loss on the
canaries); a site that charged epsilon 0.2 but added no noise (clipping only) measured 0.65."""


@pytest.fixture(scope="module")
def overfit_results(tmp_path_factory):
    game = _game()
    models = run_models(game, math.inf, OVERFIT, MODELS, tmp_path_factory.mktemp("inf"),
                        progress=lambda _: None)
    return game, models, analyse(models, game.audit.kind, with_curves=False)


@pytest.fixture(scope="module")
def private_results(tmp_path_factory):
    game = _game()
    models = run_models(game, STRONG_EPSILON, PRIVATE, MODELS, tmp_path_factory.mktemp("eps1"),
                        progress=lambda _: None)
    return game, models, analyse(models, game.audit.kind, with_curves=False)


def test_attacks_detect_memorisation_without_dp(overfit_results):
    _, models, attacks = overfit_results
    assert attacks[CANARY]["lira"]["auc"] > 0.8
    assert attacks[CANARY]["loss"]["auc"] > 0.75
    assert attacks[CANARY]["lira"]["tpr_at_0.01_fpr"] > 0.1
    # The target alone, with guess counts chosen on the shadows, already proves epsilon > 0.
    assert attacks[CANARY]["lira"]["bound"]["epsilon_lb"] > 0
    assert math.isinf(models[0]["epsilon"])


def test_attacks_find_nothing_under_strong_dp(private_results):
    _, models, attacks = private_results
    for kind in (CANARY, NATURAL):
        for attack in ("lira", "loss"):
            assert 0.35 < attacks[kind][attack]["auc"] < 0.65, (kind, attack)


@pytest.fixture(scope="module")
def overfit_private_results(tmp_path_factory):
    game = _game()
    models = run_models(game, AUDITED_EPSILON, OVERFIT, MODELS,
                        tmp_path_factory.mktemp("overfit-dp"), progress=lambda _: None)
    return game, models, analyse(models, game.audit.kind, with_curves=False)


def test_lower_bound_never_exceeds_the_accountant(overfit_results, overfit_private_results):
    """In a game where the bound can see something: without DP the same training proves more
    than the accountant's epsilon (so a bound computation stuck at 0 fails here, and a site that
    charges epsilon but adds no noise would push the bound above the accountant's); with the
    planned noise, no attack's bound may exceed the accountant's epsilon."""
    _, plain_models, plain_attacks = overfit_results
    _, models, attacks = overfit_private_results
    accountant = models[0]["epsilon"]
    assert 0 < accountant <= AUDITED_EPSILON * 1.01
    assert min(models[0]["noise_multiplier"]) > 1
    assert math.isinf(plain_models[0]["epsilon"])
    plain_bounds = [m["bound"]["epsilon_lb"] for m in plain_attacks[CANARY].values()]
    assert min(plain_bounds) > 0, plain_bounds
    assert max(plain_bounds) > accountant, plain_bounds
    for per_attack in attacks.values():
        for metrics in per_attack.values():
            assert metrics["bound"]["epsilon_lb"] <= accountant


def test_models_are_resumed_not_retrained(tmp_path):
    game, quick = _game(), OVERFIT | {"num-rounds": 1, "local-epochs": 1}
    first = run_models(game, math.inf, quick, 2, tmp_path, progress=lambda _: None)
    lines: list[str] = []
    again = run_models(game, math.inf, quick, 2, tmp_path, progress=lines.append)
    assert lines == [f"  2 of 2 models already trained, loaded from {tmp_path}"]
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a["phi"], b["phi"])
        np.testing.assert_array_equal(a["member"], b["member"])


def test_membership_is_half_and_independent_of_the_model():
    game = _game()
    from fedintent.audit.game import membership
    a, b = membership(0, 0, 4000), membership(0, 1, 4000)
    assert abs(a.mean() - 0.5) < 0.03 and abs((a == b).mean() - 0.5) < 0.03
    assert (game.audit.kind == CANARY).sum() == 40
    # Canaries carry a label other than their true one.
    assert len(game.audit) == 80


@pytest.mark.parametrize("epsilon", [16.0, 32.0])
def test_a_requested_epsilon_above_the_default_lifetime_budget_is_the_epsilon_audited(epsilon):
    """The audited sites' lifetime budget must not set their noise: under the default budget of
    8 every epsilon from about 8 up planned the same noise (PRV epsilon 7.44 at 40 rounds), and
    an audit labelled 16 or 32 audited that. Here the accountant reports the requested epsilon,
    within the planner's tolerance, and 32 plans less noise than 16."""
    settings = settings_for(epsilon, rounds=5)
    assert settings["site-max-epsilon"] > epsilon
    _, privacy = site_plans([900, 1100], epsilon, settings, get_model_family("minilm-head"))
    for site in privacy:
        assert 0.99 * epsilon <= site["epsilon"] <= epsilon
    _, half = site_plans([900], epsilon / 2, settings_for(epsilon / 2, rounds=5),
                         get_model_family("minilm-head"))
    assert privacy[0]["noise_multiplier"] < half[0]["noise_multiplier"]


def test_the_audited_sites_noise_is_their_range_not_the_first_sites():
    """Sites of other sizes plan other noise (here the delta: 1e-5 below 10,000 rows, 1e-6 at or
    above); what the audit reports is every audited site's, as a range."""
    settings = settings_for(8.0, rounds=3) | {"batch-size": 100_000}  # full batch for both
    _, privacy = site_plans([1000, 20000], 8.0, settings, get_model_family("minilm-head"))
    small, large = (site["noise_multiplier"] for site in privacy)
    assert small < large
    assert audited_privacy(privacy) == {
        "epsilon": max(site["epsilon"] for site in privacy), "delta": 1e-5,
        "noise_multiplier": (small, large)}
    assert audited_privacy(privacy[1:])["noise_multiplier"] == (large, large)
    assert audited_privacy([{"epsilon": math.inf, "delta": 1e-5}])["noise_multiplier"] is None


def test_report_rows_are_labelled_by_the_epsilon_audited():
    """A row says what the accountant audited, next to the epsilon that was asked for, and the
    audited sites' noise range."""
    bound = {"epsilon_lb": 0.1, "confidence": 0.95, "k_in": 5, "k_out": 5, "r": 10, "v": 6,
             "m": 40}
    metrics = {"auc": 0.55, "tpr_at_0.001_fpr": 0.0, "tpr_at_0.01_fpr": 0.02, "bound": bound}
    results = [{"epsilon": 16.0, "accountant_epsilon": 7.443, "delta": 1e-5,
                "noise_multiplier": (4.035, 4.2), "models": 5, "target_accuracy": 0.8,
                "seconds": 1.0, "attacks": {CANARY: {"lira": metrics}}},
               {"epsilon": math.inf, "accountant_epsilon": math.inf, "delta": 1e-5,
                "noise_multiplier": None, "models": 5, "target_accuracy": 0.9,
                "seconds": 1.0, "attacks": {CANARY: {"lira": metrics}}}]
    spec = {"data": "d", "sites": 2, "shadows": 4, "canaries": 8, "natural": 8, "seed": 0}
    report = markdown(spec, rows(results))
    assert "| accountant epsilon (delta) | requested epsilon | noise multiplier |" in report
    assert "\n| 7.44 (1e-05) | 16 | 4.04-4.2 | canary | lira | 0.550 |" in report
    assert "\n| inf | inf | - | canary | lira |" in report  # found in review: inf (1e-05)


def test_an_audit_folder_from_before_the_lifetime_budget_is_refused(tmp_path):
    """Models trained under the default budget of 8 are not the models this audit trains at
    the same epsilon: a folder whose settings lack the budget is another audit."""
    spec = AuditSpec(data=str(tmp_path / "data"), sites=2, alpha=0.5, epsilons=[16.0],
                     shadows=4, canaries=8, natural=8, seed=0)
    old = {key: value for key, value in settings_for(16.0, None).items()
           if key != "site-max-epsilon"}
    out = tmp_path / "audit"
    out.mkdir()
    (out / "audit.json").write_text(json.dumps(asdict(spec) | {"settings": {"16": old}}),
                                    encoding="utf-8")
    with pytest.raises(AuditError, match="holds an audit with other data or options"):
        run_audit(spec, out, progress=lambda _: None)


# --- the bound's arithmetic, on hand-made guesses -------------------------------------------

def test_p_value_is_the_binomial_tail_without_delta():
    assert p_value(100, 20, 15, 0.0, 0.0) == pytest.approx(binom.sf(14, 20, 0.5))
    q = 1 / (1 + math.exp(-2.0))
    assert p_value(100, 20, 15, 2.0, 0.0) == pytest.approx(binom.sf(14, 20, q))
    # delta only adds: a larger delta makes the null harder to reject.
    assert p_value(100, 20, 15, 2.0, 1e-3) > p_value(100, 20, 15, 2.0, 0.0)


def test_all_correct_guesses_have_a_closed_form_bound():
    # r correct out of r with delta 0: p-value q^r = 0.05, so eps = log(q / (1 - q)).
    for r in (10, 50, 200):
        q = 0.05 ** (1 / r)
        assert epsilon_lower_bound(1000, r, r, 0.0, 0.95) == pytest.approx(
            math.log(q / (1 - q)), abs=1e-6)


def test_chance_guessing_proves_nothing():
    assert epsilon_lower_bound(1000, 100, 50, 1e-5) == 0.0
    assert epsilon_lower_bound(1000, 100, 58, 1e-5) == 0.0  # within chance at 95%
    assert epsilon_lower_bound(1000, 0, 0, 1e-5) == 0.0


def test_bound_grows_with_evidence_and_shrinks_with_confidence_and_delta():
    weak, strong = epsilon_lower_bound(1000, 100, 70, 1e-5), epsilon_lower_bound(1000, 400, 280,
                                                                                   1e-5)
    assert 0 < weak < strong
    assert epsilon_lower_bound(1000, 400, 280, 1e-5, 0.99) < strong
    assert epsilon_lower_bound(1000, 400, 280, 1e-3) < strong


def test_bound_is_a_valid_test_under_randomized_response():
    """Randomized response at eps=1 is exactly 1-DP: over many audits, the 95% bound exceeds 1
    in at most about 5% of them, and never by much."""
    rng = np.random.default_rng(0)
    m, eps, above = 200, 1.0, 0
    for _ in range(200):
        member = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        scores = np.where(member == truthful, 1.0, -1.0) + 1e-9 * rng.random(m)
        bound = audit_guesses(scores, member, m // 2, m // 2, 0.0)["epsilon_lb"]
        above += bound > eps
    assert above <= 0.05 * 200 + 5


def test_guesses_and_counts():
    scores = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    assert guesses(scores, 2, 1).tolist() == [1, -1, 0, 1, 0]
    member = np.array([True, False, False, True, False])
    result = audit_guesses(scores, member, 2, 1, 0.0)
    assert (result["r"], result["v"]) == (3, 3)
    with pytest.raises(ValueError):
        guesses(scores, 4, 2)
    # Calibration picks the counts that work on the shadows.
    rng = np.random.default_rng(1)
    calibration = []
    for _ in range(4):
        member = rng.random(200) < 0.5
        calibration.append((np.where(member, 1.0, 0.0) + rng.random(200), member))
    k_in, k_out = choose_guess_counts(calibration, 1e-5)
    assert k_in + k_out >= 40


def test_confidence_scores_are_stable_and_lira_separates_shifted_members():
    logits = torch.tensor([[100.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    phi, loss = confidence_scores(logits, torch.tensor([0, 1]))
    assert phi[0] == pytest.approx(100 - math.log(2)) and phi[1] == pytest.approx(-math.log(2))
    assert loss[1] == pytest.approx(math.log(3))
    rng = np.random.default_rng(0)
    member = rng.random((20, 300)) < 0.5
    difficulty = rng.normal(0, 3, 300)  # per-example offsets a global threshold cannot undo
    phi = difficulty + 1.0 * member + rng.normal(0, 0.5, (20, 300))
    lira = roc_metrics(lira_leave_one_out(phi, member), member)["auc"]
    loss_only = roc_metrics(phi, member)["auc"]
    assert lira > 0.8 > loss_only


# --- the command -----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--epsilons", "1,x"], "--epsilons must be numbers"),
    (["--epsilons", "0"], "--epsilons must be inf (no DP) or in [0.1, 100]"),
    (["--shadows", "2"], "--shadows must be >= 4"),
    (["--canaries", "1", "--natural", "0"], "--canaries and --natural"),
    (["--confidence", "1.5"], "--confidence"),
    (["--workers", "0"], "--workers must be >= 1"),
])
def test_cli_rejects_bad_options(tmp_path, capsys, args, message):
    assert main(["audit-privacy", "--data", str(tmp_path), "--out", str(tmp_path / "o"),
                 *args]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_missing_or_wrong_data(tmp_path, capsys):
    assert main(["audit-privacy", "--data", str(tmp_path / "nope"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert main(["audit-privacy", "--data", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "expected train.csv and test.csv" in capsys.readouterr().err


def test_cli_refuses_an_out_that_is_a_file(tmp_path, capsys):
    """Found in review: a traceback (FileExistsError)."""
    from test_bench import write_dataset

    data = write_dataset(tmp_path / "csv")
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    assert main(["audit-privacy", "--data", str(data), "--out", str(afile)]) == 2
    assert capsys.readouterr().err == (f"fedintent audit-privacy: error: --out {afile}: {afile} "
                                       "is a file, not a folder\n")
    assert afile.read_text() == "kept\n"


def test_a_failed_start_leaves_no_claim_to_refuse_the_corrected_rerun(tmp_path, capsys):
    """Found in review: data that did not read left an audit.json, and the rerun with the
    corrected data was refused as "an audit with other data or options"."""
    from test_bench import write_dataset

    utf16 = write_dataset(tmp_path / "utf16")
    (utf16 / "train.csv").write_bytes((utf16 / "train.csv").read_text().encode("utf-16"))
    data = write_dataset(tmp_path / "csv")
    out = tmp_path / "audit"
    args = ["--out", str(out), "--sites", "2", "--epsilons", "inf", "--shadows", "4",
            "--natural", "8"]
    assert main(["audit-privacy", "--data", str(utf16), *args, "--canaries", "8"]) == 2
    assert "train.csv:1: not valid UTF-8" in capsys.readouterr().err
    assert not (out / "audit.json").exists()
    # the corrected data gets past the claim, and is partitioned before the canaries stop it
    assert main(["audit-privacy", "--data", str(data), *args, "--canaries", "100000"]) == 2
    assert "100000 canaries + 8 natural audit examples need" in capsys.readouterr().err
    assert not (out / "audit.json").exists() and not (out / "data").exists()
    # a link of the operator's is not what the failed start made, even one that resolves to
    # nothing (found in review: exists() follows links, so it was taken for the start's own)
    (out / "data").symlink_to(tmp_path / "not-mounted")
    assert main(["audit-privacy", "--data", str(utf16), *args, "--canaries", "8"]) == 2
    assert (out / "data").is_symlink()


def test_cli_end_to_end_on_a_small_csv_dataset_then_resumes(tmp_path, capsys):
    import csv as csv_module

    from test_bench import write_dataset

    data = write_dataset(tmp_path / "csv")
    out = tmp_path / "audit"
    args = ["audit-privacy", "--data", str(data), "--out", str(out), "--sites", "2",
            "--epsilons", "inf,1", "--shadows", "4", "--canaries", "8", "--natural", "8",
            "--rounds", "1"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "lr 2, no DP)\n" in printed  # found in review: "site lifetime budget 8" at inf
    assert "site lifetime budget 10" in printed.split("requested epsilon 1:")[1]
    for name in ("results.json", "results.csv", "roc.png", "report.md", "audit.json"):
        assert (out / name).stat().st_size > 0
    # found in review: small sites were audited at the full tuned rate, which train scales down
    recorded = json.loads((out / "audit.json").read_text(encoding="utf-8"))["settings"]
    site_rows = len(read_labeled_csv(data / "train.csv")) / 2
    tuned = tuned_settings(1.0)["learning-rate"]
    assert recorded["1"]["learning-rate"] == site_size_rate(tuned, site_rows, 1.0) < tuned
    assert recorded["inf"]["learning-rate"] == tuned_settings(math.inf)["learning-rate"]
    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv_module.DictReader(f))
    assert {(r["epsilon"], r["kind"], r["attack"]) for r in rows} == {
        (e, k, a) for e in ("1", "inf") for k in (CANARY, NATURAL) for a in ("lira", "loss")}
    for row in rows:
        assert float(row["epsilon_lb"]) <= float(row["accountant_epsilon"])
        assert row["models"] == "5"
    assert "| 1 |" in (out / "report.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(args) == 0
    assert capsys.readouterr().out.count("5 of 5 models already trained") == 2
    # Another game in the same folder is refused.
    assert main([*args[:-2], "--rounds", "2"]) == 2
    assert "holds an audit with other data or options" in capsys.readouterr().err
