"""Split a labeled dataset (``train.csv`` + ``test.csv``, or site folders such as ``fedintent
synth`` writes, pooled) into non-IID site folders.

Training rows are divided with flwr-datasets' partitioners: Dirichlet label skew, or IID, with
optional quantity skew. Test rows then follow each site's training label mix, so every site is
evaluated on its own distribution. Everything is derived from ``seed``: same arguments, same
bytes.
"""

import csv
import io
import json
import math
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

import numpy as np
from datasets import Dataset
from flwr_datasets.partitioner import (
    DirichletPartitioner,
    IidPartitioner,
    Partitioner,
    SizePartitioner,
)

from fl_client.data_files import list_site_dirs
from fl_client.rows import RejectedRow, SiteDataError
from fl_client.site_data import read_rows
from fl_protocol.durable_files import write_text_atomic
from fl_protocol.file_owner import not_a_file
from fl_protocol.label_file import LabelFileError, label_list_problem, read_labels

SITE_CSV_HEADER = ("text", "label")
OWNER_ONLY = 0o600
"""Every file a partition writes: the sites' files hold the source's utterances, real
customers' text where the source is a company's export."""
PARAMETER_NAMES = {"n_sites": "n_sites", "seed": "seed", "alpha": "alpha", "iid": "alpha=None",
                   "min_site_size": "min_site_size", "quantity_skew": "quantity_skew"}
"""How messages name each argument (``iid``: how IID is asked for); a command line passes its
options instead, so that its user reads what they typed."""


class Example(NamedTuple):
    """One labeled row; ``line`` is where it ends in its source file, for error messages, and
    ``file`` that file where it is not the split's ``train.csv`` or ``test.csv``."""

    text: str
    label: str
    line: int
    file: Path | None = None


class PlannedPartition(NamedTuple):
    """A partition computed and checked but not yet written (``write_partition``)."""

    labels: list[str]
    sites: dict[str, tuple[list[Example], list[Example]]]
    """Each site's (train, test) rows, by site folder name."""
    settings: dict
    """How it was made, for the manifest."""


def partition_csv_dataset(
    csv_dir: Path,
    out_dir: Path,
    n_sites: int,
    seed: int,
    alpha: float | None = 0.5,
    min_site_size: int = 10,
    quantity_skew: float | None = None,
    names: Mapping[str, str] = PARAMETER_NAMES,
) -> dict:
    """Write ``labels.txt``, ``site-NN/{train,test}.csv`` and ``manifest.json``; return the
    manifest. The arguments are ``plan_partition``'s."""
    return write_partition(
        plan_partition(csv_dir, n_sites, seed, alpha, min_site_size, quantity_skew, names),
        Path(out_dir))


