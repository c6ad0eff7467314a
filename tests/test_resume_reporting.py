"""What ``fedintent train`` reports when a run is interrupted, and when it is resumed.

The interrupt tests are in-process: ``fedintent.cli.main`` with Flower's processes replaced by
sleepers, and Ctrl-C raised where the launcher polls the record, so the moment of the signal is
fixed, not raced. The resume tests share one real scenario on 127.0.0.1, built step by step
(nothing waits on a clock): a 3-round run on two sites is stopped after round 2; a copy of its
folder is resumed on site-00 alone, which charges round 3 of the same run to site-00's ledger
without the original's record knowing (as a run interrupted mid-round leaves it, at the
defaults: lifetime budget = target); the original's round-2 checkpoint is damaged, so its resume
falls back to round 1 and drops the recorded round 2. Resumed, site-00 has no budget left and
declines rounds 2 and 3; site-01 trains round 2 again (its third charge, which fits) and
declines round 3.
"""

import json
import shutil
import subprocess
import sys

import pytest

import fedintent.bench.sweep as sweep
import fedintent.launch.simulation as simulation
from data_synth import write_sites
from fedintent.cli import main
from fedintent.launch.processes import is_alive
from fl_protocol.wire import Reason
from fl_server.run_config import check_run_config
from fl_server.run_record import RunRecord, final_summary

BUDGET = Reason.BUDGET_EXHAUSTED.value


# --- interrupted -----------------------------------------------------------------------------

@pytest.fixture
def interrupted_train(tmp_path, monkeypatch, sleeping_flower):
    """``fedintent train`` on two sites whose Flower processes are sleepers, interrupted (as by
    Ctrl-C) where the launcher first polls ``metrics.json``, after ``before_signal(path)`` has
    written what the ServerApp had written by then. Returns (run, exit code, started processes)."""
    data, out = tmp_path / "data", tmp_path / "out"
    write_sites(data, n_sites=2, seed=3, size=60)
    started = sleeping_flower

    def run(before_signal) -> int:
        def signal_at_poll(metrics_path, seen, on_round, resumes=0):
            before_signal(metrics_path)
            raise KeyboardInterrupt

        monkeypatch.setattr(simulation, "report_new_rounds", signal_at_poll)
        return main(["train", "--data", str(data), "--out", str(out), "--rounds", "2",
                     "--model", "ngram", "--state-dir", str(tmp_path / "state")])

    return out, run, started


def record(path, status: str) -> None:
    """A record as the ServerApp leaves it: one round trained by one site, then ``status``."""
    doc = RunRecord.start(path, 1, check_run_config({"out-dir": str(path.parent),
                                                     "run-name": "r-1", "num-rounds": 1}),
                          ["a", "b"])
    site = {"num_examples": 40, "epsilon": 7.5, "epsilon_all_runs": 7.9, "delta": 1e-5,
            "noise_multiplier": 1.1, "clip_norm": 1.0, "max_epsilon_budget": 8.0,
            "node_id": "11"}
    doc.doc["rounds"] = [{"round": 1, "sites_trained": 1, "sites": {"site-0a": site},
                          "accuracy": 0.5}]
    if status == "completed":
        doc.finish(status, final=final_summary(doc.doc) | {"model_dir": str(path.parent)})
    else:
        doc.write()


def test_a_signal_after_the_run_completed_reports_it_completed(interrupted_train, capsys):
    """Found in review: SIGTERM as the run ended printed ``interrupted`` and exited 130, though
    the ServerApp had completed (``metrics.json`` said so, the model was written)."""
    out, run, started = interrupted_train
    assert run(lambda path: record(path, "completed")) == 0
    printed = capsys.readouterr()
    assert "the run had completed all its rounds already" in printed.err
    assert "finished in" in printed.out and "final accuracy" in printed.out
    assert f"metrics: {out / 'metrics.json'}" in printed.out
    assert json.loads((out / "metrics.json").read_text())["status"] == "completed"
    assert started and not any(is_alive(process.pid) for process in started)


