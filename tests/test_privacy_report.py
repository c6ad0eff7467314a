"""``privacy-report`` on a site that has not trained yet, and on one whose ledger is gone or
damaged: a site set up with ``init-site`` has spent nothing, a deleted ledger is never taken
for one, and the messages read right from a report command."""

import json
import math
from dataclasses import replace

import pytest

from fedintent.cli import main
from fl_client.privacy_ledger import (
    HEAD_FILE,
    LEDGER_FILE,
    Ledger,
    LedgerError,
    Release,
    now,
    read_ledger,
    unit_key,
    write_ledger,
)
from fl_client.privacy_report import (
    Evaluations,
    evaluations_sent,
    site_privacy_report,
    stated_max_epsilon,
)
from fl_client.site_secret import site_secret


@pytest.fixture
def fresh(tmp_path):
    """A site's state folder as ``fedintent init-site`` leaves it: a secret, nothing else."""
    state = tmp_path / "st0"
    assert main(["init-site", "--state-dir", str(state)]) == 0
    return state


def trained(state, noise_multiplier=2.0):
    """``state`` with a ledger of one release spent by one unit."""
    secret = site_secret(state)
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    ledger.releases.append(Release(
        run="r", server_round=1, num_rounds=1, noise_multiplier=noise_multiplier,
        sample_rate=1.0, steps=1, clip_norm=1.0, delta=1e-5, accountant="rdp", units=1,
        rdp=0.5, time=now()))
    ledger.spend = {unit_key(secret, "u1"): 0.5}
    write_ledger(state, ledger, secret)
    return state


def test_a_site_set_up_but_never_trained_reports_nothing_spent(fresh, capsys):
    assert main(["privacy-report", str(fresh)]) == 0
    out = capsys.readouterr().out
    assert "no runs yet" in out and "no unit has spent any budget" in out
    report = site_privacy_report(fresh, 8.0)
    assert not report.trained and report.runs == [] and report.units == 0
    assert (report.largest_epsilon, report.largest_epsilon_alone) == (0.0, 0.0)
    assert (report.exhausted, report.non_private) == (0, 0)
    unlimited = site_privacy_report(fresh, math.inf)  # bands of a quarter each, all empty
    assert unlimited.spend_bands == [(0.0, 0.25, 0), (0.25, 0.5, 0), (0.5, 0.75, 0),
                                     (0.75, 1.0, 0)]


def test_a_missing_folder_or_secret_is_no_report(tmp_path, fresh):
    with pytest.raises(FileNotFoundError, match="state folder not found"):
        site_privacy_report(tmp_path / "nowhere", 8.0)
    trained(fresh)
    (fresh / "site-secret").unlink()
    with pytest.raises(LedgerError, match="cannot verify the ledger"):
        site_privacy_report(fresh, 8.0)


def test_a_ledger_whose_releases_charged_no_unit_reads_nothing_spent(fresh):
    """A DP evaluation made over no unit (every test unit at its budget, or none there)."""
    trained(fresh)
    secret = site_secret(fresh)
    ledger = read_ledger(fresh, secret)
    ledger.spend, ledger.alone, ledger.recorded = {}, {}, {}
    write_ledger(fresh, ledger, secret)
    report = site_privacy_report(fresh, 8.0)
    assert report.trained and (report.units, report.largest_epsilon) == (0, 0.0)


def test_a_folder_without_a_site_secret_is_still_no_state_folder(tmp_path, capsys):
    assert main(["privacy-report", str(tmp_path)]) == 2
    assert "no privacy ledger" in capsys.readouterr().err


@pytest.mark.parametrize("state", [".fedintent-state", "../.fedintent-state/site-03"])
def test_a_sites_data_folder_given_for_its_state_folder_is_pointed_to_its_state(tmp_path, capsys,
                                                                               state):
    """Found in review: a site's data folder given to privacy-report (the README's run leaves
    each simulated site's state in DATA/.fedintent-state/SITE, a deployed site's default is
    SITE/.fedintent-state) was only "not a site's state folder"."""
    site = tmp_path / "data" / "site-03"
    site.mkdir(parents=True)
    (site / "train.jsonl").write_text("")
    assert main(["privacy-report", str(site)]) == 2
    assert capsys.readouterr().err.rstrip().endswith("or the site has never trained")
    trained_state = (site / state).resolve()
    assert main(["init-site", "--state-dir", str(trained_state)]) == 0
    capsys.readouterr()
    assert main(["privacy-report", str(site)]) == 2
    err = capsys.readouterr().err
    assert (f"or the site has never trained; {site} looks like a site's data folder, whose "
            f"state folder is {site / state if state.startswith('.f') else trained_state}"
            in err), err


