"""One federated cell of the sweep: a real Flower simulation, scored on the held-out test split.

The run goes through exactly the code path of ``fedintent train`` (private SuperLink, ``flwr
run``, the project's ServerApp and ClientApp, DP-SGD and privacy ledgers at the sites), with
fresh site state folders per cell, so every cell starts with an empty ledger. Only the feature
cache is shared between cells (each site's store starts as hard links to it): it holds
embeddings of the sites' own text, computed by the same code every site runs.

Besides the test accuracy and macro-F1 of the final model on the pooled test split, each run
records what the sites themselves measured on their own test splits: the example-weighted
accuracy and macro-F1, and the worst site's accuracy (a model can fail a small site while the
pooled figures look fine); and the final model on each site's own test rows scored here, the
figure a local-only site's own model is set against.

Performance figures recorded for every run:
* wall time of the whole run and time per round (from the moment each round appears in
  ``metrics.json``);
* bytes uploaded per site per round, read back from the sites' egress logs (what the egress
  guard let leave the site): the exchanged arrays' payload, or under SecAgg+ every protocol
  reply of the round as serialized (keys, key shares, the masked update), since the masked
  update travels as protocol values rather than arrays;
* peak memory: the largest total resident memory of this process and all its descendants
  (SuperLink, simulation, Ray workers), sampled every half second;
* the largest epsilon any site reached (``max_site_epsilon``) and, from its own noise alone,
  ``max_site_epsilon_alone`` (larger under distributed DP, equal under local DP);
* the deltas the sites reported (``deltas``).

Local training throughput (samples/s) is not measured: timed in-process on this shared machine
it varied up to 100x between seeds of one setting, so it said nothing about the code.
"""

import math
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import psutil
import torch

from fedintent.bench.baselines import own_rows_scores
from fedintent.bench.cells import cell_lifetime_budget
from fedintent.launch.run_config import compose_run_config
from fedintent.launch.simulation import run_simulation
from fl_client.dp_training import evaluate
from fl_client.egress_guard import EGRESS_LOG, egress_entries
from fl_protocol.durable_files import remove_entry
from fl_server.model_store import load_model
from fl_server.run_record import METRICS_FILE


def run_federated(
    data_dir: Path,
    cell_dir: Path,
    feature_cache: Path,
    num_sites: int,
    settings: dict,
    seed: int,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    site_tests: list[tuple[torch.Tensor, torch.Tensor]],
) -> dict:
    """Train over ``num_sites`` simulated sites with the run config ``settings``; return the
    test accuracy and macro-F1, the final model on each site's own test rows ``site_tests``
    (scored here, as local-only models are, and as the sites themselves evaluated it: worst
    site) and the performance figures."""
    if leftovers := [path for path in (cell_dir / "run", cell_dir / "state") if path.exists()]:
        # a cell without its record never finished: its run folder, which a ServerApp refuses
        # to start a run in, and the ledgers its run charged are not this cell's (found in
        # review: a resumed sweep failed on the old run's reason for good, and a sweep re-run
        # under other settings reported the old run's model as the new one's)
        print(f"{cell_dir.name}: removing what an unfinished run of this cell left "
              f"({', '.join(path.name for path in leftovers)}), then running it again",
              flush=True)
        for path in leftovers:
            remove_entry(path)
    state_root = cell_dir / "state"
    for index in range(num_sites):
        site_state = state_root / f"site-{index:02d}"
        site_state.mkdir(parents=True, exist_ok=True)
        if feature_cache.is_dir() and not (site_state / "features").exists():
            # Each site's own store, hard-linked from the shared cache: a site prunes its store
            # to its own rows (fl_client/retention.py), which must not touch the other sites'
            # or the cache; the store never rewrites a file in place, only adds and unlinks. A
            # family that computes its features as it reads (ngram) has no cache (found in
            # review: bench --model ngram stopped with a traceback at its first cell).
            shutil.copytree(feature_cache, site_state / "features", copy_function=os.link)
    out_dir = cell_dir / "run"
    run_config = compose_run_config(
        settings | {"seed": seed} | cell_lifetime_budget(float(settings["target-epsilon"])),
        data_dir=data_dir, labels_file=data_dir / "labels.txt", out_dir=out_dir,
        min_sites=num_sites, name=f"bench-{cell_dir.name}", state_dir=state_root,
    )
    round_times: list[float] = []
    memory = PeakMemory()
    started = time.monotonic()
    with memory:
        metrics = run_simulation(
            run_config,
            num_sites=num_sites,
            metrics_path=out_dir / METRICS_FILE,
            log_path=out_dir / "logs" / "flower.log",
            on_round=lambda entry: round_times.append(time.monotonic()),
        )
    wall = time.monotonic() - started
    model, _, _ = load_model(out_dir / "model")
    scores = evaluate(model, test_features, test_labels)
    final = metrics["final"]
    return {
        "accuracy": scores.accuracy,
        "macro_f1": scores.macro_f1,
        "site_eval_accuracy": final.get("accuracy"),
        "site_eval_macro_f1": final.get("macro_f1"),
        "worst_site_accuracy": final.get("worst_site_accuracy"),
        **own_rows_scores([model] * len(site_tests), site_tests),
        "max_site_epsilon": _max_over_rounds(metrics, "max_epsilon", settings),
        "max_site_epsilon_alone": _max_over_rounds(metrics, "max_epsilon_alone", settings),
        "deltas": site_deltas(metrics),
        "wall_seconds": wall,
        **round_seconds(started, round_times),
        "upload_bytes_per_site_round": upload_bytes_per_site_round(state_root),
        "peak_memory_mib": memory.peak_bytes / 2**20,
    }


