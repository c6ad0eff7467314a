"""What the operator of a simulation is told about the sites it plays: their folder names next to
their pseudonyms, and, before round 1, which sites cannot spend the run's target epsilon."""

import json

import pytest

import fedintent.commands.train as train_command
from fedintent.cli import main
from fedintent.commands.progress import print_round
from fedintent.launch.simulated_sites import (
    budget_warnings,
    no_site_resumes,
    record_site_folders,
    simulated_sites,
    site_names,
    sites_that_cannot_train,
    training_rows,
)
from fl_client.privacy_accounting import rdp_budget
from fl_client.privacy_ledger import Ledger, Release, now, read_ledger, unit_key, write_ledger
from fl_client.site_folders import simulated_site_folders
from fl_client.site_secret import create_site_secret, site_key, site_secret
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_record import site_pseudonym

ORDER, DELTA = 4.0, 1e-5
INF = float("inf")


def sites_in(tmp_path, count: int = 3) -> dict:
    """A run config over ``count`` site folders, with the default state root."""
    data = tmp_path / "data"
    for number in range(count):
        (data / f"site-{number:02d}").mkdir(parents=True)
    (data / "labels.txt").write_text("a\nb\n")
    return RUN_CONFIG_DEFAULTS | {"data-dir": str(data)}


def spend(state, epsilons: list[float], privacy_unit: str = "utterance") -> None:
    """A verified ledger in ``state`` whose units have spent ``epsilons`` over earlier runs."""
    create_site_secret(state)
    secret = site_secret(state)
    ledger = Ledger(privacy_unit=privacy_unit, order=ORDER, delta=DELTA)
    ledger.releases.append(Release(
        run="earlier", server_round=1, num_rounds=1, noise_multiplier=1.0, sample_rate=1.0,
        steps=1, clip_norm=1.0, delta=DELTA, accountant="rdp", units=len(epsilons), rdp=0.5,
        time=now()))
    ledger.spend = {unit_key(secret, f"unit-{i}"): rdp_budget(eps, DELTA, ORDER)
                    for i, eps in enumerate(epsilons)}
    write_ledger(state, ledger, secret)


def test_sites_are_named_by_folder_once_they_have_a_pseudonym(tmp_path):
    config = sites_in(tmp_path) | {"state-dir": str(tmp_path / "state")}
    sites = simulated_sites(config, 2)
    assert [(s.name, s.state_dir) for s in sites] == [
        ("site-00", tmp_path / "state" / "site-00"), ("site-01", tmp_path / "state" / "site-01")]
    assert site_names(sites, []) == {}  # no site has trained: no secret, and none is created
    assert not (tmp_path / "state").exists()

    create_site_secret(sites[1].state_dir)  # as its first round does
    pseudonym = site_pseudonym(site_key(sites[1].state_dir))
    rounds = [{"sites": {pseudonym: {"node_id": "77"}}, "failures": []}]
    names = site_names(sites, rounds)
    assert names == {pseudonym: "site-01", "77": "site-01"}

    metrics = {"final": {"sites": {pseudonym: {}, "site-000000000001": {}}}}
    path = tmp_path / "metrics.json"
    recorded = record_site_folders(path, metrics, names)
    assert json.loads(path.read_text())["site_folders"] == {pseudonym: "site-01"}
    assert recorded["site_folders"] == {pseudonym: "site-01"}


def test_print_round_names_the_folder_of_a_site_that_did_not_train(capsys):
    print_round({"round": 2, "sites_trained": 0, "sites_failed": 1,
                 "failures": [{"node_id": "77", "reason": "declined"}]}, 5, {"77": "site-01"})
    assert "  site 77 (site-01) did not train: declined" in capsys.readouterr().out


def test_a_site_whose_units_spent_most_of_their_budget_is_named_with_what_to_do(tmp_path):
    config = sites_in(tmp_path) | {"target-epsilon": 8.0, "site-max-epsilon": 10.0}
    sites = simulated_sites(config, 3)
    spend(sites[0].state_dir, [8.0, 1.0])  # at most 2 left: less than the target
    spend(sites[1].state_dir, [1.5])  # 8.5 left: enough
    [warning] = budget_warnings(sites, config)  # site-02 has never trained: a full budget
    assert warning.startswith("site site-00: will spend less than the target epsilon 8 on units "
                              "that trained before")
    assert "up to epsilon 8.000 of their lifetime budget 10" in warning
    assert "leaves at most 2.000 per utterance" in warning
    assert "(0 of the 2 units in its ledger are there already)" in warning
    assert "--site-max-epsilon" in warning and "--state-dir" in warning
    assert f"privacy-report {sites[0].state_dir}" in warning
    assert budget_warnings(sites, config | {"site-max-epsilon": 16.0}) == []
    assert budget_warnings(sites, config | {"site-max-epsilon": float("inf")}) == []
    assert budget_warnings(sites, config | {"target-epsilon": float("inf")}) == []


