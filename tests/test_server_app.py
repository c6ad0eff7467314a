"""The ServerApp in-process, as ``flwr run .`` runs it: what it logs, and how it records a run
that cannot start or go on (``status: failed`` and one line, never a traceback)."""

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from fedintent.commands.progress import print_summary
from fl_protocol.wire import RUN_CONFIG_DEFAULTS, Reason, error_reply
from fl_server import server_app
from fl_server.run_config import check_run_config
from fl_server.run_record import (
    RunRecord,
    final_summary,
    json_safe,
    read_stage,
    run_folder_busy,
    run_folder_lock,
)
from fl_server.server_app import main
from models import get_model_family
from models.model_card import model_card


class DecliningGrid:
    """Sites that answer every message with a declined reply, the way a Grid delivers them."""

    def __init__(self, nodes: list[int]) -> None:
        self.nodes = nodes

    def get_node_ids(self) -> list[int]:
        return self.nodes

    def send_and_receive(self, messages, timeout: float) -> list[Message]:
        replies = []
        for number, message in enumerate(messages):
            message.metadata.__dict__["_message_id"] = f"m{number}"
            replies.append(error_reply(message, Reason.BUDGET_EXHAUSTED))
        return replies


def write_data(root: Path) -> Path:
    """A data folder the server reads: only its label file (sites are not run here)."""
    (root / "site-00").mkdir(parents=True)
    (root / "labels.txt").write_text("card_lost\nrefund\n")
    return root


def run_server(tmp_path: Path, grid=None, **config) -> dict:
    """Run the ServerApp with ``config`` over the defaults; return its metrics.json."""
    run_config = RUN_CONFIG_DEFAULTS | {"out-dir": str(tmp_path / "out"), "model": "ngram",
                                        "min-sites": 2} | config
    context = Context(run_id=9, node_id=0, node_config={}, state=RecordDict(),
                      run_config=run_config)
    main(grid or DecliningGrid([1, 2]), context)
    return json.loads((tmp_path / "out" / "metrics.json").read_text())


@pytest.fixture
def logged(caplog):
    caplog.set_level(logging.INFO, logger="flwr")
    return caplog


@pytest.mark.parametrize("config,message", [
    ({"data-dir": "/no/such/folder"}, "data-dir /no/such/folder is not a folder"),
    ({"labels-file": "{tmp}/labels.txt"}, "label file not found: {tmp}/labels.txt"),
    ({"num-rounds": 0}, "num-rounds must be a whole number >= 1"),
    ({"strategy": "fedsgd"}, "strategy must be one of"),
    ({"privacy-model": "distributed"}, "privacy-model distributed needs secure-aggregation"),
])
def test_a_run_that_cannot_start_is_recorded_as_failed_in_one_line(tmp_path, logged, config,
                                                                    message):
    data = write_data(tmp_path / "data")
    config = {"data-dir": str(data)} | {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
                                        for k, v in config.items()}
    metrics = run_server(tmp_path, **config)
    assert metrics["status"] == "failed" and metrics["rounds"] == []
    assert message.format(tmp=tmp_path) in metrics["error"] and "\n" not in metrics["error"]
    assert metrics["config"]["num-rounds"] == config.get("num-rounds", 40)
    assert f"output folder {tmp_path / 'out'}" in logged.text
    assert f"failed before round 1: {metrics['error']}" in logged.text
    assert not any(record.exc_info for record in logged.records)


def test_a_run_where_no_site_trains_logs_each_round_and_fails_without_a_traceback(
        tmp_path, logged, task_identity):
    metrics = run_server(tmp_path, **{"data-dir": str(write_data(tmp_path / "data")),
                                      "num-rounds": 1})
    assert metrics["status"] == "failed" and metrics["error"] == (
        f"no site trained in any round; the sites said: {Reason.BUDGET_EXHAUSTED.value}")
    lines = [record.getMessage() for record in logged.records]
    assert "round   1/1  sites trained 0/2  eval accuracy n/a  max epsilon n/a" in lines
    assert f"  site 1 did not train: {Reason.BUDGET_EXHAUSTED.value}" in lines
    assert any("run failed: no site trained" in line for line in lines)
    assert not any(record.exc_info for record in logged.records)


