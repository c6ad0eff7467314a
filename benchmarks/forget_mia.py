"""What erasing a customer does to models: membership inference on the forgotten utterances,
in the models trained with them and in the retrain without them (docs/PRIVACY.md, "What deletion
does to models already trained").

    .venv/bin/python benchmarks/forget_mia.py --data ../shared/datasets/banking77 \\
        --out /tmp/forget-mia --models 8 --rounds 8 --epsilons 1,8,inf --seed 0

(17 minutes of CPU on 2 shared cores, one process: docs/benchmarks/forget-mia/README.md.)

It plays the membership game of ``fedintent audit-privacy`` (``fedintent.audit``: the sites'
own DP-SGD in-process, tuned settings per epsilon, canaries and natural audit utterances each
put into its site's training data with probability 1/2) and adds an erasure:

* *before*: the game's models, trained with their members. A random half of each model's members
  is that model's *forgotten* set (``fedintent.audit.game.forgotten``);
* *after*: every model retrained as the next run would be, on the same data without its
  forgotten utterances (``Game.after_erasure``), with fresh training noise.

On both, the attacker tries to tell the forgotten utterances from *never-seen* ones (audit
utterances the model never trained on): the loss attack, and LiRA with the other original
models as its shadows (the attacker's own models, membership known). A third comparison,
*after, kept* (the members the retrain still trains on against never-seen ones), shows the
attack still sees membership in a retrain. Each row gives ROC AUC, membership advantage
(max TPR - FPR), TPR at 1% FPR, the most any attack can reach (``limit_*``: DP's limit at the
accountant's epsilon; for a retrain's forgotten utterances, nothing: advantage 0 and TPR = FPR,
since it never trained on them) and the 95th percentile of each under chance (the same scores
with each model's labels shuffled).

Resumable: every trained model is kept under ``OUT/models``; results go to ``OUT/results.json``,
``OUT/results.csv`` and ``OUT/report.md``.
"""

import argparse
import csv
import io
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from fedintent.audit.attacks import lira_leave_one_out, lira_scores, loss_attack, roc_metrics
from fedintent.audit.game import run_models
from fedintent.audit.run import AuditError, AuditSpec, prepare_game, settings_for
from fedintent.commands import CliError
from fedintent.commands.options import parse_epsilons
from fedintent.report_files import FolderClaimed, claim_folder, epsilon_label, write_report_json
from fl_protocol.durable_files import write_bytes_atomic
from fl_protocol.wire import DEFAULT_MAX_EPSILON

ATTACKS = ("lira", "loss")
LOW_FPR = 0.01
CHANCE_DRAWS = 200
PHASES = ("before", "after", "after, kept")
"""before: forgotten vs never-seen in the original models; after: the same in their retrains;
after, kept: the retrains' remaining members vs never-seen (the attack still works there)."""
CSV_FIELDS = ("epsilon", "accountant_epsilon", "delta", "kind", "attack", "phase", "auc",
              "advantage", "tpr_at_0.01_fpr", "limit_advantage", "limit_tpr_at_0.01_fpr",
              "chance_auc", "chance_advantage", "chance_tpr_at_0.01_fpr", "positives",
              "negatives", "models")


def dp_limits(epsilon: float, delta: float) -> dict[str, float]:
    """The most any membership test can reach on a unit of an (epsilon, delta)-DP training:
    TPR <= e^eps FPR + delta (and the same for the complement), so the advantage is at most
    (e^eps - 1 + 2 delta) / (e^eps + 1) (Kairouz et al. 2015) and TPR at 1% FPR at most
    e^eps / 100 + delta."""
    if math.isinf(epsilon):
        return {"advantage": 1.0, "tpr": 1.0}
    growth = math.exp(epsilon)
    return {"advantage": min(1.0, (growth - 1 + 2 * delta) / (growth + 1)),
            "tpr": min(1.0, growth * LOW_FPR + delta)}