@pytest.mark.parametrize("prepare,message", [
    (lambda state: None, "its lifetime budget (--site-max-epsilon 8) is below the target "
                         "epsilon 12, so this run spends at most 8 there"),
    (lambda state: spend(state, [1.0], privacy_unit="customer"),
     "will not train: its ledger ({state}) counts customer units and this run asks for "
     "--privacy-unit utterance"),
    (lambda state: (spend(state, [1.0]), (state / "privacy-ledger.json").write_text("{}")),
     "will not train: {state}/privacy-ledger.json: not a fedintent privacy ledger"),
])
def test_a_site_that_cannot_reach_the_target_says_why(tmp_path, prepare, message):
    config = sites_in(tmp_path, 1) | {"target-epsilon": 12.0}
    [site] = simulated_sites(config, 1)
    prepare(site.state_dir)
    [warning] = budget_warnings([site], config)
    assert message.format(state=site.state_dir) in warning


def test_a_site_whose_budget_is_under_half_the_target_is_said_to_decline(tmp_path):
    config = sites_in(tmp_path, 1) | {"target-epsilon": 20.0}
    [site] = simulated_sites(config, 1)
    [warning] = budget_warnings([site], config)
    assert warning.startswith("site site-00: will decline every round: its lifetime budget "
                              "(--site-max-epsilon 8) is under 1/2 of the target epsilon 20")


def spent_sites(tmp_path, count: int = 2, unit: str = "utterance") -> dict:
    """A run config over ``count`` sites of two training rows each (the second with a label the
    run does not have), whose ledgers hold the first row's unit at its lifetime budget 8."""
    config = sites_in(tmp_path, count) | {"privacy-unit": unit}
    folders = simulated_site_folders(tmp_path / "data", config["state-dir"])
    for site_dir, _ in folders:
        (site_dir / "train.jsonl").write_text(
            json.dumps({"text": f"lost my card at {site_dir.name}", "label": "a",
                        "customer_id": "C-1"}) + "\n"
            + json.dumps({"text": "what is this", "label": "other"}) + "\n")
    rows = dict(training_rows(tmp_path / "data"))
    for site_dir, state in folders:
        row = rows[site_dir][0]
        spend(state, [], privacy_unit=unit)
        secret = site_secret(state)
        ledger = read_ledger(state, secret)
        identity = row.uid if unit == "utterance" else row.unit
        ledger.spend = {unit_key(secret, f"{unit}\0{identity}"): rdp_budget(8.0, DELTA, ORDER)}
        write_ledger(state, ledger, secret)
    return config


@pytest.mark.parametrize("unit", ["utterance", "customer"])
def test_sites_whose_training_units_all_spent_their_budget_are_named(tmp_path, unit):
    """Found in review: a second run on spent data warned, started, and failed only after
    every site had declined every round."""
    config = spent_sites(tmp_path, unit=unit)
    sites = simulated_sites(config, 2)
    rows = training_rows(tmp_path / "data")
    blocked = sites_that_cannot_train(sites, rows, ["a", "b"], config)
    assert list(blocked) == ["site-00", "site-01"]
    assert blocked["site-00"] == (
        f"every one of the 1 {unit} units of its training rows has spent its lifetime budget 8 "
        f"in earlier runs (fedintent privacy-report {sites[0].state_dir} shows the spend)")
    # any site that may train lets the run start
    assert sites_that_cannot_train(sites, rows, ["a", "b", "other"], config) == {}
    assert sites_that_cannot_train(sites, rows, ["a"], config | {"site-max-epsilon": 9.0}) == {}
    assert sites_that_cannot_train(sites, rows, ["a"], config | {"target-epsilon": INF}) == {}
    assert sites_that_cannot_train(sites[:1], rows, ["a"], config) == {
        "site-00": blocked["site-00"]}
    with open(tmp_path / "data" / "site-01" / "train.jsonl", "a") as f:
        f.write(json.dumps({"text": "a new row", "label": "a", "customer_id": "C-2"}) + "\n")
    assert sites_that_cannot_train(sites, training_rows(tmp_path / "data"), ["a"], config) == {}


