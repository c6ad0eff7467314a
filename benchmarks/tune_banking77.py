"""Choose the per-epsilon training settings without ever looking at a test split.

Usage (about 40 minutes on 2 cores for the local grid, 25 for the distributed one):

    python benchmarks/tune_banking77.py ../shared/datasets/banking77 --out tuning.csv
    python benchmarks/tune_banking77.py ../shared/datasets/banking77 --privacy-model distributed \
        --epsilons 1 --noise-seeds 0,1,2 --out tuning-eps1.csv

The dataset's ``train.csv`` is partitioned exactly as ``fedintent bench`` does (10 sites,
Dirichlet alpha 0.5, partition seed 0); 15% of every site's training rows are held out as a
validation split, and ``test.csv`` is never read. Each candidate is trained in-process with the
project's own code: the model family's initial model, ``fl_client.dp_training.train_locally``
(Opacus DP-SGD, noise planned per site by ``plan_noise_multiplier`` exactly as a site plans it)
and example-weighted FedAvg, which is what Flower's FedAvg computes. Federated candidates are
scored on the pooled validation rows, pooled-data (central DP) candidates the same way. The best
candidate per epsilon becomes ``fl_server.run_config.TUNED_SETTINGS`` and
``fedintent.bench.baselines.CENTRAL_DP_RECIPES`` (``CENTRAL_RECIPE`` without DP); with
``--privacy-model distributed``, ``DISTRIBUTED_SETTINGS``. At small epsilon one training run's
noise moves validation accuracy by about a point, so ``--noise-seeds`` scores each candidate as
the mean over several runs' noise and sampling on the same split.
"""

import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedintent.bench.baselines import Recipe, baseline_delta, train_and_evaluate
from fedintent.inprocess import site_plans, train_distributed, train_fedavg, validation_split
from fedintent.partition import partition_csv_dataset
from fl_client.distributed_dp import dimension
from fl_client.dp_training import evaluate
from fl_client.privacy_accounting import (
    lifetime_filter,
    plan_skellam_mu,
    skellam_mu_within_rdp,
)
from fl_client.privacy_budget import skellam_sensitivity
from fl_protocol.label_file import read_labels
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from models import get_model_family
from models.family import concat_features

MODEL = "minilm-head"
DELTA = 1e-5
"""The delta BANKING77's tuning sites plan at: ``default_delta`` of each site's rows (all under
10,000)."""
VALIDATION_SHARE = 0.15
FULL_BATCH = 4096
FEDERATED_GRID = {
    1.0: [(30, 1, FULL_BATCH, 4.0), (30, 1, FULL_BATCH, 8.0), (20, 1, FULL_BATCH, 6.0)],
    3.0: [(40, 1, FULL_BATCH, 12.0), (40, 1, FULL_BATCH, 24.0), (40, 1, FULL_BATCH, 36.0),
          (60, 1, FULL_BATCH, 8.0)],
    8.0: [(40, 1, FULL_BATCH, 24.0), (40, 1, FULL_BATCH, 48.0), (40, 1, FULL_BATCH, 72.0),
          (60, 1, FULL_BATCH, 16.0)],
    math.inf: [(40, 3, 64, 2.0), (40, 3, 64, 4.0), (40, 3, 64, 8.0)],
}
"""(rounds, local epochs, batch size, learning rate) candidates per epsilon; clip norm 1. The
learning rates sit around a quarter to a half of those tuned for unit-length features, before
``models.feature_scale``."""
DISTRIBUTED_GRID = {
    1.0: [(30, 8.0, 0.8), (30, 16.0, 0.0), (30, 24.0, 0.0), (30, 32.0, 0.0), (30, 48.0, 0.0),
          (40, 32.0, 0.0), (40, 24.0, 0.0), (40, 16.0, 0.0), (35, 20.0, 0.0), (30, 16.0, 0.5),
          (40, 12.0, 0.5)],
    3.0: [(30, 12.0, 0.8), (30, 24.0, 0.8), (30, 36.0, 0.8), (30, 24.0, 0.0)],
    8.0: [(30, 16.0, 0.8), (30, 32.0, 0.8), (30, 48.0, 0.8), (30, 64.0, 0.8), (30, 48.0, 0.0)],
}
"""(rounds, learning rate, server momentum) candidates per epsilon for distributed DP: one
full-batch step per round; clip norm 1."""
CENTRAL_DP_GRID = {
    1.0: [Recipe(40, 16384, 12.0, 1.0), Recipe(40, 16384, 24.0, 1.0),
          Recipe(40, 16384, 48.0, 1.0), Recipe(40, 1024, 4.0, 1.0), Recipe(40, 1024, 8.0, 1.0),
          Recipe(40, 1024, 16.0, 1.0)],
    3.0: [Recipe(40, 16384, 24.0, 1.0), Recipe(40, 16384, 48.0, 1.0), Recipe(40, 1024, 4.0, 1.0),
          Recipe(40, 1024, 8.0, 1.0), Recipe(40, 1024, 16.0, 1.0)],
    8.0: [Recipe(40, 16384, 24.0, 1.0), Recipe(40, 16384, 48.0, 1.0),
          Recipe(40, 16384, 96.0, 1.0), Recipe(40, 1024, 4.0, 1.0), Recipe(40, 1024, 8.0, 1.0),
          Recipe(40, 1024, 16.0, 1.0), Recipe(40, 1024, 24.0, 1.0)],
    math.inf: [Recipe(30, 64, 2.0, 1.0), Recipe(30, 64, 4.0, 1.0), Recipe(30, 64, 8.0, 1.0)],
}
"""Pooled-data candidates per epsilon: with DP (``CENTRAL_DP_RECIPES``) and without (inf,
``CENTRAL_RECIPE``)."""