@pytest.mark.parametrize("written", ["running", None])
def test_an_interrupted_run_says_how_to_continue(interrupted_train, capsys, written):
    """Found in review: ``fedintent train: interrupted`` said nothing of ``--resume``; one that
    stopped before the ServerApp wrote its record cannot be resumed, and says so."""
    out, run, _ = interrupted_train
    assert run(lambda path: written and record(path, written)) == 130
    printed = capsys.readouterr()
    err = printed.err
    if written:
        # the round recorded since the last poll is printed first (found in review: the
        # console's last round was behind the one the resume went on after)
        assert "round   1/2  sites trained 1" in printed.out
        assert (f"fedintent train: interrupted; continue with: fedintent train --resume {out} "
                "(a round the sites trained after the last checkpoint was charged to their "
                "budget, and is charged again when the resume trains it") in err
        assert json.loads((out / "metrics.json").read_text())["status"] == "interrupted"
    else:
        assert err.endswith("fedintent train: interrupted; the run had not started (no "
                            f"{out / 'metrics.json'}), so there is nothing to resume: start it "
                            "again\n")


def test_an_interrupted_bench_says_that_the_same_command_resumes(tmp_path, capsys, monkeypatch):
    """Found in review: ``fedintent bench: interrupted``, and no word of how to go on."""
    (tmp_path / "csv").mkdir()
    for name in ("train.csv", "test.csv"):
        (tmp_path / "csv" / name).write_text("text,label\nhello,a\n")

    def interrupted(spec, out):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep, "run_bench", interrupted)
    out = tmp_path / "sweep"
    assert main(["bench", "--data", str(tmp_path / "csv"), "--out", str(out), "--sites", "2",
                 "--epsilons", "8", "--seeds", "1", "--rounds", "1", "--model", "ngram"]) == 130
    assert capsys.readouterr().err == (
        f"fedintent bench: interrupted; every finished cell is kept in {out / 'cells'}: re-run "
        "the same command to resume (it computes only the missing cells)\n")


