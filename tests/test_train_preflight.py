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
    })
    labels = ["banking.card_lost", "banking.refund"]
    warnings = label_warnings(training_rows(data, 3), labels, data / "labels.txt")
    assert warnings == [
        f"site site-01: 2 of its 3 training rows have a label not in {data / 'labels.txt'} "
        "(the most common: 'Banking.card_lost', 2 rows): they are not used; fedintent "
        f"check-data {data / 'site-01'} --labels {data / 'labels.txt'} lists them",
        f"site site-02: 2 of its 2 training rows have a label not in {data / 'labels.txt'} "
        "(the most common: 'banking_x', 2 rows): none is left, so the site will not train; "
        f"fedintent check-data {data / 'site-02'} --labels {data / 'labels.txt'} lists them",
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
