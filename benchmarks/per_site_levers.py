"""What else could lift per-site DP on small sites? Each candidate, scored on validation rows.

Usage (about 8 minutes on 2 cores for every lever at one epsilon):

    fedintent synth --lang zh --sites 10 --seed 2 --size 600 --out zh-val
    python benchmarks/per_site_levers.py zh-val --public ../shared/datasets/banking77/train.csv \
        --epsilon 8

Per-site DP adds each site's noise for its own rows, so on sites of a few hundred rows the head
learns from updates that are mostly noise (docs/MODELS.md, "Chinese with the learning rate
scaled to the sites' size"). This script measures the levers the literature offers for that,
beside the settings ``fedintent train`` runs, so a claim that none helps can be checked:

* ``settings``: what ``fedintent train`` runs (``use-multilingual``, 40 full-batch rounds, the
  tuned epsilon-8 rate scaled to the sites' size, each site's noise as a site with the default
  lifetime budget of 8 plans it);
* ``run-plan-noise``: the same with the run's own noise plan, without what the lifetime Rényi
  filter adds above it (sites with no lifetime limit): what a Gaussian-DP lifetime filter would
  leave (docs/PRIVACY.md, "What the Rényi filter costs"); at epsilon 3 the filter does not set
  the noise, so this is ``settings``;
* ``rounds-20`` / ``rounds-80``: fewer or more rounds, the same total noise;
* ``minibatch-128``: Poisson batches of 128 (amplification by sampling), learning rate 8;
* ``size-squared-weights``: the server weighs each site's model by its rows squared, not its
  rows: a full-batch site's noise on its mean gradient has standard deviation proportional to
  1 / rows, so this is the inverse-variance weighting: on these sites' sizes the average's
  noise has a fifth less standard deviation (0.79 times), at the price of leaning on the
  largest sites (one holds 31% of the rows and gets 60% of the weight);
* ``average-iterates``: the mean of the last quarter of the rounds' global models (the server's
  post-processing, free of privacy cost);
* ``random-128`` / ``label-span``: the head reads the features projected onto 128 random
  directions, or onto the span of the label names' embeddings (public, so free): fewer noised
  weights, at the price of signal;
* ``public-whitening``: features whitened by the within-intent covariance of a public labelled
  set (``--public``, a ``text,label`` CSV such as BANKING77's), which is free, the way DP image
  classifiers use public data to shape their features;
* ``class-sums``: one Gaussian release per site of its per-intent feature sums (sensitivity 1:
  one unit-length utterance moves one sum by its feature), all the epsilon spent at once, summed
  over sites; the head is the cosine to each noisy sum.

The data is split as ``benchmarks/tune_banking77.py`` splits it (15% of every site's training
rows held out, seed 0), so the test split is never read; each candidate is the mean over noise
seeds 0, 1 and 2, one printed line each.
"""

import argparse
import csv
import math
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedintent.inprocess import Site, site_plans, train_fedavg, validation_split
from fl_client.dp_training import evaluate
from fl_client.privacy_accounting import plan_noise_multiplier
from fl_protocol.label_file import read_labels
from fl_protocol.wire import DEFAULT_MAX_EPSILON
from fl_server.run_config import site_size_rate, tuned_settings
from models import get_model_family
from models.encoder_head import prior_head
from models.feature_scale import FEATURE_SCALE

MODEL = "use-multilingual"
DELTA = 1e-5
VALIDATION_SHARE = 0.15
FULL_BATCH = 4096
NOISE_SEEDS = (0, 1, 2)
LEVERS = ("settings", "run-plan-noise", "rounds-20", "rounds-80", "minibatch-128",
          "size-squared-weights", "average-iterates", "random-128", "label-span",
          "public-whitening", "class-sums")


def split_sites(data: Path) -> tuple[list[str], list[Site], torch.Tensor, torch.Tensor]:
    """Labels, each site's training rows (unit-length features), and the pooled held-out rows,
    split as ``benchmarks/tune_banking77.py`` splits them."""
    labels = read_labels(data / "labels.txt")
    sites, (held_x, held_y) = validation_split(data, labels, get_model_family(MODEL),
                                               VALIDATION_SHARE, seed=0)
    unit = [(features / FEATURE_SCALE, targets) for features, targets in sites]
    return labels, unit, held_x / FEATURE_SCALE, held_y


def label_prior(labels: list[str]) -> torch.Tensor:
    """The family's label-name prior as weights over unit-length features."""
    return get_model_family(MODEL).initial_model(labels).weight.detach() * FEATURE_SCALE


def public_whitening(public_csv: Path, cache_dir: Path) -> torch.Tensor:
    """(S + mean eigenvalue x I)^-1/2 of the public set's within-intent covariance S."""
    with public_csv.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    family = get_model_family(MODEL)
    features = family.featurize([r["text"] for r in rows], cache_dir)
    features = features.double() / FEATURE_SCALE
    names = [r["label"] for r in rows]
    index = {name: i for i, name in enumerate(sorted(set(names)))}
    codes = torch.tensor([index[name] for name in names])
    means = torch.stack([features[codes == i].mean(0) for i in range(len(index))])
    within = features - means[codes]
    values, vectors = torch.linalg.eigh(within.T @ within / len(features))
    return (vectors @ torch.diag((values + values.mean()) ** -0.5) @ vectors.T).float()


