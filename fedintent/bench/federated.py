"""One federated cell of the sweep: a real Flower simulation, scored on the held-out test split.

The run goes through exactly the code path of ``fedintent train`` (private SuperLink, ``flwr
run``, the project's ServerApp and ClientApp, DP-SGD and privacy ledgers at the sites), with
fresh site state folders per cell, so every cell starts with an empty ledger. Only the feature
cache is shared between cells: it holds embeddings of the sites' own text, computed by the same
code every site runs.

Performance figures recorded for every run:
* wall time of the whole run and time per round (from the moment each round appears in
  ``metrics.json``);
* bytes uploaded per site per round, read back from the sites' egress logs (what the egress
  guard let leave the site): the exchanged arrays' payload, or under SecAgg+ every protocol
  reply of the round as serialized (keys, key shares, the masked update), since the masked
  update travels as protocol values rather than arrays;
* peak memory: the largest total resident memory of this process and all its descendants
  (SuperLink, simulation, Ray workers), sampled every half second;
* local training samples/s with and without DP on the same data (the largest site), timed
  in-process with the run's own training plan: one round's passes over the site's data, best
  of at least 3 repeats. Under distributed DP the DP round is what such a site computes
  instead of DP-SGD: its clipped gradients summed in integers plus its noise share;
* the largest epsilon any site reached (``max_site_epsilon``) and, from its own noise alone,
  ``max_site_epsilon_alone`` (larger under distributed DP, equal under local DP).
"""

import json
import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from fedintent.bench.cells import DISTRIBUTED_DP
from fedintent.launch.run_config import compose_run_config
from fedintent.launch.simulation import run_simulation
from fl_client.distributed_dp import dimension, noisy_integer_sum, rounding_bound
from fl_client.dp_training import train_locally, training_plan
from fl_client.egress_guard import EGRESS_LOG
from fl_client.privacy_accounting import steps_per_round
from fl_protocol.distributed_sum import integer_norm
from fl_server.model_store import load_model
from models import get_model_family
from models.family import ModelFamily

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
        "max_site_epsilon": _max_over_rounds(metrics, "max_epsilon", settings),
        "max_site_epsilon_alone": _max_over_rounds(metrics, "max_epsilon_alone", settings),
        "wall_seconds": wall,
        "seconds_per_round": sum(per_round[1:]) / max(len(per_round) - 1, 1),
        "first_round_seconds": per_round[0] if per_round else None,
        "upload_bytes_per_site_round": _upload_bytes_per_site_round(state_root),
        "peak_memory_mib": memory.peak_bytes / 2**20,
        **_training_throughput(largest_site, settings, metrics, seed, num_sites),
    }


def _max_over_rounds(metrics: dict, key: str, settings: dict) -> float:
    """The largest per-round value of ``key`` (an epsilon); inf for a run without DP."""
    if not math.isfinite(float(settings["target-epsilon"])):
        return math.inf
    return max((entry.get(key) or 0.0) for entry in metrics["rounds"])


def _upload_bytes_per_site_round(state_root: Path) -> float:
    """Mean upload of a site in a round, over the train replies its egress guard let out."""
    per_site_round: dict[tuple, int] = {}
    for log in state_root.glob(f"*/{EGRESS_LOG}"):
        for line in log.read_text(encoding="utf-8").splitlines():
            entry = json.loads(line)
            if entry.get("message") == "train" and entry.get("verdict") == "sent":
                key = (log, entry.get("run"), entry.get("round"))
                per_site_round[key] = per_site_round.get(key, 0) + _upload_bytes(entry)
    return statistics.fmean(per_site_round.values()) if per_site_round else 0.0


def _upload_bytes(entry: dict) -> int:
    if "secure_aggregation_stage" in entry:
        return int(entry.get("bytes", 0))
    return sum(array["bytes"] for array in entry.get("arrays", []))


def _training_throughput(site: tuple[torch.Tensor, torch.Tensor], settings: dict,
                         metrics: dict, seed: int, num_sites: int) -> dict:
    """Local training samples/s on one site's data, with the run's DP noise and without DP."""
    labels = site[1]
    family = get_model_family(str(settings["model"]))
    noise = _run_noise_multiplier(metrics)
    if noise is None:
        dp = None
    elif settings.get("privacy-model") == DISTRIBUTED_DP:
        dp = _samples_per_second(family, labels, 1,
                                 _distributed_round(family, site, settings, noise, num_sites, seed))
    else:
        dp = _samples_per_second(family, labels, *_dp_sgd_round(family, site, settings, noise,
                                                                 seed))
    no_dp = _samples_per_second(family, labels, *_dp_sgd_round(family, site, settings, None, seed))
    return {"samples_per_second_dp": dp, "samples_per_second_no_dp": no_dp}


def _dp_sgd_round(family: ModelFamily, site: tuple[torch.Tensor, torch.Tensor], settings: dict,
                  noise_multiplier: float | None, seed: int) -> tuple[int, Callable]:
    """A round of local (DP-)SGD with the run's plan, and its passes over the data."""
    features, labels = site
    batch, epochs = int(settings["batch-size"]), int(settings["local-epochs"])
    plan = training_plan(family, noise_multiplier, steps_per_round(len(labels), batch, epochs),
                         clip_norm=float(settings["clip-norm"]), batch_size=batch,
                         local_epochs=epochs, learning_rate=float(settings["learning-rate"]))
    return plan.local_epochs, lambda model: train_locally(model, features, labels, plan, seed=seed)


def _distributed_round(family: ModelFamily, site: tuple[torch.Tensor, torch.Tensor], settings: dict,
                       noise_multiplier: float, num_sites: int, seed: int) -> Callable:
    """A distributed-DP round at a site: one pass that sums its clipped gradients in integers
    and adds its noise share. The share comes from the noise multiplier the site reported,
    sqrt(2 mu) / l2 for the run's total noise mu, of which each site adds mu / (sites -
    tolerated-sites) (``fl_client.privacy_budget``)."""
    features, labels = site
    dim = dimension(family.build_model(int(labels.max()) + 1))
    norm = integer_norm(dim)
    mu = (noise_multiplier * rounding_bound(norm, dim)) ** 2 / 2
    share = mu / (num_sites - int(settings["tolerated-sites"]))
    clip = float(settings["clip-norm"])
    return lambda model: noisy_integer_sum(model, features, labels, clip, share, seed)


def _samples_per_second(family: ModelFamily, labels: torch.Tensor, passes: int,
                        train_round: Callable) -> float:
    """Samples/s of ``train_round`` on a fresh model: ``passes`` over the data, best repeat."""
    best, started = math.inf, time.perf_counter()
    for repeat in range(MAX_TIMING_REPEATS):
        model = family.build_model(int(labels.max()) + 1)
        began = time.perf_counter()
        train_round(model)
        best = min(best, time.perf_counter() - began)
        if repeat >= 2 and time.perf_counter() - started > MIN_TIMING_SECONDS:
            break
    return len(labels) * passes / best


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
