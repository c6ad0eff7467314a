"""The audit's outputs: ``results.json``, ``results.csv``, ``roc.png`` and ``report.md``, each
written atomically, rebuilt after every epsilon so an interrupted audit still reports what it
finished."""

import csv
import io
import math
from pathlib import Path

from fedintent.report_files import png_bytes, write_report_json
from fl_protocol.durable_files import write_bytes_atomic

CSV_FIELDS = (
    "epsilon", "accountant_epsilon", "delta", "noise_multiplier_min", "noise_multiplier_max",
    "kind", "attack", "auc", "tpr_at_0.001_fpr", "tpr_at_0.01_fpr", "target_auc", "epsilon_lb",
    "confidence", "k_in", "k_out", "r", "v", "m", "models", "target_accuracy", "seconds",
)


def rows(results: list[dict]) -> list[dict]:
    """One flat row per (epsilon, example kind, attack)."""
    flat = []
    for result in results:
        low, high = result["noise_multiplier"] or (None, None)
        for kind, attacks in result["attacks"].items():
            for attack, metrics in attacks.items():
                bound = metrics["bound"]
                flat.append({
                    "epsilon": result["epsilon"], "accountant_epsilon":
                    result["accountant_epsilon"], "delta": result["delta"],
                    "noise_multiplier_min": low, "noise_multiplier_max": high, "kind": kind,
                    "attack": attack, "auc": metrics["auc"],
                    "tpr_at_0.001_fpr": metrics["tpr_at_0.001_fpr"],
                    "tpr_at_0.01_fpr": metrics["tpr_at_0.01_fpr"],
                    "target_auc": metrics.get("target_auc"), "epsilon_lb": bound["epsilon_lb"],
                    "confidence": bound["confidence"], "k_in": bound["k_in"],
                    "k_out": bound["k_out"], "r": bound["r"], "v": bound["v"], "m": bound["m"],
                    "models": result["models"], "target_accuracy": result["target_accuracy"],
                    "seconds": result["seconds"],
                })
    return flat


def write_outputs(out_dir: Path, spec: dict, results: list[dict]) -> None:
    out_dir = Path(out_dir)
    flat = rows(results)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in flat:
        writer.writerow({k: _csv(v) for k, v in row.items()})
    write_bytes_atomic(out_dir / "results.csv", text.getvalue().encode())
    document = {"spec": spec, "results": results}
    write_report_json(out_dir / "results.json", document)
    write_bytes_atomic(out_dir / "roc.png", plot_png(results))
    write_bytes_atomic(out_dir / "report.md", markdown(spec, flat).encode())


def plot_png(results: list[dict]) -> bytes:
    """ROC curves on log-log axes (the low-FPR corner is where privacy is lost), one panel per
    kind of audit example, LiRA solid and loss threshold dashed, one colour per epsilon, each
    labelled by the epsilon audited (the accountant's)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    kinds = sorted({kind for r in results for kind in r["attacks"]})
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(5.2 * max(len(kinds), 1), 4.6),
                             dpi=120, squeeze=False)
    colours = plt.get_cmap("viridis")
    for ax, kind in zip(axes[0], kinds, strict=False):
        for i, result in enumerate(results):
            if kind not in result["attacks"]:
                continue
            colour = colours(i / max(len(results) - 1, 1) * 0.85)
            for attack, style in (("lira", "-"), ("loss", "--")):
                metrics = result["attacks"][kind][attack]
                curve = metrics.get("roc")
                if not curve:
                    continue
                ax.plot(curve["fpr"], curve["tpr"], style, color=colour,
                        label=f"eps {_eps(result['accountant_epsilon'])} {attack} "
                        f"(AUC {metrics['auc']:.3f})")
        ax.plot([1e-5, 1], [1e-5, 1], ":", color="grey", label="chance")
        ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1),
               xlabel="false positive rate", ylabel="true positive rate",
               title=f"membership of {kind} utterances")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return png_bytes(fig)


def markdown(spec: dict, flat: list[dict]) -> str:
    lines = [
        "# Privacy audit",
        "",
        f"Data: `{spec['data']}`, {spec['sites']} sites; {spec['shadows']} shadow models + 1 "
        f"target per epsilon; {spec['canaries']} canaries and {spec['natural']} natural audit "
        f"examples; seed {spec['seed']}.",
        "",
        "AUC and TPR pool every model (leave-one-out: each model attacked with the others as "
        "shadows). The lower bound audits the target model alone (one-run test, Steinke et al. "
        "2023), guess counts chosen on the shadows.",
        "",
        "Each row is labelled by the epsilon audited: what the audited sites' accountant "
        "reports after the last round (the largest over them). The requested epsilon chose the "
        "settings, and the sites planned their noise for it.",
        "",
        "| accountant epsilon (delta) | requested epsilon | noise multiplier | examples | attack | "
        "AUC | TPR @ 0.1% FPR | TPR @ 1% FPR | empirical epsilon lower bound | "
        "guesses r, correct v | target accuracy |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in flat:
        lines.append(
            f"| {_eps(row['accountant_epsilon'])}{_delta(row)} | {_eps(row['epsilon'])} "
            f"| {noise_text(row['noise_multiplier_min'], row['noise_multiplier_max'])} | "
            f"{row['kind']} | {row['attack']} | {row['auc']:.3f} | "
            f"{row['tpr_at_0.001_fpr']:.3f} | {row['tpr_at_0.01_fpr']:.3f} | "
            f"{row['epsilon_lb']:.2f} ({row['confidence']:.0%}) | {row['r']}, {row['v']} | "
            f"{row['target_accuracy']:.3f} |"
        )
    lines += ["", "![ROC curves](roc.png)", ""]
    return "\n".join(lines)


def _delta(row: dict) -> str:
    """`` (delta)`` beside an epsilon, none beside a run without DP, where no delta means
    anything (found in review: ``inf (1e-05)``)."""
    return "" if math.isinf(row["accountant_epsilon"]) else f" ({row['delta']:.0e})"


def noise_text(low: float | None, high: float | None) -> str:
    """The audited sites' noise multiplier: one number when they all add the same, else the
    range; ``-`` without DP."""
    if low is None or high is None:
        return "-"
    return f"{low:.3g}" if low == high else f"{low:.3g}-{high:.3g}"


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _csv(value):
    if isinstance(value, float):
        return "inf" if math.isinf(value) else ("" if math.isnan(value) else f"{value:.6g}")
    return "" if value is None else value
