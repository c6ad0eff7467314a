"""The integer sum under distributed DP: how a site's integers cross SecAgg+ exactly.

Under ``privacy-model = distributed`` a site sends integers: its clipped gradient sum scaled by
``integer_norm / clip-norm`` and randomly rounded, plus its share of integer noise
(``fl_client/distributed_dp.py``). The guarantee is computed for the *exact* sum of those
integers, so the transport must neither round nor clip them. Flower's SecAgg+ quantizes each
value ``x`` it is given as ``round((clip(x * w / max_weight, -c, c) + c) * T / 2c)`` and sums
modulo ``modulus``. Each site therefore sends with weight ``w = max_weight`` and the server sets
``c = T / 2``: the quantization is then the identity on integers in ``[-T/2, T/2)``. A site first
wraps its vector into that range modulo ``T`` (``wrap``), so nothing is ever clipped, and the
server decodes the sum modulo ``T`` (``decode``): the true sum whenever it lies in
``[-T/2, T/2)``. The sum modulo ``T`` is a function of the true sum, but what SecAgg+ unmasks is
the sum modulo ``2**32``, which is ``T x (sites + 1)`` or more: on its own it would also show how
many sites' values wrapped, each wrap a threshold on one site's value under its own noise share
alone (found in review). So every site adds a secret uniform multiple of ``T`` to each masked
value (``hide_wraps``): the unmasked sum's bits above ``T`` are then uniform and independent of
the data, and only the sum modulo ``T`` is revealed. Privacy does not depend on the range, only
exactness does.

Flower also adds each site's weight ``T`` as one more summed value, so ``T x sites`` must stay
below the modulus (``sum_range``). With ``MODULUS = 2**32`` every masked value fits in 32 bits,
and a site sends it as ``uint32`` (``compact``): 32 bits per coordinate, the size of the float32
update of a plain round.
"""

import math
import secrets

import numpy as np

MODULUS = 2**32
"""SecAgg+'s modulus under distributed DP: every masked value fits in an unsigned 32-bit word."""
WEIGHT = 10_000.0
"""The weight every site sends with and the server's ``max_weight``: ratio 1, no scaling."""


def sum_range(num_sites: int) -> int:
    """``T``, the range of the decoded sum: the largest power of two with ``T x (sites + 1) <=
    MODULUS``, so Flower's summed weights (``T`` per site) never wrap."""
    if num_sites < 1:
        raise ValueError(f"a secure sum needs at least one site, got {num_sites}")
    return MODULUS >> math.ceil(math.log2(num_sites + 1))


def integer_norm(dimension: int) -> int:
    """The L2 norm one unit's clipped gradient has after scaling to integers: the smallest
    power of two of at least ``32 sqrt(dimension)`` (and 256), so that rounding a site's sum
    (less than 1 per coordinate, ``sqrt(dimension)`` in L2) adds at most 1/32 to the
    sensitivity (``fl_client/distributed_dp.rounding_bound``; 2% for the head, at 8192) while
    the sum of many thousands of units stays inside ``sum_range``."""
    return max(256, 2 ** math.ceil(math.log2(32 * math.sqrt(dimension))))


def wrap(values: np.ndarray, modulus: int) -> np.ndarray:
    """``values`` modulo ``modulus``, as integers in ``[-modulus/2, modulus/2)``."""
    half = modulus // 2
    return np.mod(np.asarray(values, dtype=np.int64) + half, modulus) - half


def decode(mean: np.ndarray, num_sites: int, modulus: int) -> np.ndarray:
    """The integer sum from the mean Flower's SecAgg+ unmasks (the sum over ``num_sites``
    divided by ``num_sites``), modulo ``modulus`` in ``[-modulus/2, modulus/2)``."""
    total = np.rint(np.asarray(mean, dtype=np.float64) * num_sites).astype(np.int64)
    return wrap(total, modulus)


def hide_wraps(masked: list[np.ndarray], modulus: int) -> list[np.ndarray]:
    """Masked values (in ``[0, MODULUS)``) plus a uniform multiple of ``modulus`` each, modulo
    ``MODULUS``, drawn from the operating system's cryptographic generator: the sum of all sites'
    values keeps its residue modulo ``modulus`` (a power of two dividing ``MODULUS``) and
    nothing above it. Only for the parameters: Flower's summed weight is read whole."""
    high = np.uint32(MODULUS - modulus)  # the bits above the modulus
    out = []
    for array in masked:
        array = np.asarray(array, dtype=np.int64)
        words = np.frombuffer(secrets.token_bytes(4 * array.size), dtype="<u4")
        offsets = (words & high).astype(np.int64).reshape(array.shape)
        out.append(np.mod(array + offsets, MODULUS))
    return out


def compact(masked: list[np.ndarray]) -> list[np.ndarray]:
    """Masked values (in ``[0, MODULUS)``) as ``uint32``: half the bytes of Flower's int64."""
    out = []
    for array in masked:
        array = np.asarray(array)
        if array.size and (array.min() < 0 or array.max() >= MODULUS):
            raise ValueError("a masked value outside [0, 2**32) cannot be sent in 32 bits")
        out.append(array.astype(np.uint32))
    return out


def expand(masked: list[np.ndarray]) -> list[np.ndarray]:
    """The inverse of ``compact``: the int64 arrays Flower's SecAgg+ sums."""
    return [np.asarray(array).astype(np.int64) for array in masked]
