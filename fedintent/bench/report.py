"""The sweep's outputs: ``results.csv``, ``results.json``, ``accuracy_vs_epsilon.png`` and
``report.md``, rebuilt from every finished cell after each cell, each written atomically."""

import csv
import io
import math
import statistics
from pathlib import Path

from fedintent.bench.baselines import Recipe, pooled_recipe
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
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.provenance import commit_text

CSV_FIELDS = (
    "method", "epsilon", "seed", "deltas", "accuracy", "macro_f1", "own_accuracy",
    "worst_site_accuracy",
    "max_site_epsilon", "max_site_epsilon_alone",
    "wall_seconds", "seconds_per_round", "first_round_seconds", "upload_bytes_per_site_round",
    "peak_memory_mib", "seconds",
)
PLOT_CURVES = ((FEDERATED, "o-"), (FEDERATED_DISTRIBUTED, "D-"), (CENTRAL_DP, "s--"),
               (LOCAL_ONLY, "^:"))
"""The epsilon-dependent methods and their line styles (marker first)."""
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


def row_label(method: str, epsilon: float) -> str:
    """A table row's method: the federated one without DP at epsilon inf (found in review: the
    row read "DP-SGD per site")."""
    if method == FEDERATED and math.isinf(epsilon):
        return "federated (per site, no DP)"
    return LABELS[method]