# --- resumed ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The scenario of the module docstring: (completed process of ``train --resume``, its
    ``metrics.json``)."""
    tmp = tmp_path_factory.mktemp("resumed")
    data = tmp / "data"
    write_sites(data, n_sites=2, seed=5, size=120)
    config = {"data-dir": str(data), "labels-file": str(data / "labels.txt"),
              "state-dir": str(tmp / "state"), "run-name": "budget-test", "num-rounds": 3,
              "min-sites": 2, "model": "ngram", "seed": 1}

    def simulate(name: str, num_sites: int, **overrides) -> None:
        run_simulation_in(tmp / name, check_run_config(config | {"out-dir": str(tmp / name)}
                                                       | overrides), num_sites)

    with pytest.raises(simulation.SimulationError, match="stopped after round 2"):
        simulate("run", 2, **{"stop-after-round": 2})
    shutil.copytree(tmp / "run", tmp / "copy")
    simulate("copy", 1, resume=True, **{"min-sites": 1})
    checkpoint = tmp / "run" / "checkpoints" / "round-00002.safetensors"
    damaged = bytearray(checkpoint.read_bytes())
    damaged[-20] ^= 0xFF
    checkpoint.write_bytes(bytes(damaged))

    result = subprocess.run(
        [sys.executable, "-m", "fedintent.cli", "train", "--resume", str(tmp / "run")],
        capture_output=True, text=True, timeout=600, cwd=tmp,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, json.loads((tmp / "run" / "metrics.json").read_text())


def run_simulation_in(out, run_config: dict, num_sites: int) -> None:
    simulation.run_simulation(run_config, num_sites=num_sites,
                              metrics_path=out / "metrics.json",
                              log_path=out / "logs" / "flower.log", on_round=lambda entry: None)


def pseudonyms(metrics: dict) -> dict[str, str]:
    """Site folder -> pseudonym, from the record ``fedintent train`` completed."""
    return {folder: key for key, folder in metrics["site_folders"].items()}


def test_a_resume_prints_the_rounds_it_trained_not_the_ones_it_dropped(resumed):
    """Found in review: after a fallback to an older checkpoint, the dropped round was printed
    as if just trained, and the round trained again never was."""
    result, metrics = resumed
    assert metrics["resumes"][0]["rounds_dropped"] == 1
    printed = [line for line in result.stdout.splitlines()
               if line.startswith("round ") and "in progress" not in line]  # a slow round's
    assert [line.split("  eval")[0] for line in printed] == [
        f"round {entry['round']:>3}/3  sites trained {entry['sites_trained']}/2"
        for entry in metrics["rounds"][1:]
    ] == ["round   2/3  sites trained 1/2", "round   3/3  sites trained 0/2"]


def test_a_resume_names_the_folders_of_the_sites_that_decline(resumed):
    """Found in review: after a resume the decline lines named node ids only, though each site
    had trained in the run before it (its egress log ties the new node id to its folder)."""
    result, metrics = resumed
    declines = [line for line in result.stdout.splitlines()
                if line.startswith("  site ") and " did not train: " in line]
    assert len(declines) == 3 and all(line.endswith(f"did not train: {BUDGET}")
                                      for line in declines)
    nodes = {entry["round"]: [failure["node_id"] for failure in entry["failures"]]
             for entry in metrics["rounds"]}
    [site_00] = nodes[2]
    assert f"  site {site_00} (site-00) did not train: {BUDGET}" in declines
    assert sorted(line.split(" did not")[0].split("(")[1] for line in declines) == [
        "site-00)", "site-00)", "site-01)"]


def test_a_lifetime_figure_older_than_a_budget_decline_says_so(resumed):
    """Found in review: every site declined "privacy budget exhausted" and the summary,
    metrics.json and the decline lines' own neighbours said "lifetime 6.801 of budget 8"
    (the last accepted reply's), while the ledgers held 8.0. Site-00's decline comes from a
    node id the server never saw train: only its egress log ties it to the site; site-01's
    the server ties by node id."""
    result, metrics = resumed
    key = pseudonyms(metrics)
    sites = metrics["final"]["sites"]
    assert (sites[key["site-00"]]["epsilon_all_runs_round"],
            sites[key["site-00"]]["declined_for_budget_round"]) == (1, 2)
    assert (sites[key["site-01"]]["epsilon_all_runs_round"],
            sites[key["site-01"]]["declined_for_budget_round"]) == (2, 3)
    [line] = [line for line in result.stdout.splitlines() if "(site-00): epsilon" in line]
    assert ("of budget 8, as last reported, in round 1; it declined round 2 for its budget, so "
            "its units' lifetime spend may be higher, up to the budget)") in line


def test_a_resume_warns_before_it_starts_which_rounds_each_site_will_decline(resumed):
    """Found in review: no word before the resume that the rounds to train again no longer fit
    the sites' lifetime budgets."""
    result, _ = resumed
    warnings = [line for line in result.stderr.splitlines() if "its ledger charged" in line]
    assert len(warnings) == 2
    site_00, site_01 = sorted(warnings)
    assert site_00.startswith("fedintent train: warning: site site-00: its ledger charged 3 "
                              "rounds of this run already, planned for 3, and this resume "
                              "trains 2 more (rounds 2 to 3;")
    assert f"room within their lifetime budget 8 for 0 of them, so it will decline rounds 2 " \
           f"to 3 ({BUDGET})" in site_00
    assert "site site-01: its ledger charged 2 rounds" in site_01
    assert "for 1 of them, so it will decline round 3 (" in site_01
    assert "raise --site-max-epsilon" not in site_01 and "--site-max-epsilon raised" in site_01
    assert "resuming run budget-test after round 1 of 3" in result.stdout