def plan_partition(
    csv_dir: Path,
    n_sites: int,
    seed: int,
    alpha: float | None = 0.5,
    min_site_size: int = 10,
    quantity_skew: float | None = None,
    names: Mapping[str, str] = PARAMETER_NAMES,
) -> PlannedPartition:
    """The partition of ``csv_dir``'s ``train.csv`` and ``test.csv``, every check of the input
    made and nothing written, so that a caller can refuse bad input before it claims a folder.

    ``alpha`` is the Dirichlet concentration of each label's spread over the sites (smaller =
    more skewed; None = IID). ``quantity_skew`` Q makes the largest site's expected size Q times
    the smallest's, growing geometrically with the site number (None = equal sizes). Every site
    gets at least ``min_site_size`` training rows. Errors name the arguments as ``names`` does
    (``PARAMETER_NAMES``' keys).
    """
    csv_dir = Path(csv_dir)
    check_partition_args(n_sites, seed, alpha, min_site_size, quantity_skew, names)
    train, test = read_dataset(csv_dir)
    source = csv_dir / "train.csv" if holds_csv_splits(csv_dir) else csv_dir
    if not train:
        raise ValueError(f"{source}: no data rows")
    if n_sites * min_site_size > len(train):
        raise ValueError(
            f"{source}: {len(train)} rows cannot give {n_sites} sites "
            f"at least {min_site_size} rows each"
        )
    labels = sorted({example.label for example in train})
    problem = label_list_problem(labels)
    if problem:  # found in review: written, then refused by every command that trains
        raise ValueError(f"{source}: its labels cannot be a run's: {problem}")
    check_test_labels(test, set(labels), csv_dir / "test.csv", taxonomy(csv_dir))

    rng = np.random.default_rng(seed)
    train_labels = np.array([example.label for example in train], dtype=str)
    train_sites = assign_train_rows(train_labels, n_sites, rng, alpha, min_site_size, quantity_skew,
                                    names)
    test_labels = np.array([example.label for example in test], dtype=str)
    test_sites = assign_test_rows(train_labels, train_sites, test_labels, n_sites, rng)
    sites = {site_name(index, n_sites): (site_rows(train, train_sites, index),
                                         site_rows(test, test_sites, index))
             for index in range(n_sites)}
    settings = {
        "source": str(csv_dir),
        "scheme": "iid" if alpha is None else "dirichlet",
        "alpha": alpha,
        "quantity_skew": quantity_skew,
        "min_site_size": min_site_size,
        "seed": seed,
        "n_sites": n_sites,
    }
    return PlannedPartition(labels, sites, settings)


def write_partition(partition: PlannedPartition, out_dir: Path) -> dict:
    """Write ``partition`` into ``out_dir`` (``partition_csv_dataset``); return the manifest."""
    check_no_stale_sites(out_dir, list(partition.sites))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "labels.txt",
                      "".join(f"{label}\n" for label in partition.labels), OWNER_ONLY)
    sites = {name: write_site(out_dir / name, train, test)
             for name, (train, test) in partition.sites.items()}
    manifest = partition.settings | {"labels": partition.labels, "sites": sites}
    manifest_text = json.dumps(manifest, ensure_ascii=False, indent=2) + "\n"
    write_text_atomic(out_dir / "manifest.json", manifest_text, OWNER_ONLY)
    return manifest


def check_partition_args(
    n_sites: int,
    seed: int,
    alpha: float | None,
    min_site_size: int,
    quantity_skew: float | None,
    names: Mapping[str, str] = PARAMETER_NAMES,
) -> None:
    """Reject arguments the partitioners would fail on later, or silently misread."""
    if n_sites < 1:
        raise ValueError(f"{names['n_sites']} must be >= 1, got {n_sites}")
    if seed < 0:
        raise ValueError(f"{names['seed']} must be a non-negative integer, got {seed}")
    if alpha is not None and not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"{names['alpha']} must be a finite number > 0 ({names['iid']} for IID "
                         f"sites), got {alpha}")
    if min_site_size < 1:
        raise ValueError(f"{names['min_site_size']} must be >= 1, got {min_site_size}")
    if quantity_skew is not None and not (quantity_skew >= 1 and math.isfinite(quantity_skew)):
        raise ValueError(
            f"{names['quantity_skew']} must be a finite number >= 1 (largest/smallest site "
            f"size), got {quantity_skew}"
        )


def holds_csv_splits(folder: Path) -> bool:
    """Whether ``folder`` is a CSV dataset rather than site folders: it has a ``train.csv``, or
    is no folder at all (the error then names the ``train.csv`` it lacks)."""
    return (folder / "train.csv").exists() or not folder.is_dir()