@pytest.mark.parametrize("gone", [
    "the ledger, its head left",
    "the ledger and its head, a non-private update in the egress log",
    "the ledger and its head, a DP update in the egress log",
])
def test_a_deleted_ledger_is_never_reported_as_a_site_that_spent_nothing(fresh, gone, capsys):
    trained(fresh, noise_multiplier=0.0 if "non-private" in gone else 2.0)
    (fresh / LEDGER_FILE).unlink()
    if "egress" in gone:
        (fresh / HEAD_FILE).unlink()
        epsilon = None if "non-private" in gone else 1.5  # JSON's null: no DP, infinite
        (fresh / "egress.jsonl").write_text(json.dumps(
            {"message": "train", "verdict": "sent", "metrics": {"epsilon": epsilon}}) + "\n")
    assert main(["privacy-report", str(fresh)]) == 2
    assert "the ledger was deleted" in capsys.readouterr().err


def test_a_head_naming_no_releases_without_its_ledger_is_a_deleted_ledger(fresh, capsys):
    """A head is only ever written after a ledger (training refuses it too)."""
    (fresh / HEAD_FILE).write_text(json.dumps({"releases": 0, "version": 1, "mac": "ab"}))
    assert main(["privacy-report", str(fresh)]) == 2
    assert "the ledger was deleted" in capsys.readouterr().err


def test_only_evaluations_with_exact_metrics_sent_are_still_a_site_that_spent_nothing(fresh,
                                                                                     capsys):
    """Exact evaluate replies are not charged, so they leave no ledger behind; the report says
    what they sent, and only the kinds of reply there were."""
    assert main(["privacy-report", str(fresh)]) == 0
    assert "evaluate replies (egress log): none sent or declined\n" in capsys.readouterr().out
    (fresh / "egress.jsonl").write_text(json.dumps(
        {"message": "evaluate", "run": "r", "verdict": "sent", "metrics": {"accuracy": 0.5}})
        + "\n")
    report = site_privacy_report(fresh, 8.0)
    assert not report.trained and report.evaluations.sent == 1
    assert main(["privacy-report", str(fresh)]) == 0
    printed = capsys.readouterr().out
    assert "evaluate replies (egress log):\n  1 in 1 run with the test split's exact metrics" \
        in printed
    assert "DP estimates, counted" not in printed and "declined" not in printed


def test_the_report_names_the_ledgers_length_and_newest_release(fresh, capsys):
    """Found in review: a whole state folder restored from an older backup verifies, and the
    report said only "ledger verified"; its length and newest release are what an operator
    can hold against their own records."""
    trained(fresh)
    assert main(["privacy-report", str(fresh)]) == 0
    [release] = site_privacy_report(fresh, 8.0).runs
    assert (f"ledger verified: 1 release, the newest at {release.last} (a state folder "
            "restored from an older backup holds fewer") in capsys.readouterr().out


def test_a_release_whose_reply_never_left_is_reported_charged_and_not_sent(fresh, capsys):
    """Found in review: a run whose only update the egress guard blocked was listed like a run
    that sent it. The egress log says which releases paid for a reply that left."""
    trained(fresh)
    entry = {"message": "train", "run": "r", "round": 1}
    (fresh / "egress.jsonl").write_text(json.dumps(
        entry | {"verdict": "blocked: an array the run does not hold",
                 "error": {"code": 1003, "reason": "egress blocked"}}) + "\n")
    assert main(["privacy-report", str(fresh)]) == 0
    assert ("  1 of its 1 release left no reply the egress log shows sent (blocked, failed or "
            "cut off after the charge): charged all the same") in capsys.readouterr().out
    assert site_privacy_report(fresh, 8.0).runs[0].sent == 0
    with open(fresh / "egress.jsonl", "a") as log:  # the round asked again, and sent
        log.write(json.dumps(entry | {"verdict": "sent", "metrics": {"epsilon": 1.0}}) + "\n")
    assert main(["privacy-report", str(fresh)]) == 0
    assert "left no reply" not in capsys.readouterr().out
    assert site_privacy_report(fresh, 8.0).runs[0].sent == 1


