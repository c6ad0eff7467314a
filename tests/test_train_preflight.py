"""What ``fedintent train`` checks of the data before it starts a run.

Found in review (an ML engineer's walk through the README): a site whose labels were written in
another case than ``labels.txt`` lost those rows, or all of them, without a word before the
run, and then showed up only as a node id that "did not train"; and ``--out`` could be the data
folder, whose run folders later runs then read as sites.
"""

import json
from pathlib import Path

import pytest

from fedintent.cli import main
from fedintent.launch.simulated_sites import label_warnings, training_rows


def write_sites(data: Path, labels_by_site: dict[str, list[str]]) -> Path:
    data.mkdir()
    (data / "labels.txt").write_text("banking.card_lost\nbanking.refund\n")
    for site, labels in labels_by_site.items():
        (data / site).mkdir()
        (data / site / "train.jsonl").write_text("".join(
            json.dumps({"text": f"row {i}", "label": label}) + "\n"
            for i, label in enumerate(labels)))
    return data


def test_rows_with_labels_outside_the_runs_are_named_per_site_before_the_run(tmp_path):
    data = write_sites(tmp_path / "data", {
        "site-00": ["banking.card_lost", "banking.refund"],
        "site-01": ["Banking.card_lost", "Banking.card_lost", "banking.refund"],
        "site-02": ["banking_x", "banking_x"],
        "site-03": ["AB-4711", "banking.refund"],  # a customer id where the label belongs
    })
    labels = ["banking.card_lost", "banking.refund"]
    warnings = label_warnings(training_rows(data, 4), labels, data / "labels.txt")
    assert warnings == [
        f"site site-01: 2 of its 3 training rows have a label not in {data / 'labels.txt'} "
        "(the most common: 'Banking.card_lost', 2 rows): they are not used; fedintent "
        f"check-data {data / 'site-01'} --labels {data / 'labels.txt'} lists them",
        f"site site-02: 2 of its 2 training rows have a label not in {data / 'labels.txt'} "
        "(the most common: 'banking_x', 2 rows): none is left, so the site will not train; "
        f"fedintent check-data {data / 'site-02'} --labels {data / 'labels.txt'} lists them",
        f"site site-03: 1 of its 2 training rows has a label not in {data / 'labels.txt'} "
        "(the most common: <a string of length 7, near no label of the run, not shown>, 1 "
        f"row): they are not used; fedintent check-data {data / 'site-03'} --labels "
        f"{data / 'labels.txt'} lists them",
    ]
    only_the_first = training_rows(data, 1)  # only the sites played
    assert label_warnings(only_the_first, labels, data / "labels.txt") == []


@pytest.mark.parametrize("inside", [".", "runs/today"])
def test_an_out_folder_inside_the_data_folder_is_refused(tmp_path, capsys, inside):
    data = write_sites(tmp_path / "data", {"site-00": ["banking.refund"]})
    before = sorted(path.name for path in data.rglob("*"))
    code = main(["train", "--data", str(data), "--out", str(data / inside), "--rounds", "1"])
    err = capsys.readouterr().err
    assert code == 2 and f"is inside --data {data}" in err, err
    assert sorted(path.name for path in data.rglob("*")) == before


@pytest.fixture
def started(monkeypatch) -> list[dict]:
    """The run configs ``fedintent train`` would have simulated (the run itself not started)."""
    import fedintent.commands.train as train_command

    runs: list[dict] = []
    monkeypatch.setattr(train_command, "_simulate",
                        lambda run_config, *args, **kwargs: runs.append(run_config) or 0)
    return runs


def test_a_folder_that_does_not_read_is_named_and_leaves_the_other_checks_on(tmp_path, capsys,
                                                                            started):
    """Found in review: one folder whose data did not read (a ``notes/`` folder, a CSV without
    a label column) switched off every check before the run for all sites, and the learning
    rate's scaling: 48 where the readable sites' size called for 12."""
    data = write_sites(tmp_path / "data", {
        "site-00": ["banking.card_lost"] * 30,
        "site-01": ["Banking.card_lost"] * 10 + ["banking.refund"] * 40,
    })
    (data / "notes").mkdir()
    (data / "notes" / "readme.txt").write_text("hi\n")
    (data / "site-02").mkdir()
    (data / "site-02" / "train.csv").write_text("text\nlost my card\n")
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "out"),
                 "--rounds", "1"]) == 0
    out, err = capsys.readouterr()
    assert "site notes: its data does not read, so it will not train (" in err
    assert f"fedintent check-data {data / 'notes'} says more" in err
    assert "site site-02: its data does not read, so it will not train (" in err
    assert "site site-01: 10 of its 50 training rows have a label not in" in err
    [run_config] = started
    assert "scaled to sites of 40 training rows on average" in out  # (30 + 50) / 2
    assert run_config["learning-rate"] < 48


def test_a_run_whose_sites_all_fail_to_read_or_match_the_labels_says_what_to_fix(tmp_path,
                                                                                 capsys, started):
    """Found in review: the refusal ended with budget advice where the label file was wrong."""
    data = write_sites(tmp_path / "data", {"site-00": ["banking.card_lost"] * 5})
    (data / "site-01").mkdir()
    (data / "site-01" / "train.csv").write_text("text\nlost my card\n")
    other = tmp_path / "other-labels.txt"
    other.write_text("telecom.slow_internet\ntelecom.roaming\n")
    assert main(["train", "--data", str(data), "--labels", str(other),
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert ("no site can train in this run, so it would only fail: site site-00: none of its "
            "training rows has a label of the run; site site-01: its data does not read (") in err
    assert f". Check that {other} is the label file of this data" in err
    assert ". Fix each site's data (fedintent check-data SITE_DIR names the problem)" in err
    assert "--site-max-epsilon" not in err and not started


@pytest.mark.parametrize("delta,said", [
    ([], "delta each site its own, at most 1e-05, lifetime budget 8 per unit"),
    (["--delta", "1e-6"], "delta 1e-06, lifetime budget 8 per unit"),
])
def test_the_run_line_says_which_delta_the_sites_report_at(tmp_path, capsys, started, delta,
                                                          said):
    """Found in review: the default read 'delta 0 (per-site default)', as if the sites ran at
    delta 0 (pure DP), while each reported its epsilon at 1e-05."""
    data = write_sites(tmp_path / "data", {"site-00": ["banking.card_lost"] * 30})
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "out"), *delta]) == 0
    out = capsys.readouterr().out
    assert f"per-site target epsilon 8 per utterance, {said}" in out, out
    assert "delta 0" not in out and len(started) == 1