def attack_scores(before: list[dict], after: list[dict], cols: np.ndarray) -> dict:
    """Each attack's scores [models, examples] on the original models and on their retrains.

    LiRA on model j (original or retrain) takes the original models other than j as shadows:
    the attacker calibrates on models whose membership it knows, never on the one attacked.
    """
    phi = np.stack([m["phi"][cols] for m in before])
    member = np.stack([m["member"][cols] for m in before])
    shadows = [np.arange(len(before)) != j for j in range(len(before))]
    return {
        "lira": {"before": lira_leave_one_out(phi, member),
                 "after": np.stack([lira_scores(m["phi"][cols], phi[s], member[s])
                                    for m, s in zip(after, shadows, strict=True)])},
        "loss": {"before": np.stack([loss_attack(m["loss"][cols]) for m in before]),
                 "after": np.stack([loss_attack(m["loss"][cols]) for m in after])},
    }


def compare(scores: np.ndarray, positive: np.ndarray, negative: np.ndarray,
            rng: np.random.Generator) -> dict[str, float]:
    """ROC metrics of positives against negatives (pooled over models), and their 95th
    percentile when each model's labels are shuffled among its compared examples: what an
    attack that sees nothing scores on these scores."""
    mask = positive | negative
    values = scores[mask]
    metrics = roc_metrics(values, positive[mask])
    ranks, distinct = rankdata(values), np.unique(values, return_inverse=True)[1]
    chance = [ranked_metrics(ranks, distinct, shuffled(positive, mask, rng))
              for _ in range(CHANCE_DRAWS)]
    return {
        "auc": metrics["auc"], "advantage": metrics["advantage"],
        "tpr_at_0.01_fpr": metrics["tpr_at_0.01_fpr"],
        "positives": int(positive.sum()), "negatives": int(negative.sum()),
    } | {f"chance_{key}": float(np.quantile([c[key] for c in chance], 0.95))
         for key in ("auc", "advantage", "tpr_at_0.01_fpr")}


