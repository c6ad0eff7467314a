"""The privacy unit: what one DP-SGD "example" is, and so what the guarantee protects.

* ``utterance`` (default): each training utterance is sampled and clipped on its own. The
  guarantee covers adding or removing one utterance. A customer with k utterances at the site is
  protected only at group-privacy strength, whose loss grows like k squared, not k times
  epsilon (``privacy_ledger.group_rdp``; at the defaults 17.7 for 2 utterances, 46 for 4).
* ``customer``: all of one ``customer_id``'s utterances at the site form one unit, sampled
  together and clipped together (the gradient of the customer's mean loss is clipped to
  ``clip-norm``). The guarantee covers adding or removing one customer's entire history at that
  site. It does not cover a customer who also calls another site: each site's guarantee is
  separate. At most ``MAX_UTTERANCES_PER_CUSTOMER`` utterances per customer are used (the rest
  are dropped and counted), which bounds memory and compute, not the privacy loss: clipping does.

A unit is known by its identity (``site_data``), which depends on how its rows are written; its
*aliases* are the identities it keeps however they are written (``unit_aliases``), and the ledger
charges both, so the same unit written another way keeps the budget it spent. A customer is one
unit however its id is written: the forms of one id in a split train as one unit, and every
form records its spend under the id's canonical form (``customer_ids``), so a form seen later
starts from what the others spent.
"""

from collections import defaultdict
from collections.abc import Sequence

import torch

from fl_client.customer_ids import ledger_name
from fl_client.site_data import SiteSplit

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
    # always the cap, never the most any customer has: a pass's shape (and so the last bits of
    # every customer's result) must not depend on one customer's count (``models.fixed_shape``)
    cap = MAX_UTTERANCES_PER_CUSTOMER
    grouped_x = torch.zeros(len(rows), cap, features.shape[1], dtype=features.dtype)
    grouped_y = torch.full((len(rows), cap), PADDING_LABEL, dtype=torch.long)
    dropped = 0
    for position, indices in enumerate(rows.values()):
        kept = indices[:cap]
        dropped += len(indices) - len(kept)
        grouped_x[position, : len(kept)] = features[kept]
        grouped_y[position, : len(kept)] = labels[kept]
    return grouped_x, grouped_y, list(rows), dropped


def unit_aliases(
    privacy_unit: str, customer_units: Sequence[str], ids: Sequence[str],
    aliases: Sequence[tuple[str, ...]], customers: Sequence[str | None] | None = None,
) -> dict[str, tuple[tuple[str, ...], ...]]:
    """Each unit's other identities, grouped by the unit they were: from its rows'
    (``customer_units``: the row's customer, or the row itself without one; ``ids``,
    ``aliases`` and ``customers``, the id as the row writes it, per row, as ``SiteSplit``
    holds them).

    An utterance has one group, its row's aliases (its conversation, its customer and text),
    all names of the one utterance. A customer has a group per row: first the row's own
    identity, which was a unit of its own while the row had no ``customer_id`` (the customer
    itself for such a row now), then its aliases; a group per other form its rows write its id
    in, each a unit of its own until now; and a group of its ``customer_ids.ledger_name``,
    under which every form of its id records, so that a form seen later (an export in
    another case) starts from the spends of the forms before it. Units that were apart are a
    group of people to the releases they took part in, so their spends add up when they
    become one customer (``privacy_budget.charge_round``)."""
    found: dict[str, dict[tuple[str, str], dict[str, None]]] = {}  # unit -> group -> its names
    by_customer = privacy_unit == "customer"
    customers = customers if customers is not None else [None] * len(ids)
    for unit_of_row, uid, row_aliases, customer in zip(customer_units, ids, aliases, customers,
                                                       strict=True):
        unit = unit_of_row if by_customer else uid
        groups = found.setdefault(unit, {})
        names = groups.setdefault(("row", uid if by_customer else ""), {})
        if by_customer:
            names[uid] = None
        names.update(dict.fromkeys(name for name in row_aliases if name != unit))
        if by_customer and customer is not None:
            if customer != unit:
                groups.setdefault(("form", customer), {customer: None})
            canonical = ledger_name(customer)
            groups.setdefault(("canonical", canonical), {canonical: None})
    return {unit: tuple(tuple(names) for names in groups.values() if names)
            for unit, groups in found.items()}


def split_units(privacy_unit: str, split: SiteSplit) -> list[str]:
    """Each row's unit under ``privacy_unit``: its customer (``SiteSplit.units``), or under the
    utterance unit its own identity (``SiteSplit.ids``); ``Row.unit_under`` for a split."""
    return split.units if privacy_unit == "customer" else split.ids


def split_aliases(privacy_unit: str,
                  split: SiteSplit) -> dict[str, tuple[tuple[str, ...], ...]]:
    """``unit_aliases`` of the units of ``split``'s rows: what the ledger charges besides each
    unit's own identity (``privacy_budget.charge_training``, ``charge_evaluation``)."""
    return unit_aliases(privacy_unit, split.units, split.ids, split.aliases, split.customers)
