"""The ``fedintent bench`` sweep: partition once, then every (method, epsilon, seed) cell.

Per epsilon, the federated runs use ``fedintent train``'s tuned settings for that epsilon
(``fl_server.run_config.TUNED_SETTINGS``); the distributed-DP runs use the settings tuned for
distributed DP (``DISTRIBUTED_SETTINGS``) with the privacy model, SecAgg+ and the tolerated sites
(``distributed_settings``).
Local-only sites train with the same settings for the same number of passes (rounds x local
epochs); central DP and central non-private train on the pooled data with their own recipes
below. Both DP baselines plan at the delta the federated sites plan at (``baseline_delta``).
Every method starts from the same label-name prior (``models``' ``initial_model``).
"""

import fcntl
import json
import math
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from data_synth.baseline import tfidf_accuracy
from fedintent.bench.baselines import (
    Recipe,
    baseline_delta,
    own_rows_scores,
    pooled_recipe,
    train_and_evaluate,
    trained_model,
)
from fedintent.bench.cells import (
    CENTRAL,
    CENTRAL_DP,
    DISTRIBUTED_DP,
    FEDERATED,
    FEDERATED_DISTRIBUTED,
    LOCAL_DP,
    LOCAL_ONLY,
    Cell,
    cell_path,
    load_cell,
    save_cell,
    sweep_cells,
)
from fedintent.bench.federated import run_federated
from fedintent.bench.report import write_outputs
from fedintent.partition import (
    PlannedPartition,
    holds_csv_splits,
    plan_partition,
    read_dataset,
    read_labeled_csv,
    write_partition,
)
from fedintent.report_files import FolderClaimed, claim_folder, epsilon_label
from fl_client.data_checks import record_languages
from fl_client.data_files import list_site_dirs
from fl_client.dp_training import evaluate
from fl_client.site_data import load_site
from fl_protocol.durable_files import json_safe
from fl_protocol.label_file import read_labels
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.provenance import file_sha256, software_provenance
from fl_server.run_config import (
    check_run_config,
    site_size_rate,
    tuned_settings,
)
from models import get_model_family
from models.family import concat_features

RUN_SETTINGS = (
    "target-epsilon", "model", "strategy", "num-rounds", "local-epochs", "batch-size",
    "learning-rate", "server-momentum", "clip-norm", "accountant", "privacy-unit", "delta",
)
"""The run-config keys a sweep fixes per epsilon (recorded in bench.json and the report)."""
Rows = tuple[torch.Tensor, torch.Tensor]
"""A site's (or the pooled test split's) features and labels."""
DATASET_FILES = ("train.csv", "test.csv")
"""The dataset's files, each hashed into bench.json (``dataset_sha256``)."""

@dataclass(frozen=True)
class BenchSpec:
    """What a sweep measures. A sweep folder takes another invocation with the same data,
    partition, model and settings for the epsilons both ask for (``sweep_differences``)."""

    data: str
    sites: int
    alpha: float
    epsilons: list[float]
    seeds: int
    partition_seed: int
    model: str = RUN_CONFIG_DEFAULTS["model"]
    rounds: int | None = None
    """Overrides every epsilon's tuned number of rounds (quick looks and tests)."""
    privacy_models: tuple[str, ...] = (LOCAL_DP,)
    """The federated runs' privacy models: local DP, distributed DP (finite epsilons), or both."""
    tolerated_sites: int = RUN_CONFIG_DEFAULTS["tolerated-sites"]
    """Distributed DP: sites that may drop out of or collude in a round."""


EMBED_SLICE_ROWS = 1024
"""Rows embedded (and written to the feature cache) at a time: the bar moves, and an interrupted
bench keeps every slice it finished."""


SPEC_DEFAULTS = {"tolerated_sites": BenchSpec.tolerated_sites, "privacy_models": [LOCAL_DP]}
"""What a bench.json written before these fields existed measured."""


SWEEP_LOCK = ".bench.lock"
"""The file a running sweep holds locked in its folder (``sweep_lock``)."""
SWEEP_ENTRIES = {SWEEP_LOCK, "bench.json", "data", "cache", "runs", "cells", "results.csv",
                 "results.json", "report.md", "accuracy_vs_epsilon.png"}
"""What a sweep writes in its folder: a folder holding nothing else is a sweep's, even where its
bench.json was lost (its cells each keep the settings they ran with)."""


