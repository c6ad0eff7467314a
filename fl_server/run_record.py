"""The run's record: ``metrics.json``, rewritten atomically after every round.

Per round it holds the sites that trained or failed (with the reason), the example-weighted
evaluation accuracy and loss, and each site's cumulative epsilon and delta as the site reported
them. ``fedintent train`` follows this file to print progress, so a round is only visible once
it is complete on disk.
"""

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import Message, MetricRecord

FORMAT = "fedintent-metrics/1"
SITE_METRICS = {
    "num-examples": "num_examples",
    "train-loss": "train_loss",
    "epsilon": "epsilon",
    "epsilon-all-runs": "epsilon_all_runs",
    "delta": "delta",
    "noise-multiplier": "noise_multiplier",
    "sample-rate": "sample_rate",
    "clip-norm": "clip_norm",
    "steps": "steps",
}


class RunRecord:
    """Collects per-round results from the strategy and keeps ``metrics.json`` current."""

    def __init__(self, path: Path, run_id: int, config: dict, labels: list[str]) -> None:
        self.path = Path(path)
        self.doc: dict = {
            "format": FORMAT,
            "run_id": run_id,
            "status": "running",
            "started": _now(),
            "config": config,
            "labels": labels,
            "rounds": [],
        }
        self._pending: dict[int, dict] = {}
        self.write()

    def record_train(self, server_round: int, replies: list[Message]) -> dict:
        """Note which sites trained (and their privacy spend) and which failed, and why."""
        sites, failures = {}, []
        for reply in replies:
            node = str(reply.metadata.src_node_id)
            if reply.has_error():
                failures.append({"node_id": node, "reason": reply.error.reason})
                continue
            metrics = reply.content["metrics"]
            sites[node] = {
                name: _json_number(metrics[key])
                for key, name in SITE_METRICS.items()
                if key in metrics
            }
        entry = {"round": server_round, "sites_trained": len(sites), "sites_failed": len(failures),
                 "failures": failures, "sites": sites}
        trained = [s for s in sites.values() if "num_examples" in s]
        if trained:
            weight = sum(s["num_examples"] for s in trained)
            entry["train_loss"] = sum(s["train_loss"] * s["num_examples"] for s in trained) / weight
            entry["max_epsilon"] = _max_epsilon(trained)
        self._pending[server_round] = entry
        return entry

    def record_evaluate(
        self, server_round: int, replies: list[Message], aggregated: MetricRecord | None
    ) -> None:
        """Complete the round with the example-weighted evaluation and write it out."""
        entry = self._pending.pop(server_round, {"round": server_round})
        entry["sites_evaluated"] = sum(1 for r in replies if not r.has_error())
        entry["evaluation_failures"] = [
            {"node_id": str(r.metadata.src_node_id), "reason": r.error.reason}
            for r in replies
            if r.has_error()
        ]
        if aggregated is not None:
            entry["accuracy"] = float(aggregated["accuracy"])
            entry["loss"] = float(aggregated["loss"])
        self.doc["rounds"].append(entry)
        self.write()

    def finish(self, status: str, final: dict | None = None, error: str | None = None) -> None:
        self.doc["status"] = status
        self.doc["finished"] = _now()
        if final is not None:
            self.doc["final"] = final
        if error is not None:
            self.doc["error"] = error
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.doc)


def final_summary(doc: dict) -> dict:
    """Final accuracy and each site's latest privacy spend, from the recorded rounds."""
    evaluated = [r for r in doc["rounds"] if "accuracy" in r]
    last = evaluated[-1] if evaluated else {}
    sites: dict[str, dict] = {}
    for entry in doc["rounds"]:
        for node, site in entry.get("sites", {}).items():
            sites[node] = {
                "epsilon": site.get("epsilon"),
                "epsilon_all_runs": site.get("epsilon_all_runs"),
                "delta": site.get("delta"),
                "noise_multiplier": site.get("noise_multiplier"),
                "clip_norm": site.get("clip_norm"),
                "rounds_trained": sites.get(node, {}).get("rounds_trained", 0) + 1,
                "num_examples": site.get("num_examples"),
            }
    return {
        "accuracy": last.get("accuracy"),
        "loss": last.get("loss"),
        "rounds_completed": len(doc["rounds"]),
        "sites": sites,
        "max_epsilon": _max_epsilon(list(sites.values())),
    }


def _max_epsilon(sites: list[dict]) -> float | None:
    values = [s.get("epsilon") for s in sites]
    if not values:
        return None
    if any(v is None for v in values):
        return None  # a site without DP: no finite bound
    return max(values)


def _json_number(value: float | int) -> float | int | None:
    """JSON has no infinity: epsilon without DP is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, document: dict) -> None:
    """Write a JSON file so readers see either the old or the new version, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