def federated_accuracy(sites, labels, val, epsilon, candidate, seed) -> float:
    """Example-weighted FedAvg over in-process sites, each training with DP-SGD as in a run."""
    rounds, local_epochs, batch_size, learning_rate = candidate
    family = get_model_family(MODEL)
    global_model = family.initial_model(labels)
    plans = site_plans(family, sites, epsilon, DELTA, rounds, batch_size, local_epochs,
                       learning_rate)
    train_fedavg(global_model, lambda: family.build_model(len(labels)), sites, plans, rounds, seed)
    return evaluate(global_model, *val)[1]


def distributed_accuracy(sites, labels, val, epsilon, candidate, seed, tolerated) -> float:
    """Distributed DP over in-process sites, each adding its planned share of the noise."""
    rounds, learning_rate, momentum = candidate
    family = get_model_family(MODEL)
    global_model = family.initial_model(labels)
    dim = dimension(global_model)
    l1, l2, likely = skellam_sensitivity(dim)
    lifetime = float(RUN_CONFIG_DEFAULTS["site-max-epsilon"])
    mu = max(plan_skellam_mu(epsilon, DELTA, l1, l2, rounds, likely),
             skellam_mu_within_rdp(l1, l2, rounds, *lifetime_filter(lifetime, DELTA)))
    train_distributed(global_model, sites, mu / (len(sites) - tolerated), clip_norm=1.0,
                      learning_rate=learning_rate, rounds=rounds, seed=seed,
                      passes=family.passes, server_momentum=momentum)
    return evaluate(global_model, *val)[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="folder with train.csv (test.csv is not read)")
    parser.add_argument("--out", type=Path, default=Path("tuning.csv"))
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--privacy-model", choices=("local", "distributed"), default="local")
    parser.add_argument("--tolerated-sites", type=int, default=2)
    parser.add_argument("--epsilons", help="comma-separated epsilons of the grids to run "
                        "(inf: no DP; default: every one)")
    parser.add_argument("--noise-seeds", default=None,
                        help="comma-separated training seeds; each candidate scores the mean "
                        "(default: --seed alone)")
    args = parser.parse_args()
    wanted = None if args.epsilons is None else {float(e) for e in args.epsilons.split(",")}
    seeds = ([int(s) for s in args.noise_seeds.split(",")] if args.noise_seeds
             else [args.seed])

    def grid(table: dict) -> list:
        return [(e, c) for e, c in table.items() if wanted is None or e in wanted]

    def mean_over_seeds(score) -> float:
        return float(np.mean([score(seed) for seed in seeds]))

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        train_only = Path(tmp) / "source"
        train_only.mkdir()
        (train_only / "train.csv").write_bytes((args.data / "train.csv").read_bytes())
        (train_only / "test.csv").write_text("text,label\n", encoding="utf-8")
        data_dir = Path(tmp) / "sites"
        partition_csv_dataset(train_only, data_dir, args.sites, 0, alpha=args.alpha)
        labels = read_labels(data_dir / "labels.txt")
        sites, val = validation_split(data_dir, labels, get_model_family(MODEL),
                                      VALIDATION_SHARE, args.seed)
        rows = []
        if args.privacy_model == "distributed":
            for epsilon, candidates in grid(DISTRIBUTED_GRID):
                for candidate in candidates:
                    started = time.monotonic()
                    accuracy = mean_over_seeds(lambda seed, e=epsilon, c=candidate:
                                               distributed_accuracy(sites, labels, val, e, c,
                                                                    seed, args.tolerated_sites))
                    rows.append(("distributed", epsilon, candidate[0], 1, "full",
                                 candidate[1], candidate[2], accuracy))
                    print(f"distributed eps={epsilon:g} rounds,lr,momentum={candidate}: val "
                          f"{accuracy:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
        for epsilon, candidates in (grid(FEDERATED_GRID)
                                    if args.privacy_model == "local" else []):
            for candidate in candidates:
                started = time.monotonic()
                accuracy = mean_over_seeds(lambda seed, e=epsilon, c=candidate:
                                           federated_accuracy(sites, labels, val, e, c, seed))
                rows.append(("federated", epsilon, *candidate, 0.0, accuracy))
                print(f"federated eps={epsilon:g} rounds,epochs,batch,lr={candidate}: "
                      f"val {accuracy:.4f} ({time.monotonic() - started:.0f} s)", flush=True)
        pooled = (concat_features([x for x, _ in sites]), torch.cat([y for _, y in sites]))
        for epsilon, recipes in (grid(CENTRAL_DP_GRID) if args.privacy_model == "local"
                                 else ()):
            for recipe in recipes:
                accuracy = mean_over_seeds(lambda seed, e=epsilon, r=recipe: train_and_evaluate(
                    MODEL, labels, *pooled, *val, e, r, seed,
                    delta=baseline_delta([len(y) for _, y in sites])).accuracy)
                method = "central-dp" if math.isfinite(epsilon) else "central"
                rows.append((method, epsilon, recipe.epochs, "-", recipe.batch_size,
                             recipe.learning_rate, 0.0, accuracy))
                print(f"{method} eps={epsilon:g} {recipe}: val {accuracy:.4f}", flush=True)
    with open(args.out, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("method", "epsilon", "rounds_or_epochs", "local_epochs", "batch_size",
                         "learning_rate", "server_momentum", "val_accuracy", "noise_seeds"))
        writer.writerows(row + (" ".join(map(str, seeds)),) for row in rows)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