def read_dataset(folder: Path) -> tuple[list[Example], list[Example]]:
    """(train, test) rows of ``folder``: its ``train.csv`` and ``test.csv``, or else the rows of
    every site folder in it (``fedintent synth``'s conversations, read as a site reads them,
    unredacted like a CSV's: each site that loads its new folder redacts them), pooled. A row a
    site would reject stops the partition with its file and line, as a bad CSV row does."""
    folder = Path(folder)
    if holds_csv_splits(folder):
        return read_labeled_csv(folder / "train.csv"), read_labeled_csv(folder / "test.csv")
    try:
        site_dirs = list_site_dirs(folder)
    except SiteDataError as err:
        raise ValueError(f"{folder / 'train.csv'}: not found, and {err}") from err
    train: list[Example] = []
    test: list[Example] = []
    for site_dir in site_dirs:
        rejected: list[RejectedRow] = []
        try:
            rows = read_rows(site_dir, rejected)
        except SiteDataError as err:
            raise ValueError(str(err)) from err
        if rejected:
            first = rejected[0]
            where = f"{site_dir / first.file}" + (f":{first.line}" if first.line else "")
            more = f" (and {len(rejected) - 1} more rows)" if len(rejected) > 1 else ""
            raise ValueError(f"{where}: {first.reason}{more}")
        for split, found in zip((train, test), rows, strict=True):
            split += [Example(row.text, row.label, row.line, Path(row.file or site_dir))
                      for row in found]
    return train, test


def read_labeled_csv(path: Path) -> list[Example]:
    """All rows of a CSV whose header names ``text`` and ``label`` (other columns are not kept).
    A bad row stops the run with ``file:line``: skipping it would silently change which rows the
    sites get."""
    rows = csv.reader(io.StringIO(read_utf8(path), newline=""), strict=True)
    examples: list[Example] = []
    header: list[str] | None = None
    # the line the record being read begins on: a quote never closed ends at the file's end
    # (found in review: "train.csv:3" for a quote opened on line 2)
    begins = 1
    try:
        for row in rows:
            if not is_blank(row) and header is None:
                header = [name.strip() for name in row]
                check_header(header, path, rows.line_num)
            elif not is_blank(row):
                examples.append(example_from_row(row, header, path, rows.line_num))
            begins = rows.line_num + 1
    except csv.Error as err:
        raise ValueError(f"{path}:{begins}: malformed CSV ({err}) in the record that begins "
                         "on this line") from err
    if header is None:
        raise ValueError(f"{path}: empty file, expected a header with 'text' and 'label'")
    return examples


def read_utf8(path: Path) -> str:
    """The file's text (a leading BOM dropped), or an error naming the undecodable line."""
    if not path.is_file():
        raise ValueError(not_a_file(path, "a CSV file (columns text,label)")
                         or f"{path}: file not found")
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from err


def is_blank(row: list[str]) -> bool:
    """An empty or whitespace-only line, which site loaders skip too."""
    return len(row) <= 1 and not "".join(row).strip()


def check_header(header: list[str], path: Path, line: int) -> None:
    """The column names are not quoted: a file without a header line has a customer's row
    there, and the error may end up in a CI log."""
    missing = [name for name in SITE_CSV_HEADER if name not in header]
    if missing:
        raise ValueError(
            f"{path}:{line}: header must name columns 'text' and 'label'; missing {missing} "
            f"among its {len(header)} columns (a file without a header line has its first row "
            "read as the header)"
        )


def example_from_row(row: list[str], header: list[str], path: Path, line: int) -> Example:
    """One validated row; the site loader reads one row per line, so line breaks are refused."""
    if len(row) != len(header):
        raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
    text = row[header.index("text")]
    label = row[header.index("label")].strip()
    if not text.strip():
        raise ValueError(f"{path}:{line}: empty text")
    if not label:
        raise ValueError(f"{path}:{line}: empty label")
    if any(char in field for field in (text, label) for char in "\r\n"):
        raise ValueError(
            f"{path}:{line}: text or label contains a line break; "
            "site folders hold one row per line"
        )
    return Example(text=text, label=label, line=line)


