"""benchmarks/per_site_levers.py: its candidates compute what its docstring says, on toy data
where the answer is known (the benchmark's own numbers are in docs/MODELS.md)."""

import pytest
import torch

from models.feature_scale import FEATURE_SCALE


@pytest.fixture
def levers(benchmark_script):
    return benchmark_script("per_site_levers")


def toy_sites(rows_per_intent: int) -> tuple[list, torch.Tensor, torch.Tensor]:
    """Three intents whose features are unit vectors near three orthogonal axes, two sites."""
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(3).repeat(rows_per_intent)
    features = torch.eye(8)[labels] + 0.1 * torch.randn(len(labels), 8, generator=generator)
    features = features / features.norm(dim=1, keepdim=True)
    half = len(labels) // 2
    sites = [(features[:half], labels[:half]), (features[half:], labels[half:])]
    return sites, features, labels


def test_class_sums_classify_separable_intents_and_drown_under_heavy_noise(levers):
    sites, features, labels = toy_sites(rows_per_intent=10)
    names = ["a", "b", "c"]
    assert levers.class_sums_accuracy(sites, features, labels, names, 50.0, seed=0) == 1.0
    # epsilon 0.1 on 10 rows an intent: noise of standard deviation about 40 per coordinate
    noisy = [levers.class_sums_accuracy(sites, features, labels, names, 0.1, seed=s)
             for s in range(5)]
    assert sum(noisy) / len(noisy) < 0.8


def test_a_projection_keeps_the_features_length(levers):
    features = torch.randn(20, 16)
    matrix = torch.linalg.qr(torch.randn(16, 4))[0]
    mapped = levers.through(features, matrix)
    assert mapped.shape == (20, 4)
    assert torch.allclose(mapped.norm(dim=1), torch.full((20,), FEATURE_SCALE))


def test_the_label_span_is_the_prior_rows_span(levers):
    prior = torch.randn(5, 32)
    span = levers.projection("label-span", prior, None, cache_dir=None)
    assert span.shape == (32, 5)
    assert torch.allclose(prior @ span @ span.T, prior, atol=1e-5)
    assert torch.equal(levers.projection("settings", prior, None, cache_dir=None), torch.eye(32))


def test_an_unknown_lever_is_refused_by_name(levers, capsys):
    with pytest.raises(SystemExit):
        levers.main(["somewhere", "--levers", "settings,nonsense"])
    assert "unknown lever(s) ['nonsense']" in capsys.readouterr().err