def test_a_corrupt_ledger_reads_right_from_the_report(fresh, capsys):
    trained(fresh)
    (fresh / LEDGER_FILE).write_text("{not json")
    assert main(["privacy-report", str(fresh)]) == 2
    err = capsys.readouterr().err
    assert "privacy ledger is corrupt" in err and "the site does not train until" in err
    assert "refusing" not in err



def spent(state, epsilons: list[float]):
    """``state`` with a ledger whose units have spent these lifetime epsilons (as Rényi DP at
    the ledger's order: the inverse of ``unit_epsilons``' conversion, found by bisection)."""
    from fl_client.privacy_accounting import rdp_epsilon

    secret = site_secret(state)
    ledger = Ledger(privacy_unit="utterance", order=4.0, delta=1e-5)
    ledger.releases.append(Release(
        run="r", server_round=1, num_rounds=1, noise_multiplier=1.0, sample_rate=1.0, steps=1,
        clip_norm=1.0, delta=1e-5, accountant="rdp", units=len(epsilons), rdp=1.0, time=now()))
    for index, epsilon in enumerate(epsilons):
        low, high = 0.0, 100.0
        for _ in range(60):
            middle = (low + high) / 2
            low, high = ((middle, high) if rdp_epsilon(middle, 4.0, 1e-5) < epsilon
                         else (low, middle))
        ledger.spend[unit_key(secret, f"u{index}")] = high
    write_ledger(state, ledger, secret)
    return state


@pytest.mark.parametrize("value", ["1e400", "nan"])
def test_a_max_epsilon_that_is_no_number_is_refused_not_read_as_unlimited(fresh, capsys, value):
    """Found in review: ``--max-epsilon 1e400`` overflowed to inf, a site without a limit,
    where every other epsilon option refuses it."""
    with pytest.raises(SystemExit) as stopped:
        main(["privacy-report", str(fresh), "--max-epsilon", value])
    assert stopped.value.code == 2
    assert "--max-epsilon" in capsys.readouterr().err