def projection(lever: str, prior: torch.Tensor, public_csv: Path | None,
               cache_dir: Path) -> torch.Tensor:
    """The public (dim, r) map the head reads the features through."""
    dim = prior.shape[1]
    generator = torch.Generator().manual_seed(7)
    if lever == "random-128":
        return torch.linalg.qr(torch.randn(dim, 128, generator=generator))[0]
    if lever == "label-span":
        return torch.linalg.svd(prior.T, full_matrices=False)[0]
    if lever == "public-whitening":
        if public_csv is None:
            raise SystemExit("public-whitening needs --public (a text,label CSV)")
        return public_whitening(public_csv, cache_dir)
    return torch.eye(dim)


def through(features: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Features mapped by ``matrix`` and set back to FEATURE_SCALE's length."""
    mapped = features @ matrix
    return FEATURE_SCALE * mapped / mapped.norm(dim=1, keepdim=True)


def trained_head(sites: list[Site], prior: torch.Tensor, epsilon: float, rounds: int, rate: float,
                 batch: int, seed: int, average_last: float, max_epsilon: float,
                 weight_power: float) -> nn.Linear:
    """Per-site DP-SGD FedAvg as ``fedintent train`` runs it; the global models of the last
    ``average_last`` share of rounds averaged (0: the last model alone)."""
    head = prior_head(nn.Linear(prior.shape[1], prior.shape[0]), prior)
    plans = site_plans(get_model_family(MODEL), sites, epsilon, DELTA, rounds, batch, 1, rate,
                       max_epsilon)
    kept = []
    for server_round in range(rounds):
        train_fedavg(head, lambda: nn.Linear(prior.shape[1], prior.shape[0]), sites, plans, 1,
                     seed * 1000 + server_round, weight_power)
        if server_round >= rounds - max(1, round(rounds * average_last)):
            kept.append({k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict({k: sum(state[k] for state in kept) / len(kept) for k in kept[0]})
    return head


def class_sums_accuracy(sites: list[Site], held_x: torch.Tensor, held_y: torch.Tensor,
                        labels: list[str], epsilon: float, seed: int) -> float:
    """Each site's per-intent feature sums, released once with Gaussian noise for (epsilon,
    DELTA), summed over sites; held-out rows go to the nearest sum by cosine."""
    sigma = plan_noise_multiplier(epsilon, DELTA, 1.0, 1, "prv")
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(labels), held_x.shape[1])
    for features, targets in sites:
        sums = torch.zeros_like(total).index_add_(0, targets, features)
        total += sums + sigma * torch.randn(sums.shape, generator=generator)
    scores = held_x @ (total / total.norm(dim=1, keepdim=True)).T
    return float((scores.argmax(1) == held_y).float().mean())


def lever_accuracies(lever: str, labels: list[str], sites: list[Site], held_x: torch.Tensor,
                     held_y: torch.Tensor, epsilon: float, public_csv: Path | None,
                     cache_dir: Path) -> list[float]:
    """Held-out accuracy of ``lever`` trained with each of ``NOISE_SEEDS``."""
    if lever == "class-sums":
        return [class_sums_accuracy(sites, held_x, held_y, labels, epsilon, seed)
                for seed in NOISE_SEEDS]
    prior = label_prior(labels)
    mapped = partial(through, matrix=projection(lever, prior, public_csv, cache_dir))
    mean_rows = sum(len(t) for _, t in sites) / len(sites)
    settings = tuned_settings(epsilon)
    rate = site_size_rate(float(settings["learning-rate"]), mean_rows / (1 - VALIDATION_SHARE),
                          epsilon)
    rounds, batch, average_last = int(settings["num-rounds"]), FULL_BATCH, 0.0
    weight_power = 2.0 if lever == "size-squared-weights" else 1.0
    max_epsilon = math.inf if lever == "run-plan-noise" else DEFAULT_MAX_EPSILON
    if lever.startswith("rounds-"):
        rounds = int(lever.split("-")[1])
    if lever == "minibatch-128":
        batch, rate = 128, 8.0
    if lever == "average-iterates":
        average_last = 0.25
    prior_mapped = (mapped(prior / prior.norm(dim=1, keepdim=True)) / FEATURE_SCALE
                    * prior.norm(dim=1, keepdim=True))
    mapped_sites = [(mapped(x), y) for x, y in sites]
    return [evaluate(trained_head(mapped_sites, prior_mapped, epsilon, rounds, rate, batch, seed,
                                  average_last, max_epsilon, weight_power), mapped(held_x),
                          held_y)[1]
            for seed in NOISE_SEEDS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a synthetic site folder (fedintent synth --out)")
    parser.add_argument("--epsilon", type=float, default=8.0, help="per site, per utterance")
    parser.add_argument("--public", type=Path, help="a public text,label CSV for whitening")
    parser.add_argument("--levers", default=",".join(LEVERS),
                        help=f"comma-separated, from: {', '.join(LEVERS)}")
    args = parser.parse_args(argv)
    levers = [lever for lever in args.levers.split(",") if lever]
    unknown = sorted(set(levers) - set(LEVERS))
    if unknown:
        parser.error(f"unknown lever(s) {unknown}; known: {', '.join(LEVERS)}")
    torch.set_num_threads(1)
    labels, sites, held_x, held_y = split_sites(args.data)
    print(f"{len(sites)} sites, {sum(len(t) for _, t in sites)} training rows, "
          f"{len(held_y)} held out, {len(labels)} intents; epsilon {args.epsilon}", flush=True)
    for lever in levers:
        accuracies = lever_accuracies(lever, labels, sites, held_x, held_y, args.epsilon,
                                      args.public, args.data / ".public-features")
        shown = " / ".join(f"{100 * a:.1f}" for a in accuracies)
        print(f"{lever:20s} {100 * np.mean(accuracies):5.1f}%  ({shown})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
