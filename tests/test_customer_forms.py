"""One customer whose id is written in more than one form is one privacy unit.

Exports write one customer's id in several forms (another case, full-width digits, a
zero-width space). As units apart, that person was sampled, clipped and charged once per form
in one release, and an export in another case started them on a fresh budget. The forms of one
id in a split train as one unit (``site_data``), every form records its spend under the id's
canonical form, and the ledger records which unit recorded each spend, so that the names one
unit recorded under count as that one unit when a form comes back (``privacy_budget``).
"""

import json
import math
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl_client.client_app as client_app
from fl_client.privacy_accounting import rdp_epsilon
from fl_client.privacy_budget import charge_round
from fl_client.privacy_ledger import alone_spend, read_ledger, unit_key, write_ledger
from fl_client.privacy_units import unit_aliases
from fl_client.site_data import load_site, one_row_per_id
from fl_client.site_policy import RoundRequest, SitePolicy
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from models import get_model_family

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["card_lost", "refund"]
NOW = datetime.now(UTC)
OTHERS = [f"cust-{i}" for i in range(5, 20)]


def row(i: int, customer: str, conversation: str | None = None) -> dict:
    label = LABELS[i % 2]
    text = f"I lost my card at shop {i}" if label == "card_lost" else f"refund order {i} today"
    return {"conversation_id": conversation or f"conv-{i}", "text": text, "label": label,
            "customer_id": customer, "timestamp": (NOW - timedelta(days=1)).isoformat()}


def write_site(site_dir, rows: list[dict]) -> None:
    """All rows in ``train.jsonl``: a given split, so every row trains."""
    site_dir.mkdir(exist_ok=True)
    (site_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def others() -> list[dict]:
    return [row(i, customer) for i, customer in zip(range(5, 20), OTHERS, strict=True)]


def context(site_dir, state_dir) -> Context:
    create_site_secret(state_dir)  # as ``fedintent init-site`` does
    node = {"data-path": str(site_dir), "state-dir": str(state_dir), "max-epsilon": 40.0,
            "retention-days": math.inf, "privacy-unit": "customer"}
    config = RUN_CONFIG_DEFAULTS | {"target-epsilon": 4.0, "batch-size": 4096,
                                    "privacy-unit": "customer"}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config)


def train(ctx: Context, server_round: int) -> None:
    head = get_model_family("minilm-head").build_model(len(LABELS))
    config = ConfigRecord({"labels": LABELS, "server-round": server_round, "num-rounds": 4,
                           "run-name": "run-a"})
    reply = client_app.app(Message(content=RecordDict({"arrays": ArrayRecord(head.state_dict()),
                                                       "config": config}),
                                   dst_node_id=7, message_type="train"), ctx)
    assert not reply.has_error(), reply.error


def spend(state_dir, unit: str) -> float:
    book = read_ledger(state_dir, site_secret(state_dir))
    return book.spend.get(unit_key(site_secret(state_dir), f"customer\0{unit}"), 0.0)


