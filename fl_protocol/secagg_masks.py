"""SecAgg+ masks drawn from a cryptographic keystream instead of Flower's Mersenne Twister.

Flower 1.41 draws every SecAgg+ mask from ``pseudo_rand_gen``: it XOR-folds the mask seed into
32 bits and seeds numpy's Mersenne Twister with them. The pairwise seeds are base64 text, so at
most 28 of those bits are random; whoever sees a site's masked update can try every seed and
peel its masks off, and the Twister is not a cryptographic generator to begin with. Its
``randint(0, num_range - 1)`` also never draws ``num_range - 1``, so the masks are not uniform.
Upstream tracks this as the open issue "SecAgg+ uses non-cryptographic PRG for mask
generation".

The masks are what keep a single site's model update secret from the server and from the other
sites: the server learns only the sum of the updates, never one site's. ``mask_arrays`` is a
drop-in for ``pseudo_rand_gen`` keyed with the whole seed (SHA-256 under a domain label, then
ChaCha20). ``use_cryptographic_masks`` swaps it into Flower; it must run on every site *and* on
the server, because the server regenerates the same masks from the recovered seeds to unmask the
sum: one side patched and the other not gives a garbage aggregate. This module is the one place
where the swap happens.

Under distributed DP the masks are also keyed with the round's plan (``plan_binding``): every
value from which a site plans its noise share and counts on the others' (run, round, rounds,
cohort, target epsilon, delta, tolerated sites). A server that told sites different plans (one
site 40 rounds, the others 1, so that they add a fortieth of the noise it counts on; found in
review) gets pairwise masks that do not cancel, and a sum that is uniform noise.

Every mask is also keyed with the shapes it is drawn for. A site plans its noise share by the
model's size (its sensitivity grows with it), so a server that sent one site a 77-label model
and the others a 2-label one had the others add a sixtieth of the noise that site counts on;
and one keystream cut by shape gave both the same pairwise masks on the positions they share,
which then cancelled there, exposing that site's first rows under the others' small noise
(found in review). Keyed with the shapes, masks of different models share no value.
"""

import hashlib
import importlib
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

DOMAIN = b"fedintent/secagg+-mask/v2\x00"
"""Prefix of the seed before hashing: these keys derive from no other use of the same seed."""

BOUND_DOMAIN = b"fedintent/secagg+-mask/plan-bound/v2\x00"
"""The prefix instead, followed by the plan's digest, for masks bound to a plan."""

_PLAN: ContextVar[bytes] = ContextVar("fedintent_secagg_plan", default=b"")
"""The digest of the plan the masks being drawn are bound to (empty: unbound)."""

_NONCE = bytes(16)
"""ChaCha20's counter and nonce; zero is safe because every seed gets its own key."""

_FLOWER_MODULES = (
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
)
"""Where Flower imported ``pseudo_rand_gen`` into its own namespace: the names to replace."""


def mask_arrays(
    seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]
) -> list[np.ndarray]:
    """One int64 array per shape, uniform over [0, num_range), from one ChaCha20 keystream
    keyed with the seed and the shapes (and a bound plan).

    Same signature and output as Flower's ``pseudo_rand_gen``, so the two are interchangeable;
    the same seed and shapes always give the same masks, which is what lets the server unmask.
    """
    if (
        isinstance(num_range, bool)
        or not isinstance(num_range, int)
        or not 2 <= num_range <= 2**32
        or num_range & (num_range - 1)
    ):
        raise ValueError(
            f"num_range must be a power of two between 2 and 2**32, got {num_range!r}: only "
            "then is word & (num_range - 1) of a uniform 32-bit word exactly uniform"
        )
    sizes = [math.prod(shape) for shape in dimensions_list]
    plan = _PLAN.get()
    shapes = json.dumps([[int(length) for length in shape] for shape in dimensions_list])
    key = hashlib.sha256((BOUND_DOMAIN + plan if plan else DOMAIN)
                         + hashlib.sha256(shapes.encode("ascii")).digest() + seed).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    keystream = encryptor.update(bytes(4 * sum(sizes)))
    words = np.frombuffer(keystream, dtype="<u4") & np.uint32(num_range - 1)
    values = words.astype(np.int64)
    output = []
    offset = 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        output.append(values[offset : offset + size].reshape(shape))
        offset += size
    return output


def use_cryptographic_masks() -> None:
    """Make Flower's SecAgg+ client mod and server workflow draw their masks from ``mask_arrays``.

    Idempotent and cheap; call it in the site's and the server's process alike.
    """
    for name in _FLOWER_MODULES:
        # import_module, not attribute access: the client package's ``secaggplus_mod`` attribute
        # is the mod function, which shadows the module of the same name.
        importlib.import_module(name).pseudo_rand_gen = mask_arrays


def plan_binding(run_name: str, server_round: int, num_rounds: int, cohort_size: int,
                 target_epsilon: float, delta: float, tolerated_sites: int) -> bytes:
    """The digest of a distributed-DP round's plan, as the site reads it
    (``fl_client.site_policy.round_request``) and the server sends it: floats exactly, by
    their hexadecimal form."""
    plan = [run_name, server_round, num_rounds, cohort_size, float(target_epsilon).hex(),
            float(delta).hex(), tolerated_sites]
    return hashlib.sha256(json.dumps(plan).encode("utf-8")).digest()


@contextmanager
def masks_bound_to(plan: bytes) -> Iterator[None]:
    """Draw every mask in this block (this thread or task only) keyed with ``plan`` as well."""
    token = _PLAN.set(plan)
    try:
        yield
    finally:
        _PLAN.reset(token)
