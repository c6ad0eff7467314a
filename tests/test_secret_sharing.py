"""fl_protocol/secret_sharing.py: SecAgg+'s Shamir sharing over GF(2**521 - 1).

What the protocol needs of it: any ``threshold`` shares rebuild the secret, fewer do not, the
shares of one secret are fresh random every time, malformed shares are refused rather than
rebuilt into something, and both Flower namespaces use it once installed. The format is pinned
by shares built here by hand from a known polynomial."""

import importlib
import itertools
import random

import pytest
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares

from fl_protocol.secret_sharing import (
    INDEX_BYTES,
    PRIME,
    VALUE_BYTES,
    combine_secret,
    split_secret,
    use_prime_field_sharing,
)

SECRETS = [b"", b"\x00", b"seed" * 8, bytes(range(61)), bytes(range(256)) + b"x" * 50]
"""Empty, one zero byte, a 32-byte seed, a chunk's worth with the prefix, and a 306-byte key
(the size of the PEM private key Flower shares) over five chunks."""


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize(("threshold", "num"), [(1, 1), (2, 3), (7, 10), (34, 50), (67, 100)])
def test_any_threshold_shares_rebuild_the_secret(secret: bytes, threshold: int,
                                                 num: int) -> None:
    shares = split_secret(secret, threshold, num)
    assert len(shares) == num
    assert combine_secret(shares) == secret
    rng = random.Random(f"{threshold}/{num}")
    for _ in range(5):
        assert combine_secret(rng.sample(shares, threshold)) == secret


def test_every_subset_of_a_small_split_rebuilds_exactly_from_the_threshold_up() -> None:
    secret = b"private mask seed"
    shares = split_secret(secret, 3, 5)
    for size in range(1, 6):
        for subset in itertools.combinations(shares, size):
            if size >= 3:
                assert combine_secret(list(subset)) == secret
            else:
                with pytest.raises(ValueError, match="too few"):
                    combine_secret(list(subset))


def test_shares_are_fresh_random_and_hide_the_secret_below_the_threshold() -> None:
    """Two splits of one secret share nothing; with threshold 2 one share is the secret plus a
    uniform field element times x, so its values for two different secrets look alike (here:
    no value repeats, and none is the secret itself)."""
    first, second = split_secret(b"A" * 32, 2, 4), split_secret(b"A" * 32, 2, 4)
    assert not set(first) & set(second)
    other = split_secret(b"B" * 32, 2, 4)
    values = {share[INDEX_BYTES:] for share in first + second + other}
    assert len(values) == 12
    assert all(b"A" * 32 not in share and b"B" * 32 not in share for share in first + other)


def test_the_format_is_pinned_by_a_hand_built_split() -> None:
    """The 4-byte little-endian index, then one 66-byte big-endian value per 65-byte chunk of
    the length-prefixed, zero-padded secret, on the polynomial constant + 5 x (threshold 2)."""
    secret = b"fedintent"
    chunk = len(secret).to_bytes(4, "big") + secret
    constant = int.from_bytes(chunk + bytes(65 - len(chunk)), "big")
    shares = [x.to_bytes(4, "little") + ((constant + 5 * x) % PRIME).to_bytes(VALUE_BYTES, "big")
              for x in (2, 7)]
    assert combine_secret(shares) == secret
    assert len(split_secret(secret, 2, 3)[0]) == 4 + 66
    assert len(split_secret(bytes(62), 2, 3)[0]) == 4 + 2 * 66
    assert [s[:INDEX_BYTES] for s in split_secret(secret, 2, 3)] == [
        bytes([1, 0, 0, 0]), bytes([2, 0, 0, 0]), bytes([3, 0, 0, 0])]


@pytest.mark.parametrize(("mangle", "message"), [
    (lambda shares: [], "none given"),
    (lambda shares: [shares[0], shares[1][:-1]], "different lengths"),
    (lambda shares: [s[:INDEX_BYTES + 10] for s in shares], "is not a share"),
    (lambda shares: [shares[0], shares[0], shares[1]], "0 or repeated"),
    (lambda shares: [bytes(INDEX_BYTES) + shares[0][INDEX_BYTES:], *shares[1:]], "0 or repeated"),
    (lambda shares: [shares[0][:INDEX_BYTES] + b"\xff" * VALUE_BYTES, *shares[1:]],
     "outside the field"),
    (lambda shares: [shares[0], split_secret(b"other", 2, 3)[1]], "not from one secret"),
])
def test_malformed_shares_are_refused(mangle, message: str) -> None:
    shares = split_secret(b"sk1 of a site", 2, 3)
    with pytest.raises(ValueError, match=message):
        combine_secret(mangle(shares))


def _one_share(*values: int) -> list[bytes]:
    """The lone share (x = 1) of a threshold-1 split: its values are the chunks themselves."""
    return [(1).to_bytes(INDEX_BYTES, "little")
            + b"".join(value.to_bytes(VALUE_BYTES, "big") for value in values)]


@pytest.mark.parametrize(("shares", "message"), [
    (lambda: [(1).to_bytes(4, "little")] * 2, "is not a share"),
    (lambda: _one_share(PRIME), "outside the field"),
    (lambda: _one_share(2**520), "not from one secret"),
    (lambda: _one_share(int.from_bytes((61).to_bytes(4, "big") + bytes(61), "big"), 0),
     "not from one secret"),
])
def test_shares_just_past_each_limit_are_refused(shares, message: str) -> None:
    """A bare index, the field's modulus, the first value above a chunk, and a whole chunk of
    padding: each the smallest input its check must catch."""
    with pytest.raises(ValueError, match=message):
        combine_secret(shares())


def test_a_share_at_the_limits_is_accepted() -> None:
    """The largest chunk a secret makes (a full chunk, no padding) rebuilds."""
    largest = int.from_bytes((61).to_bytes(4, "big") + b"\xff" * 61, "big")
    assert combine_secret(_one_share(largest)) == b"\xff" * 61


@pytest.mark.parametrize(("threshold", "num"), [(0, 3), (4, 3), (1, 0)])
def test_an_impossible_split_is_refused(threshold: int, num: int) -> None:
    with pytest.raises(ValueError, match="threshold"):
        split_secret(b"x", threshold, num)


def test_use_prime_field_sharing_swaps_both_flower_namespaces_idempotently(monkeypatch) -> None:
    client = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    server = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")
    monkeypatch.setattr(client, "create_shares", create_shares)  # Flower's own, as at import
    monkeypatch.setattr(server, "combine_shares", combine_shares)
    use_prime_field_sharing()
    use_prime_field_sharing()
    assert client.create_shares is split_secret
    assert server.combine_shares is combine_secret
