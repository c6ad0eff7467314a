"""`fedintent bench`: the sweep's cells, resumability, outputs, and the tuned settings."""

import csv
import json
import math
import os
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import fedintent.bench.federated as federated
import fedintent.bench.sweep as sweep
from data_synth import write_sites
from fedintent.bench.baselines import Recipe, train_and_evaluate
from fedintent.bench.cells import (
    CENTRAL,
    CENTRAL_DP,
    FEDERATED,
    FEDERATED_DISTRIBUTED,
    LOCAL_ONLY,
    TFIDF,
    Cell,
    cell_lifetime_budget,
    load_cell,
    save_cell,
    sweep_cells,
)
from fedintent.bench.federated import (
    round_seconds,
    run_federated,
    site_deltas,
    upload_bytes_per_site_round,
)
from fedintent.bench.report import (
    epsilon_axis_label,
    markdown_report,
    plot_png,
    summarize,
    write_outputs,
)
from fedintent.bench.sweep import (
    BenchSpec,
    claim_sweep_folder,
    local_only_cell,
    mean_site_rows,
    pooled_cell,
    run_bench,
)
from fedintent.cli import main
from fedintent.report_files import FolderClaimed
from fl_client.data_files import list_site_dirs
from fl_client.dp_training import Evaluation
from fl_client.privacy_accounting import (
    default_delta,
    filter_order,
    noise_within_rdp,
    plan_noise_multiplier,
    rdp_budget,
)
from fl_client.privacy_ledger import read_ledger
from fl_client.site_data import load_site
from fl_client.site_secret import site_secret
from fl_protocol.durable_files import json_safe
from fl_protocol.label_file import read_labels
from fl_protocol.wire import RUN_CONFIG_DEFAULTS as DEFAULTS
from fl_server.provenance import file_sha256
from fl_server.run_config import TUNED_SETTINGS, tuned_settings
from models import get_model_family

LABELS = ["card_arrival", "lost_card", "exchange_rate", "top_up_failed"]
PHRASES = {
    "card_arrival": ["when will my new card arrive", "my card has not arrived yet",
                     "how long does card delivery take", "still waiting for my card"],
    "lost_card": ["i lost my card", "my card is missing", "someone stole my card",
                  "i can't find my bank card"],
    "exchange_rate": ["what exchange rate do you use", "the currency rate was wrong",
                      "how much is the euro to dollar rate", "why was my exchange rate bad"],
    "top_up_failed": ["my top up failed", "the top-up did not go through",
                      "i tried to top up and it was declined", "top up not working"],
}


def write_dataset(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for split, copies in (("train", 10), ("test", 3)):
        with open(folder / f"{split}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(("text", "label"))
            for label, phrases in PHRASES.items():
                for i in range(copies):
                    for phrase in phrases:
                        writer.writerow((f"{phrase} ({split} {i})", label))
    return folder


def test_sweep_has_every_method_epsilon_and_seed_once():
    cells = sweep_cells([1.0, 8.0, math.inf], seeds=2)
    assert len({cell.id for cell in cells}) == len(cells)
    by_method = {m: [c for c in cells if c.method == m] for m in {c.method for c in cells}}
    assert len(by_method[FEDERATED]) == len(by_method[LOCAL_ONLY]) == 3 * 2
    assert {c.epsilon for c in by_method[CENTRAL_DP]} == {1.0, 8.0}
    assert {(c.epsilon, c.seed) for c in by_method[CENTRAL]} == {(math.inf, 0), (math.inf, 1)}
    assert len(by_method[TFIDF]) == 2
    assert cells[0].method == FEDERATED
    assert FEDERATED_DISTRIBUTED not in by_method  # local DP only, unless asked


def test_distributed_cells_come_once_per_finite_epsilon_and_seed_after_the_local_ones():
    cells = sweep_cells([1.0, 8.0, math.inf], seeds=2, privacy_models=("local", "distributed"))
    assert len({cell.id for cell in cells}) == len(cells)
    methods = [cell.method for cell in cells]
    assert methods[:10] == [FEDERATED] * 6 + [FEDERATED_DISTRIBUTED] * 4
    distributed = [(c.epsilon, c.seed) for c in cells if c.method == FEDERATED_DISTRIBUTED]
    assert sorted(distributed) == [(1.0, 0), (1.0, 1), (8.0, 0), (8.0, 1)]
    only = sweep_cells([8.0, math.inf], seeds=1, privacy_models=("distributed",))
    assert [c.method for c in only][:2] == [FEDERATED_DISTRIBUTED, CENTRAL_DP]
    assert FEDERATED not in {c.method for c in only}


def test_cell_results_round_trip_and_a_corrupt_one_is_named(tmp_path):
    cell = Cell(FEDERATED, math.inf, 2)
    assert load_cell(tmp_path, cell) is None
    save_cell(tmp_path, cell, {"accuracy": 0.5})
    assert load_cell(tmp_path, cell) == {"method": FEDERATED, "epsilon": "inf", "seed": 2,
                                          "accuracy": 0.5}
    path = tmp_path / "cells" / "federated-epsinf-seed2.json"
    path.write_text('{"accuracy": 0.5', encoding="utf-8")
    with pytest.raises(ValueError, match="federated-epsinf-seed2.json"):
        load_cell(tmp_path, cell)
    path.write_text('{"loss": 1.0}', encoding="utf-8")
    with pytest.raises(ValueError, match="no accuracy"):
        load_cell(tmp_path, cell)


def test_summary_is_mean_std_min_max_over_seeds():
    perf = {"wall_seconds": 90.0, "seconds_per_round": 1.5, "upload_bytes_per_site_round": 118836.0,
            "peak_memory_mib": 3900.0, "max_site_epsilon": 7.97, "worst_site_accuracy": 0.5}
    results = [
        {"method": FEDERATED, "epsilon": 8.0, "seed": 0, "accuracy": 0.80, "macro_f1": 0.7} | perf,
        {"method": FEDERATED, "epsilon": 8.0, "seed": 1, "accuracy": 0.90, "macro_f1": 0.8} | perf,
        {"method": FEDERATED, "epsilon": "inf", "seed": 0, "accuracy": 0.95} | perf,
        {"method": TFIDF, "epsilon": "inf", "seed": 0, "accuracy": 0.85},
    ]
    rows = summarize(results)
    assert [(r["method"], r["epsilon"]) for r in rows] == [
        (FEDERATED, 8.0), (FEDERATED, math.inf), (TFIDF, math.inf)]
    assert rows[0]["mean"] == pytest.approx(0.85)
    assert rows[0]["std"] == pytest.approx(0.0707107, rel=1e-5)
    assert (rows[0]["min"], rows[0]["max"], rows[0]["seeds"]) == (0.80, 0.90, 2)
    assert rows[0]["macro_f1"] == pytest.approx(0.75) and rows[1]["macro_f1"] is None
    spec = {"data": "/x/banking77", "sites": 10, "alpha": 0.5, "seeds": 2, "partition_seed": 0,
            "settings": {"8": {"num-rounds": 40}}}
    assert plot_png(rows, spec).startswith(b"\x89PNG")
    report = markdown_report(spec, rows, results)
    assert ("| federated (DP-SGD per site) | 8 | not recorded | 0.8500 | 0.0707 | 0.8000 | 0.9000 "
            "| 0.7500 | 2 |" in report)
    assert "| TF-IDF + logistic regression, non-private | inf | - | 0.8500 |" in report
    # found in review: the row without DP read "DP-SGD per site"
    assert "| federated (per site, no DP) | inf | - | 0.9500 |" in report
    assert "| federated (DP-SGD per site) | inf |" not in report
    assert "epsilon 8: num-rounds=40" in report
    assert "| local | 8 | 1 | 0.5000 | 90 | 1.50 | 118836 | 3900 | 7.970 | - |" in report
    assert "samples/s" not in report
    assert "| method | 8 | inf |" in report  # the figure's points, under it
    assert "| federated (DP-SGD per site) | 0.8500 (0.8000-0.9000) | 0.9500 (0.9500-0.9500) |" \
        in report
    assert "distributed DP" not in report
    # the inf rows ran one seed of the two
    assert "up to 2 training seeds (0 to 1; each row has the number in its seeds column)" in report


def test_the_report_sets_each_sites_own_rows_beside_the_federated_model_on_them():
    """A local-only model is judged on its own site's test rows beside the shared model on the
    same rows (review 95: judged only on the pooled split, a site's own model met intents its
    site hardly saw). Mean over sites, then over seeds; the lowest site of any seed; a cell
    from before these figures, or a pooled baseline, has no row."""
    results = [
        {"method": FEDERATED, "epsilon": 8.0, "seed": 0, "accuracy": 0.8,
         "own_site_accuracies": [0.9, 0.7], "own_accuracy": 0.8, "wall_seconds": 9.0,
         "upload_bytes_per_site_round": 1.0, "peak_memory_mib": 1.0},
        {"method": LOCAL_ONLY, "epsilon": 8.0, "seed": 0, "accuracy": 0.4,
         "own_site_accuracies": [0.8, 0.6], "own_accuracy": 0.7},
        {"method": LOCAL_ONLY, "epsilon": 8.0, "seed": 1, "accuracy": 0.5,
         "own_site_accuracies": [1.0, 0.4, 0.7], "own_accuracy": 0.7},
        {"method": LOCAL_ONLY, "epsilon": "inf", "seed": 0, "accuracy": 0.6},
        {"method": CENTRAL, "epsilon": "inf", "seed": 0, "accuracy": 0.9},
    ]
    rows = summarize(results)
    local = next(r for r in rows if (r["method"], r["epsilon"]) == (LOCAL_ONLY, 8.0))
    assert local["own_mean"] == pytest.approx(0.7) and local["own_worst"] == 0.4
    spec = {"data": "/x/b77", "sites": 2, "alpha": 0.5, "seeds": 2, "partition_seed": 0,
            "settings": {"8": {"num-rounds": 40}, "inf": {"num-rounds": 40}}}
    report = markdown_report(spec, rows, results)
    assert ("| method | epsilon | mean over sites | lowest site | seeds |\n|---|---|---|---|---|\n"
            "| federated (DP-SGD per site) | 8 | 0.8000 | 0.7000 | 1 |\n"
            "| local only (mean over sites) | 8 | 0.7000 | 0.4000 | 2 |\n\n") in report
    assert "| local only (mean over sites) | inf | 0." not in report.split("own test rows")[-1]
    assert "| central, non-private | inf | 0.9000 | 0.9000 |" not in report
    old = markdown_report(spec, summarize(results[3:]), results[3:])
    assert "own test rows:" not in old


class _Predicts(torch.nn.Module):
    """A model that answers one label whatever it reads."""

    def __init__(self, label: int, classes: int = len(LABELS)):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(label), classes).float()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(features), -1)


