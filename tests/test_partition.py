"""Behaviour of the real-dataset partitioner: coverage, determinism, skew, and input errors."""

import csv
import json
import math
import re
from collections import Counter
from pathlib import Path

import pytest

from data_synth import write_sites
from fedintent.cli import main
from fedintent.partition import partition_csv_dataset
from fl_client.site_data import load_site
from fl_protocol.label_file import read_labels

BANKING77_SAMPLE = Path(__file__).parent / "data" / "banking77-sample"
"""4 train and 2 test rows of each BANKING77 intent (CC BY 4.0; README.md there)."""
ODD_TEXTS = ['she said "block it", then hung up', "über-card, bitte sperren", "  padded  "]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("text", "label"))
        writer.writerows(rows)


def make_dataset(folder: Path) -> Path:
    """8 labels x (60 train, 15 test) rows, plus awkward texts (quotes, commas, non-ASCII) and
    one duplicate row."""
    labels = [f"intent_{i}" for i in range(8)]
    train = [(f"{label} train {i}", label) for label in labels for i in range(60)]
    test = [(f"{label} test {i}", label) for label in labels for i in range(15)]
    train += [(text, labels[0]) for text in ODD_TEXTS] + [train[0]]
    write_csv(folder / "train.csv", train)
    write_csv(folder / "test.csv", test)
    return folder


def read_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return [(row["text"], row["label"]) for row in csv.DictReader(f)]


def label_counts(rows: list[tuple[str, str]]) -> Counter:
    return Counter(label for _, label in rows)


def site_dirs(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("site-*") if p.is_dir())


def folder_bytes(out_dir: Path) -> dict[str, bytes]:
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in files}


def entropy_bits(counts: Counter) -> float:
    total = sum(counts.values())
    return -sum(n / total * math.log2(n / total) for n in counts.values() if n)


def mean_site_entropy(out_dir: Path) -> float:
    entropies = [
        entropy_bits(label_counts(read_rows(site / "train.csv"))) for site in site_dirs(out_dir)
    ]
    return sum(entropies) / len(entropies)


def train_sizes(manifest: dict) -> list[int]:
    return [site["train"] for site in manifest["sites"].values()]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("csv"))


@pytest.mark.parametrize("alpha", [0.5, None])
def test_every_row_lands_in_exactly_one_site(dataset, tmp_path, alpha):
    manifest = partition_csv_dataset(dataset, tmp_path, n_sites=4, seed=1, alpha=alpha)
    for split in ("train", "test"):
        written = Counter(
            row for site in site_dirs(tmp_path) for row in read_rows(site / f"{split}.csv")
        )
        assert written == Counter(read_rows(dataset / f"{split}.csv"))
    assert [p.name for p in site_dirs(tmp_path)] == ["site-00", "site-01", "site-02", "site-03"]
    assert sum(train_sizes(manifest)) == len(read_rows(dataset / "train.csv"))


