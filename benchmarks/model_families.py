"""Compare the model families: accuracy at one epsilon, training time, upload per round.

Usage:

    python benchmarks/model_families.py banking77 ../shared/datasets/banking77 --out fam-b77
    python benchmarks/model_families.py banking77 ../shared/datasets/banking77 --out fam-b77-10 \
        --models minilm-head,minilm-finetune --rounds 10
    python benchmarks/model_families.py chinese --out fam-zh [--size 2000]

``banking77``: partitions the dataset as ``fedintent bench`` does (10 sites, Dirichlet alpha 0.5,
partition seed 0) and runs ``fedintent train --model M --epsilon 8`` for each family (a real
Flower simulation; settings as ``fedintent train`` chooses them). ``chinese``: generates
synthetic Chinese call-center sites (``fedintent synth --lang zh``), trains ``ngram`` at
epsilon 8, and scores the centralized non-private TF-IDF + logistic-regression baseline on the
same train/test splits. Each finished run is kept in OUT and not redone; ``results.md`` is
rewritten at the end.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FAMILIES = ["minilm-head", "ngram", "minilm-finetune"]


def fedintent(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fedintent.cli", *args], check=True)


def train(data: Path, out: Path, model: str, epsilon: str, extra: list[str]) -> dict:
    """Run (or reuse) one training run; its accuracy, time and upload from metrics.json."""
    metrics_path = out / "metrics.json"
    if not (metrics_path.is_file() and json.loads(metrics_path.read_text())["status"]
            == "completed"):
        if out.exists():
            raise SystemExit(f"{out} holds an unfinished run: remove it and start again")
        started = time.monotonic()
        # Each run gets fresh site ledgers: sharing them, a later run would find the sites'
        # lifetime budget partly spent and train with more noise.
        fedintent("train", "--data", str(data), "--model", model, "--epsilon", epsilon,
                  "--out", str(out), "--state-dir", str(out.with_name(out.name + "-state")),
                  *extra)
        (out / "wall_seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    metrics = json.loads(metrics_path.read_text())
    rounds = metrics["rounds"]
    uploads = [r["upload_bytes_per_site"] for r in rounds if "upload_bytes_per_site" in r]
    return {
        "model": model,
        "accuracy": metrics["final"]["accuracy"],
        "max_epsilon": metrics["final"]["max_epsilon"],
        "rounds": len(rounds),
        "wall_seconds": float((out / "wall_seconds.txt").read_text()),
        "upload_bytes_per_site_round": sum(uploads) / len(uploads),
    }


def banking77(args: argparse.Namespace) -> list[str]:
    data = args.out / "sites"
    if not data.exists():
        fedintent("partition", str(args.data), "--sites", "10", "--alpha", "0.5", "--out",
                  str(data))
    rows = ["| model | test accuracy | max site epsilon | rounds | training time | upload per "
            "site per round |", "| --- | --- | --- | --- | --- | --- |"]
    for model in args.models.split(","):
        extra = ["--rounds", str(args.rounds)] if args.rounds else []
        r = train(data, args.out / model, model, "8", extra)
        rows.append(f"| `{model}` | {r['accuracy']:.4f} | {r['max_epsilon']:.3f} | {r['rounds']} "
                    f"| {r['wall_seconds']:.0f} s | {r['upload_bytes_per_site_round'] / 1e3:,.1f}"
                    " kB |")
    return rows


def chinese(args: argparse.Namespace) -> list[str]:
    from data_synth.baseline import tfidf_baseline_accuracy

    data = args.out / "sites"
    if not data.exists():
        fedintent("synth", "--lang", "zh", "--sites", "10", "--seed", "1", "--size",
                  str(args.size), "--out", str(data))
    private = train(data, args.out / "ngram-eps8", "ngram", "8", [])
    plain = train(data, args.out / "ngram-inf", "ngram", "inf", [])
    tfidf = tfidf_baseline_accuracy(data, "zh")
    return ["| method | test accuracy | training time |", "| --- | --- | --- |",
            f"| federated `ngram`, epsilon 8 per site | {private['accuracy']:.4f} | "
            f"{private['wall_seconds']:.0f} s |",
            f"| federated `ngram`, no DP | {plain['accuracy']:.4f} | "
            f"{plain['wall_seconds']:.0f} s |",
            f"| centralized TF-IDF (char 1-3 grams) + logistic regression, no DP | {tfidf:.4f} "
            "| |"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=["banking77", "chinese"])
    parser.add_argument("data", type=Path, nargs="?", help="BANKING77 folder (banking77 only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default=",".join(FAMILIES))
    parser.add_argument("--rounds", type=int, help="rounds for every model (default: the "
                        "tuned number, 40 at epsilon 8)")
    parser.add_argument("--size", type=int, default=600,
                        help="mean conversations per synthetic site (chinese only)")
    args = parser.parse_args()
    if args.suite == "banking77" and args.data is None:
        parser.error("banking77 needs the dataset folder")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = banking77(args) if args.suite == "banking77" else chinese(args)
    (args.out / "results.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