def test_a_server_app_refuses_a_folder_another_one_writes_and_writes_nothing(tmp_path, logged):
    """Found in review: a resume beside the ServerApp it continued (still going until its next
    heartbeat after ``flwr stop``), or two resumes at once, had two ServerApps write one record,
    audit log and checkpoints."""
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    with run_folder_lock(out):
        context = Context(run_id=9, node_id=0, node_config={}, state=RecordDict(),
                          run_config=RUN_CONFIG_DEFAULTS | {"out-dir": str(out), "model": "ngram",
                                                            "data-dir": str(data)})
        main(DecliningGrid([1, 2]), context)
        assert run_folder_busy(out)
    assert not run_folder_busy(out)
    assert sorted(path.name for path in out.iterdir()) == [".run.lock"]
    assert (f"fedintent run failed before round 1: another fedintent ServerApp is writing {out}"
            in logged.text)


def test_each_stage_of_a_round_is_recorded_before_its_sites_are_asked(tmp_path, task_identity):
    """What a launcher's line for a round still going reads (``stage.json``)."""
    seen = []

    class StageReadingGrid(DecliningGrid):
        def send_and_receive(self, messages, timeout: float) -> list[Message]:
            seen.append(read_stage(tmp_path / "out"))
            return super().send_and_receive(messages, timeout)

    run_server(tmp_path, StageReadingGrid([1, 2]),
               **{"data-dir": str(write_data(tmp_path / "data")), "num-rounds": 1})
    assert seen == [{"round": 1, "stage": "training", "sites": 2},
                    {"round": 1, "stage": "evaluating", "sites": 2}]


def test_a_round_records_that_it_waits_for_sites_to_connect(tmp_path, task_identity):
    """Found in review: a deployed run no site had joined said for 13 minutes that round 1
    embeds every utterance, so a wrong federation looked like slow training."""
    seen = []

    class FillingGrid(DecliningGrid):
        def get_node_ids(self):
            nodes = list(super().get_node_ids())
            seen.append(read_stage(tmp_path / "out"))
            return nodes[:1] if len(seen) <= 2 else nodes  # the second site joins later

    run_server(tmp_path, FillingGrid([1, 2]),
               **{"data-dir": str(write_data(tmp_path / "data")), "num-rounds": 1,
                  "min-sites": 2})
    assert {"round": 1, "stage": "waiting", "sites": 2} in seen


def test_a_round_records_that_it_waits_for_a_site_gone_before_evaluating(tmp_path,
                                                                           task_identity):
    """Flower's strategy waits for min-sites before it asks for evaluation too (found in
    review: the line still said the sites trained)."""
    seen = []

    class DroppingGrid(DecliningGrid):
        def get_node_ids(self):
            nodes = list(super().get_node_ids())
            stage = read_stage(tmp_path / "out")
            seen.append(stage)
            gone = stage is not None and stage["stage"] == "training" and len(seen) < 20
            return nodes[:1] if gone else nodes  # one site away once the sites trained

    run_server(tmp_path, DroppingGrid([1, 2]),
               **{"data-dir": str(write_data(tmp_path / "data")), "num-rounds": 1,
                  "min-sites": 2})
    assert {"round": 1, "stage": "waiting", "sites": 2} in seen