def test_manifest_and_labels_describe_the_written_files(dataset, tmp_path):
    manifest = partition_csv_dataset(dataset, tmp_path, n_sites=3, seed=2, alpha=0.5)
    assert json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8")) == manifest
    assert manifest["source"] == str(dataset)
    assert (manifest["scheme"], manifest["alpha"], manifest["seed"]) == ("dirichlet", 0.5, 2)
    labels = (tmp_path / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == manifest["labels"] == sorted(label_counts(read_rows(dataset / "train.csv")))
    for site in site_dirs(tmp_path):
        train, test = read_rows(site / "train.csv"), read_rows(site / "test.csv")
        entry = manifest["sites"][site.name]
        assert (entry["train"], entry["test"]) == (len(train), len(test))
        assert entry["label_counts"] == dict(sorted(label_counts(train + test).items()))
    written = [tmp_path / "manifest.json", tmp_path / "labels.txt", *tmp_path.glob("*/*.csv")]
    assert {oct(path.stat().st_mode & 0o777) for path in written} == {"0o600"}  # the owner's


@pytest.mark.parametrize(
    ("alpha", "quantity_skew"), [(0.5, None), (None, None), (0.5, 4.0), (None, 4.0)]
)
def test_same_seed_same_bytes_other_seed_differs(dataset, tmp_path, alpha, quantity_skew):
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        partition_csv_dataset(
            dataset, tmp_path / name, n_sites=4, seed=seed, alpha=alpha, quantity_skew=quantity_skew
        )
    a, b, c = (folder_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["site-00/train.csv"] != c["site-00/train.csv"]


def test_small_alpha_skews_labels_more_than_large_alpha_and_iid(dataset, tmp_path):
    entropy = {}
    for name, alpha in (("0.1", 0.1), ("100", 100.0), ("iid", None)):
        partition_csv_dataset(dataset, tmp_path / name, n_sites=4, seed=0, alpha=alpha)
        entropy[name] = mean_site_entropy(tmp_path / name)
    assert entropy["0.1"] < entropy["100"] - 0.5
    assert entropy["0.1"] < entropy["iid"] - 0.5
    assert entropy["100"] > math.log2(8) - 0.1


def test_test_rows_follow_each_sites_training_label_mix(dataset, tmp_path):
    partition_csv_dataset(dataset, tmp_path, n_sites=4, seed=3, alpha=0.3)
    train_by_label = label_counts(read_rows(dataset / "train.csv"))
    test_by_label = label_counts(read_rows(dataset / "test.csv"))
    for site in site_dirs(tmp_path):
        site_train = label_counts(read_rows(site / "train.csv"))
        site_test = label_counts(read_rows(site / "test.csv"))
        for label, n_test in test_by_label.items():
            expected = n_test * site_train[label] / train_by_label[label]
            assert abs(site_test[label] - expected) < 1, (site.name, label)


def test_every_site_gets_min_site_size_training_rows(dataset, tmp_path):
    manifest = partition_csv_dataset(
        dataset, tmp_path, n_sites=5, seed=0, alpha=0.1, min_site_size=40
    )
    assert min(train_sizes(manifest)) >= 40


def test_quantity_skew_makes_site_sizes_unequal(dataset, tmp_path):
    even = train_sizes(partition_csv_dataset(dataset, tmp_path / "even", 4, 0, alpha=None))
    skewed = train_sizes(
        partition_csv_dataset(dataset, tmp_path / "skewed", 4, 0, alpha=None, quantity_skew=8.0)
    )
    assert max(even) - min(even) <= 1
    assert skewed == sorted(skewed)
    assert 7 < max(skewed) / min(skewed) < 9
    flat = train_sizes(partition_csv_dataset(dataset, tmp_path / "flat", 4, 0, alpha=100.0))
    both = train_sizes(
        partition_csv_dataset(dataset, tmp_path / "both", 4, 0, alpha=100.0, quantity_skew=8.0)
    )
    assert max(flat) / min(flat) < 1.5
    assert max(both) / min(both) > 4


def test_site_folders_load_as_csv_sites(dataset, tmp_path):
    manifest = partition_csv_dataset(dataset, tmp_path, n_sites=3, seed=0, alpha=0.5)
    labels = read_labels(tmp_path / "labels.txt")
    for site in site_dirs(tmp_path):
        assert (site / "train.csv").read_text(encoding="utf-8").startswith("text,label\n")
        data = load_site(site, labels, redact_pii=False)
        assert not data.rejected and not data.unknown_labels
        assert (len(data.train), len(data.test)) == (
            manifest["sites"][site.name]["train"],
            manifest["sites"][site.name]["test"],
        )
    odd_rows = [r for s in site_dirs(tmp_path) for r in read_rows(s / "train.csv")]
    assert {text for text, _ in odd_rows} >= set(ODD_TEXTS)


def test_bom_blank_lines_and_padded_labels_are_accepted(tmp_path):
    rows = "".join(f"text {i}, label_{i % 2} \n\n" for i in range(30))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "train.csv").write_text("\ufefftext,label\n" + rows, encoding="utf-8")
    (tmp_path / "in" / "test.csv").write_text("text,label\n", encoding="utf-8")
    manifest = partition_csv_dataset(tmp_path / "in", tmp_path / "out", 2, 0, alpha=None)
    assert manifest["labels"] == ["label_0", "label_1"]
    assert sum(train_sizes(manifest)) == 30


GOOD_TRAIN = "text,label\n" + "".join(f"row {i},l{i % 2}\n" for i in range(40))
GOOD_TEST = "text,label\nx,l0\ny,l1\n"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("train.csv", "text,intent\nhi,a\n", "train.csv:1: header must name columns"),
        ("train.csv", "text,label\nhi,a\n  ,b\n", "train.csv:3: empty text"),
        ("train.csv", "text,label\nhi,\n", "train.csv:2: empty label"),
        ("train.csv", "text,label\nhi,a,extra\n", "train.csv:2: expected 2 fields, got 3"),
        ("train.csv", 'text,label\n"two\nlines",a\n', "train.csv:3: text or label contains a line"),
        ("train.csv", 'text,label\n"quoted"junk,a\n', "train.csv:2: malformed CSV"),
        ("train.csv", 'text,label\nhi,a\n"never closed,b\nlater,a\n',
         "train.csv:3: malformed CSV .* in the record that begins on this line"),
        ("train.csv", "", "train.csv: empty file"),
        ("train.csv", "text,label\n", "train.csv: no data rows"),
        ("test.csv", "text,label\nx,l0\ny,unseen\n", r"test.csv:3: the label \(a string of"),
        # found in review: written, then refused by every command that trains
        ("train.csv", "text,label\n" + "".join(f"hi,l{i}\n" for i in range(1001)),
         "train.csv: its labels cannot be a run's: 1001 labels, more than the 1000"),
    ],
)
def test_malformed_csv_names_file_line_and_problem(tmp_path, name, content, message):
    files = {"train.csv": GOOD_TRAIN, "test.csv": GOOD_TEST, name: content}
    for file_name, text in files.items():
        (tmp_path / file_name).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        partition_csv_dataset(tmp_path, tmp_path / "out", n_sites=2, seed=0)
    assert not (tmp_path / "out").exists()


