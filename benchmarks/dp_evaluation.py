"""How far DP evaluation's estimates lie from the exact scores, per evaluation epsilon.

Usage (about 2 minutes on 2 cores for the default 10 English sites):

    fedintent synth --sites 10 --seed 1 --out dp-eval-sites
    python benchmarks/dp_evaluation.py dp-eval-sites --evaluation-epsilons 8,3,1

A site whose node config sets ``evaluation = "dp"`` answers each evaluate request with estimates
from one Gaussian release of its test split (``fl_client/dp_evaluation.py``), planned for its
``evaluation-epsilon`` over the run's rounds. This script trains a model the way ``fedintent
train`` would (in-process FedAvg, per-site DP at ``--train-epsilon`` with the tuned settings
scaled to the sites' size), then, for each evaluation epsilon, draws the release ``--draws``
times at the noise a site with a new ledger and the default policy adds (``fresh_site_noise``:
the evaluation's delta, 1e-5, under the lifetime filter of ``max-epsilon`` 8, which at an
evaluation epsilon of 8 needs 6% more noise than the run's plan alone) and prints how far the
estimates fall from the exact scores: per site (root mean square over draws, averaged over
sites) and for the example-weighted accuracy the server reports (weighted by the sites' noisy
counts, as the server weighs them). The exact scores are the same unit-averaged ones the
release estimates (for utterance units, the plain accuracy).
"""

import argparse
import math
import sys
from pathlib import Path

import torch

from fedintent.inprocess import site_plans, train_fedavg
from fl_client.data_files import list_site_dirs
from fl_client.dp_evaluation import COMPONENTS, noisy_scores, unit_contributions
from fl_client.privacy_accounting import fresh_site_noise
from fl_client.site_data import load_site
from fl_protocol.label_file import read_labels
from fl_protocol.wire import DEFAULT_MAX_EPSILON, MAX_AUTO_DELTA
from fl_server.run_config import site_size_rate, tuned_settings
from models import get_model_family


def site_contributions(data: Path, model_name: str, train_epsilon: float,
                       seed: int) -> list[torch.Tensor]:
    """Each site's test units' contributions under a model trained as ``fedintent train``
    trains it at ``train_epsilon``: the inputs of every site's release."""
    labels = read_labels(data / "labels.txt")
    family = get_model_family(model_name)
    train, tests = [], []
    for site_dir in list_site_dirs(data):
        site = load_site(site_dir, labels)
        cache = data / ".features" / site_dir.name
        train.append((family.featurize(site.train.texts, cache),
                      torch.tensor(site.train.labels, dtype=torch.long)))
        tests.append((family.featurize(site.test.texts, cache),
                      torch.tensor(site.test.labels, dtype=torch.long), site.test.ids))
        print(f"  {site_dir.name}: {len(site.train)} training and {len(site.test)} test rows",
              file=sys.stderr, flush=True)
    settings = tuned_settings(train_epsilon)
    mean_rows = sum(len(targets) for _, targets in train) / len(train)
    rate = site_size_rate(float(settings["learning-rate"]), mean_rows, train_epsilon)
    rounds = int(settings["num-rounds"])
    plans = site_plans(family, train, train_epsilon, 1e-5, rounds,
                       int(settings["batch-size"]), int(settings["local-epochs"]), rate)
    torch.manual_seed(seed)
    print(f"training {model_name}: {rounds} rounds at epsilon {train_epsilon:g}, learning rate "
          f"{rate:g}", file=sys.stderr, flush=True)
    model = train_fedavg(family.initial_model(labels), lambda: family.build_model(len(labels)),
                         train, plans, rounds, seed)
    return [unit_contributions(model, features, targets, ids, family.passes)
            for features, targets, ids in tests]


def estimate_errors(sites: list[torch.Tensor], noise: list[float],
                    draws: int) -> dict[str, float]:
    """The exact example-weighted accuracy, and the root-mean-square error over ``draws``
    releases (site ``i`` at noise multiplier ``noise[i]``) of each site's accuracy estimate
    (averaged over sites) and of the server's example-weighted one."""
    exact = [float(c[:, 0].sum() / c[:, 2].sum()) for c in sites]
    units = [len(c) for c in sites]
    exact_all = sum(a * n for a, n in zip(exact, units, strict=True)) / sum(units)
    site_sq, all_sq = [0.0] * len(sites), 0.0
    for draw in range(draws):
        scores = [noisy_scores(c, noise[i], seed=draw * 1000 + i)
                  for i, c in enumerate(sites)]
        for i, score in enumerate(scores):
            site_sq[i] += (score.accuracy - exact[i]) ** 2
        weighted = (sum(s.accuracy * s.units for s in scores)
                    / sum(s.units for s in scores))
        all_sq += (weighted - exact_all) ** 2
    predicted = [z * math.sqrt(1 + a * a) * math.sqrt(COMPONENTS) / n
                 for z, a, n in zip(noise, exact, units, strict=True)]
    return {
        "exact_accuracy": exact_all,
        "site_error": sum(math.sqrt(sq / draws) for sq in site_sq) / len(sites),
        "site_error_predicted": sum(predicted) / len(sites),
        "federation_error": math.sqrt(all_sq / draws),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="site folders and labels.txt (fedintent synth)")
    parser.add_argument("--model", default="minilm-head")
    parser.add_argument("--train-epsilon", type=float, default=8.0)
    parser.add_argument("--evaluation-epsilons", default="8,3,1")
    parser.add_argument("--rounds", type=int, default=40,
                        help="evaluations each site plans for (the run's rounds)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data / "labels.txt").is_file():
        parser.error(f"{args.data}: no labels.txt; make sites with fedintent synth")
    sites = site_contributions(args.data, args.model, args.train_epsilon, args.seed)
    print(f"\n{len(sites)} sites, {sum(len(c) for c in sites)} test units "
          f"({min(len(c) for c in sites)} to {max(len(c) for c in sites)} a site), "
          f"{args.rounds} evaluations planned at delta {MAX_AUTO_DELTA:g} (a site's own), "
          f"{args.draws} draws\n")
    print("| evaluation epsilon | noise multiplier | exact accuracy | error of a site's estimate "
          "(predicted) | error of the example-weighted estimate |")
    print("| --- | --- | --- | --- | --- |")
    for epsilon in (float(e) for e in args.evaluation_epsilons.split(",")):
        # every site plans the same noise: public values and the default policy only
        noise = [fresh_site_noise(epsilon, MAX_AUTO_DELTA, 1.0, args.rounds, "prv",
                                  DEFAULT_MAX_EPSILON, MAX_AUTO_DELTA)] * len(sites)
        errors = estimate_errors(sites, noise, args.draws)
        print(f"| {epsilon:g} | {min(noise):.3g} to {max(noise):.3g} | "
              f"{errors['exact_accuracy']:.4f} | {errors['site_error']:.3f} "
              f"({errors['site_error_predicted']:.3f}) | {errors['federation_error']:.4f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
