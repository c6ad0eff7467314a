"""Forward passes of one fixed shape, so that a row's result is a function of that row alone.

DP bounds what one privacy unit adds to a release; the proofs assume that removing a unit
leaves every other unit's contribution as it was. Two things broke that at the site:

* **Padding.** A pass cut to its longest row left a shorter row's padded keys hidden only by a
  finite mask; a server-crafted layer made one row's loss finite or NaN by whether a longer row
  shared its pass (found in review). Rows of token states therefore share a pass only with rows
  of the same token count.
* **Floating point.** A matrix product gives a row's result in last bits that depend on how
  many rows the product holds (measured here with MKL: a head's logits for one row differ
  between passes of 1 and of 8 or more rows), not on the other rows' values or on the row's
  place. A server that knew a row's exact features could key a crafted model to those bits and
  so to the number of rows sharing the pass (found in review). Every pass on a DP path, and
  every featurization pass, therefore holds exactly ``rows`` rows: the real rows first, then
  copies of the first one, whose results are thrown away (their gradients are zeroed, their
  labels are ``PADDING_LABEL``).

What remains is the site's own machine: a row's bits still depend on its CPU, BLAS and thread
count, which are the site's and the same for every row.
"""

from typing import NamedTuple

import torch

PASS_ROWS = 64
"""Rows per pass for fixed-width features (a head over sentence embeddings or n-grams): a
site's batch of a few hundred rows takes a handful of passes, and at most 63 padding rows are
computed for nothing."""


class PassShape(NamedTuple):
    """How a model family's DP passes are cut: ``rows`` per pass, and whether its features are
    token states ([n, tokens, hidden + 1], the mask channel last), which share a pass only with
    rows of their own token count."""

    rows: int = PASS_ROWS
    token_states: bool = False


FIXED_WIDTH = PassShape()
"""The passes of fixed-width features: ``PASS_ROWS`` rows, one group."""


class Chunk(NamedTuple):
    """One pass: ``index`` holds exactly the pass's row count of row indices, the ``real``
    first ones distinct rows of the data, the rest copies of ``index[0]`` (padding)."""

    index: torch.Tensor
    real: int


def fixed_shape_chunks(groups: torch.Tensor, rows: int) -> list[Chunk]:
    """Row indices in passes of exactly ``rows`` rows, rows of one ``groups`` value (a token
    count; all equal for fixed-width features) sharing a pass, in order of the value then of the
    row. The padding is a function of how many rows a group has, never of their values."""
    if len(groups) == 0:
        return []
    order = torch.argsort(groups, stable=True)
    counts = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    chunks = []
    for group in torch.split(order, counts):
        for part in torch.split(group, rows):
            padding = part[:1].expand(rows - len(part))
            chunks.append(Chunk(torch.cat([part, padding]), len(part)))
    return chunks


def feature_chunks(features: torch.Tensor, passes: PassShape) -> list[Chunk]:
    """``fixed_shape_chunks`` of a DP path's features: token states grouped by token count, so
    that no row is padded for another's sake; other features (sentence embeddings, n-grams, a
    customer's stacked utterances) in one group."""
    if passes.token_states:
        groups = features[..., -1].sum(dim=1).round().long()
    else:
        groups = torch.zeros(len(features), dtype=torch.long)
    return fixed_shape_chunks(groups, passes.rows)