def test_sites_left_with_no_row_of_the_runs_labels_or_a_broken_ledger_are_named(tmp_path):
    config = spent_sites(tmp_path)
    sites = simulated_sites(config, 2)
    (sites[1].state_dir / "privacy-ledger.json").write_text("{}")
    blocked = sites_that_cannot_train(sites, training_rows(tmp_path / "data"), ["b"], config)
    assert blocked["site-00"] == "none of its training rows has a label of the run"
    assert blocked["site-01"].startswith("none of its training rows")
    blocked = sites_that_cannot_train(sites, training_rows(tmp_path / "data"), ["a"], config)
    assert blocked["site-01"].startswith(f"its ledger does not verify: {sites[1].state_dir}")
    # found in review: with the ledger and its head deleted, the egress log still shows the
    # releases sent, and the site refuses to train; the launcher says so before the run
    for name in ("privacy-ledger.json", "privacy-ledger.head"):
        (sites[1].state_dir / name).unlink()
    (sites[1].state_dir / "egress.jsonl").write_text(json.dumps(
        {"message": "train", "verdict": "sent", "metrics": {"epsilon": 1.5}}) + "\n")
    blocked = sites_that_cannot_train(sites, training_rows(tmp_path / "data"), ["a"], config)
    assert blocked["site-01"].startswith("its ledger does not verify: ")
    assert "the ledger was deleted" in blocked["site-01"]
    blocked = sites_that_cannot_train(sites[:1], training_rows(tmp_path / "data"), ["a"],
                                      config | {"privacy-unit": "customer"})
    assert blocked["site-00"] == (f"its ledger ({sites[0].state_dir}) counts utterance units "
                                  "and this run asks for --privacy-unit customer")
    fresh = sites_in(tmp_path / "fresh", 1) | {"target-epsilon": 20.0}
    (tmp_path / "fresh" / "data" / "site-00" / "train.jsonl").write_text(
        json.dumps({"text": "hello", "label": "a"}) + "\n")
    [site] = simulated_sites(fresh, 1)
    blocked = sites_that_cannot_train([site], training_rows(tmp_path / "fresh" / "data"), ["a"],
                                      fresh)
    assert blocked["site-00"].startswith("will decline every round: its lifetime budget")
    # a site whose egress log holds only exact evaluations has charged nothing: still new
    site.state_dir.mkdir(parents=True, exist_ok=True)
    create_site_secret(site.state_dir)
    (site.state_dir / "egress.jsonl").write_text(json.dumps(
        {"message": "evaluate", "verdict": "sent", "metrics": {"accuracy": 0.5}}) + "\n")
    assert sites_that_cannot_train([site], training_rows(tmp_path / "fresh" / "data"), ["a"],
                                   fresh) == blocked


def test_train_refuses_a_run_no_site_can_train_before_it_starts(tmp_path, monkeypatch, capsys):
    config = spent_sites(tmp_path)
    monkeypatch.setattr(train_command, "_simulate", lambda *args, **kwargs: pytest.fail("ran"))
    out = tmp_path / "out"
    assert main(["train", "--data", config["data-dir"], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no site can train in this run, so it would only fail: site site-00: every one" in err
    assert "; site site-01: every one of the 1 utterance units" in err
    assert "raise --site-max-epsilon" in err and "new --state-dir" in err
    assert not out.exists()


def test_a_resume_is_refused_where_no_site_has_room_for_a_round_it_would_train(tmp_path):
    """Found in review: a resume whose own warnings said every site would decline every round
    left ran them all, empty, and exited 0, where a new run in that state is refused."""
    config = sites_in(tmp_path, 2) | {"run-name": "earlier", "num-rounds": 5}
    state = tmp_path / "data" / ".fedintent-state"
    spend(state / "site-00", [8.0])  # at its lifetime budget 8: no round of cost 0.5 fits
    spend(state / "site-01", [8.0, 8.0])
    sites = simulated_sites(config, 2)
    rows = training_rows(tmp_path / "data")  # no rows: no unit new to a ledger
    assert no_site_resumes(sites, rows, ["a", "b"], config, done=3)
    assert not no_site_resumes(sites, rows, ["a", "b"], config | {"target-epsilon": INF}, done=3)
    assert not no_site_resumes(sites, rows, ["a", "b"], config | {"run-name": "another"},
                               done=3)  # a run the ledgers never charged: unbounded
    # found in review: a resume with no round left only exports the model
    assert not no_site_resumes(sites, rows, ["a", "b"], config, done=5)
    # found in review: a row added since is a unit the ledger has not seen, at the full budget
    (tmp_path / "data" / "site-01" / "train.jsonl").write_text(
        json.dumps({"text": "a new row", "label": "a"}) + "\n")
    assert not no_site_resumes(sites, training_rows(tmp_path / "data"), ["a", "b"], config,
                               done=3)
    assert no_site_resumes(sites, training_rows(tmp_path / "data"), ["b"], config, done=3)
    spend(state / "site-01", [1.0])
    assert not no_site_resumes(sites, rows, ["a", "b"], config, done=3)


def test_train_warns_before_round_one(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    config = sites_in(tmp_path, 2)
    for site in ("site-00", "site-01"):
        (data / site / "train.jsonl").write_text(json.dumps({"text": "hi", "label": "a"}) + "\n")
    spend(data / ".fedintent-state" / "site-01", [9.0])
    started = []
    monkeypatch.setattr(train_command, "_simulate",
                        lambda *args, **kwargs: started.append(capsys.readouterr()) or 0)
    assert main(["train", "--data", config["data-dir"], "--out", str(tmp_path / "out")]) == 0
    [before] = started
    assert "target epsilon 8" in before.out
    assert before.err.startswith("fedintent train: warning: site site-01: will spend less than "
                                 "the target epsilon 8")
