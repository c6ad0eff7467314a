"""A customer written in more than one form is one privacy unit, and the spend its forms had as
units of their own carries over, once.

Releases before ids were read in canonical form (``fl_client/customer_ids.py``) charged each
form of a customer's id (``AB-4711``, ``ab-4711``, full-width digits) as a unit of its own, so
that person was protected at up to that many times epsilon. These tests play such a ledger
forward: charged under the ids as written, then under the canonical one, and check that a
person's forms add up as a group, that a customer written in one form keeps its spend without
being charged again, and that the site's report and ``forget`` count one unit.
"""

import json
import math

from fl_client.customer_ids import canonical_customer
from fl_client.privacy_budget import charge_round
from fl_client.privacy_ledger import read_ledger, unit_key
from fl_client.privacy_report import site_privacy_report
from fl_client.privacy_units import customer_forms, unit_aliases
from fl_client.retention import forget
from fl_client.site_data import load_site
from fl_client.site_policy import RoundRequest, SitePolicy
from fl_client.site_secret import create_site_secret, site_secret

LABELS = ["card_lost", "refund"]
POLICY = SitePolicy(max_epsilon=50.0, max_delta=1e-5, privacy_unit="customer")


def write_site(site_dir, customers: list[str]) -> None:
    """One row per entry, customers as given, 30 other customers so a round has units enough."""
    customers = [*customers, *(f"other-{i}" for i in range(30))]
    site_dir.mkdir(exist_ok=True)
    (site_dir / "train.jsonl").write_text("".join(
        json.dumps({"conversation_id": f"conv-{i}", "text": f"I lost my card at shop {i}",
                    "label": LABELS[i % 2], "customer_id": customer}) + "\n"
        for i, customer in enumerate(customers)))


def request(server_round: int, sample_rate_batch: int = 4096) -> RoundRequest:
    return RoundRequest(
        run_name="run-a", server_round=server_round, num_rounds=8, target_epsilon=4.0,
        delta=1e-5, accountant="rdp", privacy_unit="customer", clip_norm=1.0,
        batch_size=sample_rate_batch, local_epochs=1)


def charge_as_written(site, state, server_round: int):
    """A round as releases before the canonical form charged it: each id as its rows write it."""
    rows = load_site(site, LABELS, redact_pii=False).train
    written = [form[0] for form in rows.forms]
    return charge_round(state, list(dict.fromkeys(written)), request(server_round), POLICY,
                        aliases=unit_aliases("customer", written, rows.ids, rows.aliases))


def charge_now(site, state, server_round: int, batch_size: int = 4096):
    """A round as the ClientApp charges it now (``client_app.train``)."""
    rows = load_site(site, LABELS, redact_pii=False).train
    return charge_round(state, list(dict.fromkeys(rows.units)), request(server_round, batch_size),
                        POLICY, aliases=unit_aliases("customer", rows.units, rows.ids,
                                                     rows.aliases),
                        forms=customer_forms("customer", rows.units, rows.forms))


def spend(state, customer: str) -> float:
    ledger = read_ledger(state, site_secret(state))
    return ledger.spend.get(unit_key(site_secret(state), f"customer\0{customer}"), 0.0)