def test_a_local_only_site_is_scored_on_its_own_rows_by_its_own_model(monkeypatch):
    """Site 0 trains on label 0 and is tested on label 0, site 1 on label 1: each site's own
    model scores 1.0 on its own rows and 0.5 on the pooled split; a site without test rows is
    left out of the mean."""
    monkeypatch.setattr(sweep, "trained_model",
                        lambda model, labels, x, y, *rest, delta: _Predicts(int(y[0])))
    recipe = Recipe(epochs=1, batch_size=64, learning_rate=1.0, clip_norm=1.0)

    def rows(label: int, n: int) -> tuple:
        return torch.zeros(n, 1), torch.full((n,), label)

    sites = [rows(0, 50), rows(1, 50), rows(2, 50)]
    pooled = (torch.zeros(4, 1), torch.tensor([0, 0, 1, 1]))
    result = local_only_cell(Cell(LOCAL_ONLY, 8.0, 0), "minilm-head", LABELS, sites, pooled,
                             recipe, [rows(0, 3), rows(1, 5), rows(2, 0)])
    assert result["own_site_accuracies"] == [1.0, 1.0] and result["own_accuracy"] == 1.0
    none = local_only_cell(Cell(LOCAL_ONLY, 8.0, 0), "minilm-head", LABELS, sites, pooled,
                           recipe, [rows(0, 0), rows(1, 0), rows(2, 0)])
    assert "own_accuracy" not in none and none["accuracy"] == pytest.approx(1 / 3)
    assert result["site_accuracies"] == [0.5, 0.5, 0.0]
    assert result["accuracy"] == pytest.approx(1 / 3)