def check_test_labels(test: list[Example], labels: set[str], path: Path,
                      public: frozenset[str] = frozenset()) -> None:
    """A test label unseen in training has no site mix to follow. The label is quoted only
    where it is one of the ``public`` label names (the folder's labels.txt): a mis-columned row
    can hold a customer's words there (found in review: a label ``fedintent synth`` wrote, in
    no training row of a small folder, was hidden, and nothing said what to do)."""
    for example in test:
        if example.label not in labels:
            label = (repr(example.label) if example.label in public
                     else f"(a string of length {len(example.label)})")
            raise ValueError(
                f"{example.file or path}:{example.line}: the label {label} does not occur in "
                + ("train.csv" if example.file is None else "any site's training rows")
                + ": a test row's site follows its label's training rows, so every test label "
                "needs some; remove such test rows, or, for data of fedintent synth, generate "
                "more conversations (a larger --size)")


def taxonomy(folder: Path) -> frozenset[str]:
    """The label names ``folder``'s labels.txt lists, public by design (the run's taxonomy);
    none without a readable one."""
    try:
        return frozenset(read_labels(Path(folder) / "labels.txt"))
    except (LabelFileError, OSError):
        return frozenset()


def relative_site_sizes(n_sites: int, quantity_skew: float | None) -> np.ndarray:
    """Expected site sizes relative to the mean: equal, or geometric from 1 to ``quantity_skew``
    (so the largest is Q times the smallest), always averaging exactly 1."""
    if quantity_skew is None:
        return np.ones(n_sites)
    raw = quantity_skew ** np.linspace(0.0, 1.0, n_sites)
    return raw * (n_sites / raw.sum())


def make_partitioner(
    n_sites: int,
    n_rows: int,
    seed: int,
    alpha: float | None,
    min_site_size: int,
    quantity_skew: float | None,
    names: Mapping[str, str] = PARAMETER_NAMES,
) -> Partitioner:
    """The flwr-datasets partitioner for the scheme.

    With quantity skew, site k's Dirichlet concentration is ``alpha * relative size``: each
    label's expected share at site k is then its relative size, and without skew this is the
    plain symmetric Dirichlet(alpha).
    """
    sizes = relative_site_sizes(n_sites, quantity_skew)
    if alpha is not None:
        return DirichletPartitioner(
            num_partitions=n_sites,
            partition_by="label",
            alpha=[alpha * size for size in sizes],
            min_partition_size=min_site_size,
            shuffle=False,
            seed=seed,
        )
    if quantity_skew is None:
        return IidPartitioner(num_partitions=n_sites)
    return SizePartitioner(iid_site_sizes(sizes, n_rows, min_site_size, names))


def iid_site_sizes(relative_sizes: np.ndarray, n_rows: int, min_site_size: int,
                   names: Mapping[str, str] = PARAMETER_NAMES) -> list[int]:
    """Row counts for the sizes, summing to ``n_rows`` (rounding leftovers go to the largest)."""
    sizes = [int(size) for size in np.floor(relative_sizes * n_rows / len(relative_sizes))]
    sizes[-1] += n_rows - sum(sizes)
    if min(sizes) < min_site_size:
        raise ValueError(
            f"quantity skew leaves the smallest site {min(sizes)} rows, fewer than "
            f"{names['min_site_size']} {min_site_size}; lower {names['quantity_skew']}, "
            f"{names['min_site_size']} or {names['n_sites']}"
        )
    return sizes


