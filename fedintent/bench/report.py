"""The sweep's outputs: ``results.csv``, ``results.json``, ``accuracy_vs_epsilon.png`` and
``report.md``, rebuilt from every finished cell after each cell, each written atomically."""

import csv
import io
import math
import statistics
from pathlib import Path

from fedintent.bench.cells import (
    CENTRAL,
    CENTRAL_DP,
    DISTRIBUTED_DP,
    FEDERATED,
    FEDERATED_DISTRIBUTED,
    LOCAL_DP,
    LOCAL_ONLY,
    METHODS,
    TFIDF,
)
from fedintent.report_files import epsilon_label, png_bytes, write_report_json
from fl_protocol.durable_files import write_bytes_atomic

CSV_FIELDS = (
    "method", "epsilon", "seed", "accuracy", "max_site_epsilon", "max_site_epsilon_alone",
    "wall_seconds", "seconds_per_round", "first_round_seconds", "samples_per_second_dp",
    "samples_per_second_no_dp", "upload_bytes_per_site_round", "peak_memory_mib", "seconds",
)
FEDERATED_PRIVACY_MODELS = {FEDERATED: LOCAL_DP, FEDERATED_DISTRIBUTED: DISTRIBUTED_DP}
"""The federated methods, by the privacy model each stands for."""
LABELS = {
    FEDERATED: "federated (DP-SGD per site)",
    FEDERATED_DISTRIBUTED: "federated (distributed DP, SecAgg+)",
    CENTRAL_DP: "central DP (pooled data)",
    LOCAL_ONLY: "local only (mean over sites)",
    CENTRAL: "central, non-private",
    TFIDF: "TF-IDF + logistic regression, non-private",
}


def summarize(results: list[dict]) -> list[dict]:
    """Mean, standard deviation, min and max accuracy per (method, epsilon) over seeds."""
    groups: dict[tuple[str, float], list[float]] = {}
    for result in results:
        groups.setdefault((result["method"], _epsilon(result)), []).append(result["accuracy"])
    rows = []
    for (method, epsilon), accuracies in sorted(
        groups.items(), key=lambda item: (METHODS.index(item[0][0]), item[0][1])
    ):
        rows.append({
            "method": method,
            "epsilon": epsilon,
            "seeds": len(accuracies),
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min": min(accuracies),
            "max": max(accuracies),
        })
    return rows


def write_outputs(out_dir: Path, spec: dict, results: list[dict]) -> None:
    out_dir = Path(out_dir)
    summary = summarize(results)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for result in results:
        writer.writerow({key: _csv_value(result.get(key)) for key in CSV_FIELDS})
    write_bytes_atomic(out_dir / "results.csv", text.getvalue().encode())
    document = {"spec": spec, "summary": summary, "cells": results}
    write_report_json(out_dir / "results.json", document)
    write_bytes_atomic(out_dir / "accuracy_vs_epsilon.png", plot_png(summary, spec))
    write_bytes_atomic(out_dir / "report.md", markdown_report(spec, summary, results).encode())


