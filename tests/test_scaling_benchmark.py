"""benchmarks/scaling.py: every run uses the tuned settings it says it does, a finished site
count is kept and never mixed with runs of other settings, and the report lists what was
measured. The runs themselves are the end-to-end tests' simulation; not repeated here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedintent.bench.federated import PeakMemory
from fl_server.progress import round_lines
from fl_server.run_config import check_run_config, tuned_settings


@pytest.fixture
def scaling(benchmark_script):
    return benchmark_script("scaling")


def _result(sites: int, seconds: float) -> dict:
    return {"sites": sites, "train_utterances": 100 * sites, "seconds_per_round": seconds,
            "first_round_seconds": 20.0, "wall_seconds": 40 * seconds + 20,
            "peak_memory_mib": 3000.0 + sites, "upload_bytes_per_site_round": 118836.0,
            "accuracy": 0.9}


@pytest.mark.parametrize(("privacy_model", "secure_aggregation"),
                         [("local", False), ("local", True), ("distributed", False)])
def test_runs_use_the_tuned_settings_and_pass_the_run_config_check(
        scaling, privacy_model: str, secure_aggregation: bool) -> None:
    settings = scaling.run_settings(8.0, 40, privacy_model, secure_aggregation)
    check_run_config(settings | {"min-sites": 10})
    assert settings["num-rounds"] == 40
    assert settings["target-epsilon"] == 8.0
    assert settings.get("secure-aggregation", False) is (secure_aggregation
                                                         or privacy_model == "distributed")
    tuned = tuned_settings(8.0, privacy_model)
    assert settings["learning-rate"] == tuned["learning-rate"]
    if privacy_model == "distributed":
        assert settings["privacy-model"] == "distributed"
        assert settings["tolerated-sites"] == scaling.TOLERATED_SITES


def test_report_lists_every_site_count_in_order(scaling, tmp_path: Path) -> None:
    record = {"data": "synthetic", "mode": "simulation", "settings": {"num-rounds": 40},
              "results": [_result(100, 6.5), _result(10, 2.5)]}
    scaling.write_report(tmp_path, record)
    rows = [line for line in (tmp_path / "scaling.md").read_text().splitlines()
            if line.startswith("| 1")]
    assert [row.split("|")[1].strip() for row in rows] == ["10", "100"]
    assert "| 6.5 |" in rows[1]
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_deployment_report_gives_each_sites_memory(scaling, tmp_path: Path) -> None:
    row = _result(20, 9.0) | {"site_peak_memory_mib_max": 812.4, "site_peak_memory_mib_mean": 640.2,
                              "superlink_peak_memory_mib": 402.0}
    scaling.write_report(tmp_path, {"data": "synthetic", "mode": "deployment",
                                    "settings": {}, "results": [row]})
    lines = (tmp_path / "scaling.md").read_text().splitlines()
    header, rule, measured = lines[2], lines[3], lines[4]
    assert header.count("|") == rule.count("|") == measured.count("|") == 11
    assert "| 812 (640) | 402 |" in measured


def test_a_folder_of_other_settings_is_refused_and_left_alone(
        scaling, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    kept = {"data": "synthetic", "mode": "simulation",
            "settings": scaling.run_settings(8.0, 40, "local", False),
            "results": [_result(10, 2.5)]}
    (tmp_path / "scaling.json").write_text(json.dumps(kept))
    for other in (["--rounds", "20"], ["--deployment"], ["--secure-aggregation"]):
        monkeypatch.setattr(sys, "argv", ["scaling.py", "--synthetic", *other,
                                          "--sites", "10", "--out", str(tmp_path)])
        with pytest.raises(SystemExit) as exit_info:
            scaling.main()
        assert exit_info.value.code == 2
        assert "other data, mode or settings" in capsys.readouterr().err
        assert json.loads((tmp_path / "scaling.json").read_text()) == kept


def test_a_measured_site_count_is_not_run_again(
        scaling, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kept = {"data": "synthetic", "mode": "simulation",
            "settings": scaling.run_settings(8.0, 40, "local", False),
            "results": [_result(10, 2.5)]}
    (tmp_path / "scaling.json").write_text(json.dumps(kept))

    def must_not_run(*args: object) -> dict:
        raise AssertionError("a measured site count was run again")

    monkeypatch.setattr(scaling, "measure", must_not_run)
    monkeypatch.setattr(sys, "argv", ["scaling.py", "--synthetic", "--sites", "10",
                                      "--out", str(tmp_path)])
    assert scaling.main() == 0
    assert json.loads((tmp_path / "scaling.json").read_text()) == kept


@pytest.mark.parametrize("argv", [
    ["--sites", "10"],
    ["--synthetic", "--sites", "ten"],
    ["--synthetic", "--sites", "2"],
    ["--synthetic", "--epsilon", "inf"],
    ["--synthetic", "--sites", "3", "--privacy-model", "distributed"],
    ["--recorded"],
    ["--recorded", "--synthetic"],
])
def test_bad_arguments_are_refused_before_anything_is_written(
        scaling, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["scaling.py", *argv, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        scaling.main()
    assert exit_info.value.code == 2
    assert not out.exists()


def test_peak_memory_counts_each_named_process_tree() -> None:
    """A child holding 200 MiB shows in its own tree's peak and in the total, and this process
    (not named) does not: a deployment's per-site figures are each site's own."""
    holder = ("import time; b = bytearray(200 * 2**20); b[::4096] = b'x' * len(b[::4096]); "
              "print('ready', flush=True); time.sleep(120)")
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        with PeakMemory({"child": [child.pid]}, interval=0.05) as memory:
            pass
    finally:
        child.kill()
        child.wait()
    assert memory.peaks["child"] >= 200 * 2**20
    assert memory.peak_bytes == memory.peaks["child"] < 1024 * 2**20


def test_a_deployed_round_is_timed_at_its_end_not_at_its_in_progress_lines(
        scaling, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``deploy-run`` prints ``in progress`` lines while a round runs; taken for the round's
    end, they timed the first round at its first 30 seconds."""
    finished = [round_lines({"round": n, "sites_trained": 2, "max_epsilon": 1.5}, 2)[0]
                for n in (1, 2)]
    output = ["round   1/2  in progress: 2 sites training (30 s; the first round embeds every "
              "utterance once at each site)", "round   1/2  in progress (60 s)", finished[0],
              "round   2/2  in progress: 2 sites evaluating (30 s)", finished[1]]
    command = [sys.executable, "-c", f"print({chr(10).join(output)!r})"]
    times = scaling.follow_rounds(command, dict(os.environ), tmp_path)
    assert len(times) == 2
    assert [line.strip() for line in capsys.readouterr().out.splitlines()] == finished