def assign_train_rows(
    labels: np.ndarray,
    n_sites: int,
    rng: np.random.Generator,
    alpha: float | None,
    min_site_size: int,
    quantity_skew: float | None,
    names: Mapping[str, str] = PARAMETER_NAMES,
) -> np.ndarray:
    """The site of each training row. Rows are shuffled first, since the partitioners cut
    contiguous runs and the file order may mean something (source, date, author)."""
    order = rng.permutation(len(labels))
    dataset = Dataset.from_dict({"row": order.tolist(), "label": labels[order].tolist()})
    partitioner = make_partitioner(
        n_sites, len(labels), int(rng.integers(2**32)), alpha, min_site_size, quantity_skew,
        names,
    )
    partitioner.dataset = dataset
    sites = np.empty(len(labels), dtype=np.int64)
    try:
        with warnings.catch_warnings():
            # Each failed Dirichlet draw warns before retrying; the final failure is raised.
            warnings.filterwarnings("ignore", message="The specified min_partition_size")
            for site in range(n_sites):
                sites[partitioner.load_partition(site)["row"]] = site
    except ValueError as err:
        scheme = names["iid"] if alpha is None else f"{names['alpha']} {alpha:g}"
        if quantity_skew is not None:
            scheme += f", {names['quantity_skew']} {quantity_skew:g}"
        raise ValueError(
            f"could not give all {n_sites} sites at least {min_site_size} training rows with "
            f"{scheme} ({err}); raise {names['alpha']}, or lower "
            f"{names['n_sites']}, {names['quantity_skew']} or {names['min_site_size']}"
        ) from err
    return sites


def assign_test_rows(
    train_labels: np.ndarray,
    train_sites: np.ndarray,
    test_labels: np.ndarray,
    n_sites: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """The site of each test row. Site k gets its training share of label c's test rows (rows
    drawn at random), so each site is tested on its own label mix."""
    sites = np.empty(len(test_labels), dtype=np.int64)
    for label in sorted(set(test_labels.tolist())):
        in_train = np.bincount(train_sites[train_labels == label], minlength=n_sites)
        rows = rng.permutation(np.flatnonzero(test_labels == label))
        counts = apportion(in_train / in_train.sum(), len(rows), rng)
        sites[rows] = np.repeat(np.arange(n_sites), counts)
    return sites


def apportion(shares: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Whole counts summing to ``total``, each within one of ``share * total``. Leftover units
    go to sites drawn by their fractional parts, so ties do not favour low site numbers."""
    quotas = shares * total
    counts = np.floor(quotas).astype(np.int64)
    leftover = total - int(counts.sum())
    if leftover:
        fractions = quotas - counts
        lucky = rng.choice(len(shares), size=leftover, replace=False, p=fractions / fractions.sum())
        counts[lucky] += 1
    return counts


def site_name(index: int, n_sites: int) -> str:
    """``site-07``; wide enough that name order is site order for any number of sites."""
    return f"site-{index:0{max(2, len(str(n_sites - 1)))}d}"


def check_no_stale_sites(out_dir: Path, site_names: list[str]) -> None:
    """Refuse to leave older site folders next to new ones: they would be trained on too."""
    if not out_dir.is_dir():
        return
    stale = sorted(
        p.name for p in out_dir.glob("site-*") if p.is_dir() and p.name not in site_names
    )
    if stale:
        raise ValueError(
            f"{out_dir} holds site folders this partition would not replace: {stale}; "
            "use a fresh folder"
        )


def site_rows(examples: list[Example], sites: np.ndarray, site: int) -> list[Example]:
    """A site's rows in their source-file order."""
    return [examples[row] for row in np.flatnonzero(sites == site)]


def write_site(site_dir: Path, train: list[Example], test: list[Example]) -> dict:
    """Write one site folder; return its manifest entry (label counts are train + test, as in
    the synthetic manifest)."""
    site_dir.mkdir(exist_ok=True)
    write_text_atomic(site_dir / "train.csv", site_csv(train), OWNER_ONLY)
    write_text_atomic(site_dir / "test.csv", site_csv(test), OWNER_ONLY)
    label_counts = Counter(example.label for example in train + test)
    return {
        "train": len(train),
        "test": len(test),
        "label_counts": dict(sorted(label_counts.items())),
    }


def site_csv(examples: list[Example]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SITE_CSV_HEADER)
    writer.writerows((example.text, example.label) for example in examples)
    return buffer.getvalue()