def test_undecodable_and_missing_files_are_named(tmp_path):
    (tmp_path / "train.csv").write_bytes(GOOD_TRAIN.encode() + b"caf\xe9,l0\n")
    with pytest.raises(ValueError, match=r"train.csv:42: not valid UTF-8"):
        partition_csv_dataset(tmp_path, tmp_path / "out", n_sites=2, seed=0)
    (tmp_path / "train.csv").write_text(GOOD_TRAIN, encoding="utf-8")
    with pytest.raises(ValueError, match=r"test.csv: file not found"):
        partition_csv_dataset(tmp_path, tmp_path / "out", n_sites=2, seed=0)


CANARY_NAME = "张伟"
CANARY_PHONE = "13812345678"
CANARY = f"我叫{CANARY_NAME}，电话{CANARY_PHONE}，卡丢了"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("train.csv", f"{CANARY},banking.card_lost\n" + GOOD_TRAIN,
         r"train.csv:1: header must name columns 'text' and 'label'; missing \['text', 'label'\] "
         "among its 2 columns"),
        ("test.csv", f"text,label\nx,l0\ny,{CANARY}\n",
         r"test.csv:3: the label \(a string of length 22\) does not occur in train.csv"),
    ],
)
def test_errors_never_quote_a_row(tmp_path, capsys, name, content, message):
    """A headerless file or a mis-columned label puts a customer's words in the error, which
    ends up in CI logs: the error names the file, line and problem, never the row."""
    files = {"train.csv": GOOD_TRAIN, "test.csv": GOOD_TEST, name: content}
    for file_name, text in files.items():
        (tmp_path / file_name).write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as raised:
        partition_csv_dataset(tmp_path, tmp_path / "out", n_sites=2, seed=0)
    assert main(["partition", str(tmp_path), "--sites", "2", "--out", str(tmp_path / "o")]) == 2
    terminal = capsys.readouterr()
    assert re.search(message, terminal.err), terminal.err
    for text in (str(raised.value), terminal.out, terminal.err):
        for canary in (CANARY_NAME, CANARY_PHONE, ascii(CANARY_NAME)[1:-1]):
            assert canary not in text, (canary, text)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_sites": 0}, "n_sites must be >= 1"),
        ({"alpha": 0.0}, "alpha must be a finite number > 0"),
        ({"alpha": -1.0}, "alpha must be a finite number > 0"),
        ({"alpha": math.nan}, "alpha must be a finite number > 0"),
        ({"seed": -1}, "seed must be a non-negative integer"),
        ({"min_site_size": 0}, "min_site_size must be >= 1"),
        ({"quantity_skew": 0.5}, "quantity_skew must be a finite number >= 1"),
        ({"n_sites": 41, "min_site_size": 1}, "40 rows cannot give 41 sites"),
        ({"n_sites": 5, "min_site_size": 9}, "40 rows cannot give 5 sites at least 9 rows"),
        ({"alpha": None, "quantity_skew": 50.0, "min_site_size": 5}, "smallest site 0 rows"),
        ({"n_sites": 4, "alpha": 0.001}, "could not give all 4 sites at least 10 training rows"),
    ],
)
def test_bad_arguments_are_rejected(tmp_path, kwargs, message):
    (tmp_path / "train.csv").write_text(GOOD_TRAIN, encoding="utf-8")
    (tmp_path / "test.csv").write_text(GOOD_TEST, encoding="utf-8")
    args = {"n_sites": 2, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=message):
        partition_csv_dataset(tmp_path, tmp_path / "out", **args)