def test_the_report_names_the_baselines_settings_and_the_machine():
    """Found in review: a quick look's ``--rounds 2`` set its federated runs against baselines
    trained to their full recipes, which the report did not name, and its timings came with no
    word of the machine that measured them."""
    results = [{"method": CENTRAL_DP, "epsilon": 3.0, "seed": 0, "accuracy": 0.8},
               {"method": CENTRAL, "epsilon": "inf", "seed": 0, "accuracy": 0.9}]
    machine = {"python": "3.11.7", "platform": "Linux-6.1-x86_64", "processor": "x86_64",
               "cpus": 2, "memory_gib": 23.5}
    spec = {"data": "/x/banking77", "sites": 3, "alpha": 0.5, "seeds": 1, "partition_seed": 0,
            "rounds": 2, "settings": {"3": {"num-rounds": 2, "delta": 0.0},
                                      "inf": {"num-rounds": 2}},
            "software": [{"versions": {"fedintent": "0.1.0"}, "machine": machine}]}
    report = markdown_report(spec, summarize(results), results)
    assert ("- central DP at epsilon 3: 40 epochs, batch-size 1024, learning-rate 8, clip-norm 1\n"
            "- central, non-private: 30 epochs, batch-size 64, learning-rate 2, clip-norm 1\n"
            ) in report
    assert "not changed by --rounds" in report and "central DP at epsilon inf" not in report
    assert "- epsilon 3: num-rounds=2, delta=0 (each site's default, above)\n" in report
    assert ("Machine: Linux-6.1-x86_64, x86_64, 2 CPUs, 23.5 GiB, Python 3.11.7 (timings "
            "under whatever else it ran)") in report
    spec["software"].append({"versions": {}, "machine": machine | {"cpus": 8}})
    assert ("Machines (one per invocation that differs, each timing its own cell's): "
            "Linux-6.1-x86_64, x86_64, 2 CPUs, 23.5 GiB, Python 3.11.7; Linux-6.1-x86_64, "
            "x86_64, 8 CPUs") in markdown_report(spec, summarize(results), results)


def test_the_report_has_a_distributed_row_and_notes_epsilon_alone():
    perf = {"wall_seconds": 95.0, "seconds_per_round": 1.6, "upload_bytes_per_site_round": 60000.0,
            "peak_memory_mib": 4000.0}
    results = [
        {"method": FEDERATED, "epsilon": 8.0, "seed": 0, "accuracy": 0.85,
         "max_site_epsilon": 7.98, "max_site_epsilon_alone": 7.98} | perf,
        {"method": FEDERATED_DISTRIBUTED, "epsilon": 8.0, "seed": 0, "accuracy": 0.88,
         "max_site_epsilon": 7.99, "max_site_epsilon_alone": 31.5} | perf,
        {"method": FEDERATED_DISTRIBUTED, "epsilon": 8.0, "seed": 1, "accuracy": 0.90,
         "max_site_epsilon": 7.99, "max_site_epsilon_alone": 30.0} | perf,
        {"method": CENTRAL_DP, "epsilon": 8.0, "seed": 0, "accuracy": 0.89},
    ]
    rows = summarize(results)
    assert [r["method"] for r in rows] == [FEDERATED, FEDERATED_DISTRIBUTED, CENTRAL_DP]
    assert rows[1]["mean"] == pytest.approx(0.89) and rows[1]["seeds"] == 2
    spec = {"data": "/x/banking77", "sites": 10, "alpha": 0.5, "seeds": 2, "partition_seed": 0,
            "settings": {"8": {"num-rounds": 40}}, "privacy_models": ["local", "distributed"],
            "tolerated_sites": 2,
            "distributed_settings": {"8": {"learning-rate": 96.0, "privacy-model": "distributed",
                                           "tolerated-sites": 2}}}
    assert plot_png(rows, spec).startswith(b"\x89PNG")
    report = markdown_report(spec, rows, results)
    assert "| federated (distributed DP, SecAgg+) | 8 | not recorded | 0.8900 |" in report
    assert "at most 2 sites missing or colluding" in report
    assert "epsilon_alone, at most 31.500 in these runs" in report
    assert "| distributed | 8 | 0 | - | 95 | 1.60 | 60000 | 4000 | 7.990 | 31.500 |" in report
    assert "| local | 8 | 0 | - | 95 | 1.60 | 60000 | 4000 | 7.980 | - |" in report
    assert ("Settings of each epsilon's distributed-DP runs (the rest as above):\n\n"
            "- epsilon 8: learning-rate=96.0, privacy-model=distributed, tolerated-sites=2"
            ) in report


def test_a_one_round_run_has_no_time_per_round_in_any_output(tmp_path):
    """Time per round excludes the first round (docs/BENCHMARKS.md), so a run of one round has
    none (found in review: `--rounds 1` gave s/round 0.00 and seconds_per_round 0.0)."""
    assert round_seconds(10.0, [19.0]) == {"seconds_per_round": None, "first_round_seconds": 9.0}
    assert round_seconds(10.0, [19.0, 20.5, 22.0]) == {"seconds_per_round": 1.5,
                                                        "first_round_seconds": 9.0}
    perf = {"wall_seconds": 9.0, "first_round_seconds": 9.0, "upload_bytes_per_site_round": 1.0,
            "peak_memory_mib": 1.0}
    results = [
        {"method": FEDERATED, "epsilon": 8.0, "seed": 0, "accuracy": 0.8,
         **perf, **round_seconds(0.0, [9.0])},
        {"method": FEDERATED, "epsilon": "inf", "seed": 0, "accuracy": 0.9,
         **perf, **round_seconds(0.0, [9.0, 10.5])},
    ]
    spec = {"data": "/x/small", "sites": 2, "alpha": 0.5, "seeds": 1, "partition_seed": 0,
            "tolerated_sites": 0, "settings": {}}
    write_outputs(tmp_path, spec, results)
    report = (tmp_path / "report.md").read_text()
    assert "| local | 8 | 0 | - | 9 | - | 1 |" in report
    assert "| local | inf | 0 | - | 9 | 1.50 | 1 |" in report
    with (tmp_path / "results.csv").open() as rows:
        per_round = {(row["method"], row["epsilon"]): row["seconds_per_round"]
                     for row in csv.DictReader(rows)}
    assert per_round == {(FEDERATED, "8.0"): "", (FEDERATED, "inf"): "1.5"}
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [cell["seconds_per_round"] for cell in cells] == [None, 1.5]


def test_the_report_names_every_commit_a_resumed_sweep_ran():
    results = [{"method": CENTRAL_DP, "epsilon": 8.0, "seed": 0, "accuracy": 0.89}]
    versions = {"fedintent": "0.1.0", "flwr": "1.41.0"}
    spec = {"data": "/x/banking77", "sites": 10, "alpha": 0.5, "seeds": 1, "partition_seed": 0,
            "settings": {}, "software": [{"versions": versions, "git_commit": "aaa"}]}
    one = markdown_report(spec, summarize(results), results)
    assert "Software: fedintent 0.1.0, flwr 1.41.0; git commit aaa\n" in one
    spec["software"] += [{"versions": versions, "git_commit": "aaa"},
                         {"versions": versions, "git_commit": "bbb"}]
    resumed = markdown_report(spec, summarize(results), results)
    assert ("git commits aaa, then bbb (a resumed sweep: each later commit ran only the cells "
            "still missing)") in resumed
    spec["software"] = [{"versions": versions}]
    assert "git commit not recorded" in markdown_report(spec, summarize(results), results)
    spec["software"] = [{"versions": versions, "git_commit": "ccc", "git_dirty": True}]
    assert "; git commit ccc+dirty\n" in markdown_report(spec, summarize(results), results)


