"""The ServerApp in-process, as ``flwr run .`` runs it: what it logs, and how it records a run
that cannot start or go on (``status: failed`` and one line, never a traceback)."""

import json
import logging
from pathlib import Path

import pytest
from flwr.app import Context, Message, RecordDict

from fl_protocol.wire import RUN_CONFIG_DEFAULTS, Reason, error_reply
from fl_server import server_app
from fl_server.run_config import check_run_config
from fl_server.run_record import RunRecord, json_safe
from fl_server.server_app import main


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
    assert metrics["status"] == "failed" and "no site trained in any round" in metrics["error"]
    lines = [record.getMessage() for record in logged.records]
    assert "round   1/1  sites trained 0/2  eval accuracy n/a  max epsilon n/a" in lines
    assert f"  site 1 did not train: {Reason.BUDGET_EXHAUSTED.value}" in lines
    assert any("run failed: no site trained" in line for line in lines)
    assert not any(record.exc_info for record in logged.records)


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