def round_seconds(started: float, round_times: list[float]) -> dict:
    """``seconds_per_round`` (the mean after the first round, which starts the processes; None
    for a run of one round, which has no such figure: found in review, it read 0.0) and
    ``first_round_seconds`` (None without a round), from the start and each round's end."""
    per_round = [b - a for a, b in zip([started, *round_times], round_times, strict=False)]
    return {"seconds_per_round": (sum(per_round[1:]) / (len(per_round) - 1)
                                  if len(per_round) > 1 else None),
            "first_round_seconds": per_round[0] if per_round else None}


def _max_over_rounds(metrics: dict, key: str, settings: dict) -> float:
    """The largest per-round value of ``key`` (an epsilon); inf for a run without DP."""
    if not math.isfinite(float(settings["target-epsilon"])):
        return math.inf
    return max((entry.get(key) or 0.0) for entry in metrics["rounds"])


def site_deltas(metrics: dict) -> list[float]:
    """Every delta a site reported for a round it trained, distinct and sorted: each site picks
    its own (``default_delta`` of its size when the run leaves delta to the sites), so the
    report prints these rather than assume one; empty for a run without DP (delta 0)."""
    return sorted({float(site["delta"]) for entry in metrics["rounds"]
                   for site in entry.get("sites", {}).values() if site.get("delta")})


def upload_bytes_per_site_round(state_root: Path) -> float:
    """Mean upload of a site in a round, over the train replies its egress guard let out; a
    line that is not an entry (a site killed mid-write) is left out."""
    per_site_round: dict[tuple, int] = {}
    for log in state_root.glob(f"*/{EGRESS_LOG}"):
        for entry in egress_entries(log.parent):
            if entry and entry.get("message") == "train" and entry.get("verdict") == "sent":
                key = (log, entry.get("run"), entry.get("round"))
                per_site_round[key] = per_site_round.get(key, 0) + _upload_bytes(entry)
    return statistics.fmean(per_site_round.values()) if per_site_round else 0.0


def _upload_bytes(entry: dict) -> int:
    if "secure_aggregation_stage" in entry:
        return int(entry.get("bytes", 0))
    return sum(array["bytes"] for array in entry.get("arrays", []))


class PeakMemory:
    """The peak resident memory of process trees, each one and all together, sampled in a
    background thread: ``trees`` names each tree's root processes (default: this process
    and all its descendants, as ``"all"``)."""

    def __init__(self, trees: dict[str, list[int]] | None = None,
                 interval: float = 0.5) -> None:
        self.interval = interval
        self.trees = {name: [psutil.Process(pid) for pid in pids]
                      for name, pids in (trees or {"all": [os.getpid()]}).items()}
        self.peaks = dict.fromkeys(self.trees, 0)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        """Sample until stopped, at least once however short the watch."""
        while True:
            total = 0
            for name, roots in self.trees.items():
                size = sum(_tree_bytes(root) for root in roots)
                self.peaks[name] = max(self.peaks[name], size)
                total += size
            self.peak_bytes = max(self.peak_bytes, total)
            if self._stop.wait(self.interval):
                return


def _tree_bytes(root: psutil.Process) -> int:
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:  # the whole tree has ended
        return 0
    return sum(resident_bytes(proc) for proc in procs)


def resident_bytes(proc: psutil.Process) -> int:
    """A process's resident memory; 0 if it has ended."""
    try:
        return proc.memory_info().rss
    except psutil.Error:  # ended between listing and reading
        return 0
