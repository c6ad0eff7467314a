"""Shamir secret sharing for SecAgg+ over a prime field, instead of Flower's GF(2^128) one.

In SecAgg+ every site splits two secrets (its private-mask seed and its first private key) into
one share per site of the cohort, and in the last stage the server rebuilds one secret per site
from the shares the survivors return, to remove the masks. Flower 1.41 does both with
PyCryptodome's ``Shamir`` (``flwr/common/secure_aggregation/crypto/shamir.py``): pure-Python
arithmetic in GF(2^128), one 16-byte chunk at a time, and the server interpolates through every
share it received. Measured here (``docs/SCALING.md``), the server's rebuild grows far faster
than the cohort: about 6 s a round at 50 sites and over 6 minutes at 100.

This module is a drop-in for Flower's ``create_shares`` and ``combine_shares`` with the same
guarantee: any ``threshold`` shares rebuild the secret, and fewer reveal nothing about it
(each chunk is the constant term of its own polynomial of degree ``threshold - 1`` whose other
coefficients are uniform in the field, drawn with ``secrets``). The field is the integers
modulo the Mersenne prime ``2**521 - 1``, so a chunk is 65 bytes and the arithmetic is Python's
own big integers; the Lagrange weights depend only on which sites answered, so the server
computes them once per round instead of once per secret.

``use_prime_field_sharing`` swaps the pair into Flower. Like the masks
(``fl_protocol/secagg_masks.py``) it must run on every site *and* on the server: shares made by
one are rebuilt by the other. This module is the one place where that swap happens.
"""

import importlib
import secrets
from functools import lru_cache

PRIME = 2**521 - 1
"""The field's modulus, a Mersenne prime: every 65-byte chunk is an element below it."""
CHUNK_BYTES = 65
VALUE_BYTES = 66
"""A share's value of one chunk, big-endian: enough for any element below ``PRIME``."""
INDEX_BYTES = 4
"""A share starts with its x coordinate (1, 2, ...), little-endian, as Flower's shares do."""
LENGTH_BYTES = 4
"""The secret is prefixed with its length, so its zero padding is removed exactly."""

_FLOWER_CLIENT_MOD = "flwr.client.mod.secure_aggregation.secaggplus_mod"
_FLOWER_SERVER_WORKFLOW = "flwr.server.workflow.secure_aggregation.secaggplus_workflow"
"""Where Flower imported its Shamir functions (``create_shares`` on the site,
``combine_shares`` on the server) into its own namespace: the names to replace."""


def split_secret(secret: bytes, threshold: int, num: int) -> list[bytes]:
    """``num`` shares of ``secret`` (x = 1..num), any ``threshold`` of which rebuild it.

    Same signature and use as Flower's ``create_shares``; each share is the 4-byte index, then
    one ``VALUE_BYTES`` value per 65-byte chunk of the length-prefixed, zero-padded secret.
    """
    if not 1 <= threshold <= num < 2 ** (8 * INDEX_BYTES):
        raise ValueError(f"Shamir sharing needs 1 <= threshold <= num, got threshold "
                         f"{threshold}, num {num}")
    data = len(secret).to_bytes(LENGTH_BYTES, "big") + secret
    data += bytes(-len(data) % CHUNK_BYTES)
    shares = [bytearray(x.to_bytes(INDEX_BYTES, "little")) for x in range(1, num + 1)]
    for start in range(0, len(data), CHUNK_BYTES):
        constant = int.from_bytes(data[start : start + CHUNK_BYTES], "big")
        coefficients = [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
        for x, share in enumerate(shares, start=1):
            value = 0
            for coefficient in reversed(coefficients):  # Horner, constant term last
                value = (value + coefficient) * x % PRIME
            share += ((value + constant) % PRIME).to_bytes(VALUE_BYTES, "big")
    return [bytes(share) for share in shares]


def combine_secret(shares: list[bytes]) -> bytes:
    """The secret that ``shares`` (at least the threshold of them, all from one split) rebuild.

    Same signature and use as Flower's ``combine_shares``, which raises ``ValueError`` when
    the shares do not rebuild a secret: so does this, for malformed shares and for too few
    (the length prefix and the padding then fail their check, but for a chance of 2**-32)."""
    if not shares or len({len(share) for share in shares}) != 1:
        raise ValueError("Failed to combine shares: none given, or of different lengths")
    body = len(shares[0]) - INDEX_BYTES
    if body <= 0 or body % VALUE_BYTES:
        raise ValueError(f"Failed to combine shares: {len(shares[0])} bytes is not a share")
    xs = tuple(int.from_bytes(share[:INDEX_BYTES], "little") for share in shares)
    if 0 in xs or len(set(xs)) != len(xs):
        raise ValueError("Failed to combine shares: an index is 0 or repeated")
    weights = _lagrange_weights_at_zero(xs)
    data = bytearray()
    for start in range(INDEX_BYTES, len(shares[0]), VALUE_BYTES):
        values = [int.from_bytes(share[start : start + VALUE_BYTES], "big") for share in shares]
        if any(value >= PRIME for value in values):
            raise ValueError("Failed to combine shares: a value is outside the field")
        constant = sum(w * v for w, v in zip(weights, values, strict=True)) % PRIME
        if constant >= 2 ** (8 * CHUNK_BYTES):
            raise ValueError("Failed to combine shares: too few, or not from one secret")
        data += constant.to_bytes(CHUNK_BYTES, "big")
    length = int.from_bytes(data[:LENGTH_BYTES], "big")
    end = LENGTH_BYTES + length
    if end > len(data) or any(data[end:]) or len(data) - end >= CHUNK_BYTES:
        raise ValueError("Failed to combine shares: too few, or not from one secret")
    return bytes(data[LENGTH_BYTES:end])


@lru_cache(maxsize=8)
def _lagrange_weights_at_zero(xs: tuple[int, ...]) -> list[int]:
    """``w_i`` with ``f(0) = sum(w_i f(x_i))`` for every polynomial of degree below
    ``len(xs)``: public, the same for every site's secret in a round."""
    weights = []
    for i, x_i in enumerate(xs):
        numerator = denominator = 1
        for j, x_j in enumerate(xs):
            if j != i:
                numerator = numerator * x_j % PRIME
                denominator = denominator * (x_j - x_i) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return weights


def use_prime_field_sharing() -> None:
    """Make Flower's SecAgg+ client mod and server workflow share and rebuild secrets with
    ``split_secret`` and ``combine_secret``. Idempotent and cheap; call it in the site's and the
    server's process alike."""
    # import_module, not attribute access: the client package's ``secaggplus_mod`` attribute is
    # the mod function, which shadows the module of the same name.
    importlib.import_module(_FLOWER_CLIENT_MOD).create_shares = split_secret
    importlib.import_module(_FLOWER_SERVER_WORKFLOW).combine_shares = combine_secret