def shuffled(positive: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``positive[mask]`` with each model's labels shuffled among its compared examples."""
    labels = np.zeros_like(positive)
    for j in range(len(positive)):
        cols = np.flatnonzero(mask[j])
        labels[j, cols] = rng.permutation(positive[j, cols])
    return labels[mask]


def ranked_metrics(ranks: np.ndarray, distinct: np.ndarray, labels: np.ndarray) -> dict:
    """AUC, advantage and TPR at 1% FPR from the scores' midranks and distinct-value index.

    ``roc_metrics`` gives the same AUC and advantage, but its input checks cost more than the
    work, and the chance level needs hundreds of draws per row. TPR at 1% FPR is taken over
    every threshold (``roc_metrics`` drops collinear ROC points, which can only lower it).
    """
    members = int(labels.sum())
    others = len(labels) - members
    auc = (ranks[labels].sum() - members * (members + 1) / 2) / (members * others)
    tpr = np.bincount(distinct, weights=labels)[::-1].cumsum() / members
    fpr = np.bincount(distinct, weights=~labels)[::-1].cumsum() / others
    return {"auc": float(auc), "advantage": float(max(0.0, (tpr - fpr).max())),
            "tpr_at_0.01_fpr": float(tpr[fpr <= LOW_FPR].max(initial=0.0))}


def forget_rows(before: list[dict], after: list[dict], kind: np.ndarray, seed: int) -> list[dict]:
    """One row per (kind of audit example, attack, phase) for one epsilon's models."""
    epsilon = max(m["epsilon"] for m in before)
    delta = max(m["delta"] for m in before)
    limits = dp_limits(epsilon, delta)
    rng = np.random.default_rng([seed, 4])
    rows = []
    for name in sorted(set(kind.tolist())):
        cols = kind == name
        member = np.stack([m["member"][cols] for m in before])
        kept = np.stack([m["member"][cols] for m in after])
        gone, never = member & ~kept, ~member
        scores = attack_scores(before, after, cols)
        for attack in ATTACKS:
            for phase, on, positive in (("before", "before", gone), ("after", "after", gone),
                                        ("after, kept", "after", kept)):
                # A retrain depends on nothing it did not train on: no attack can tell its
                # forgotten utterances from never-seen ones.
                limited = phase != "after"
                rows.append({
                    "kind": name, "attack": attack, "phase": phase,
                    "accountant_epsilon": epsilon, "delta": delta, "models": len(before),
                    "limit_advantage": limits["advantage"] if limited else 0.0,
                    "limit_tpr_at_0.01_fpr": limits["tpr"] if limited else LOW_FPR,
                } | compare(scores[attack][on], positive, never, rng))
    return rows


def markdown(record: dict, results: list[dict]) -> str:
    """The before/after table: one line per (epsilon, kind, attack), chance in brackets."""
    lines = [
        "# Membership inference on forgotten utterances, before and after a retrain",
        "",
        f"Data: `{record['data']}`, {record['sites']} sites (alpha {record['alpha']:g}); "
        f"{record['models']} models per epsilon, each retrained after its erasure; "
        f"{record['canaries']} canaries, {record['natural']} natural audit utterances; seed "
        f"{record['seed']}. Forgotten vs never-seen utterances; in brackets the 95th percentile "
        f"under chance (labels shuffled); DP limit at the accountant's epsilon.",
        "",
        "| epsilon | accountant epsilon | examples | attack | AUC before | AUC after | "
        "advantage before | advantage after | DP limit | TPR @ 1% FPR before | "
        "TPR @ 1% FPR after | DP limit | retrain, kept members: AUC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        by = {(r["kind"], r["attack"], r["phase"]): r for r in result["rows"]}
        for kind, attack, _ in [k for k in by if k[2] == "before"]:
            b, a, k = (by[kind, attack, p] for p in PHASES)
            lines.append(
                f"| {epsilon_label(result['epsilon'])} | {_eps(b['accountant_epsilon'])} | "
                f"{kind} | {attack} | {b['auc']:.3f} ({b['chance_auc']:.3f}) | "
                f"{a['auc']:.3f} ({a['chance_auc']:.3f}) | "
                f"{b['advantage']:.3f} ({b['chance_advantage']:.3f}) | "
                f"{a['advantage']:.3f} ({a['chance_advantage']:.3f}) | "
                f"{b['limit_advantage']:.3f} | "
                f"{b['tpr_at_0.01_fpr']:.3f} ({b['chance_tpr_at_0.01_fpr']:.3f}) | "
                f"{a['tpr_at_0.01_fpr']:.3f} ({a['chance_tpr_at_0.01_fpr']:.3f}) | "
                f"{b['limit_tpr_at_0.01_fpr']:.3f} | {k['auc']:.3f} |")
    lines += ["", "Accuracy on held-out test rows (mean over models):", ""]
    for result in results:
        lines.append(f"- epsilon {epsilon_label(result['epsilon'])} "
                     f"({result['settings']['num-rounds']} rounds): before "
                     f"{result['accuracy_before']:.3f}, after {result['accuracy_after']:.3f}")
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, record: dict, results: list[dict]) -> None:
    """results.json (everything), results.csv (one line per row) and report.md, atomically."""
    write_report_json(out / "results.json", {"spec": record, "results": results})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for result in results:
        for row in result["rows"]:
            writer.writerow({"epsilon": epsilon_label(result["epsilon"])}
                            | {k: _csv(v) for k, v in row.items() if k in CSV_FIELDS})
    write_bytes_atomic(out / "results.csv", text.getvalue().encode())
    write_bytes_atomic(out / "report.md", markdown(record, results).encode())


def site_settings(epsilon: float, rounds: int | None) -> dict:
    """The audit's settings, with the lifetime budget a site has by default: this benchmark
    measures what erasure does at a real site's defaults (7.45 at target 8), where the audit
    measures the epsilon asked for."""
    return settings_for(epsilon, rounds) | {"site-max-epsilon": DEFAULT_MAX_EPSILON}


def run(spec: AuditSpec, models: int, out: Path, progress=print) -> list[dict]:
    """Train (or load) every epsilon's original models and retrains; measure; write outputs."""
    record = asdict(spec) | {"models": models, "settings": {
        epsilon_label(e): site_settings(e, spec.rounds) for e in spec.epsilons}}
    try:
        claim_folder(out / "forget-mia.json", record,
                     lambda old, new: new if _fixed(old) == _fixed(new) else None,
                     f"{out} holds a run with other data or options; use a new --out")
    except FolderClaimed as err:
        raise AuditError(str(err)) from err
    game = prepare_game(spec, out, progress)
    results = []
    for epsilon in spec.epsilons:
        settings = site_settings(epsilon, spec.rounds)
        label = epsilon_label(epsilon)
        started = time.monotonic()
        progress(f"epsilon {label}: {models} models with their members ({settings['num-rounds']} "
                 f"rounds, {settings['local-epochs']} local epochs, batch "
                 f"{settings['batch-size']}, lr {settings['learning-rate']:g})")
        before = run_models(game, epsilon, settings, models, out / "models" / f"eps-{label}" /
                            "before", progress=progress)
        progress(f"epsilon {label}: the same {models} models retrained without their forgotten "
                 f"utterances")
        after = run_models(replace(game, after_erasure=True), epsilon, settings, models,
                           out / "models" / f"eps-{label}" / "after", progress=progress)
        rows = forget_rows(before, after, game.audit.kind, spec.seed)
        results.append({
            "epsilon": epsilon, "settings": settings, "models": models,
            "accuracy_before": float(np.mean([m["accuracy"] for m in before])),
            "accuracy_after": float(np.mean([m["accuracy"] for m in after])),
            "seconds_this_invocation": time.monotonic() - started, "rows": rows,
        })
        for row in rows:
            progress(f"  {row['kind']:<7} {row['attack']:<4} {row['phase']:<11} AUC "
                     f"{row['auc']:.3f}  advantage {row['advantage']:.3f} (chance "
                     f"{row['chance_advantage']:.3f}, limit {row['limit_advantage']:.3f})"
                     f"  TPR@1%FPR {row['tpr_at_0.01_fpr']:.3f} (limit "
                     f"{row['limit_tpr_at_0.01_fpr']:.3f}; accountant epsilon "
                     f"{_eps(row['accountant_epsilon'])})")
        write_outputs(out, record, results)
    return results


def _fixed(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("epsilons", "settings")}


def _eps(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _csv(value: object) -> object:
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.6g}"
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", type=Path, required=True, metavar="CSV_DIR",
                        help="folder with train.csv and test.csv (partitioned into sites), or "
                        "a folder of site folders with labels.txt")
    parser.add_argument("--out", type=Path, required=True,
                        help="working folder: data, feature cache, models, results (resumable)")
    parser.add_argument("--sites", type=int, default=10, help="number of sites (default: 10)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="Dirichlet label-skew concentration (default: 0.5)")
    parser.add_argument("--epsilons", default="1,8,inf",
                        help="comma-separated per-site epsilons; inf = no DP (default: 1,8,inf)")
    parser.add_argument("--models", type=int, default=16,
                        help="models per epsilon, each also retrained (default: 16)")
    parser.add_argument("--canaries", type=int, default=500,
                        help="random-label canary utterances (default: 500)")
    parser.add_argument("--natural", type=int, default=500,
                        help="natural audit utterances, true label (default: 500)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--rounds", type=int,
                        help="override every epsilon's tuned number of rounds")
    args = parser.parse_args(argv)
    try:
        epsilons = sorted(set(parse_epsilons(args.epsilons)))
    except CliError as err:
        parser.error(str(err))
    if args.models < 3:
        parser.error(f"--models must be >= 3 (LiRA needs 2 shadows), got {args.models}")
    if min(args.canaries, args.natural) < 0 or max(args.canaries, args.natural) < 4:
        parser.error("--canaries and --natural must be >= 0, and one of them >= 4")
    if args.sites < 1 or (args.rounds is not None and args.rounds < 1):
        parser.error("--sites and --rounds must be >= 1")
    if not args.data.is_dir():
        parser.error(f"--data {args.data}: not a folder")
    spec = AuditSpec(data=str(args.data.resolve()), sites=args.sites, alpha=args.alpha,
                     epsilons=epsilons, shadows=args.models - 1, canaries=args.canaries,
                     natural=args.natural, seed=args.seed, rounds=args.rounds)
    # One thread: the head's small steps run several times faster so on shared cores, and one
    # process is the whole run (run_models' default of one worker).
    torch.set_num_threads(1)
    started = time.monotonic()
    try:
        run(spec, args.models, args.out, progress=lambda line: print(line, flush=True))
    except AuditError as err:
        print(f"forget_mia: error: {err}", file=sys.stderr)
        return 2
    print(f"done in {time.monotonic() - started:.0f} s; results: {args.out / 'report.md'}, "
          f"{args.out / 'results.csv'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