@pytest.mark.parametrize(("epsilon", "row"), [
    (8.0, 8.0), (5.0, 3.0), (3.0, 3.0), (0.5, 1.0), (100.0, 8.0), (math.inf, math.inf)])
def test_tuned_settings_use_the_largest_tuned_epsilon_not_above_the_target(epsilon, row):
    assert tuned_settings(epsilon) == TUNED_SETTINGS[row]


def test_run_config_defaults_are_the_epsilon_8_settings():
    assert DEFAULTS["target-epsilon"] == 8.0
    assert {key: DEFAULTS[key] for key in TUNED_SETTINGS[8.0]} == TUNED_SETTINGS[8.0]


def test_a_sweep_folder_refuses_a_different_spec(tmp_path):
    data = write_dataset(tmp_path / "csv")
    spec = BenchSpec(data=str(data), sites=2, alpha=0.5, epsilons=[8.0], seeds=1,
                     partition_seed=0, rounds=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "bench.json").write_text(json.dumps(
        {"data": str(data), "sites": 3, "alpha": 0.5, "partition_seed": 0, "epsilons": [8.0],
         "seeds": 1, "model": "minilm-head", "settings": {}}), encoding="utf-8")
    with pytest.raises(ValueError,
                       match=r"other settings than this one \(sites: 3 there, 2 now; in "):
        run_bench(spec, tmp_path / "out")
    assert not (tmp_path / "out" / "data").exists()


@pytest.mark.parametrize("missing", ["settings", "seeds", "epsilons"])
def test_a_sweep_record_without_its_settings_is_refused(tmp_path, missing):
    """Found in review: a bench.json without ``settings`` took any, its cells reported under
    them; one without seeds or epsilons stopped with a KeyError."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=0.5,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    record = claim_sweep_folder(tmp_path, spec)
    del record[missing]
    (tmp_path / "bench.json").write_text(json.dumps(json_safe(record, infinity="inf")),
                                         encoding="utf-8")
    with pytest.raises(ValueError, match="not a sweep's record"):
        claim_sweep_folder(tmp_path, spec)


def test_bad_input_leaves_no_record_that_blocks_the_corrected_retry(tmp_path):
    """Found in review: a label that only test.csv held failed the bench after bench.json was
    written, and the retry on the corrected file was refused as a sweep of other data."""
    data = write_dataset(tmp_path / "csv")
    good = (data / "test.csv").read_text(encoding="utf-8")
    (data / "test.csv").write_text(good + "where is my parcel,parcel_tracking\n",
                                   encoding="utf-8")
    spec = BenchSpec(data=str(data), sites=2, alpha=0.5, epsilons=[8.0], seeds=1,
                     partition_seed=0, rounds=1)
    with pytest.raises(ValueError, match="does not occur in train.csv"):
        run_bench(spec, tmp_path / "out")
    # found in review: the new folder was left holding the sweep's lock file
    assert not (tmp_path / "out").exists()
    (data / "test.csv").write_text(good, encoding="utf-8")
    record = claim_sweep_folder(tmp_path / "out", spec)
    assert record["dataset_sha256"]["test.csv"] == file_sha256(data / "test.csv")


def test_a_sweep_without_epsilon_inf_still_runs_its_non_private_baselines(tmp_path,
                                                                          monkeypatch):
    """Found in review: the central baseline always runs at epsilon inf, and looked up the
    tuned settings of inf, which exist only when --epsilons names it: KeyError after every
    other cell had run. The federated and local-only cells are stood in for (they have their
    own tests); the pooled ones run."""
    def federated(*args, **kwargs):
        return {"accuracy": 0.5, "wall_seconds": 1.0, "seconds_per_round": 1.0,
                "upload_bytes_per_site_round": 1.0, "peak_memory_mib": 1.0}

    monkeypatch.setattr(sweep, "run_federated", federated)
    monkeypatch.setattr(sweep, "local_only_cell", lambda *args, **kwargs: {"accuracy": 0.5})
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=1.0,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    results = run_bench(spec, tmp_path / "out")
    assert {(r["method"], r["epsilon"]) for r in results} >= {(CENTRAL, "inf"), (TFIDF, "inf")}
    assert next(r for r in results if r["method"] == CENTRAL)["accuracy"] > 0.9


@pytest.fixture
def stood_in(monkeypatch) -> dict[str, list]:
    """Every cell of a sweep stood in (each method has its own tests): what the federated cells
    ran with (settings, seed), and the keyword arguments TF-IDF was called with. A federated
    cell scores 0.5 + 0.1 x its seed."""
    calls: dict[str, list] = {"federated": [], "tfidf": []}

    def federated(data_dir, cell_dir, cache, sites, settings, seed, *args):
        calls["federated"].append((settings, seed))
        return {"accuracy": 0.5 + 0.1 * seed, "wall_seconds": 1.0, "seconds_per_round": None,
                "upload_bytes_per_site_round": 1.0, "peak_memory_mib": 1.0}

    monkeypatch.setattr(sweep, "run_federated", federated)
    monkeypatch.setattr(sweep, "local_only_cell", lambda *args, **kwargs: {"accuracy": 0.5})
    monkeypatch.setattr(sweep, "pooled_cell", lambda *args, **kwargs: {"accuracy": 0.5})
    monkeypatch.setattr(sweep, "tfidf_accuracy",
                        lambda *args, **kwargs: calls["tfidf"].append(kwargs) or 0.5)
    return calls


def test_a_second_invocation_in_a_sweep_folder_adds_to_the_first_ones_report(
        tmp_path, stood_in, capsys):
    """Found in review: a second invocation with fewer seeds rewrote every report file to its
    own cells (the first's spread gone, nothing said), and one adding an epsilon was refused as
    another sweep. Cells are keyed by epsilon and seed, so the folder's report holds both
    invocations'."""
    first = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=1.0,
                      epsilons=[8.0], seeds=2, partition_seed=0, rounds=1)
    out = tmp_path / "out"
    run_bench(first, out)
    capsys.readouterr()
    run_bench(replace(first, epsilons=[3.0, 8.0], seeds=1), out)
    said = capsys.readouterr().out
    assert "resuming: 5 of 8 cells already done" in said
    assert ("up to 2 training seeds (0 to 1; each row has the number in its seeds column)"
            in (out / "report.md").read_text(encoding="utf-8"))
    assert f"the report also holds 5 finished cells of earlier runs in {out}" in said
    with open(out / "results.csv", encoding="utf-8") as f:
        federated_rows = [(r["epsilon"], r["seed"]) for r in csv.DictReader(f)
                          if r["method"] == FEDERATED]
    assert sorted(federated_rows) == [("3.0", "0"), ("8.0", "0"), ("8.0", "1")]
    report = (out / "report.md").read_text(encoding="utf-8")
    assert ("| federated (DP-SGD per site) | 8 | not recorded | 0.5500 | 0.0707 | 0.5000 | 0.6000 "
            "| - | 2 |") in report
    recorded = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert (recorded["epsilons"], recorded["seeds"], sorted(recorded["settings"])) == (
        [3.0, 8.0], 2, ["3", "8"])
    assert recorded["rounds"] == 1
    run_bench(replace(first, epsilons=[1.0], seeds=1, rounds=2), out)
    recorded = json.loads((out / "bench.json").read_text(encoding="utf-8"))
    assert recorded["rounds"] is None  # two overrides: the settings name each epsilon's
    assert [recorded["settings"][e]["num-rounds"] for e in ("1", "3", "8")] == [2, 1, 1]


