"""What the operator of a simulation is told about the sites it plays: their folder names next to
their pseudonyms, and, before round 1, which sites cannot spend the run's target epsilon."""

import json

import pytest

import fedintent.commands.train as train_command
from fedintent.cli import main
from fedintent.commands.progress import print_round
from fedintent.launch.simulated_sites import (
    budget_warnings,
    record_site_folders,
    simulated_sites,
    site_names,
)
from fl_client.privacy_accounting import rdp_budget
from fl_client.privacy_ledger import Ledger, Release, now, unit_key, write_ledger
from fl_client.site_secret import create_site_secret, site_key, site_secret
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.run_record import site_pseudonym

ORDER, DELTA = 4.0, 1e-5


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


def test_train_warns_before_round_one(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    config = sites_in(tmp_path, 2)
    spend(data / ".fedintent-state" / "site-01", [9.0])
    started = []
    monkeypatch.setattr(train_command, "_simulate",
                        lambda *args, **kwargs: started.append(capsys.readouterr()) or 0)
    assert main(["train", "--data", config["data-dir"], "--out", str(tmp_path / "out")]) == 0
    [before] = started
    assert "target epsilon 8" in before.out
    assert before.err.startswith("fedintent train: warning: site site-01: will spend less than "
                                 "the target epsilon 8")
