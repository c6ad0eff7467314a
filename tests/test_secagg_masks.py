"""SecAgg+ masks from ChaCha20 keyed with the whole seed, and their swap into Flower."""

import hashlib
import importlib
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

from fl_protocol.secagg_masks import (
    DOMAIN,
    mask_arrays,
    masks_bound_to,
    plan_binding,
    use_cryptographic_masks,
)

SEED = bytes(range(32))
SHAPES = [(3,), (2, 2), ()]
FLOWER_MODULES = (
    "flwr.client.mod.secure_aggregation.secaggplus_mod",
    "flwr.server.workflow.secure_aggregation.secaggplus_workflow",
)


def chacha20_words(seed: bytes, count: int, shapes: str = "[[3], [2, 2], []]") -> list[int]:
    """The first ``count`` little-endian 32-bit keystream words of masks drawn for ``shapes``
    (as JSON), computed without the module."""
    shapes_digest = hashlib.sha256(shapes.encode()).digest()
    key = hashlib.sha256(b"fedintent/secagg+-mask/v2\x00" + shapes_digest + seed).digest()
    encryptor = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()
    return list(struct.unpack(f"<{count}I", encryptor.update(bytes(4 * count))))


def test_known_answer_pinned_and_matching_an_independent_chacha20():
    masks = mask_arrays(SEED, 2**32, SHAPES)
    pinned = [
        [2584226791, 3211961808, 2576040978],
        [[3507915298, 4066361344], [1949782690, 1076371323]],
        3544017192,
    ]
    assert [m.tolist() for m in masks] == pinned
    independent = chacha20_words(SEED, 8)
    assert independent == [*pinned[0], *pinned[1][0], *pinned[1][1], pinned[2]]
    assert DOMAIN == b"fedintent/secagg+-mask/v2\x00"


def test_known_answer_for_a_small_range_keeps_the_low_bits():
    masks = mask_arrays(SEED, 2**8, SHAPES)
    flat = np.concatenate([m.ravel() for m in masks]).tolist()
    assert flat == [w & 0xFF for w in chacha20_words(SEED, 8)]


def test_seeds_that_collide_under_flowers_32_bit_fold_give_different_masks():
    tweak = bytes([0x5A, 0xC3, 0x11, 0x7E])
    words = [SEED[i : i + 4] for i in range(0, len(SEED), 4)]
    words[2] = bytes(a ^ b for a, b in zip(words[2], tweak, strict=True))
    words[5] = bytes(a ^ b for a, b in zip(words[5], tweak, strict=True))
    other = b"".join(words)
    assert other != SEED
    shapes = [(1000,)]
    flower_a, flower_b = pseudo_rand_gen(SEED, 2**32, shapes), pseudo_rand_gen(other, 2**32, shapes)
    assert np.array_equal(flower_a[0], flower_b[0])
    ours_a, ours_b = mask_arrays(SEED, 2**32, shapes), mask_arrays(other, 2**32, shapes)
    assert not np.array_equal(ours_a[0], ours_b[0])


@pytest.mark.parametrize("num_range", [2**32, 2**8])
def test_values_lie_in_range_as_int64_arrays_of_the_asked_shapes(num_range):
    shapes = [(5000,), (40, 25), (), (3, 0), (2, 3, 4)]
    masks = mask_arrays(b"range-check-seed", num_range, shapes)
    assert len(masks) == len(shapes)
    for mask, shape in zip(masks, shapes, strict=True):
        assert isinstance(mask, np.ndarray)
        assert mask.dtype == np.int64
        assert mask.shape == shape
        if mask.size:
            assert mask.min() >= 0
            assert mask.max() < num_range
    big = np.concatenate([m.ravel() for m in masks])
    assert big.max() > num_range // 2  # the top bits are drawn too, not only the low ones


@pytest.mark.parametrize("num_range", [2, 4])
def test_the_top_value_occurs_which_flowers_generator_never_draws(num_range):
    ours = mask_arrays(SEED, num_range, [(1000,)])[0]
    flowers = pseudo_rand_gen(SEED, num_range, [(1000,)])[0]
    assert set(ours.tolist()) == set(range(num_range))
    assert num_range - 1 not in flowers.tolist()


@pytest.mark.parametrize("num_range", [0, 1, 3, 1000, 2**32 + 1, 2**33, -4, True, 2.0**16])
def test_a_range_that_is_not_a_power_of_two_up_to_2_32_is_refused(num_range):
    with pytest.raises(ValueError, match="power of two"):
        mask_arrays(SEED, num_range, [(3,)])


def test_use_cryptographic_masks_swaps_both_flower_namespaces_idempotently(monkeypatch):
    modules = [importlib.import_module(name) for name in FLOWER_MODULES]
    for module in modules:  # Flower's own generator, as before any fedintent code ran
        monkeypatch.setattr(module, "pseudo_rand_gen", pseudo_rand_gen)
    use_cryptographic_masks()
    use_cryptographic_masks()
    for module in modules:
        assert module.pseudo_rand_gen is mask_arrays