def test_an_unlimited_budget_is_banded_by_the_largest_spend(fresh, capsys):
    """Found in review: ``--max-epsilon inf`` (a site without a limit) printed bands "nan to
    inf" and "inf to inf", every unit in none of them."""
    spent(fresh, [4.5, 5.0, 7.0, 12.0, 12.0])  # order 4 at delta 1e-5 reads at least 3.9
    assert main(["privacy-report", str(fresh), "--max-epsilon", "inf"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and "inf to" not in out, out
    bands = site_privacy_report(fresh, float("inf")).spend_bands
    assert [count for _, _, count in bands] == [0, 2, 1, 2]
    assert bands[-1][1] == pytest.approx(12.0, rel=1e-6)


@pytest.mark.parametrize("damage", ["torn", "deleted with its head"])
def test_the_report_says_when_the_deletion_log_stops_the_site(fresh, capsys, damage):
    """Found in review: the report said "ledger verified", exit 0, while the site refused to
    use its data over a broken deletion log. It says why, as the site would, and exits 1."""
    from fl_client.privacy_ledger import read_ledger, write_ledger
    from fl_protocol.hash_chain import head_path

    site = fresh.parent / "site"
    site.mkdir()
    (site / "train.jsonl").write_text('{"text": "hello", "label": "a"}\n')
    assert main(["purge", str(site), "--state-dir", str(fresh), "--retention-days", "30"]) == 0
    trained(fresh)
    ledger = read_ledger(fresh, site_secret(fresh))
    log = fresh / "deletions.jsonl"
    first = json.loads(log.read_text().splitlines()[0])
    ledger.deletion_log = {"entries": 1, "hash": first["hash"]}
    write_ledger(fresh, ledger, site_secret(fresh))
    capsys.readouterr()
    assert main(["privacy-report", str(fresh)]) == 0
    assert "deletion log: 1 entry, verified, as the ledger recorded" in capsys.readouterr().out
    if damage == "torn":
        log.write_bytes(log.read_bytes()[:-5])
    else:
        log.unlink()
        head_path(log).unlink()
    assert main(["privacy-report", str(fresh)]) == 1
    out = capsys.readouterr().out
    assert "ledger verified" in out and "the site does not use its data" in out, out
    why = "is broken at line 1" if damage == "torn" else "the deletion log holds 0 entries"
    assert why in out and "deletion log: deletion log" not in out, out


def test_the_report_says_why_one_run_reads_below_the_lifetime_it_leaves(fresh, capsys):
    trained(fresh)
    assert main(["privacy-report", str(fresh)]) == 0
    assert "What the Rényi filter costs" in capsys.readouterr().out


def test_units_fall_in_bands_of_the_budget_and_the_exhausted_are_counted_apart(fresh):
    """Per unit, in-process (the CLI test runs a subprocess, which no mutation reaches): bands
    of max-epsilon / 4, each from its lower edge up to below the next; a unit at 99% of
    max-epsilon or more (above it too) is exhausted, in no band. (At ``spent``'s order and
    delta no spend converts below epsilon 3.09.)"""
    report = site_privacy_report(spent(fresh, [3.5, 4.0, 7.99, 15.8, 15.9, 18.0]), 16.0)
    assert report.spend_bands == [(0.0, 4.0, 1), (4.0, 8.0, 2), (8.0, 12.0, 0),
                                  (12.0, 16.0, 1)]
    assert (report.units, report.exhausted, report.non_private) == (6, 2, 0)
    assert report.largest_epsilon == pytest.approx(18.0)


def test_without_a_limit_the_bands_reach_the_largest_spend(fresh):
    """max-epsilon inf: four bands up to the largest spend, the last holding it; a unit
    trained without DP (an infinite spend) is counted apart, in no band."""
    state = spent(fresh, [4.0, 6.0, 8.0])
    secret = site_secret(state)
    ledger = read_ledger(state, secret)
    ledger.spend[unit_key(secret, "no-dp")] = math.inf
    write_ledger(state, ledger, secret)
    report = site_privacy_report(state, math.inf)
    assert report.spend_bands == [
        (0.0, pytest.approx(2.0), 0), (pytest.approx(2.0), pytest.approx(4.0), 0),
        (pytest.approx(4.0), pytest.approx(6.0), 1), (pytest.approx(6.0), pytest.approx(8.0), 2)]
    assert (report.units, report.non_private, report.exhausted) == (4, 1, 0)


@pytest.mark.parametrize("units,delta,too_large", [
    (100, 1e-3, True), (100, 0.99e-3, False), (0, 1.0, False), (1, 0.1, True)])
def test_a_delta_is_too_large_from_one_tenth_of_one_over_the_units(fresh, units, delta,
                                                                  too_large):
    report = replace(site_privacy_report(trained(fresh), 8.0), units=units, delta=delta)
    assert report.delta_too_large is too_large


def test_the_evaluate_replies_are_counted_by_kind_from_the_egress_log(fresh):
    entries = [{"message": "evaluate", "run": "r1", "verdict": "sent", "metrics": {}},
               {"message": "evaluate", "run": "r1", "verdict": "sent", "metrics": {}},
               {"message": "evaluate", "run": "r2", "verdict": "sent"},
               {"message": "evaluate", "run": "r3", "verdict": "sent",
                "metrics": {"epsilon": 0.5}},
               {"message": "evaluate", "run": "r3", "verdict": "blocked: x",
                "error": {"code": 1003, "reason": "egress blocked"}},
               {"message": "evaluate", "run": "r4", "verdict": "blocked: no log line"},
               {"message": "train", "run": "r1", "verdict": "sent", "metrics": {}},
               {"run": "r5"}]
    (fresh / "egress.jsonl").write_text(
        "".join(json.dumps(entry) + "\n" for entry in entries) + "{torn\n")
    assert evaluations_sent(fresh) == Evaluations(sent=3, runs=2, declined=1, unreadable=2,
                                                  dp=1)


@pytest.mark.parametrize("stated,expected", [
    ([], None),
    ([("train", "sent", 9.0), ("train", "sent", 16.0)], 16.0),
    ([("train", "sent", 9.0), ("train", "sent", 0.5)], 0.5),
    ([("train", "sent", 9.0), ("train", "sent", None)], math.inf),  # JSON's null: no limit
    ([("train", "sent", 9.0), ("train", "sent", True), ("train", "sent", 0),
      ("train", "sent", -1.0), ("train", "sent", "16"), ("evaluate", "sent", 3.0),
      ("train", "blocked: x", 2.0)], 9.0),
], ids=["none", "the newest", "below one", "inf",
        "only a training reply that left, with a number > 0"])
def test_the_max_epsilon_stated_is_the_newest_training_reply_sent(fresh, stated, expected):
    lines = [json.dumps({"message": message, "run": "r", "verdict": verdict,
                         "metrics": {"max-epsilon": value}}) for message, verdict, value in stated]
    (fresh / "egress.jsonl").write_text("".join(line + "\n" for line in [*lines, "{torn"]))
    assert stated_max_epsilon(fresh) == expected