def test_refuses_to_leave_stale_site_folders(dataset, tmp_path):
    partition_csv_dataset(dataset, tmp_path, n_sites=4, seed=0)
    with pytest.raises(ValueError, match=r"\['site-02', 'site-03'\]"):
        partition_csv_dataset(dataset, tmp_path, n_sites=2, seed=0)
    partition_csv_dataset(dataset, tmp_path, n_sites=4, seed=1)


def test_banking77_ten_sites(tmp_path):
    """Real intent names and texts (quotes, commas, apostrophes), 77 labels with only 4 training
    rows each: every row placed once, every site above the minimum size."""
    manifest = partition_csv_dataset(BANKING77_SAMPLE, tmp_path, n_sites=10, seed=0, alpha=0.5)
    assert len(manifest["labels"]) == 77
    assert sum(train_sizes(manifest)) == 308
    assert sum(site["test"] for site in manifest["sites"].values()) == 154
    assert min(train_sizes(manifest)) >= 10
    for split in ("train", "test"):
        source = read_rows(BANKING77_SAMPLE / f"{split}.csv")
        written = [row for site in site_dirs(tmp_path) for row in read_rows(site / f"{split}.csv")]
        assert sorted(written) == sorted(source)


def test_site_folders_as_fedintent_synth_writes_them_are_pooled_and_partitioned(tmp_path):
    """Found in review: an evaluator could benchmark synthetic data only after flattening the
    generator's site folders to train.csv by hand. Their rows are read as a site reads them
    (unredacted, like a CSV's: each site redacts when it loads its new folder) and pooled."""
    write_sites(tmp_path / "synth", n_sites=3, seed=5, languages=("en", "zh"), size=300)
    labels = read_labels(tmp_path / "synth" / "labels.txt")
    pooled = {split: Counter() for split in ("train", "test")}
    for site in sorted(p for p in (tmp_path / "synth").iterdir() if p.is_dir()):
        data = load_site(site, labels, redact_pii=False)
        for split in pooled:
            pooled[split].update(getattr(data, split).texts)
    manifest = partition_csv_dataset(tmp_path / "synth", tmp_path / "out", n_sites=2, seed=0)
    assert manifest["source"] == str(tmp_path / "synth")
    written = {split: Counter() for split in pooled}
    for site in ("site-00", "site-01"):
        data = load_site(tmp_path / "out" / site, read_labels(tmp_path / "out" / "labels.txt"),
                         redact_pii=False)
        for split in written:
            written[split].update(getattr(data, split).texts)
    assert written == pooled and sum(pooled["train"].values()) > 100