@pytest.mark.parametrize("languages,words", [(("en",), True), (("zh",), False)])
def test_bench_reads_the_site_folders_fedintent_synth_writes(tmp_path, stood_in, languages,
                                                             words):
    """Found in review: benchmarking synthetic data took a hand-written converter to train.csv.
    Bench pools the site folders' rows and partitions them like a CSV's; its TF-IDF reads
    Chinese by characters, as the synthetic data's own baseline does."""
    write_sites(tmp_path / "synth", n_sites=3, seed=5, languages=languages, size=300)
    spec = BenchSpec(data=str(tmp_path / "synth"), sites=2, alpha=0.5, epsilons=[8.0],
                     seeds=1, partition_seed=0, rounds=1, model="ngram")
    run_bench(spec, tmp_path / "out")
    assert [call["words"] for call in stood_in["tfidf"]] == [words]
    recorded = json.loads((tmp_path / "out" / "bench.json").read_text(encoding="utf-8"))
    assert sorted(recorded["dataset_sha256"]) == [
        f"site-0{i}/{split}.jsonl" for i in range(3) for split in ("test", "train")]
    assert len(list_site_dirs(tmp_path / "out" / "data")) == 2


def test_a_saved_cell_that_ran_with_other_settings_is_not_taken_as_this_sweeps(
        tmp_path, stood_in, capsys):
    """Found in review: bench.json rewritten without an epsilon (two invocations in one folder
    at once, or deleted by hand) let a later run at other settings count the old cells as its
    own, reported under the new settings. Each cell keeps what it ran with."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=1.0,
                     epsilons=[8.0], seeds=2, partition_seed=0, rounds=1)
    out = tmp_path / "out"
    run_bench(spec, out)
    assert json.loads((out / "cells" / "federated-eps8-seed0.json").read_text())["settings"][
        "num-rounds"] == 1
    (out / "bench.json").unlink()  # the record lost: the cells stay
    stood_in["federated"].clear()
    capsys.readouterr()
    run_bench(replace(spec, seeds=1, rounds=7), out)
    said = capsys.readouterr().out
    # seed 0's federated cell ran again, at the settings reported
    assert [(settings["num-rounds"], seed) for settings, seed in stood_in["federated"]] == [(7, 0)]
    assert "federated-eps8-seed0.json ran with other settings than this sweep's: run again" in said
    assert "resuming: 3 of 5 cells already done" in said  # the baselines' recipes did not change
    with open(out / "results.csv", encoding="utf-8") as f:
        assert [r["seed"] for r in csv.DictReader(f) if r["method"] == FEDERATED] == ["0"]


def test_a_second_sweep_in_a_running_sweeps_folder_is_refused_at_once(tmp_path, stood_in):
    """Found in review: two bench runs in one folder each rewrote bench.json from what it had
    read. The folder's lock is held for the whole sweep; a second is refused, and runs once the
    first has let go."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=1.0,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    out = tmp_path / "out"
    with sweep.sweep_lock(out), pytest.raises(FolderClaimed,
                                              match="another fedintent bench is running in it"):
        run_bench(spec, out)
    assert not (out / "bench.json").exists()
    run_bench(spec, out)
    assert (out / "report.md").is_file()


def test_a_folder_that_holds_no_sweep_is_not_written_in(tmp_path, stood_in):
    """Found in review: an unrelated non-empty --out was taken, its report.md or results.csv
    overwritten. A sweep's own folder is taken even without its bench.json (lost: the cells
    keep their settings, test above)."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=1.0,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "results.csv").write_text("mine\n", encoding="utf-8")
    (notes / "thesis.tex").write_text("mine\n", encoding="utf-8")
    with pytest.raises(FolderClaimed, match=r"no bench.json\) and is not empty: 1 entries a "
                       "sweep does not write, such as thesis.tex"):
        run_bench(spec, notes)
    assert sorted(p.name for p in notes.iterdir()) == ["results.csv", "thesis.tex"]
    assert (notes / "results.csv").read_text(encoding="utf-8") == "mine\n"


def test_bench_embeds_a_slice_at_a_time_behind_a_progress_bar(tmp_path, monkeypatch, capsys):
    """Found in review: BANKING77 embedded in one call printed nothing for 4 minutes, and an
    interrupted bench kept none of it. Each slice is its own cache chunk, the bar counts every
    row, and the features are those of one call over each split."""
    seen = {}

    def pooled(cell, model, labels, tensors, test):
        seen["train"], seen["test"] = tensors, test
        return {"accuracy": 0.5}

    def federated(*args, **kwargs):
        return {"accuracy": 0.5, "wall_seconds": 1.0, "seconds_per_round": None,
                "upload_bytes_per_site_round": 1.0, "peak_memory_mib": 1.0}

    monkeypatch.setattr(sweep, "EMBED_SLICE_ROWS", 7)
    monkeypatch.setattr(sweep, "run_federated", federated)
    monkeypatch.setattr(sweep, "local_only_cell", lambda *args, **kwargs: {"accuracy": 0.5})
    monkeypatch.setattr(sweep, "pooled_cell", pooled)
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=2, alpha=1.0,
                     epsilons=[math.inf], seeds=1, partition_seed=0, rounds=1)
    run_bench(spec, tmp_path / "out")

    family = get_model_family(DEFAULTS["model"])
    data = tmp_path / "out" / "data"
    labels = read_labels(data / "labels.txt")
    sites = [load_site(folder, labels) for folder in list_site_dirs(data)]
    splits = [site.train for site in sites] + [site.test for site in sites]
    total = sum(len(split.texts) for split in splits)
    assert total == 13 * 16
    assert f"{total}/{total}" in capsys.readouterr().err
    chunks = list((tmp_path / "out" / "cache" / "features").rglob("chunk-*.npz"))
    assert len(chunks) == sum(math.ceil(len(split.texts) / 7) for split in splits)
    for (x, y), split in zip(seen["train"], splits[:2], strict=True):
        assert torch.allclose(x, family.featurize(split.texts, None), atol=1e-5)
        assert y.tolist() == split.labels
    test_texts = [text for split in splits[2:] for text in split.texts]
    assert torch.allclose(seen["test"][0], family.featurize(test_texts, None), atol=1e-5)


def test_bench_scales_the_tuned_learning_rates_to_the_sites_size_as_train_does(tmp_path):
    """160 training rows over 4 sites is 40 a site, far below the 850 the rates were tuned on:
    every DP rate (per-site and distributed) is scaled as ``fedintent train`` scales it, down to
    a quarter; without DP it is not. 10 sites of BANKING77's size keep the tuned rates."""
    data = write_dataset(tmp_path / "csv")
    spec = BenchSpec(data=str(data), sites=4, alpha=0.5, epsilons=[1.0, 8.0, math.inf],
                     seeds=1, partition_seed=0, privacy_models=("local", "distributed"))
    (tmp_path / "out").mkdir()
    record = claim_sweep_folder(tmp_path / "out", spec)
    assert mean_site_rows(spec) == 40
    for label, epsilon in (("1", 1.0), ("8", 8.0)):
        assert record["settings"][label]["learning-rate"] == pytest.approx(
            tuned_settings(epsilon)["learning-rate"] / 4)
        assert record["distributed_settings"][label]["learning-rate"] == pytest.approx(
            tuned_settings(epsilon, "distributed")["learning-rate"] / 4)
    assert record["settings"]["inf"]["learning-rate"] == tuned_settings(math.inf)["learning-rate"]
    big = tmp_path / "big"
    big.mkdir()
    rows = "".join(f"utterance {i},label{i % 7}\n" for i in range(8500))
    (big / "train.csv").write_text("text,label\n" + rows, encoding="utf-8")
    (big / "test.csv").write_text("text,label\nutterance,label0\n", encoding="utf-8")
    (tmp_path / "out-big").mkdir()
    record = claim_sweep_folder(tmp_path / "out-big", replace(spec, data=str(big), sites=10))
    assert record["settings"]["8"]["learning-rate"] == tuned_settings(8.0)["learning-rate"]