def plot_png(summary: list[dict], spec: dict) -> bytes:
    """Accuracy against epsilon: mean and min-max band over seeds for the epsilon-dependent
    methods, the non-private references as horizontal lines, epsilon inf drawn at the right."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    finite = sorted({row["epsilon"] for row in summary if math.isfinite(row["epsilon"])})
    inf_x = (max(finite) * 2.5) if finite else 1.0
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    curves = ((FEDERATED, "o-"), (FEDERATED_DISTRIBUTED, "D-"), (CENTRAL_DP, "s--"),
              (LOCAL_ONLY, "^:"))
    for method, style in curves:
        rows = [row for row in summary if row["method"] == method]
        if not rows:
            continue
        xs = [row["epsilon"] if math.isfinite(row["epsilon"]) else inf_x for row in rows]
        ax.plot(xs, [row["mean"] for row in rows], style, label=LABELS[method])
        ax.fill_between(xs, [row["min"] for row in rows], [row["max"] for row in rows], alpha=0.2)
    for method, color in ((CENTRAL, "black"), (TFIDF, "grey")):
        rows = [row for row in summary if row["method"] == method]
        if rows:
            ax.axhline(rows[0]["mean"], color=color, linestyle="-.", linewidth=1,
                       label=f"{LABELS[method]} ({rows[0]['mean']:.3f})")
    ax.set_xscale("log")
    ticks = [*finite, inf_x] if finite else [inf_x]
    ax.set_xticks(ticks, [f"{x:g}" for x in finite] + ["inf"])
    ax.minorticks_off()
    ax.set_xlabel("per-site epsilon (delta 1e-5, one utterance)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{Path(str(spec['data'])).name}: {spec['sites']} sites, "
                 f"Dirichlet alpha {spec['alpha']:g}, {spec['seeds']} seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return png_bytes(fig)


def markdown_report(spec: dict, summary: list[dict], results: list[dict]) -> str:
    lines = [
        f"# Accuracy against epsilon: {Path(str(spec['data'])).name}",
        "",
        f"{spec['sites']} sites, Dirichlet alpha {spec['alpha']:g}, partition seed "
        f"{spec['partition_seed']}, {spec['seeds']} training seeds; per-site (epsilon, delta "
        "1e-5) for one utterance; test accuracy on the dataset's held-out test split.",
        "",
        "| method | epsilon | mean accuracy | std | min | max | seeds |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {LABELS[row['method']]} | {epsilon_label(row['epsilon'])} | {row['mean']:.4f} | "
            f"{row['std']:.4f} | {row['min']:.4f} | {row['max']:.4f} | {row['seeds']} |"
        )
    distributed = [r for r in results if r["method"] == FEDERATED_DISTRIBUTED]
    if distributed:
        lines += ["", _distributed_note(spec, distributed)]
    lines += ["", "![accuracy against epsilon](accuracy_vs_epsilon.png)", "",
              "## Federated runs: performance", "",
              "| privacy model | epsilon | seed | wall s | s/round | samples/s DP | "
              "samples/s no DP | upload bytes/site/round | peak memory MiB | max site epsilon | "
              "max site epsilon alone |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for result in sorted((r for r in results if r["method"] in FEDERATED_PRIVACY_MODELS),
                         key=lambda r: (METHODS.index(r["method"]), _epsilon(r), r["seed"])):
        lines.append(
            f"| {FEDERATED_PRIVACY_MODELS[result['method']]} | {epsilon_label(_epsilon(result))} | "
            f"{result['seed']} | {result['wall_seconds']:.0f} | "
            f"{result['seconds_per_round']:.2f} | {_fmt(result.get('samples_per_second_dp'))} | "
            f"{_fmt(result.get('samples_per_second_no_dp'))} | "
            f"{result['upload_bytes_per_site_round']:.0f} | {result['peak_memory_mib']:.0f} | "
            f"{_fmt(result.get('max_site_epsilon'), '.3f')} | "
            f"{_fmt(result.get('max_site_epsilon_alone'), '.3f')} |"
        )
    lines += ["", "Settings of each epsilon's federated runs:", ""]
    for epsilon, settings in sorted(spec["settings"].items(), key=lambda item: float(item[0])):
        lines.append(f"- epsilon {epsilon}: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if distributed:
        lines += ["", "Settings of each epsilon's distributed-DP runs (the rest as above):", ""]
        recorded = spec.get("distributed_settings", {})
        for epsilon, settings in sorted(recorded.items(), key=lambda item: float(item[0])):
            lines.append(f"- epsilon {epsilon}: "
                         + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return "\n".join(lines) + "\n"


def _distributed_note(spec: dict, distributed: list[dict]) -> str:
    """What a distributed-DP epsilon promises, and what a site's own noise share alone gives:
    the two differ, and a reader comparing rows must know which one the table shows."""
    alone = max((r.get("max_site_epsilon_alone") or 0.0) for r in distributed)
    tolerated = spec["tolerated_sites"]
    return (
        f"{LABELS[FEDERATED_DISTRIBUTED]}: each site adds a share of the noise and only the "
        "SecAgg+ sum leaves the sites. Its epsilon holds against a server that sees only that "
        f"sum, with at most {tolerated} site{'' if tolerated == 1 else 's'} missing or "
        "colluding. Against every other site colluding with the server, a site has only its own "
        f"noise share: epsilon_alone, at most {_fmt(alone, '.3f')} in these runs (max site "
        "epsilon alone, below)."
    )


def _epsilon(result: dict) -> float:
    return float(result["epsilon"])


def _fmt(value: float | None, spec: str = ".0f") -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def _csv_value(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return "" if value is None else value