def test_same_seed_same_masks_and_different_seeds_different_masks():
    shapes = [(300,), (7, 11), ()]
    first = mask_arrays(SEED, 2**32, shapes)
    again = mask_arrays(bytes(SEED), 2**32, shapes)
    other = mask_arrays(SEED[:-1] + b"\xff", 2**32, shapes)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not any(np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_masks_drawn_for_other_shapes_share_no_value():
    """A site sent a 77-label model and its peers a 2-label one plan different noise; one
    keystream cut by shape gave them equal pairwise masks on the positions they share, which
    cancelled there, exposing that site's first rows under the peers' smaller noise (review
    123 M1)."""
    split = mask_arrays(SEED, 2**32, [(10,), (5, 2), ()])
    whole = mask_arrays(SEED, 2**32, [(21,)])[0]
    assert not np.any(np.concatenate([m.ravel() for m in split]) == whole)
    assert np.concatenate([m.ravel() for m in split]).tolist() == chacha20_words(
        SEED, 21, "[[10], [5, 2], []]")
    with masks_bound_to(plan_binding("r", 1, 30, 10, 8.0, 1e-5, 1)):
        victim = mask_arrays(SEED, 2**32, [(1,), (77, 16), (77,)])
        peer = mask_arrays(SEED, 2**32, [(1,), (2, 16), (2,)])
    flat_victim, flat_peer = (np.concatenate([m.ravel() for m in one]) for one in (victim, peer))
    assert not np.any(flat_victim[:flat_peer.size] == flat_peer)


def test_values_are_roughly_uniform():
    num_range = 2**16
    values = mask_arrays(b"uniformity", num_range, [(100_000,)])[0]
    midpoint = (num_range - 1) / 2
    assert abs(values.mean() - midpoint) < 0.01 * midpoint
    counts = np.bincount(values >> 12, minlength=16)  # 16 equal buckets of the range
    assert counts.min() > 0.9 * 100_000 / 16
    assert counts.max() < 1.1 * 100_000 / 16


PLAN = {"run_name": "run-1", "server_round": 3, "num_rounds": 40, "cohort_size": 5,
        "target_epsilon": 2.0, "delta": 1e-5, "tolerated_sites": 1}


@pytest.mark.parametrize(("field", "other"), [
    ("run_name", "run-2"), ("server_round", 4), ("num_rounds", 1), ("cohort_size", 6),
    ("target_epsilon", 2.0000000000000004), ("delta", 1.1e-5), ("tolerated_sites", 0),
])
def test_masks_bound_to_a_plan_cancel_only_between_sites_told_the_same_plan(field, other):
    """Under distributed DP a server that tells one site another plan (40 rounds to one, 1 to
    the rest; an epsilon off by one ulp) must get pairwise masks that do not cancel, while
    every site and the server told the same plan draw the same masks from a seed, and they
    differ from the unbound ones. Found by stop 65's mutation pass: no fast test drew a bound
    mask (``BOUND_DOMAIN + plan`` as ``-`` survived, ``plan_binding`` ran in no fast test)."""
    shapes = [(64,)]
    bound = plan_binding(**PLAN)
    told_otherwise = plan_binding(**{**PLAN, field: other})
    assert plan_binding(**PLAN) == bound != told_otherwise
    with masks_bound_to(bound):
        site = mask_arrays(SEED, 2**32, shapes)[0]
        server = mask_arrays(SEED, 2**32, shapes)[0]
    with masks_bound_to(told_otherwise):
        other_site = mask_arrays(SEED, 2**32, shapes)[0]
    unbound = mask_arrays(SEED, 2**32, shapes)[0]
    assert np.array_equal(site, server)
    assert not np.array_equal(site, other_site)
    assert not np.array_equal(site, unbound)
    assert not np.array_equal(other_site, unbound)


def test_masks_are_unbound_again_after_the_block_and_a_nested_block_restores_the_outer_plan():
    """A plan's binding holds only inside ``masks_bound_to``: the next round without
    distributed DP (or another run in the process) must draw the unbound masks its server
    regenerates, or its sum is garbage. (Mutant: ``_PLAN.reset`` removed.)"""
    shapes = [(16,)]
    unbound = mask_arrays(SEED, 2**32, shapes)[0]
    outer, inner = plan_binding(**PLAN), plan_binding(**{**PLAN, "server_round": 4})
    with masks_bound_to(outer):
        in_outer = mask_arrays(SEED, 2**32, shapes)[0]
        with masks_bound_to(inner):
            in_inner = mask_arrays(SEED, 2**32, shapes)[0]
        assert np.array_equal(mask_arrays(SEED, 2**32, shapes)[0], in_outer)
    assert not np.array_equal(in_outer, in_inner)
    assert np.array_equal(mask_arrays(SEED, 2**32, shapes)[0], unbound)