def test_a_failed_resume_keeps_the_record_it_could_not_resume(tmp_path, logged):
    data = write_data(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    completed = {"status": "completed", "config": {"data-dir": str(data)}, "rounds": [],
                 "labels": ["card_lost", "refund"]}
    (out / "metrics.json").write_text(json.dumps(completed))
    assert run_server(tmp_path, **{"data-dir": str(data), "resume": True}) == completed
    assert "cannot resume: the run completed all its rounds already" in logged.text

    # A run stopped after its first round, resumed with a different configuration: refused,
    # and its record marked failed, keeping what it recorded, so it can be resumed as it was.
    config = check_run_config(RUN_CONFIG_DEFAULTS | {
        "out-dir": str(out), "model": "ngram", "min-sites": 2, "data-dir": str(data),
        "num-rounds": 3, "run-name": "stopped-run"})
    record = RunRecord.start(out / "metrics.json", 8, json_safe(config), ["card_lost", "refund"])
    record.finish("stopped", error="stopped after round 1")
    metrics = run_server(tmp_path, **{"data-dir": str(data), "resume": True, "num-rounds": 5})
    assert metrics["status"] == "failed" and metrics["config"]["num-rounds"] == 3
    assert metrics["error"].startswith("cannot resume with a different configuration")

    # A file that is not a run's record is refused and left exactly as it was.
    bare = completed | {"status": "stopped", "config": {"num-rounds": 3}}
    (out / "metrics.json").write_text(json.dumps(bare))
    assert run_server(tmp_path, **{"data-dir": str(data), "resume": True}) == bare


def test_a_bug_before_round_one_is_recorded_then_raised(tmp_path, monkeypatch):
    def broken(name):
        raise KeyError("no such weight")

    monkeypatch.setattr(server_app, "get_model_family", broken)
    with pytest.raises(KeyError):
        run_server(tmp_path, **{"data-dir": str(write_data(tmp_path / "data"))})
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "KeyError: 'no such weight'"


def test_a_resume_refuses_a_record_whose_settings_were_edited_after_the_run_started(
        tmp_path, logged, task_identity):
    """Found in review: a resume took its settings from metrics.json, which nothing protects,
    and never compared them with the audit log's run-started entry, so a record edited to a
    target of 50 and 9 rounds was resumed without a word."""
    data = write_data(tmp_path / "data")
    first = run_server(tmp_path, **{"data-dir": str(data), "num-rounds": 3,
                                    "stop-after-round": 1, "run-name": "edited"})
    assert first["rounds"] and first["config"]["target-epsilon"] == 8.0
    path = tmp_path / "out" / "metrics.json"
    doc = json.loads(path.read_text())
    doc["config"] |= {"target-epsilon": 50.0, "num-rounds": 9}
    doc["status"] = "stopped"
    path.write_text(json.dumps(doc))
    metrics = run_server(tmp_path, **{"data-dir": str(data), "resume": True, "num-rounds": 9,
                                      "target-epsilon": 50.0, "run-name": "edited"})
    assert metrics["status"] == "failed"
    assert ("differs from the one the audit log recorded when the run started: "
            "num-rounds=9 (the audit log: 3), target-epsilon=50.0 (the audit log: 8.0)"
            in metrics["error"]), metrics["error"]


def test_a_new_run_never_writes_into_a_folder_holding_another_run(tmp_path, logged,
                                                                  task_identity):
    """Found in review: a second run in the same out-dir replaced the first's metrics.json and
    model, chained onto its audit log (so neither could be resumed) and mixed their checkpoints.
    Refused now, with nothing written, also where only the audit log and checkpoints are left."""
    data = write_data(tmp_path / "data")
    run_server(tmp_path, **{"data-dir": str(data), "num-rounds": 2, "stop-after-round": 1,
                            "run-name": "first"})
    out = tmp_path / "out"
    before = {path: path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert {"metrics.json", "audit.jsonl", "checkpoints"} <= {path.name for path in out.iterdir()}
    run_server(tmp_path, **{"data-dir": str(data), "num-rounds": 1, "run-name": "second"})
    assert f"{out} already holds a run (metrics.json, audit.jsonl" in logged.text
    (out / "metrics.json").unlink()
    del before[out / "metrics.json"]
    main(DecliningGrid([1, 2]), Context(
        run_id=10, node_id=0, node_config={}, state=RecordDict(),
        run_config=RUN_CONFIG_DEFAULTS | {"out-dir": str(out), "model": "ngram", "min-sites": 2,
                                          "data-dir": str(data), "run-name": "third"}))
    assert {path: path.read_bytes() for path in out.rglob("*") if path.is_file()} == before
    assert not any(record.exc_info for record in logged.records)


@pytest.mark.parametrize("deployed", [False, True])
def test_a_write_that_fails_mid_run_names_the_file_and_how_to_continue(tmp_path, logged,
                                                                        monkeypatch,
                                                                        task_identity, deployed):
    """Found in review: a full disk ended the run with a bare ``OSError: [Errno 28]``, logged as
    a bug with its traceback, naming no file and not saying the run can be resumed; and a
    deployed run's (deploy-run's deployment.json beside it) said to resume it as a simulation."""
    def disk_full(folder, *args):
        raise OSError(28, "No space left on device", str(folder / "round-00001.safetensors"))

    monkeypatch.setattr(server_app, "save_checkpoint", disk_full)
    out = tmp_path / "out"
    if deployed:
        out.mkdir()
        (out / "deployment.json").write_text("{}")
    metrics = run_server(tmp_path, **{"data-dir": str(write_data(tmp_path / "data")),
                                      "num-rounds": 2})
    assert metrics["status"] == "failed"
    way_on = (f"continue with: fedintent deploy-run --resume {out} and the run's --superlink, "
              "--release, --release-port and --ca-cert" if deployed
              else f"continue with: fedintent train --resume {out}")
    assert metrics["error"] == (
        f"cannot write the run's files: {out}/checkpoints/round-00001.safetensors: No space "
        f"left on device; fix that; {way_on}")
    assert not any(record.exc_info for record in logged.records)


def test_rounds_no_site_trained_in_are_named_in_the_summary_and_the_model_card(capsys):
    """Found in review: a run whose sites all stopped after round 1 said "5 rounds" and its card
    "after 5 rounds", with round 1's model and accuracy."""
    rounds = [{"round": 1, "sites_trained": 2, "accuracy": 0.5},
              *({"round": n, "sites_trained": 0} for n in range(2, 6))]
    doc = {"config": {"out-dir": "/out"}, "rounds": rounds}
    final = final_summary(doc) | {"model_dir": "/out/model"}
    assert final["rounds_without_training"] == [2, 3, 4, 5]
    card = model_card(doc | {"final": final}, get_model_family("ngram"), ["a", "b"])
    assert "after 5 rounds, 4 of which trained no site (round 2, 3, 4, 5)" in card
    print_summary(doc | {"final": final}, 25.0)
    assert ("warning: no site trained in 4 of the 5 rounds (round 2, 3, 4, 5)"
            in capsys.readouterr().out)


def test_the_summary_gives_each_sites_dp_evaluation_epsilon(capsys):
    """Found in review: the lifetime figure is the last training reply's, and the run's DP
    evaluations after it (charged to the same budget) were printed nowhere."""
    site = {"epsilon": 3.0, "privacy_unit": "customer", "delta": 1e-5, "epsilon_all_runs": 11.7,
            "max_epsilon_budget": 16.0, "noise_multiplier": 1.2, "clip_norm": 1.0,
            "rounds_trained": 2, "num_examples": 120}
    final = {"rounds_completed": 2, "accuracy": 0.5, "model_dir": "/out/model",
             "sites": {"site-a": site, "site-b": site},
             "evaluation": {"site-a": {"accuracy": 0.5, "epsilon": 7.974}}}
    print_summary({"config": {"out-dir": "/out"}, "final": final}, 25.0)
    a, b = [line for line in capsys.readouterr().out.splitlines() if "lifetime 11.700" in line]
    assert "its DP evaluations: epsilon 7.974 per test unit that took part" in a
    assert "DP evaluations" not in b


def test_the_summary_says_which_figures_are_dp_estimates(capsys):
    """Found in review: the round lines said "(DP estimates from 3 sites)", and the summary
    below them, the line a report quotes, gave the same accuracy and a worst site's one noisy
    release as plain figures."""
    site = {"epsilon": 3.0, "privacy_unit": "utterance", "delta": 1e-5, "epsilon_all_runs": 3.0,
            "max_epsilon_budget": 8.0, "noise_multiplier": 1.2, "clip_norm": 1.0,
            "rounds_trained": 2, "num_examples": 120}
    rounds = [{"round": 1, "sites_trained": 2, "accuracy": 0.7, "macro_f1": None,
               "sites_evaluated_with_dp": 1, "worst_site_accuracy": 0.6, "worst_site": "site-a",
               "evaluation": {"site-a": {"accuracy": 0.6, "epsilon": 2.0},
                              "site-b": {"accuracy": 0.8, "macro_f1": 0.7}}}]
    doc = {"config": {"out-dir": "/out"}, "rounds": rounds}
    final = final_summary(doc) | {"model_dir": "/out/model", "sites": {"site-a": site}}
    print_summary(doc | {"final": final}, 25.0)
    out = capsys.readouterr().out
    assert ("final accuracy (DP estimates from 1 site, example-weighted over the sites' test "
            "splits): 0.7000") in out
    assert "worst site accuracy 0.6000 (a DP estimate) (site-a)" in out
    rounds[0] |= {"worst_site": "site-b", "worst_site_accuracy": 0.8}
    del rounds[0]["sites_evaluated_with_dp"], rounds[0]["evaluation"]["site-a"]["epsilon"]
    print_summary(doc | {"final": final_summary(doc) | {"model_dir": "/m", "sites": {}}}, 1.0)
    out = capsys.readouterr().out
    assert "final accuracy (example-weighted over the sites' test splits): 0.7000" in out
    assert "worst site accuracy 0.8000 (site-b)" in out


def test_the_summary_gives_the_ledgers_delta_where_it_is_not_the_runs(capsys):
    """Both lifetime figures, with the site's own noise and without, are at the ledger's delta;
    a site whose reply carried the run's is printed as before, and one whose reply carried
    none (recorded before the ledger's delta was sent, in a resumed run) says so."""
    site = {"epsilon": 9.98, "epsilon_alone": 20.5, "privacy_unit": "utterance",
            "delta": 1e-10, "epsilon_all_runs": 7.07, "epsilon_alone_all_runs": 14.2,
            "max_epsilon_budget": 8.0, "noise_multiplier": 1.2, "clip_norm": 1.0,
            "rounds_trained": 2, "num_examples": 120}
    final = {"rounds_completed": 2, "accuracy": 0.5, "model_dir": "/out/model",
             "sites": {"site-a": site | {"delta_all_runs": 1e-5}, "site-b": site,
                       "site-c": site | {"delta_all_runs": 1e-10}}}
    print_summary({"config": {"out-dir": "/out"}, "final": final}, 25.0)
    a, b, c = [line for line in capsys.readouterr().out.splitlines() if "lifetime 7.070" in line]
    assert ("at delta 1e-10 (lifetime 7.070 at delta 1e-05 of budget 8), alone 20.500 (lifetime "
            "14.200 at delta 1e-05)") in a
    assert ("(lifetime 7.070 at its ledger's unreported delta of budget 8), alone 20.500 "
            "(lifetime 14.200 at its ledger's unreported delta);") in b
    assert "(lifetime 7.070 of budget 8), alone 20.500 (lifetime 14.200);" in c


def test_a_reply_without_the_ledgers_delta_is_not_given_the_runs():
    """A reply recorded before sites sent their ledger's delta (a resumed run): its lifetime
    figure is at a delta nobody recorded, which the card says, rather than the run's."""
    reply = {"num_examples": 50, "epsilon": 9.98, "epsilon_all_runs": 7.07, "delta": 1e-10,
             "max_epsilon_budget": 8.0, "noise_multiplier": 1.2, "clip_norm": 1.0,
             "sample_rate": 1.0, "privacy_units": 50}
    doc = {"config": {"out-dir": "/out"},
           "rounds": [{"round": 1, "sites_trained": 2, "accuracy": 0.5,
                       "sites": {"site-old": reply,
                                 "site-new": reply | {"delta_all_runs": 1e-5}}}]}
    final = final_summary(doc) | {"model_dir": "/out/model"}
    assert final["sites"]["site-old"]["delta_all_runs"] is None
    card = model_card(doc | {"final": final}, get_model_family("ngram"), ["a", "b"])
    assert "| site-old | 9.98 | 1e-10 |" in card and "| 7.07 | not recorded | 8 |" in card
    assert "| site-new | 9.98 | 1e-10 |" in card and "| 7.07 | 1e-05 | 8 |" in card


def test_train_resume_checks_the_audited_settings_before_anything_starts(tmp_path,
                                                                         task_identity):
    """Found in review: ``fedintent train --resume`` started the simulation on a record edited
    to 9 rounds, printed that plan, and only the ServerApp refused (exit 1, the record rewritten);
    infinity read as None in the message."""
    data = write_data(tmp_path / "data")
    run_server(tmp_path, **{"data-dir": str(data), "num-rounds": 3, "stop-after-round": 1,
                            "run-name": "edited"})
    path = tmp_path / "out" / "metrics.json"
    doc = json.loads(path.read_text())
    doc["config"] |= {"site-retention-days": 5.0, "num-rounds": 9}
    doc["status"] = "stopped"
    path.write_text(json.dumps(doc))
    edited = path.read_bytes()
    result = subprocess.run(
        [sys.executable, "-m", "fedintent.cli", "train", "--resume", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert ("num-rounds=9 (the audit log: 3), site-retention-days=5.0 (the audit log: inf)"
            in result.stderr), result.stderr
    assert "resuming" not in result.stdout and path.read_bytes() == edited