def test_a_sweep_folder_from_before_privacy_models_takes_a_default_sweep(tmp_path):
    """A bench.json without privacy_models and tolerated_sites was a local-DP sweep with the
    default tolerated sites: the same sweep resumes there, and may add distributed DP."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=10, alpha=0.5,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    old = claim_sweep_folder(tmp_path, spec)
    del old["privacy_models"], old["tolerated_sites"]
    (tmp_path / "bench.json").write_text(json.dumps(old), encoding="utf-8")
    claim_sweep_folder(tmp_path, spec)
    both = replace(spec, privacy_models=("local", "distributed"))
    claim_sweep_folder(tmp_path, both)
    recorded = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert (recorded["privacy_models"], recorded["tolerated_sites"]) == (
        ["local", "distributed"], 2)
    with pytest.raises(ValueError, match=r"\(tolerated_sites: 2 there, 3 now; "
                                         "distributed_settings.8.tolerated-sites: 2 there, 3 now"):
        claim_sweep_folder(tmp_path, replace(both, tolerated_sites=3))


def test_a_local_dp_folder_takes_distributed_dp_at_any_tolerated_sites(tmp_path):
    """Found in review: a local-DP folder refused distributed DP at a --tolerated-sites other
    than the default it recorded, though none of its cells depends on it."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=10, alpha=0.5,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    claim_sweep_folder(tmp_path, spec)
    claim_sweep_folder(tmp_path, replace(spec, privacy_models=("distributed",),
                                         tolerated_sites=1))
    recorded = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert recorded["tolerated_sites"] == 1
    assert recorded["distributed_settings"]["8"]["tolerated-sites"] == 1


def test_a_resumed_sweep_keeps_every_invocations_software(tmp_path, monkeypatch):
    """The report names each commit that ran cells, so a resumed sweep's record carries every
    invocation's software, not only the last."""
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=10, alpha=0.5,
                     epsilons=[8.0], seeds=1, partition_seed=0, rounds=1)
    for commit in ("aaa", "bbb"):
        monkeypatch.setattr("fedintent.bench.sweep.software_provenance",
                            lambda commit=commit: {"versions": {}, "git_commit": commit})
        record = claim_sweep_folder(tmp_path, spec)
    assert [run["git_commit"] for run in record["software"]] == ["aaa", "bbb"]
    recorded = json.loads((tmp_path / "bench.json").read_text(encoding="utf-8"))
    assert recorded["software"] == record["software"]


def test_distributed_dp_needs_two_noise_adding_sites_before_any_cell_runs(tmp_path):
    spec = BenchSpec(data=str(write_dataset(tmp_path / "csv")), sites=3, alpha=0.5,
                     epsilons=[8.0], seeds=1, partition_seed=0, privacy_models=("distributed",))
    with pytest.raises(ValueError, match="must exceed tolerated-sites"):
        claim_sweep_folder(tmp_path, spec)
    assert not (tmp_path / "bench.json").exists()


def bench_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"FEDINTENT_TEST_TAG": uuid.uuid4().hex}
    return subprocess.run([sys.executable, "-m", "fedintent.cli", "bench", *args],
                          capture_output=True, text=True, timeout=1200, cwd=cwd, env=env)