def run_bench(spec: BenchSpec, out_dir: Path) -> list[dict]:
    """Run (or finish) the sweep in ``out_dir``, the only one running there; return every
    cell's result."""
    out_dir = Path(out_dir)
    partition = None
    if not (out_dir / "data" / "manifest.json").exists():
        # the input checked in full before the lock or bench.json claims the folder (found in
        # review: a label only in test.csv left a bench.json that refused the corrected data's
        # retry; data that did not read left a new folder holding the lock file)
        print(f"partitioning {spec.data} into {spec.sites} sites (alpha {spec.alpha:g})")
        partition = plan_partition(Path(spec.data), spec.sites, spec.partition_seed,
                                   alpha=spec.alpha)
    with sweep_lock(out_dir):
        return _run_sweep(spec, out_dir, partition)


@contextmanager
def sweep_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir`` for one ``fedintent bench`` at a time, refusing a second at once (a
    sweep runs for an hour, not worth waiting for blind); and refuse a folder that is neither
    new, empty nor a sweep's (``SWEEP_ENTRIES``). Found in review: two runs at once each rewrote
    bench.json from what it had read, one's epsilons dropped; and an unrelated folder was taken,
    its report.md or results.csv overwritten. The lock goes with the process, however it ends."""
    out_dir.mkdir(parents=True, exist_ok=True)
    foreign = sorted(path.name for path in out_dir.iterdir() if path.name not in SWEEP_ENTRIES)
    if foreign and not (out_dir / "bench.json").exists():  # refused before the lock is made
        raise FolderClaimed(f"{out_dir} holds no sweep (no bench.json) and is not empty: "
                            f"{len(foreign)} entries a sweep does not write, such as "
                            f"{foreign[0]}; use a new or empty --out")
    fd = os.open(out_dir / SWEEP_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderClaimed(f"{out_dir}: another fedintent bench is running in it; wait "
                                "for it to finish (then re-run to add what it lacks), or use "
                                "another --out") from None
        yield
    finally:
        os.close(fd)


def _run_sweep(spec: BenchSpec, out_dir: Path, partition: PlannedPartition | None
               ) -> list[dict]:
    data_dir = out_dir / "data"
    record = claim_sweep_folder(out_dir, spec)
    if partition is not None and not (data_dir / "manifest.json").exists():
        write_partition(partition, data_dir)  # unless a sweep that held the lock wrote it
    labels = read_labels(data_dir / "labels.txt")
    cache = out_dir / "cache" / "features"
    sites = [load_site(site_dir, labels) for site_dir in list_site_dirs(data_dir)]
    family = get_model_family(spec.model)
    splits = [site.train for site in sites] + [site.test for site in sites]
    features = _embedded(splits, family, cache)
    tensors = features[: len(sites)]
    site_tests = features[len(sites):]
    test_x, test_y = _pooled(site_tests)

    cells = sweep_cells(spec.epsilons, spec.seeds, spec.privacy_models)
    done = {cell: _finished(out_dir, cell, record, "run again") for cell in cells}
    todo = [cell for cell, result in done.items() if result is None]
    if len(todo) < len(cells):
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already done")
    folder_cells = sweep_cells([float(eps) for eps in record["epsilons"]], record["seeds"],
                               tuple(record["privacy_models"]))
    earlier = [result for cell in folder_cells if cell not in done
               if (result := _finished(out_dir, cell, record, "left out of the report"))
               is not None]
    results = [result for result in done.values() if result is not None] + earlier
    if earlier:
        print(f"the report also holds {len(earlier)} finished cell"
              f"{'s' if len(earlier) > 1 else ''} of earlier runs in {out_dir} (epsilons, "
              "seeds or privacy models not asked for now)")
    words = tfidf_by_words(Path(spec.data))
    progress = tqdm(todo, desc="bench", unit="cell", dynamic_ncols=True)
    for cell in progress:
        progress.set_postfix_str(cell.id)
        started = time.monotonic()
        # the non-private pooled baselines run at epsilon inf whatever --epsilons asks for,
        # with their own recipe (found in review: a sweep without inf stopped at them)
        ran_with = cell_settings(cell, record)
        if cell.method in (FEDERATED, FEDERATED_DISTRIBUTED):
            result = run_federated(
                data_dir, out_dir / "runs" / cell.id, cache, len(sites), ran_with,
                cell.seed, test_x, test_y, site_tests,
            )
        elif cell.method in (CENTRAL, CENTRAL_DP):
            result = pooled_cell(cell, spec.model, labels, tensors, (test_x, test_y))
        elif cell.method == LOCAL_ONLY:
            result = local_only_cell(cell, spec.model, labels, tensors, (test_x, test_y),
                                     _recipe(ran_with), site_tests)
        else:
            result = {"accuracy": tfidf_accuracy(
                [t for site in sites for t in site.train.texts],
                [y for site in sites for y in site.train.labels],
                [t for site in sites for t in site.test.texts],
                [y for site in sites for y in site.test.labels],
                words=words, seed=cell.seed)}
        result["seconds"] = time.monotonic() - started
        save_cell(out_dir, cell, result | {"settings": _as_recorded(ran_with)})
        results.append(load_cell(out_dir, cell))
        write_outputs(out_dir, record, results)
        tqdm.write(f"{cell.id}: accuracy {result['accuracy']:.4f} "
                   f"({result['seconds']:.0f} s)")
    write_outputs(out_dir, record, results)
    return results


def cell_settings(cell: Cell, record: dict) -> dict:
    """What a cell runs with: its epsilon's federated settings (a local-only cell trains each
    site with them), with the distributed-DP ones for a distributed cell; a pooled baseline's
    recipe; nothing for TF-IDF (the data's hash fixes it)."""
    label = epsilon_label(cell.epsilon)
    if cell.method in (FEDERATED, LOCAL_ONLY):
        return record["settings"][label]
    if cell.method == FEDERATED_DISTRIBUTED:
        return record["settings"][label] | record["distributed_settings"][label]
    if cell.method in (CENTRAL, CENTRAL_DP):
        return asdict(pooled_recipe(cell.epsilon))
    return {}


def _finished(out_dir: Path, cell: Cell, record: dict, otherwise: str) -> dict | None:
    """A cell's saved result where it ran with the settings the folder's sweep gives it now;
    ``None`` to run it (again). Found in review: bench.json rewritten without an epsilon (two
    runs in one folder at once, or deleted by hand) let a later run at other settings count
    the old cells as its own. A cell saved before cells kept their settings is taken as is."""
    result = load_cell(out_dir, cell)
    if result is None:
        return None
    expected = _as_recorded(cell_settings(cell, record))
    if result.get("settings", expected) == expected:
        return result
    print(f"{cell_path(out_dir, cell)} ran with other settings than this sweep's: {otherwise}")
    return None


def _as_recorded(settings: dict) -> dict:
    """``settings`` as a JSON file holds them (inf as ``"inf"``), so saved and current compare."""
    return json.loads(json.dumps(json_safe(settings, infinity="inf")))


def tfidf_by_words(data: Path) -> bool:
    """TF-IDF reads word n-grams, except where the data is site folders whose conversations
    name a language other than English (Chinese is not space-separated): character n-grams, as
    the synthetic data's own baseline reads them (``data_synth.baseline``)."""
    return holds_csv_splits(data) or all(record_languages(site) <= {"en"}
                                         for site in list_site_dirs(data))


def pooled_cell(cell: Cell, model: str, labels: list[str], sites: list[Rows], test: Rows) -> dict:
    """Central DP or central non-private: every site's rows pooled, trained with the pooled
    recipe, DP at the sites' delta (``baseline_delta``)."""
    recipe = pooled_recipe(cell.epsilon if cell.method == CENTRAL_DP else math.inf)
    delta = baseline_delta([len(y) for _, y in sites])
    scores = train_and_evaluate(model, labels, *_pooled(sites), *test, cell.epsilon, recipe,
                                cell.seed, delta=delta)
    return {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1,
            "deltas": planned_deltas(cell.epsilon, [delta])}


def local_only_cell(cell: Cell, model: str, labels: list[str], sites: list[Rows], test: Rows,
                    recipe: Recipe, site_tests: list[Rows]) -> dict:
    """Every site alone, at the delta it plans at in the federated run; scores are the mean
    over sites, each site's model on the pooled ``test`` and on its own ``site_tests`` rows."""
    deltas = [baseline_delta([len(y)]) for _, y in sites]
    models = [trained_model(model, labels, x, y, cell.epsilon, recipe, cell.seed, delta=delta)
              for (x, y), delta in zip(sites, deltas, strict=True)]
    per_site = [evaluate(site_model, *test) for site_model in models]
    return {"accuracy": statistics.fmean(s.accuracy for s in per_site),
            "macro_f1": statistics.fmean(s.macro_f1 for s in per_site),
            "site_accuracies": [s.accuracy for s in per_site],
            **own_rows_scores(models, site_tests),
            "deltas": planned_deltas(cell.epsilon, deltas)}



def planned_deltas(epsilon: float, deltas: list[float]) -> list[float]:
    """The distinct deltas a baseline's DP ran at, as a federated cell records its sites'
    (``site_deltas``); none without DP."""
    return sorted(set(deltas)) if math.isfinite(epsilon) else []


def claim_sweep_folder(out_dir: Path, spec: BenchSpec) -> dict:
    """The folder's sweep record (its spec, each epsilon's settings, the dataset's SHA-256 and,
    one entry per invocation, the software that ran), written to bench.json unless the folder
    holds another sweep: ``spec``'s, grown by the epsilons, seeds and privacy models earlier
    invocations there ran (as bench.json holds it, epsilon inf as ``"inf"``, except ``spec``'s
    own epsilons' settings, numbers to run with). Distributed-DP settings are
    checked first, so that a bad combination is refused before any cell runs rather than after
    the local ones."""
    site_rows = mean_site_rows(spec)
    settings = {epsilon_label(eps): _federated_settings(eps, spec, site_rows)
                for eps in spec.epsilons}
    distributed = ({epsilon_label(eps): distributed_settings(spec, eps, site_rows)
                    for eps in filter(math.isfinite, spec.epsilons)}
                   if DISTRIBUTED_DP in spec.privacy_models else {})
    for label, extra in distributed.items():
        check_run_config(settings[label] | extra | {"min-sites": spec.sites})
    record = asdict(spec) | {"settings": settings, "dataset_sha256": dataset_sha256(spec.data),
                             "software": [software_provenance()]}
    if DISTRIBUTED_DP in spec.privacy_models:
        record["distributed_settings"] = distributed
    kept = _claim_folder(out_dir, record)
    return kept | {"settings": kept["settings"] | settings}  # this run's as numbers: inf, not "inf"


def dataset_sha256(data: str) -> dict[str, str]:
    """SHA-256 of the dataset's splits, or of every file of its site folders (by its path in
    the dataset): the same path can hold other data on another day."""
    folder = Path(data)
    if holds_csv_splits(folder):
        return {name: file_sha256(folder / name) for name in DATASET_FILES
                if (folder / name).is_file()}
    return {path.relative_to(folder).as_posix(): file_sha256(path)
            for path in sorted(folder.glob("*/*")) if path.is_file()}


def distributed_settings(spec: BenchSpec, epsilon: float, site_rows: float) -> dict:
    """What a distributed-DP cell changes in its epsilon's settings: the training settings tuned
    for distributed DP (the learning rate scaled to the sites' size as ``fedintent train`` scales
    it for sites of ``site_rows``), the privacy model, SecAgg+ and the tolerated sites."""
    tuned = tuned_settings(epsilon, DISTRIBUTED_DP)
    tuned["learning-rate"] = site_size_rate(tuned["learning-rate"], site_rows, epsilon)
    if spec.rounds is not None:
        tuned["num-rounds"] = spec.rounds
    return tuned | {"privacy-model": DISTRIBUTED_DP, "secure-aggregation": True,
                    "tolerated-sites": spec.tolerated_sites}


def mean_site_rows(spec: BenchSpec) -> float:
    """The sites' mean training rows: the partition gives every training row to one site."""
    data = Path(spec.data)
    train = (read_labeled_csv(data / "train.csv") if holds_csv_splits(data)
             else read_dataset(data)[0])
    return len(train) / spec.sites


def _federated_settings(epsilon: float, spec: BenchSpec, site_rows: float) -> dict:
    settings = (RUN_CONFIG_DEFAULTS | tuned_settings(epsilon)
                | {"target-epsilon": epsilon, "model": spec.model})
    settings["learning-rate"] = site_size_rate(settings["learning-rate"], site_rows, epsilon)
    if spec.rounds is not None:
        settings["num-rounds"] = spec.rounds
    return {key: settings[key] for key in RUN_SETTINGS}


def _recipe(settings: dict) -> Recipe:
    """The in-process equivalent of a federated run's per-site training."""
    return Recipe(
        epochs=int(settings["num-rounds"]) * int(settings["local-epochs"]),
        batch_size=int(settings["batch-size"]),
        learning_rate=float(settings["learning-rate"]),
        clip_norm=float(settings["clip-norm"]),
    )


def _embedded(splits: list, family, cache: Path) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each split's (features, labels), embedded EMBED_SLICE_ROWS rows at a time behind a progress
    bar. Found in review: BANKING77 embedded in one call printed nothing for 4 minutes, and an
    interrupted bench kept none of it."""
    total = sum(len(split.texts) for split in splits)
    features = []
    with tqdm(total=total, desc="embedding every site's text (cached for later runs)",
              unit="row", dynamic_ncols=True) as progress:
        for split in splits:
            texts = split.texts
            parts = []
            for start in range(0, len(texts), EMBED_SLICE_ROWS):
                parts.append(family.featurize(texts[start: start + EMBED_SLICE_ROWS], cache))
                progress.update(len(parts[-1]))
            x = concat_features(parts) if parts else family.featurize(texts, cache)
            features.append((x, torch.tensor(split.labels, dtype=torch.long)))
    return features


def _pooled(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return concat_features([x for x, _ in parts]), torch.cat([y for _, y in parts])


def _claim_folder(out_dir: Path, record: dict) -> dict:
    """A sweep folder holds one sweep: refuse to mix cells of different data, partition, model
    or an epsilon's settings, naming each field that differs (found in review: a generic
    refusal left the user to diff bench.json by hand); other epsilons, seeds and privacy models
    grow it. Returns the record kept in bench.json."""
    path = out_dir / "bench.json"

    def merge(existing: dict, wanted: dict) -> dict | None:
        if not isinstance(existing, dict) or not {"epsilons", "seeds", "settings"} <= set(existing):
            return None  # found in review: one without settings took any, old cells and all
        existing = SPEC_DEFAULTS | existing
        differences = sweep_differences(existing, wanted)
        if differences:
            # found in review: "delete it" read as bench.json, whose cells and runs then
            # stayed under the new settings
            raise FolderClaimed(f"{out_dir} holds a sweep with other settings than this one "
                                f"({'; '.join(differences)}; in {path}); use a new --out, or "
                                f"delete the folder {out_dir} and all it holds")
        # cells are keyed by epsilon, seed and privacy model, so none mix: the folder's sweep
        # grows to hold both (found in review: a second invocation with fewer seeds rewrote the
        # report to them, the spread of the first gone, and one adding an epsilon was refused)
        merged = existing | {
            "epsilons": [json_safe(eps, infinity="inf") for eps in sorted(
                {float(eps) for eps in existing["epsilons"] + wanted["epsilons"]})],
            "seeds": max(existing["seeds"], wanted["seeds"]),
            "privacy_models": [model for model in (LOCAL_DP, DISTRIBUTED_DP) if model in
                               existing["privacy_models"] + wanted["privacy_models"]],
            "settings": existing["settings"] | wanted["settings"],
            # one --rounds for the whole folder, or none to name (each epsilon's is in settings)
            "rounds": wanted["rounds"] if existing.get("rounds") == wanted["rounds"] else None,
        }
        merged["dataset_sha256"] = wanted["dataset_sha256"]
        merged["software"] = existing.get("software", []) + wanted["software"]
        if wanted.get("distributed_settings"):
            merged["distributed_settings"] = (existing.get("distributed_settings") or {}) \
                | wanted["distributed_settings"]
            merged["tolerated_sites"] = wanted["tolerated_sites"]
        return merged

    return claim_folder(path, record, merge,
                        f"{path}: not a sweep's record; use a new --out, or delete it")


def sweep_differences(existing: dict, wanted: dict) -> list[str]:
    """What keeps the sweep recorded in a folder (``existing``) and ``wanted`` from sharing it:
    each differing field as its dotted path in bench.json with both values. A record from
    before a field was kept (no ``dataset_sha256``) differs in nothing it lacks, and
    an epsilon's settings only where both record it."""
    fixed = ("data", "sites", "alpha", "partition_seed", "model")
    if existing.get("distributed_settings") and wanted.get("distributed_settings"):
        fixed += ("tolerated_sites",)  # found in review: a local-only folder refused them
    differences = [d for key in fixed for d in _changed(existing.get(key), wanted[key], key)]
    if "dataset_sha256" in existing:  # the same path, other data
        differences += _changed(existing["dataset_sha256"], wanted["dataset_sha256"],
                                "dataset_sha256")
    for key in ("settings", "distributed_settings"):
        before = existing.get(key) or {}
        for label, settings in (wanted.get(key) or {}).items():
            differences += _changed(before.get(label, settings), settings, f"{key}.{label}")
    return differences


def _changed(before: object, after: object, name: str) -> list[str]:
    """``name: BEFORE there, AFTER now`` for each leaf that differs, nested keys dotted."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for key in sorted(before.keys() | after.keys(), key=str)
                for d in _changed(before.get(key), after.get(key), f"{name}.{key}")]
    if before == after:
        return []
    return [f"{name}: {_shown(before)} there, {_shown(after)} now"]


def _shown(value: object) -> str:
    """A recorded value in a message: a SHA-256 by its first 12 digits, a group of settings
    (an epsilon's) by whether it is there."""
    if value is None:
        return "absent"
    if isinstance(value, dict):
        return "present"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return str(value)
