"""One federated cell of the sweep: a real Flower simulation, scored on the held-out test split.

The run goes through exactly the code path of ``fedintent train`` (private SuperLink, ``flwr
run``, the project's ServerApp and ClientApp, DP-SGD and privacy ledgers at the sites), with
fresh site state folders per cell, so every cell starts with an empty ledger. Only the feature
cache is shared between cells: it holds embeddings of the sites' own text, computed by the same
code every site runs.

Performance figures recorded for every run:
* wall time of the whole run and time per round (from the moment each round appears in
  ``metrics.json``);
* bytes uploaded per site per round: the exchanged arrays' payload, read back from the sites'
  egress logs (what the egress guard let leave the site);
* peak memory: the largest total resident memory of this process and all its descendants
  (SuperLink, simulation, Ray workers), sampled every half second;
* local training samples/s with and without DP on the same data (the largest site), timed
  in-process with the run's own training plan: one round's passes over the site's data, best
  of at least 3 repeats.
"""

import json
import math
import threading
import time
from pathlib import Path

import psutil
import torch

from fedintent.launch.run_config import compose_run_config
from fedintent.launch.simulation import run_simulation
from fl_client.dp_training import train_locally, training_plan
from fl_client.egress_guard import EGRESS_LOG
from fl_client.privacy_accounting import steps_per_round
from fl_server.model_store import load_model
from models import get_model_family

MIN_TIMING_SECONDS = 2.0
MAX_TIMING_REPEATS = 20
"""Throughput is the best of at least 3 timed rounds (as ``timeit`` does): on a shared machine
the fastest repeat is the one least disturbed by other work."""


def run_federated(
    data_dir: Path,
    cell_dir: Path,
    feature_cache: Path,
    num_sites: int,
    settings: dict,
    seed: int,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    largest_site: tuple[torch.Tensor, torch.Tensor],
) -> dict:
    """Train over ``num_sites`` simulated sites with the run config ``settings``; return the
    test accuracy and the performance figures."""
    state_root = cell_dir / "state"
    for index in range(num_sites):
        site_state = state_root / f"site-{index:02d}"
        site_state.mkdir(parents=True, exist_ok=True)
        if not (site_state / "features").exists():
            (site_state / "features").symlink_to(feature_cache.resolve(), target_is_directory=True)
    out_dir = cell_dir / "run"
    run_config = compose_run_config(
        settings | {"seed": seed}, data_dir=data_dir, labels_file=data_dir / "labels.txt",
        out_dir=out_dir, min_sites=num_sites, name=f"bench-{cell_dir.name}", state_dir=state_root,
    )
    round_times: list[float] = []
    memory = _PeakMemory()
    started = time.monotonic()
    with memory:
        metrics = run_simulation(
            run_config,
            num_sites=num_sites,
            metrics_path=out_dir / "metrics.json",
            log_path=out_dir / "logs" / "flower.log",
            on_round=lambda entry: round_times.append(time.monotonic()),
        )
    wall = time.monotonic() - started
    model, _, _ = load_model(out_dir / "model")
    with torch.no_grad():
        accuracy = (model(test_features).argmax(1) == test_labels).float().mean().item()
    per_round = [b - a for a, b in zip([started, *round_times], round_times, strict=False)]
    return {
        "accuracy": accuracy,
        "site_eval_accuracy": metrics["final"].get("accuracy"),
        "max_site_epsilon": max(
            (entry.get("max_epsilon") or 0.0) for entry in metrics["rounds"]
        ) if math.isfinite(float(settings["target-epsilon"])) else math.inf,
        "wall_seconds": wall,
        "seconds_per_round": sum(per_round[1:]) / max(len(per_round) - 1, 1),
        "first_round_seconds": per_round[0] if per_round else None,
        "upload_bytes_per_site_round": _upload_bytes_per_site_round(state_root),
        "peak_memory_mib": memory.peak_bytes / 2**20,
        **_training_throughput(largest_site, settings, metrics, seed),
    }


def _upload_bytes_per_site_round(state_root: Path) -> float:
    """Mean array payload of the train replies the sites' egress guards let out."""
    sizes = []
    for log in state_root.glob(f"*/{EGRESS_LOG}"):
        for line in log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry.get("message") == "train" and entry.get("verdict") == "sent":
                sizes.append(sum(array["bytes"] for array in entry.get("arrays", [])))
    return sum(sizes) / len(sizes) if sizes else 0.0


def _training_throughput(site: tuple[torch.Tensor, torch.Tensor], settings: dict,
                         metrics: dict, seed: int) -> dict:
    """Local training samples/s on one site's data, with the run's DP noise and without DP."""
    features, labels = site
    family = get_model_family(str(settings["model"]))
    noise = _run_noise_multiplier(metrics)
    result = {}
    for name, noise_multiplier in (("dp", noise), ("no_dp", None)):
        if name == "dp" and noise_multiplier is None:
            result["samples_per_second_dp"] = None
            continue
        batch, epochs = int(settings["batch-size"]), int(settings["local-epochs"])
        plan = training_plan(family, noise_multiplier, steps_per_round(len(labels), batch, epochs),
                             clip_norm=float(settings["clip-norm"]), batch_size=batch,
                             local_epochs=epochs, learning_rate=float(settings["learning-rate"]))
        best, started = math.inf, time.perf_counter()
        for repeat in range(MAX_TIMING_REPEATS):
            model = family.build_model(int(labels.max()) + 1)
            began = time.perf_counter()
            train_locally(model, features, labels, plan, seed=seed)
            best = min(best, time.perf_counter() - began)
            if repeat >= 2 and time.perf_counter() - started > MIN_TIMING_SECONDS:
                break
        result[f"samples_per_second_{name}"] = len(labels) * plan.local_epochs / best
    return result


def _run_noise_multiplier(metrics: dict) -> float | None:
    """The noise multiplier the largest site trained with (None for a non-private run)."""
    sites = [site for entry in metrics["rounds"] for site in entry.get("sites", {}).values()
             if isinstance(site, dict) and site.get("noise_multiplier")]
    if not sites:
        return None
    return float(max(sites, key=lambda site: site["num_examples"])["noise_multiplier"])


class _PeakMemory:
    """Samples the resident memory of this process tree in a background thread."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "_PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = sum(_rss(proc) for proc in [me, *me.children(recursive=True)])
            self.peak_bytes = max(self.peak_bytes, total)
            self._stop.wait(self.interval)


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:  # ended between listing and reading
        return 0