def test_secagg_times_come_from_the_server_log_after_the_first_round(
        scaling, tmp_path: Path) -> None:
    """Round 1 (actors starting) is left out; a site's log line and one past midnight count
    right."""
    stamps = [("23:59:50", "23:59:58", "23:59:59"), ("23:59:59", "00:00:04", "00:00:05"),
              ("00:00:05", "00:00:11", "00:00:14")]
    lines = []
    for begin, shares, end in stamps:
        lines += [f"12/02/2026 {begin}:INFO:Secure aggregation commencing.",
                  "(ClientAppActor pid=1) 12/02/2026 00:00:00:INFO:Secure aggregation commencing.",
                  f"12/02/2026 {shares}:DEBUG:[Stage 3] Received key shares from 20 clients.",
                  f"12/02/2026 {end}:INFO:Secure aggregation completed."]
    log = tmp_path / "flower.log"
    log.write_text("\n".join(lines) + "\n")
    assert scaling.secagg_seconds(log) == {"secagg_seconds_per_round": 7.5,
                                           "secagg_server_unmask_seconds": 2.0}
    log.write_text("12/02/2026 10:00:00:INFO:round   1/5\n")
    assert scaling.secagg_seconds(log) == {}


def test_recorded_runs_every_measurement_of_the_docs_into_its_own_folder(
        scaling, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--recorded`` is the one command behind docs/SCALING.md: each preset with its own
    settings and folder, the per-site curve last."""
    data = tmp_path / "banking77"
    data.mkdir()
    for name in ("train.csv", "test.csv"):
        (data / name).write_text("text,label\n")
    runs: list[tuple[str, int, dict, bool]] = []

    def fake_measure(args, num_sites: int, settings: dict) -> dict:
        runs.append((args.out.name, num_sites, settings, args.synthetic))
        return _result(num_sites, 1.0) | {"site_peak_memory_mib_max": 1.0,
                                          "site_peak_memory_mib_mean": 1.0,
                                          "superlink_peak_memory_mib": 1.0}

    commands = []
    monkeypatch.setattr(scaling, "measure", fake_measure)
    monkeypatch.setattr(scaling, "measure_deployment", fake_measure)
    monkeypatch.setattr(scaling.subprocess, "run", lambda cmd, check: commands.append(cmd))
    monkeypatch.setattr(sys, "argv", ["scaling.py", str(data), "--recorded",
                                      "--out", str(tmp_path / "out")])
    assert scaling.main() == 0
    by_folder: dict[str, list] = {}
    for folder, sites, settings, synthetic in runs:
        by_folder.setdefault(folder, []).append((sites, settings, synthetic))
    assert {folder: [s for s, _, _ in rows] for folder, rows in by_folder.items()} == {
        "banking77": [10, 50, 100], "synthetic": [10, 50, 100], "secagg": [10, 20, 50, 100],
        "distributed": [10, 20, 50], "deployment": [20]}
    assert all(synthetic == (folder == "synthetic")
               for folder, rows in by_folder.items() for _, _, synthetic in rows)
    assert by_folder["secagg"][0][1]["secure-aggregation"] is True
    assert by_folder["distributed"][0][1]["privacy-model"] == "distributed"
    assert by_folder["distributed"][0][1]["target-epsilon"] == 3.0
    assert by_folder["banking77"][0][1]["num-rounds"] == 40
    mode = json.loads((tmp_path / "out" / "deployment" / "scaling.json").read_text())["mode"]
    assert mode == "deployment"
    [command] = commands
    assert command[1].endswith("site_resources.py")
    assert command[-2:] == ["--out", str(tmp_path / "out" / "site")]