def test_a_site_folder_row_a_site_would_reject_stops_the_partition_at_its_line(tmp_path):
    write_sites(tmp_path / "synth", n_sites=2, seed=5, size=30)
    broken = tmp_path / "synth" / "site-01" / "train.jsonl"
    broken.write_text(broken.read_text(encoding="utf-8") + "{not json\n", encoding="utf-8")
    line = len(broken.read_text(encoding="utf-8").splitlines())
    with pytest.raises(ValueError, match=rf"{re.escape(str(broken))}:{line}: "):
        partition_csv_dataset(tmp_path / "synth", tmp_path / "out", n_sites=2, seed=0)
    assert not (tmp_path / "out").exists()


def test_a_synth_test_label_with_no_training_row_is_named_with_what_to_do(tmp_path):
    """Found in review: a small ``fedintent synth`` folder with a test label in no training
    row was refused as "the label (a string of length 23)", a name from its own labels.txt
    hidden, and nothing said what to do. A label not in labels.txt stays unquoted (above)."""
    write_sites(tmp_path / "synth", n_sites=2, seed=5, size=60)
    labels = read_labels(tmp_path / "synth" / "labels.txt")
    used = {json.loads(line)["intent"] for site in ("site-00", "site-01")
            for line in (tmp_path / "synth" / site / "test.jsonl").read_text().splitlines()}
    gone = sorted(used)[0]
    assert gone in labels
    for site in ("site-00", "site-01"):
        train = tmp_path / "synth" / site / "train.jsonl"
        train.write_text("".join(line + "\n" for line in train.read_text().splitlines()
                                 if json.loads(line)["intent"] != gone))
    with pytest.raises(ValueError, match=rf"the label {re.escape(repr(gone))} does not occur in "
                       "any site's training rows: a test row's site follows its label's "
                       "training rows, so every test label needs some; remove such test rows, "
                       r"or, for data of fedintent synth, generate more conversations \(a "
                       r"larger --size\)"):
        partition_csv_dataset(tmp_path / "synth", tmp_path / "out", n_sites=2, seed=0)


def test_partition_names_a_missing_folder_or_a_file_given_for_it(tmp_path, capsys):
    """Found in review: a folder that is not there was "CSV_DIR/train.csv: file not found"."""
    assert main(["partition", str(tmp_path / "nope"), "--sites", "2", "--out",
                 str(tmp_path / "o")]) == 2
    assert f"{tmp_path / 'nope'}: folder not found: give the folder that holds train.csv" \
        in capsys.readouterr().err
    (tmp_path / "train.csv").write_text(GOOD_TRAIN, encoding="utf-8")
    assert main(["partition", str(tmp_path / "train.csv"), "--sites", "2", "--out",
                 str(tmp_path / "o")]) == 2
    assert "train.csv: is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train.csv", "test.csv"])
def test_partition_names_a_split_that_is_a_folder(tmp_path, capsys, name):
    """Found in review: a test.csv that is a folder was "CSV_DIR/test.csv: file not found"."""
    (tmp_path / "train.csv").write_text(GOOD_TRAIN, encoding="utf-8")
    (tmp_path / "test.csv").write_text(GOOD_TEST, encoding="utf-8")
    (tmp_path / name).unlink()
    (tmp_path / name).mkdir()
    assert main(["partition", str(tmp_path), "--sites", "2", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / name} is a folder, not a CSV file (columns text,label)" in err
    assert "not found" not in err and not (tmp_path / "o").exists()