@pytest.mark.parametrize(("args", "message"), [
    (["--epsilons", "8,abc"], "--epsilons must be numbers"),
    (["--epsilons", "0,8"], "--epsilons must be inf (no DP) or in [0.1, 100]"),
    (["--seeds", "0"], "must be >= 1"),
    (["--privacy-model", "local,central"], "--privacy-model: unknown 'central'"),
    (["--privacy-model", ","], "--privacy-model needs one of local, distributed"),
    (["--tolerated-sites", "-1"], "--tolerated-sites must be >= 0"),
    (["--privacy-model", "distributed", "--sites", "3"],  # found in review: named min-sites
     "--privacy-model distributed: --sites (3) must exceed --tolerated-sites (2)"),
])
def test_bad_bench_arguments_are_named(tmp_path, args, message):
    data = write_dataset(tmp_path / "csv")
    result = bench_cli("--data", str(data), "--out", str(tmp_path / "out"), *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr


def test_bench_without_a_test_split_says_which_file_is_missing(tmp_path):
    data = write_dataset(tmp_path / "csv")
    (data / "test.csv").unlink()
    result = bench_cli("--data", str(data), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2
    assert "test.csv: not found" in result.stderr


def folder_test_csv(data: Path) -> None:
    (data / "test.csv").unlink()
    (data / "test.csv").mkdir()


@pytest.mark.parametrize(("given", "change", "message"), [
    # found in review: "{data}/train.csv/train.csv: not found"
    ("{data}/train.csv", None, "--data {data}/train.csv: is a file, not a folder: give the "
     "folder that holds train.csv and test.csv (or site folders as fedintent synth writes them)"),
    ("{data}/nope", None, "--data {data}/nope: folder not found: give the folder"),
    ("{data}", folder_test_csv, "{data}/test.csv is a folder, not a CSV file (columns "
     "text,label)"),
], ids=["a file", "missing", "test.csv a folder"])
def test_a_data_path_of_the_wrong_kind_is_named(tmp_path, capsys, given, change, message):
    data = write_dataset(tmp_path / "csv")
    if change:
        change(data)
    assert main(["bench", "--data", given.format(data=data), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message.format(data=data) in err
    assert "train.csv/train.csv" not in err and not (tmp_path / "out").exists()


def test_a_family_without_a_feature_cache_starts_its_federated_cells(tmp_path, monkeypatch):
    """Found in review: ``bench --model ngram`` stopped with a traceback at its first federated
    cell, copying a feature cache that a family computing its features as it reads never
    makes. The run starts (here stopped at once, the simulation itself tested elsewhere)."""
    class Started(Exception):
        pass

    def simulation(run_config, **kwargs):
        raise Started(run_config["model"])

    monkeypatch.setattr(federated, "run_simulation", simulation)
    data = write_dataset(tmp_path / "csv")
    (data / "labels.txt").write_text("\n".join(LABELS) + "\n", encoding="utf-8")
    cell = tmp_path / "runs" / "federated-eps8-seed0"
    with pytest.raises(Started, match="ngram"):
        run_federated(data, cell, tmp_path / "cache" / "features", 2,
                      {"model": "ngram", "target-epsilon": 8.0}, 0, torch.zeros(1, 1),
                      torch.zeros(1, dtype=torch.long), [])
    assert sorted(p.name for p in (cell / "state").iterdir()) == ["site-00", "site-01"]


def test_bench_end_to_end_then_resumes_only_missing_cells(tmp_path):
    data = write_dataset(tmp_path / "csv")
    out = tmp_path / "out"
    args = ("--data", str(data), "--out", str(out), "--sites", "2", "--alpha", "1.0",
            "--epsilons", "8,inf", "--seeds", "1", "--rounds", "2")
    first = bench_cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    with open(out / "results.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["epsilon"]) for r in rows) == sorted([
        (FEDERATED, "8.0"), (FEDERATED, "inf"), (CENTRAL_DP, "8.0"), (LOCAL_ONLY, "8.0"),
        (LOCAL_ONLY, "inf"), (CENTRAL, "inf"), (TFIDF, "inf")])
    for row in rows:
        assert 0.0 <= float(row["accuracy"]) <= 1.0
    federated = {r["epsilon"]: r for r in rows if r["method"] == FEDERATED}
    assert float(federated["8.0"]["max_site_epsilon"]) <= 8.0
    # each site (under 10,000 rows) reported delta 1e-5, and the DP baselines planned at it
    assert {r["deltas"] for r in rows if r["epsilon"] == "8.0"} == {"1e-05"}
    assert {r["deltas"] for r in rows if r["epsilon"] == "inf"} == {""}
    head_bytes = (len(LABELS) * 384 + len(LABELS)) * 4  # float32 weights and biases
    for row in federated.values():
        # the payload as serialised: the raw values plus each array's .npy header
        assert head_bytes < float(row["upload_bytes_per_site_round"]) <= head_bytes + 2 * 256
        assert float(row["wall_seconds"]) > 0 and float(row["peak_memory_mib"]) > 100
        assert 0.0 <= float(row["macro_f1"]) <= 1.0
        assert 0.0 <= float(row["worst_site_accuracy"]) <= 1.0
    for row in rows:  # the models a site ends with, on its own rows; the pooled ones have none
        assert (row["own_accuracy"] != "") == (row["method"] in (FEDERATED, LOCAL_ONLY))
        assert row["own_accuracy"] == "" or 0.0 <= float(row["own_accuracy"]) <= 1.0
    central = next(r for r in rows if r["method"] == CENTRAL)
    assert float(central["accuracy"]) > 0.9  # an easy task: the pooled model must learn it
    document = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert len(document["cells"]) == 7 and document["spec"]["sites"] == 2
    assert (out / "accuracy_vs_epsilon.png").read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "| central, non-private | inf |" in report
    assert report.count("| local only (mean over sites) | 8 | ") == 2  # pooled, own rows

    kept = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    (out / "cells" / "tfidf-epsinf-seed0.json").unlink()
    # a federated cell interrupted after its run wrote its folder (found in review: the re-run
    # failed on that run's reason for good, or reported its model as the new run's)
    run = out / "runs" / "federated-eps8-seed0"
    earlier = json.loads((run / "run" / "metrics.json").read_text(encoding="utf-8"))["run_id"]
    (out / "cells" / "federated-eps8-seed0.json").unlink()
    second = bench_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resuming: 5 of 7 cells already done" in second.stdout
    assert ("federated-eps8-seed0: removing what an unfinished run of this cell left (run, "
            "state), then running it again") in second.stdout
    assert json.loads((run / "run" / "metrics.json").read_text(encoding="utf-8"))["run_id"] \
        != earlier
    for site in ("site-00", "site-01"):  # fresh ledgers: only the new run's rounds charged
        assert {r.run for r in read_ledger(run / "state" / site,
                                           site_secret(run / "state" / site)).releases} \
            == {json.loads((run / "run" / "metrics.json").read_text())["config"]["run-name"]}
    after = {p.name: p.stat().st_mtime_ns for p in (out / "cells").iterdir()}
    assert set(after) == set(kept)
    changed = {name for name in after if after[name] != kept[name]}
    assert changed == {"tfidf-epsinf-seed0.json", "federated-eps8-seed0.json"}


@pytest.mark.parametrize("epsilon", [1.0, 3.0, 8.0])
def test_a_cells_lifetime_budget_never_sets_its_noise(epsilon):
    """Bench measures a run at its target epsilon: the fresh sites' lifetime budget leaves the
    noise to the run's own plan (full-batch steps, the tuned rounds), so it spends the target."""
    budget = cell_lifetime_budget(epsilon)["site-max-epsilon"]
    assert budget > epsilon
    rounds = int(TUNED_SETTINGS[epsilon]["num-rounds"])
    delta = 1e-5
    order = filter_order(budget, delta)
    run_plan = plan_noise_multiplier(epsilon, delta, 1.0, rounds, "prv")
    assert noise_within_rdp(1.0, rounds, order, rdp_budget(budget, delta, order)) < run_plan
    assert cell_lifetime_budget(math.inf) == {}


def test_the_upload_per_site_and_round_skips_a_torn_egress_log_line(tmp_path):
    """A site killed mid-write leaves a torn last line: the benchmark reads the rest."""
    for site, sizes in (("site-00", (100, 300)), ("site-01", (200,))):
        (tmp_path / site).mkdir()
        lines = [json.dumps({"message": "train", "verdict": "sent", "run": "r", "round": number,
                             "arrays": [{"bytes": size}]})
                 for number, size in enumerate(sizes, start=1)]
        lines.append(json.dumps({"message": "evaluate", "verdict": "sent", "run": "r",
                                 "round": 1}))
        (tmp_path / site / "egress.jsonl").write_text("\n".join(lines) + '\n{"message": "tra')
    assert upload_bytes_per_site_round(tmp_path) == pytest.approx(200.0)


def test_the_report_prints_the_deltas_the_cells_ran_at_not_a_constant():
    """Each site picks its delta by its size (1e-6 from 10,000 rows): the report and the plot
    show the deltas the cells recorded, and say so where a cell from before recorded none."""
    results = [
        {"method": FEDERATED, "epsilon": 8.0, "seed": 0, "accuracy": 0.8, "deltas": [1e-6, 1e-5],
         "wall_seconds": 1.0, "seconds_per_round": 1.0, "upload_bytes_per_site_round": 1.0,
         "peak_memory_mib": 1.0},
        {"method": CENTRAL_DP, "epsilon": 8.0, "seed": 0, "accuracy": 0.9, "deltas": [1e-6]},
        {"method": CENTRAL, "epsilon": "inf", "seed": 0, "accuracy": 0.95, "deltas": []},
    ]
    rows = summarize(results)
    assert [row["deltas"] for row in rows] == [[1e-6, 1e-5], [1e-6], []]
    spec = {"data": "/x/big", "sites": 2, "alpha": 0.5, "seeds": 1, "partition_seed": 0,
            "settings": {}}
    report = markdown_report(spec, rows, results)
    assert "| federated (DP-SGD per site) | 8 | 1e-06, 1e-05 | 0.8000 |" in report
    assert "| central DP (pooled data) | 8 | 1e-06 | 0.9000 |" in report
    assert "| central, non-private | inf | - | 0.9500 |" in report
    assert "1e-5" not in report
    assert epsilon_axis_label(rows) == "per-site epsilon (delta 1e-06, 1e-05, one utterance)"
    before = summarize([{"method": CENTRAL_DP, "epsilon": 8.0, "seed": 0, "accuracy": 0.9}])
    assert epsilon_axis_label(before) == "per-site epsilon (delta not recorded, one utterance)"


def test_a_federated_cell_records_the_deltas_its_sites_reported():
    metrics = {"rounds": [
        {"sites": {"site-a": {"delta": 1e-5}, "site-b": {"delta": 1e-6}}},
        {"sites": {"site-a": {"delta": 1e-5}, "site-c": {"declined": True}}},
        {"round": 3},
    ]}
    assert site_deltas(metrics) == [1e-6, 1e-5]
    assert site_deltas({"rounds": [{"sites": {"site-a": {"delta": 0.0}}}]}) == []


@pytest.fixture
def planned(monkeypatch):
    """The deltas the sweep's baselines train at, recorded instead of training."""
    calls = []

    def fake(*args, delta):
        calls.append((len(args[3]), delta))
        return Evaluation(loss=0.0, accuracy=0.5, macro_f1=0.5)

    def fake_model(*args, delta):
        calls.append((len(args[3]), delta))
        return _Predicts(0)

    monkeypatch.setattr("fedintent.bench.sweep.train_and_evaluate", fake)
    monkeypatch.setattr("fedintent.bench.sweep.trained_model", fake_model)
    return calls


def _sites(*rows: int) -> list[tuple]:
    return [(torch.zeros(n, 1), torch.zeros(n, dtype=torch.long)) for n in rows]


def test_central_dp_plans_at_the_delta_the_federated_sites_plan_at(planned):
    """BANKING77's 10 sites of about 1,000 rows each plan at 1e-5, so central DP on their
    10,000 rows pooled does too (the same guarantee per utterance, not default_delta(10,000) =
    1e-6); one site of 12,000 rows plans at 1e-6, and central DP on it with it."""
    test = _sites(3)[0]
    result = pooled_cell(Cell(CENTRAL_DP, 8.0, 0), "minilm-head", LABELS, _sites(*[1000] * 10),
                         test)
    assert planned == [(10000, 1e-5)] and result["deltas"] == [1e-5]
    assert default_delta(10000) == 1e-6
    planned.clear()
    result = pooled_cell(Cell(CENTRAL_DP, 8.0, 0), "minilm-head", LABELS, _sites(12000), test)
    assert planned == [(12000, 1e-6)] and result["deltas"] == [1e-6]
    planned.clear()
    result = pooled_cell(Cell(CENTRAL_DP, 8.0, 0), "minilm-head", LABELS, _sites(500, 12000),
                         test)
    assert planned == [(12500, 1e-6)]  # no utterance's guarantee weaker than its site's
    assert pooled_cell(Cell(CENTRAL, math.inf, 0), "minilm-head", LABELS, _sites(500),
                       test)["deltas"] == []


def test_a_local_only_site_plans_at_its_own_federated_delta(planned):
    recipe = Recipe(epochs=1, batch_size=64, learning_rate=1.0, clip_norm=1.0)
    result = local_only_cell(Cell(LOCAL_ONLY, 8.0, 0), "minilm-head", LABELS,
                             _sites(500, 20000), _sites(3)[0], recipe, _sites(3, 3))
    assert planned == [(500, 1e-5), (20000, 1e-6)]
    assert result["deltas"] == [1e-6, 1e-5]
    assert local_only_cell(Cell(LOCAL_ONLY, math.inf, 0), "minilm-head", LABELS, _sites(500),
                           _sites(3)[0], recipe, _sites(3))["deltas"] == []


def test_a_baseline_plans_its_noise_at_the_delta_it_is_given(monkeypatch):
    asked = []

    def plan(epsilon, delta, *rest):
        asked.append(delta)
        raise RuntimeError("planned")

    monkeypatch.setattr("fedintent.bench.baselines.plan_noise_multiplier", plan)
    x, y = _sites(4)[0]
    with pytest.raises(RuntimeError, match="planned"):
        train_and_evaluate("minilm-head", LABELS, x, y, x, y, 8.0,
                           Recipe(epochs=1, batch_size=4, learning_rate=1.0, clip_norm=1.0), 0,
                           delta=1e-7)
    assert asked == [1e-7]
