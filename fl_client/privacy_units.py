"""The privacy unit: what one DP-SGD "example" is, and so what the guarantee protects.

* ``utterance`` (default): each training utterance is sampled and clipped on its own. The
  guarantee covers adding or removing one utterance. A customer with k utterances at the site is
  protected only at group-privacy strength (roughly k times epsilon).
* ``customer``: all of one ``customer_id``'s utterances at the site form one unit, sampled
  together and clipped together (the gradient of the customer's mean loss is clipped to
  ``clip-norm``). The guarantee covers adding or removing one customer's entire history at that
  site. It does not cover a customer who also calls another site: each site's guarantee is
  separate. At most ``MAX_UTTERANCES_PER_CUSTOMER`` utterances per customer are used (the rest
  are dropped and counted), which bounds memory and compute, not the privacy loss: clipping does.
"""

from collections import defaultdict

import torch

MAX_UTTERANCES_PER_CUSTOMER = 16
PADDING_LABEL = -100


def group_by_customer(
    features: torch.Tensor, labels: torch.Tensor, units: list[str]
) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """Stack each customer's utterances into one padded training example.

    Returns features ``(customers, cap, dim)``, labels ``(customers, cap)`` padded with
    ``PADDING_LABEL``, the customers in that order, and how many utterances were dropped by the
    cap. Customers are ordered by first appearance, so the grouping is deterministic.
    """
    rows: dict[str, list[int]] = defaultdict(list)
    for index, unit in enumerate(units):
        rows[unit].append(index)
    cap = min(MAX_UTTERANCES_PER_CUSTOMER, max(len(r) for r in rows.values()))
    grouped_x = torch.zeros(len(rows), cap, features.shape[1], dtype=features.dtype)
    grouped_y = torch.full((len(rows), cap), PADDING_LABEL, dtype=torch.long)
    dropped = 0
    for position, indices in enumerate(rows.values()):
        kept = indices[:cap]
        dropped += len(indices) - len(kept)
        grouped_x[position, : len(kept)] = features[kept]
        grouped_y[position, : len(kept)] = labels[kept]
    return grouped_x, grouped_y, list(rows), dropped