@pytest.mark.parametrize("forms", [("ab-4711",), ("ab-4711", "\uff21\uff22-4711")])
def test_a_customers_forms_in_one_split_train_and_are_charged_as_one_unit(tmp_path, forms):
    """Two forms as two units: the person in the release twice, clipped twice, charged once
    each (a group of two at one unit's spend). Two forms and three (the mutation run: merging
    only from three forms on went unnoticed while the test wrote three)."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, "AB-4711"), row(1, "AB-4711"),
                      *(row(2 + i, form) for i, form in enumerate(forms)), *others()])
    ctx = context(site, state)
    train(ctx, 1)
    book = read_ledger(state, site_secret(state))
    assert book.releases[-1].units == 1 + len(OTHERS)
    assert spend(state, "AB-4711") == spend(state, OTHERS[0]) > 0  # the form most rows write
    assert [spend(state, form) for form in forms] == [0.0] * len(forms)


@pytest.mark.parametrize("ids", ["kept", "new"])
def test_an_export_in_another_case_is_charged_from_the_spend_before_and_once(tmp_path, ids):
    """The same customer re-exported in lower case, with its conversation ids kept or new:
    with new ids nothing but the id's canonical form links the rows to the spend before (it
    started afresh); with ids kept each row's name was taken for a unit of its own, and the
    customer was charged as a group of its own rows (five times one unit's spend here)."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(i, "AB-4711") for i in range(3)] + others())
    ctx = context(site, state)
    train(ctx, 1)
    write_site(site, [row(i, "ab-4711", None if ids == "kept" else f"new-{i}") for i in range(3)]
               + others())
    train(ctx, 2)
    assert spend(state, "ab-4711") == pytest.approx(spend(state, OTHERS[0]), rel=1e-9)
    assert spend(state, OTHERS[0]) > spend(state, "AB-4711") > 0


POLICY = SitePolicy(max_epsilon=40.0, max_delta=1e-5, privacy_unit="customer")


def charge(state_dir, server_round: int, rows: list[tuple[str, str, str | None]],
           merge: bool = True):
    """Charge a full-batch round over ``rows`` (unit, row id, customer id as written) and 30
    other customers, as the ClientApp does; ``merge`` False: as releases before this change
    did, with no canonical form and no form groups."""
    rows = rows + [(f"other-{i}", f"id:o{i}", f"other-{i}") for i in range(30)]
    units, ids, customers = (list(column) for column in zip(*rows, strict=True))
    request = RoundRequest(run_name="run-a", server_round=server_round, num_rounds=8,
                           target_epsilon=4.0, delta=1e-5, accountant="rdp",
                           privacy_unit="customer", clip_norm=1.0, batch_size=4096,
                           local_epochs=1)
    aliases = unit_aliases("customer", units, ids, [()] * len(ids),
                           customers if merge else None)
    return charge_round(state_dir, list(dict.fromkeys(units)), request, POLICY, aliases=aliases)


def test_forms_that_take_turns_are_charged_every_release_once(tmp_path):
    """An export that flips between two forms, round by round, with row ids kept or not:
    each form starts from the other's spend, never from its own older one, and no form is
    charged as a group of the other (found while designing this: without the record of who
    recorded under the unit's own key, a form coming back counted its own older spend next to
    the other's, and the two grew without bound)."""
    create_site_secret(tmp_path)
    forms = ["AB-4711", "ab-4711", "AB-4711", "\uff41\uff42-4711", "ab-4711", "AB-4711"]
    for server_round, form in enumerate(forms, start=1):
        ids = [f"id:r{i}" if server_round % 2 else f"id:r{i}-{server_round}" for i in range(3)]
        charge(tmp_path, server_round, [(form, uid, form) for uid in ids])
        assert spend(tmp_path, form) == pytest.approx(spend(tmp_path, "other-0"),
                                                             rel=1e-9)


def test_forms_that_were_units_apart_before_join_as_a_group(tmp_path):
    """A ledger from before this change charged two forms as two units in the same releases:
    joined, the person is a group of two to those releases, and starts from the group's bound
    (full batch: 2 x the sum of the two spends), once."""
    create_site_secret(tmp_path)
    for server_round in (1, 2):
        charge(tmp_path, server_round, [("AB-4711", "id:r0", "AB-4711"),
                                        ("ab-4711", "id:r1", "ab-4711")], merge=False)
    apart = spend(tmp_path, "AB-4711")
    assert apart == spend(tmp_path, "ab-4711") > 0
    joined_rows = [("AB-4711", "id:r2", "AB-4711"), ("AB-4711", "id:r3", "ab-4711")]
    charge(tmp_path, 3, joined_rows)  # rows of new ids: only the forms link them
    one_round = spend(tmp_path, "other-0") / 3
    joined = spend(tmp_path, "AB-4711")
    assert joined == pytest.approx(2 * (apart + apart) + one_round, rel=1e-9)
    charge(tmp_path, 4, joined_rows)
    assert spend(tmp_path, "AB-4711") == pytest.approx(joined + one_round, rel=1e-9)


def test_customers_sharing_a_conversation_are_not_charged_as_each_others_groups(tmp_path):
    """Names two customers share (a conversation id a transferred call keeps) carry the larger
    spend over, as before, but do not make either a group of the other: found while designing
    this, counting every unit recorded under any name let two such customers double each
    other's spend every round."""
    create_site_secret(tmp_path)
    request = RoundRequest(run_name="run-a", server_round=1, num_rounds=8, target_epsilon=4.0,
                           delta=1e-5, accountant="rdp", privacy_unit="customer",
                           clip_norm=1.0, batch_size=4096, local_epochs=1)
    units = ["A-1", "B-2", *[f"other-{i}" for i in range(30)]]
    ids = ["id:a", "id:b", *[f"id:o{i}" for i in range(30)]]
    aliases = [("conversation:shared",), ("conversation:shared",), *[()] * 30]
    for server_round in range(1, 6):
        charge_round(tmp_path, units, RoundRequest(**{**request.__dict__,
                                                       "server_round": server_round}),
                     POLICY, aliases=unit_aliases("customer", units, ids, aliases, units))
        for unit in ("A-1", "B-2"):
            assert spend(tmp_path, unit) == pytest.approx(
                spend(tmp_path, "other-0"), rel=1e-9)


def test_a_format_5_alias_is_recorded_by_the_unit_that_charges_under_it(tmp_path):
    """Spends recorded before the ledger named who recorded them stay as they were until a
    unit records there, larger or equal: then the name's spend is that unit's."""
    create_site_secret(tmp_path)
    charge(tmp_path, 1, [("AB-4711", "id:r0", "AB-4711")])
    secret = site_secret(tmp_path)
    book = read_ledger(tmp_path, secret)
    row_name = unit_key(secret, "customer\0id:r0")
    book.aliases = {row_name: book.recorded.pop(row_name)[unit_key(secret, "customer\0AB-4711")]}
    write_ledger(tmp_path, book, secret)
    charge(tmp_path, 2, [("AB-4711", "id:r0", "AB-4711")])
    book = read_ledger(tmp_path, secret)
    assert row_name not in book.aliases
    assert book.recorded[row_name] == {unit_key(secret, "customer\0AB-4711"):
                                       spend(tmp_path, "AB-4711")}


def charge_rows(state_dir, server_round: int,
                rows: list[tuple[str | None, str, tuple[str, ...]]],
                privacy_model: str = "local", policy: SitePolicy = POLICY,
                batch_size: int = 4096) -> None:
    """Charge a full-batch round (unless ``batch_size`` samples) over ``rows`` (customer id or
    None, row id, the row's other names) and 30 other customers, as the ClientApp does under
    the customer unit (``privacy_model`` "distributed": a Skellam sum of 10 sites, 2 of them
    tolerated)."""
    rows = rows + [(f"other-{i}", f"id:o{i}", ()) for i in range(30)]
    customers = [customer for customer, _, _ in rows]
    ids = [uid for _, uid, _ in rows]
    units = [customer or uid for customer, uid, _ in rows]
    request = RoundRequest(run_name="run-a", server_round=server_round, num_rounds=8,
                           target_epsilon=4.0, delta=1e-5, accountant="rdp",
                           privacy_unit="customer", clip_norm=1.0, batch_size=batch_size,
                           local_epochs=1, privacy_model=privacy_model, cohort_size=10,
                           tolerated_sites=2, plan_delta=1e-5)
    charge_round(state_dir, list(dict.fromkeys(units)), request, policy, dimension=1000,
                 aliases=unit_aliases("customer", units, ids, [a for _, _, a in rows],
                                      customers))


@pytest.mark.parametrize("privacy_model,batch_size", [("local", 4096), ("local", 4),
                                                      ("distributed", 4096)],
                         ids=["local full batch", "local sampled", "distributed"])
def test_a_customer_new_to_the_ledger_that_was_one_unit_starts_from_its_accounts(
        tmp_path, privacy_model, batch_size):
    """A row that trained as a unit of its own, then given a customer_id new to the ledger, is
    that one unit: the customer starts from exactly its spend and its own-noise account, and
    no group bound applies (found by a mutation run: counting a zero spend as a second part,
    or a group of one, set a customer new to a sampled ledger to the whole budget, and a
    default of 1 for an account not in the ledger over-counted it; no test held either)."""
    create_site_secret(tmp_path)
    charge_rows(tmp_path, 1, [(None, "id:x", ())], privacy_model, batch_size=batch_size)
    charge_rows(tmp_path, 2, [("C-1", "id:x", ())], privacy_model, batch_size=batch_size)
    secret = site_secret(tmp_path)
    book = read_ledger(tmp_path, secret)
    customer, other = (unit_key(secret, f"customer\0{unit}") for unit in ("C-1", "other-0"))
    assert book.spend[customer] == pytest.approx(book.spend[other], rel=1e-9)
    assert book.alone[customer] == pytest.approx(book.alone[other], rel=1e-9)
    if privacy_model == "local":  # every release's noise is the site's own: equal accounts
        assert book.alone == book.spend


def test_a_row_joining_its_customer_counts_by_the_square_roots_of_the_spends(tmp_path):
    """A customer in 3 releases and a row of theirs without a customer_id, a unit of its own in
    the third: the person was in releases 1 and 2 once and in 3 twice, a Rényi DP of 1 + 1 + 4
    releases' worth. The group bound is (sqrt(3) + sqrt(1))**2 = 7.46 releases, not 2 x (3 + 1)
    = 8 (the bound before stop 55): the triangle inequality over the units' per-release
    vectors, never below the truth."""
    create_site_secret(tmp_path)
    for server_round in (1, 2):
        charge_rows(tmp_path, server_round, [("A-1", "id:a", ())])
    charge_rows(tmp_path, 3, [("A-1", "id:a", ()), (None, "id:x", ())])
    charge_rows(tmp_path, 4, [("A-1", "id:a", ()), ("A-1", "id:x", ())])  # the id back-filled
    release = spend(tmp_path, "other-0") / 4
    joined = spend(tmp_path, "A-1")
    assert joined == pytest.approx(((3 ** 0.5 + 1) ** 2 + 1) * release, rel=1e-9)
    assert joined >= (1 + 1 + 4 + 1) * release


def test_a_row_joining_its_customer_under_distributed_dp_is_a_group_in_its_epsilon_alone(
        tmp_path):
    """Found in review: under distributed DP a customer that was two units (a row without a
    customer_id beside them) in 3 Skellam sums had its spend carried over as a group, but not
    what the site's own noise share alone cost it, which is the guarantee left when the server
    lies about the cohort: it passed max-epsilon-alone at epsilon alone 13.1 where the group
    bound was 15.9. The person was in the sums 2, 2, 2, 1 and 1 times: a Rényi DP alone of
    4 + 4 + 4 + 1 + 1 sums' worth, which the ledger's bound ((sqrt(3) + sqrt(3))**2 + 2) is
    exactly."""
    create_site_secret(tmp_path)
    for server_round in (1, 2, 3):
        charge_rows(tmp_path, server_round, [("A-1", "id:a", ()), (None, "id:x", ())],
                    "distributed")
    for server_round in (4, 5):  # the id back-filled
        charge_rows(tmp_path, server_round, [("A-1", "id:a", ()), ("A-1", "id:x", ())],
                    "distributed")
    secret = site_secret(tmp_path)
    book = read_ledger(tmp_path, secret)
    customer, other = (unit_key(secret, f"customer\0{unit}") for unit in ("A-1", "other-0"))
    one_sum = alone_spend(book, [other]) / 5
    assert alone_spend(book, [customer]) == pytest.approx(14 * one_sum, rel=1e-9)
    assert spend(tmp_path, "A-1") == pytest.approx(14 / 5 * spend(tmp_path, "other-0"), rel=1e-9)
    assert alone_spend(book) == alone_spend(book, [customer])  # the max-epsilon-alone check's


def test_a_customer_its_join_takes_past_max_epsilon_alone_sits_out_and_the_site_trains_on(
        tmp_path):
    """Found in review: max-epsilon-alone was checked, for the whole site, against the largest
    own-noise spend the ledger held before the round, so a customer that joined in a round
    trained in it past the bound, and from the next round on the site declined every
    distributed round for good, telling the server outside DP that a row had been given its
    customer's id. Each unit is held to the bound as to max-epsilon: the customer sits out from
    the round it joins in, and the site trains on."""
    create_site_secret(tmp_path)
    for server_round in (1, 2, 3):
        charge_rows(tmp_path, server_round, [("A-1", "id:a", ()), (None, "id:x", ())],
                    "distributed")
    secret = site_secret(tmp_path)
    book = read_ledger(tmp_path, secret)
    customer, other = (unit_key(secret, f"customer\0{unit}") for unit in ("A-1", "other-0"))
    one_sum = alone_spend(book, [other]) / 3
    # between the others' 5 sums and the customer's 12 as a group
    bound = replace(POLICY, max_epsilon_alone=rdp_epsilon(8 * one_sum, book.order, book.delta))
    for server_round in (4, 5):
        charge_rows(tmp_path, server_round, [("A-1", "id:a", ()), ("A-1", "id:x", ())],
                    "distributed", bound)
    book = read_ledger(tmp_path, secret)
    assert alone_spend(book, [customer]) == pytest.approx(12 * one_sum, rel=1e-9)
    assert alone_spend(book, [other]) == pytest.approx(5 * one_sum, rel=1e-9)
    assert [release.units for release in book.releases[3:]] == [30, 30]


def test_a_record_made_before_a_unit_trained_again_does_not_count_it(tmp_path):
    """Found in review: a row without a customer_id (a unit of its own) took a customer's spend
    over through their shared conversation and recorded its own under the customer's key; the
    customer trained on; when the row got the customer's id, that old record, still larger than
    the customer's spend, was taken to mean the row's unit already counted the customer, and the
    customer was charged the larger of the two instead of the group: below the four releases
    the person took part in. A unit that trains drops the records made under its key."""
    create_site_secret(tmp_path)
    c0, c1, d0 = (("id:c#0", ("conversation:c",)), ("id:c#1", ("conversation:c",)),
                  ("id:d0", ("conversation:d0",)))
    charge_rows(tmp_path, 1, [("A-1", *c0)])
    charge_rows(tmp_path, 2, [(None, *c1)])  # the turn without an id: a unit of its own
    charge_rows(tmp_path, 3, [("A-1", *d0)])  # c#0 expired; the customer trains on
    charge_rows(tmp_path, 4, [("A-1", *d0), ("A-1", *c1)])  # the turn gets its id
    one_release = spend(tmp_path, "other-0") / 4
    assert spend(tmp_path, "A-1") >= 4 * one_release * (1 - 1e-9)


def charge_site(site_dir, state_dir, server_round: int, lines: list[dict]) -> None:
    """Write ``lines`` (and 30 other customers) as the site's data, read them as the ClientApp
    does (one row per id), and charge a full-batch training round over them."""
    lines = lines + [{"text": f"other text {i}", "label": "refund", "customer_id": f"other-{i}",
                      "conversation_id": f"other-{i}"} for i in range(30)]
    write_site(site_dir, lines)
    rows = load_site(site_dir, LABELS).train
    first, _ = one_row_per_id(rows)
    request = RoundRequest(run_name="run-a", server_round=server_round, num_rounds=12,
                           target_epsilon=4.0, delta=1e-5, accountant="rdp",
                           privacy_unit="customer", clip_norm=1.0, batch_size=4096,
                           local_epochs=1)
    charge_round(state_dir, list(dict.fromkeys(rows.units[i] for i in first)), request, POLICY,
                 aliases=unit_aliases("customer", rows.units, rows.ids, rows.aliases,
                                      rows.customers))


def test_customers_joining_a_transferred_call_are_not_each_others_group(tmp_path):
    """Found in review: a new customer counted every unit that had recorded under any of its
    rows' names as a unit it was, so each customer joining a conversation others are in (a
    transferred call) was charged as a group of all of them, and they took that spend over
    through the shared name: spends grew without bound round after round. A shared name
    carries the largest spend over and nothing more."""
    site, state = tmp_path / "site", tmp_path / "state"
    create_site_secret(state)
    call = [{"turns": [{"speaker": "customer", "text": f"hello from {person}"}],
             "intent_turn": 0, "intent": "refund", "conversation_id": "call",
             "customer_id": person} for person in ("A-1", "B-2", "C-3", "D-4", "E-5")]
    lines, server_round = call[:2], 0
    for joined in range(2, 6):
        lines = [{**line, "turns": [{"speaker": "agent", "text": "."}] * turn + line["turns"],
                  "intent_turn": turn} for turn, line in enumerate(call[:joined])]
        for _ in range(2):
            server_round += 1
            charge_site(site, state, server_round, lines)
        first = spend(state, "A-1")
        assert first == pytest.approx(spend(state, "other-0"), rel=1e-9)
        for person in ("B-2", "C-3", "D-4", "E-5")[:joined - 1]:
            assert spend(state, person) <= first * (1 + 1e-9), (joined, person)


@pytest.mark.parametrize("privacy_model", ["local", "distributed"])
@pytest.mark.parametrize("ledger_format", [6, 5])
def test_rows_that_were_units_under_other_ids_join_a_new_customer_as_a_group(tmp_path,
                                                                           ledger_format,
                                                                           privacy_model):
    """Two rows trained as units of their own (no customer_id) under ids since changed: only
    their conversation names hold their spends (recorded by them, or, in a format 5 ledger,
    as aliases without a recorder). Given a customer_id new to the ledger, that customer was
    those two units in the releases before: a group of two, charged 2 x (their sum), not the
    larger spend (found by the mutation run: no test held either count). Under distributed DP
    the own-noise account is a group's the same way (a mutation run: the bound of a format 5
    alias's account was under-stated unnoticed)."""
    create_site_secret(tmp_path)
    charge_rows(tmp_path, 1, [(None, "id:x1", ("conversation:x1",)),
                              (None, "id:x2", ("conversation:x2",))], privacy_model)
    one_release = spend(tmp_path, "other-0")
    secret = site_secret(tmp_path)
    book = read_ledger(tmp_path, secret)
    one_alone = alone_spend(book, [unit_key(secret, "customer\0other-0")])
    for uid in ("id:x1", "id:x2"):  # exported under other ids since
        del book.spend[unit_key(secret, f"customer\0{uid}")]
    if ledger_format == 5:
        book.aliases = {name: max(by.values()) for name, by in book.recorded.items()}
        book.recorded = {}
    write_ledger(tmp_path, book, secret)
    charge_rows(tmp_path, 2, [("A-9", "id:x1#0", ("conversation:x1",)),
                              ("A-9", "id:x2#0", ("conversation:x2",))], privacy_model)
    assert spend(tmp_path, "A-9") >= (2 * (2 * one_release) + one_release) * (1 - 1e-9)
    book = read_ledger(tmp_path, secret)
    assert (alone_spend(book, [unit_key(secret, "customer\0A-9")])
            >= (2 * (2 * one_alone) + one_alone) * (1 - 1e-9))