def summarize(results: list[dict]) -> list[dict]:
    """Mean, standard deviation, min and max accuracy per (method, epsilon) over seeds, the
    mean macro-F1 (``None`` when a cell of the group has none: TF-IDF, or a cell from before),
    the mean over seeds of each site's model on its own test rows (the mean over sites) and the
    lowest site there (``None`` where a cell has none: baselines of pooled data, or a cell from
    before) and every delta its cells ran at (``None`` when a cell of the group has no record
    of its deltas: a cell from before they were recorded)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for result in results:
        groups.setdefault((result["method"], _epsilon(result)), []).append(result)
    rows = []
    for (method, epsilon), cells in sorted(
        groups.items(), key=lambda item: (METHODS.index(item[0][0]), item[0][1])
    ):
        accuracies = [cell["accuracy"] for cell in cells]
        f1s = [cell.get("macro_f1") for cell in cells]
        deltas = [cell.get("deltas") for cell in cells]
        own = [cell.get("own_site_accuracies") for cell in cells]
        rows.append({
            "method": method,
            "epsilon": epsilon,
            "seeds": len(accuracies),
            "mean": statistics.fmean(accuracies),
            "std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "min": min(accuracies),
            "max": max(accuracies),
            "macro_f1": None if None in f1s else statistics.fmean(f1s),
            "own_mean": (None if None in own
                         else statistics.fmean(statistics.fmean(sites) for sites in own)),
            "own_worst": None if None in own else min(min(sites) for sites in own),
            "deltas": None if None in deltas else sorted({d for ds in deltas for d in ds}),
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
    methods, the non-private references as horizontal lines. A method's no-DP result (epsilon
    inf) is its own marker right of a divider, never joined to the finite epsilons: no
    continuum leads from epsilon 8 to no privacy. The legend sits outside the axes, so that it
    hides no point."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.patches import Patch

    finite = sorted({row["epsilon"] for row in summary if math.isfinite(row["epsilon"])})
    inf_x = (max(finite) * 2.5) if finite else 1.0
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=120)
    for method, style in PLOT_CURVES:
        rows = [row for row in summary if row["method"] == method]
        if rows:
            _plot_method(ax, method, style, rows, inf_x)
    for method, color in ((CENTRAL, "black"), (TFIDF, "grey")):
        rows = [row for row in summary if row["method"] == method]
        if rows:
            ax.axhline(rows[0]["mean"], color=color, linestyle="-.", linewidth=1,
                       label=f"{LABELS[method]} ({rows[0]['mean']:.3f})")
    if finite:
        ax.axvline(math.sqrt(max(finite) * inf_x), color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    ticks = [*finite, inf_x] if finite else [inf_x]
    ax.set_xticks(ticks, [f"{x:g}" for x in finite] + ["inf (no DP)"])
    ax.minorticks_off()
    ax.set_xlabel(epsilon_axis_label(summary))
    ax.set_ylabel("test accuracy")
    # found in review: two families' plots of one comparison had the same title
    seeds = f"{spec['seeds']} seed{'s' if spec['seeds'] > 1 else ''}"
    ax.set_title(f"{Path(str(spec['data'])).name}: "
                 f"{spec.get('model', RUN_CONFIG_DEFAULTS['model'])}, {spec['sites']} sites, "
                 f"Dirichlet alpha {spec['alpha']:g}, {seeds}"
                 + (f", {spec['rounds']} round{'s' if spec['rounds'] > 1 else ''}"
                    if spec.get("rounds") else ""))
    ax.grid(alpha=0.3)
    handles, _ = ax.get_legend_handles_labels()
    band = Patch(color="grey", alpha=0.2, label="shaded band / error bar: min-max over seeds")
    ax.legend(handles=[*handles, band], fontsize=8, loc="upper left",
              bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    return png_bytes(fig)


def epsilon_axis_label(summary: list[dict]) -> str:
    """The plot's epsilon axis, with the deltas the DP rows ran at: the sites choose theirs by
    their size, so no one delta can be assumed."""
    return f"per-site epsilon (delta {_deltas_text(sweep_deltas(summary))}, one utterance)"


def sweep_deltas(summary: list[dict]) -> list[float] | None:
    """Every delta the sweep's DP rows ran at; None when one of them has no record of its
    deltas."""
    rows = [row for row in summary if math.isfinite(row["epsilon"])]
    if any(row.get("deltas") is None for row in rows):
        return None
    return sorted({delta for row in rows for delta in row["deltas"]})


def _plot_method(ax, method: str, style: str, rows: list[dict], inf_x: float) -> None:
    """One method: mean line and min-max band over its finite epsilons, and its no-DP result
    as a lone marker with a min-max error bar at ``inf_x``."""
    finite = [row for row in rows if math.isfinite(row["epsilon"])]
    color = None
    if finite:
        xs = [row["epsilon"] for row in finite]
        [line] = ax.plot(xs, [row["mean"] for row in finite], style, label=LABELS[method])
        color = line.get_color()
        ax.fill_between(xs, [row["min"] for row in finite], [row["max"] for row in finite],
                        color=color, alpha=0.2)
    for row in rows:
        if not math.isfinite(row["epsilon"]):
            ax.errorbar([inf_x], [row["mean"]], yerr=[[row["mean"] - row["min"]],
                                                      [row["max"] - row["mean"]]],
                        fmt=style[0], color=color, capsize=3,
                        label=None if finite else LABELS[method])


def markdown_report(spec: dict, summary: list[dict], results: list[dict]) -> str:
    lines = [
        f"# Accuracy against epsilon: {Path(str(spec['data'])).name}",
        "",
        f"Model family `{spec.get('model', RUN_CONFIG_DEFAULTS['model'])}` (every method). "
        f"{spec['sites']} sites, Dirichlet alpha {spec['alpha']:g}, partition seed "
        f"{spec['partition_seed']}, "
        + _seeds_text(spec["seeds"], summary) +
        "per-site (epsilon, delta) "
        "for one utterance, delta as each row ran at it (the federated sites' as they reported "
        "it, each site's default for its size; the DP baselines plan at the sites' delta); test "
        "accuracy and macro-F1 (the unweighted mean of per-intent F1: a rare intent counts as "
        "much as a common one) on the dataset's held-out test split, every method's (local "
        "only: each site's model on all of it; on each site's own rows in the table after "
        "the plot).",
        "",
        *_provenance_lines(spec),
        "| method | epsilon | delta | mean accuracy | std | min | max | mean macro-F1 | seeds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row_label(row['method'], row['epsilon'])} | {epsilon_label(row['epsilon'])} | "
            f"{_deltas_text(row.get('deltas')) if math.isfinite(row['epsilon']) else '-'} | "
            f"{row['mean']:.4f} | "
            f"{row['std']:.4f} | {row['min']:.4f} | {row['max']:.4f} | "
            f"{_fmt(row.get('macro_f1'), '.4f')} | {row['seeds']} |"
        )
    distributed = [r for r in results if r["method"] == FEDERATED_DISTRIBUTED]
    if distributed:
        lines += ["", _distributed_note(spec, distributed)]
    lines += ["", "![accuracy against epsilon](accuracy_vs_epsilon.png)", "",
              *_plot_table(summary), *_own_rows_table(summary), "",
              "## Federated runs: performance", "",
              "Worst site accuracy: the final model on each site's own test split, as the sites "
              "reported it; the lowest of them. The pooled accuracy above is dominated by the "
              "largest sites.", "",
              "| privacy model | epsilon | seed | worst site accuracy | wall s | s/round | "
              "upload bytes/site/round | peak memory MiB | max site epsilon | "
              "max site epsilon alone |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for result in sorted((r for r in results if r["method"] in FEDERATED_PRIVACY_MODELS),
                         key=lambda r: (METHODS.index(r["method"]), _epsilon(r), r["seed"])):
        # under local DP a site's noise is all its own: epsilon alone is its epsilon again
        alone = (result.get("max_site_epsilon_alone")
                 if result["method"] == FEDERATED_DISTRIBUTED else None)
        lines.append(
            f"| {FEDERATED_PRIVACY_MODELS[result['method']]} | {epsilon_label(_epsilon(result))} | "
            f"{result['seed']} | {_fmt(result.get('worst_site_accuracy'), '.4f')} | "
            f"{result['wall_seconds']:.0f} | "
            f"{_fmt(result.get('seconds_per_round'), '.2f')} | "
            f"{result['upload_bytes_per_site_round']:.0f} | {result['peak_memory_mib']:.0f} | "
            f"{_fmt(result.get('max_site_epsilon'), '.3f')} | {_fmt(alone, '.3f')} |"
        )
    lines += ["", "Settings of each epsilon's federated runs:", ""]
    for epsilon, settings in sorted(spec["settings"].items(), key=lambda item: float(item[0])):
        lines.append(f"- epsilon {epsilon}: " + ", ".join(
            "delta=0 (each site's default, above)"
            if (k, v) == ("delta", 0.0) and epsilon != "inf" else f"{k}={v}"
            for k, v in settings.items()))
    if distributed:
        lines += ["", "Settings of each epsilon's distributed-DP runs (the rest as above):", ""]
        recorded = spec.get("distributed_settings", {})
        for epsilon, settings in sorted(recorded.items(), key=lambda item: float(item[0])):
            lines.append(f"- epsilon {epsilon}: "
                         + ", ".join(f"{k}={v}" for k, v in settings.items()))
    return "\n".join(lines + _baseline_lines(spec)) + "\n"


def _seeds_text(seeds: int, summary: list[dict]) -> str:
    """The training seeds, and where rows have fewer (a folder grown by runs of fewer seeds;
    found in review: "3 training seeds" over rows of one)."""
    if seeds == 1:
        return "1 training seed (0); "
    fewer = any(row["seeds"] < seeds for row in summary)
    return (f"{'up to ' if fewer else ''}{seeds} training seeds (0 to {seeds - 1}"
            f"{'; each row has the number in its seeds column' if fewer else ''}); ")


def _baseline_lines(spec: dict) -> list[str]:
    """The baselines' own settings (found in review: a quick look's --rounds 2 set the federated
    runs against a central model of 30 epochs, and the report named neither recipe)."""
    lines = ["", "Settings of the baselines (their own, chosen on BANKING77's 10,003 pooled "
             "training rows, not rescaled to this data's size, and not changed by --rounds):", ""]
    for epsilon in sorted(float(e) for e in spec["settings"]):
        if math.isfinite(epsilon):
            lines.append(f"- central DP at epsilon {epsilon:g}: "
                         + _recipe_text(pooled_recipe(epsilon)))
    return lines + [
        f"- central, non-private: {_recipe_text(pooled_recipe(math.inf))}",
        "- local only: each epsilon's federated settings above, num-rounds x local-epochs "
        "epochs on one site's rows",
        "- TF-IDF: word 1-2 grams (character 1-3 grams for site folders in a language other "
        "than English), sublinear tf, + logistic regression (C = 10)"]


def _recipe_text(recipe: Recipe) -> str:
    return (f"{recipe.epochs} epochs, batch-size {recipe.batch_size}, learning-rate "
            f"{recipe.learning_rate:g}, clip-norm {recipe.clip_norm:g}")


def _plot_table(summary: list[dict]) -> list[str]:
    """The figure's points as a table: mean accuracy (min-max over seeds) per method and
    epsilon; a method without a result at an epsilon shows ``-``."""
    epsilons = sorted({row["epsilon"] for row in summary})
    points = {(row["method"], row["epsilon"]): row for row in summary}
    lines = ["The figure's points: mean test accuracy (min-max over seeds).", "",
             "| method | " + " | ".join(epsilon_label(e) for e in epsilons) + " |",
             "|---|" + "---|" * len(epsilons)]
    for method in METHODS:
        if not any(m == method for m, _ in points):
            continue
        cells = [f"{points[method, e]['mean']:.4f} ({points[method, e]['min']:.4f}-"
                 f"{points[method, e]['max']:.4f})" if (method, e) in points else "-"
                 for e in epsilons]
        lines.append(f"| {LABELS[method]} | " + " | ".join(cells) + " |")
    return lines


def _own_rows_table(summary: list[dict]) -> list[str]:
    """What federation buys a site, on the rows it serves: the model each site ends with (the
    shared one, or under local only its own) scored on that site's own test rows, whose intent
    mix is the site's. On the pooled split a local-only model is judged on intents its site
    hardly saw; here on its own, its best case."""
    rows = [row for row in summary if row.get("own_mean") is not None]
    if not rows:
        return []
    lines = ["", "Each site on its own test rows: the model the site ends with (federated: the "
             "shared model; local only: the site's own) on the site's held-out rows, whose "
             "intents are mixed as its training rows are. Mean over sites (then over seeds), "
             "and the lowest site of any seed.", "",
             "| method | epsilon | mean over sites | lowest site | seeds |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row_label(row['method'], row['epsilon'])} | "
                     f"{epsilon_label(row['epsilon'])} | {row['own_mean']:.4f} | "
                     f"{row['own_worst']:.4f} | {row['seeds']} |")
    return lines


def _provenance_lines(spec: dict) -> list[str]:
    """Which data and code made these numbers (bench.json has each invocation's)."""
    lines = [f"Data: `{name}` SHA-256 `{digest}`"
             for name, digest in sorted(spec.get("dataset_sha256", {}).items())]
    invocations = spec.get("software") or [{}]
    software = invocations[-1]
    versions = ", ".join(f"{name} {version}" for name, version
                         in software.get("versions", {}).items() if version is not None)
    commits = list(dict.fromkeys(commit_text(run) for run in invocations if "git_commit" in run))
    if len(commits) > 1:
        commit = (f"commits {', then '.join(commits)} (a resumed sweep: each later commit ran "
                  "only the cells still missing)")
    else:
        commit = f"commit {commits[0] if commits else 'not recorded (not run from a checkout)'}"
    if versions:
        lines.append(f"Software: {versions}; git {commit}")
    machines = list(dict.fromkeys(
        f"{m['platform']}, {m['processor']}, {m['cpus']} CPUs, {m['memory_gib']} GiB, Python "
        f"{m['python']}" for run in invocations if (m := run.get("machine"))))
    if machines:  # found in review: a grown folder credited every timing to its last run's
        lines.append(("Machine: " if len(machines) == 1 else "Machines (one per invocation "
                      "that differs, each timing its own cell's): ") + "; ".join(machines)
                     + " (timings under whatever else it ran)")
    return [f"- {line}" for line in lines] + [""] if lines else []


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


def _deltas_text(deltas: list[float] | None) -> str:
    if deltas is None:
        return "not recorded"
    return ", ".join(f"{delta:g}" for delta in deltas) or "-"


def _epsilon(result: dict) -> float:
    return float(result["epsilon"])


def _fmt(value: float | None, spec: str = ".0f") -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else format(value, spec)


def _csv_value(value: object) -> object:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, list):
        return " ".join(f"{item:g}" for item in value)
    return "" if value is None else value