def test_the_forms_of_one_id_are_one_unit(tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    create_site_secret(state)
    write_site(site, ["AB-4711", "ab-4711", "\uff21\uff22-\uff14\uff17\uff11\uff11",
                      "AB-47\u200b11", "Cd-9"])
    rows = load_site(site, LABELS, redact_pii=False).train
    assert set(rows.units[:5]) == {"ab-4711", "cd-9"}
    charge_now(site, state, 1)
    assert spend(state, "ab-4711") > 0 and spend(state, "AB-4711") == 0
    assert site_privacy_report(state, 50.0).units == 32  # ab-4711, cd-9 and the 30 others


def test_a_person_whose_forms_were_units_apart_starts_from_their_spends_as_a_group(tmp_path):
    """Charged as two units in each release, the person behind ``AB-4711`` and ``ab-4711`` lost
    what a group of 2 loses: in a full-batch release 4 times a unit's Rényi DP. As one unit it
    starts from 2 x the sum of the two spends, and the next round adds one release, not the
    group again."""
    site, state = tmp_path / "site", tmp_path / "state"
    create_site_secret(state)
    write_site(site, ["AB-4711", "ab-4711", "AB-4711"])
    for server_round in (1, 2):
        charge_as_written(site, state, server_round)
    upper, lower = spend(state, "AB-4711"), spend(state, "ab-4711")
    assert upper == lower > 0
    charge_now(site, state, 3)
    joined = spend(state, "ab-4711")
    assert joined >= 2 * (upper + lower) * 0.999999
    charge_now(site, state, 4)
    one_release = upper / 2
    assert math.isclose(spend(state, "ab-4711"), joined + one_release, rel_tol=1e-9)


def test_a_customer_written_in_one_form_keeps_its_spend_and_is_not_charged_again(tmp_path):
    """Every customer whose id holds a capital letter is keyed anew. Its spend carries over as
    it is: the rows' names hold the customer's spend too (its charges recorded it there), and
    reading each such row as a unit of its own would have charged the customer once per row,
    squared (here 3 rows: 9 times)."""
    site, state = tmp_path / "site", tmp_path / "state"
    create_site_secret(state)
    write_site(site, ["AB-4711", "AB-4711", "AB-4711", "Cd-9"])
    for server_round in (1, 2):
        charge_as_written(site, state, server_round)
    before, other = spend(state, "AB-4711"), spend(state, "other-0")
    assert before == other > 0
    charge_now(site, state, 3)
    assert math.isclose(spend(state, "ab-4711"), spend(state, "other-0"), rel_tol=1e-9)
    assert math.isclose(spend(state, "cd-9"), spend(state, "other-0"), rel_tol=1e-9)
    report = site_privacy_report(state, 50.0)
    assert report.units == 32  # the forms as written are taken over, not units of their own
    charge_now(site, state, 4)
    assert math.isclose(spend(state, "ab-4711"), spend(state, "other-0"), rel_tol=1e-9)


def test_after_a_sampled_release_a_person_of_several_forms_starts_from_the_whole_budget(
        tmp_path):
    """No group bound covers a sampled release, so forms that were units apart in one take
    the person to the budget; a customer of one form is still not charged again."""
    site, state = tmp_path / "site", tmp_path / "state"
    create_site_secret(state)
    write_site(site, ["AB-4711", "ab-4711", "Cd-9"])
    rows = load_site(site, LABELS, redact_pii=False).train
    written = [form[0] for form in rows.forms]
    charge_round(state, list(dict.fromkeys(written)), request(1, sample_rate_batch=8), POLICY,
                 aliases=unit_aliases("customer", written, rows.ids, rows.aliases))
    single = spend(state, "Cd-9")
    charge = charge_now(site, state, 2, batch_size=8)
    units = list(dict.fromkeys(rows.units))
    assert units.index("ab-4711") not in charge.trained  # at the whole budget: sits out
    assert units.index("cd-9") in charge.trained
    assert spend(state, "cd-9") < 3 * single


def test_forget_counts_one_unit_for_a_customer_trained_in_canonical_form(tmp_path):
    """The forms as written are taken over; the unit is the canonical id, found by it even
    when none of the customer's rows is left in the data folder."""
    site, state = tmp_path / "site", tmp_path / "state"
    create_site_secret(state)
    write_site(site, ["AB-4711", "Ab-4711", "Cd-9"])
    charge_as_written(site, state, 1)
    charge_now(site, state, 2)
    erasure = forget(site, state, "AB-4711", math.inf, "test")
    assert erasure.rows_found == 2 and erasure.ledger_units == 1
    assert erasure.ledger_epsilon > 0
    write_site(site, ["Cd-9"])
    erasure = forget(site, state, "AB-4711", math.inf, "test")
    assert erasure.rows_found == 0 and erasure.ledger_units == 1


def test_the_canonical_form_is_its_own_canonical_form():
    """A unit's key is its canonical id, and a form is taken over only if it is not one: an id
    whose canonical form read again were another would be a unit and a form at once."""
    for customer in ["AB-4711", "\uff21\uff22-\uff14\uff17\uff11\uff11", "\u0130D-1",
                     "\u0131d-1", "Stra\u00dfe-1", "\u1e9e-9", "\ufb01-2", "\u2160-3",
                     "AB\u20114711", "AB-\u0664\u0667\u0661\u0661", "\u200b", " x\u3164 ",
                     "\u0345-1", "\u1f88-2", "\u2126-4", "\u212b-5", "\u01c5-6"]:
        once = canonical_customer(customer)
        assert canonical_customer(once) == once, customer
