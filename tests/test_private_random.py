"""The randomness every DP release of a site draws: ChaCha20 keyed by the release's whole
256-bit seed, and no draw from PyTorch's or numpy's Mersenne Twister or PCG64."""

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from torch import nn

from fl_client.distributed_dp import noisy_integer_sum
from fl_client.dp_evaluation import noisy_scores
from fl_client.private_random import (
    gaussian_noise,
    poisson_sample,
    private_stream,
    stream_seed,
)


@pytest.mark.parametrize("seed", [0, 1, 2**255 + 12345, stream_seed(7, "noise")])
def test_a_stream_is_the_rfc_7539_chacha20_keystream_of_its_seed(seed):
    """Checked word for word against another implementation of ChaCha20 (the ``cryptography``
    package's, OpenSSL's): the seed's 32 bytes, little-endian, are the key, the block counter
    and nonce start at zero, over the first 16 blocks."""
    key = seed.to_bytes(32, "little")
    keystream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    expected = keystream.update(bytes(64 * 16))
    drawn = private_stream(seed).bit_generator.random_raw(8 * 16).astype("<u8").tobytes()
    assert drawn == expected


def test_every_bit_of_the_seed_keys_the_stream_and_nothing_wider_is_taken():
    """Found in review: torch's ``manual_seed`` kept a seed's low 32 bits, so each release's
    noise was one of 2^32 streams to search. Seeds alike in their low 32, 64 or 128 bits, or in
    all but the top bit of 256, draw streams of their own; a seed that is not a 256-bit key is
    refused rather than cut down to one."""
    seeds = [5, 5 + 2**32, 5 + 2**64, 5 + 2**128, 5 + 2**255]
    draws = {tuple(private_stream(seed).random(4)) for seed in seeds}
    assert len(draws) == len(seeds)
    assert private_stream(5 + 2**255).random(4).tolist() == private_stream(5 + 2**255).random(
        4).tolist()
    for seed in (2**256, -1):
        with pytest.raises(ValueError, match="256-bit key"):
            private_stream(seed)


def test_the_noise_stream_never_shares_the_sampling_streams_seed():
    """Each stream's seed is a whole SHA-256 of the release's seed and the stream's name: no
    seed, and no nearby seed another round or site gets, keys two streams alike."""
    seeds = range(0, 2**62, 2**62 // 5000)
    noise_seeds = {stream_seed(seed, "noise") for seed in seeds}
    assert len(noise_seeds) == len(seeds)
    for seed in seeds:
        assert not noise_seeds & {seed - 1, seed, seed + 1}
    assert stream_seed(5, "noise") == stream_seed(5, "noise") != stream_seed(5, "sampling")
    assert stream_seed(5, "noise") >= 2**200  # a whole SHA-256, not 63 bits of it


def test_gaussian_noise_is_four_normals_halved_with_the_planned_spread():
    """Known answer (four standard normals from the stream, summed, halved, scaled), and over
    400,000 draws of one seeded stream the mean and standard deviation of N(0, 3^2) within 5
    standard errors."""
    stream, twin = private_stream(11), private_stream(11)
    normals = [twin.standard_normal((2, 3)) for _ in range(4)]
    expected = (normals[0] + normals[1] + normals[2] + normals[3]) * (3.0 / 2)
    assert np.array_equal(gaussian_noise(stream, (2, 3), 3.0), expected)
    draws = gaussian_noise(private_stream(12), (400_000,), 3.0)
    error = 3.0 / np.sqrt(len(draws))
    assert abs(draws.mean()) < 5 * error
    assert abs(draws.std() - 3.0) < 5 * error / np.sqrt(2)


def test_a_poisson_sample_takes_each_unit_at_most_once_and_may_take_none():
    stream = private_stream(3)
    assert poisson_sample(stream, 50, 0.0).tolist() == []
    assert poisson_sample(stream, 50, 1.0).tolist() == list(range(50))
    sample = poisson_sample(stream, 1000, 0.3)
    assert np.array_equal(sample, np.unique(sample)) and 0 <= sample.min() <= sample.max() < 1000


def test_no_draw_of_a_dp_evaluation_or_a_distributed_dp_sum_comes_from_another_generator(
        monkeypatch):
    """The DP evaluation's noise and distributed DP's rounding and Skellam noise draw from the
    ChaCha20 streams alone: torch's generators and numpy's other bit generators fail here, and
    both releases still come out noisy."""
    import opacus  # noqa: F401  (its import, scipy's, reads numpy's generators: before the patch)

    features, labels = torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    model = nn.Linear(4, 2)

    def refused(*args, **kwargs):
        raise AssertionError("a DP draw came from another generator")

    for name in ("normal", "rand", "randn", "randint", "randperm", "bernoulli", "poisson"):
        monkeypatch.setattr(torch, name, refused)
    for name in ("default_rng", "PCG64", "MT19937", "SeedSequence", "RandomState"):
        monkeypatch.setattr(np.random, name, refused)
    contributions = torch.full((5, 3), 0.5, dtype=torch.float64)
    assert noisy_scores(contributions, 1.0, 1) != noisy_scores(contributions, 1.0, 2)
    first = noisy_integer_sum(model, features, labels, 1.0, 50.0, seed=1)
    second = noisy_integer_sum(model, features, labels, 1.0, 50.0, seed=2)
    assert any(not np.array_equal(first[name], second[name]) for name in first)
