"""Every random draw a site's DP guarantee rests on, from ChaCha20.

A DP release is only as private as its randomness is unpredictable to the server: noise it could
predict it could subtract, and a Poisson batch it could predict would void the amplification by
subsampling the accountant counts on. Each release's seed is a 256-bit secret of the site
(``site_secret.private_seed``); this module turns it into draws with ChaCha20 (20 rounds, the
seed as the key), a cryptographically secure generator: what the server sees of one stream
tells it nothing of the rest of that stream or of any other. Through ``randomgen``'s ChaCha, a
numpy bit generator, the draws are numpy's own algorithms (normals, Poisson, bounded integers)
fed by the ChaCha20 keystream of RFC 7539 (``tests/test_private_random.py`` checks it word for
word against the ``cryptography`` package's ChaCha20).

It replaced PyTorch's Mersenne Twister, which is not a cryptographic generator (624 of its
outputs give away its state, and with it every later draw), for the DP-SGD noise and Poisson
sampling (``dp_training``), the DP evaluation's noise (``dp_evaluation``) and distributed DP's
rounding, and numpy's PCG64 (not a cryptographic generator either) for distributed DP's Skellam
noise (``distributed_dp``). Every use draws from a stream of its own (``stream_seed``).
"""

import hashlib

import numpy as np
from randomgen import ChaCha

SEED_BITS = 256
"""A stream's key: ChaCha20's whole key, so no seed space is smaller than the cipher's."""
CHACHA_ROUNDS = 20
"""ChaCha20, the RFC 7539 cipher; fewer rounds trade security margin for speed."""
NOISE_DRAWS = 4
"""Standard normals summed (and halved) for each Gaussian noise value: the same N(0, 1), but not
the few floating-point values one draw can take, from which the exact value under the noise
could be told (the attacks of Jin et al. 2022; the remedy of Holohan and Braghin 2021, section
5.1, which Opacus' ``secure_mode`` also uses)."""


def private_stream(seed: int) -> np.random.Generator:
    """A generator of draws keyed by ``seed`` (below 2**256): the same seed gives the same
    draws, which a resumed run's tests rely on; no two seeds' streams are related."""
    if not 0 <= seed < 2**SEED_BITS:
        raise ValueError(f"a private stream's seed is a {SEED_BITS}-bit key, got one of "
                         f"{seed.bit_length()} bits")
    return np.random.Generator(ChaCha(key=seed, rounds=CHACHA_ROUNDS))


def stream_seed(seed: int, stream: str) -> int:
    """A seed of its own for one random stream drawn from ``seed`` (a 256-bit hash of both): the
    noise must be independent of the Poisson sampling, which the accounting assumes, and no
    offset of ``seed`` can make two streams meet."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{stream}".encode()).digest(), "big")


def gaussian_noise(stream: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """N(0, ``std``^2) noise of ``shape`` (float64): ``NOISE_DRAWS`` standard normals summed and
    divided by the square root of their number, then scaled."""
    total = stream.standard_normal(shape)
    for _ in range(NOISE_DRAWS - 1):
        total += stream.standard_normal(shape)
    return total * (std / np.sqrt(NOISE_DRAWS))


def poisson_sample(stream: np.random.Generator, units: int, rate: float) -> np.ndarray:
    """The indices of a Poisson sample of ``units``: each taken independently with probability
    ``rate``, the sampling the accountant's amplification assumes (the batch's size varies, and
    may be zero)."""
    return np.flatnonzero(stream.random(units) < rate)
