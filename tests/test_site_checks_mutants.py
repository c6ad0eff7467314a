"""The site-side checks of stop 59, each held by a test that fails when the check is broken.

Written from the mutation pass over the functions stop 59 changed
(``docs/benchmarks/mutation/mutation-stop59.json``): each surviving mutant that was a real gap
has a test here, through public functions only (the ClientApp for the round checks). Labels
that are not a list of names are refused before any read; ``forget`` records an erasure whose
data folder cannot be read, and counts one form of an id without rows; ``customer_spend``
refuses an empty id, reads nothing spent (at no delta) without a ledger, and counts under the
customer unit the spend of an id whose rows are gone; ``site_privacy_report`` takes its folder
as text, names a file a file, and counts a unit at exactly the exhausted share as exhausted;
``list_site_dirs`` names a missing folder and takes text; the CSV header's separator hint and
its column list cut at eight.
"""

import math
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl_client.client_app as client_app
from fl_client.data_files import list_site_dirs
from fl_client.deletion_log import RetentionError
from fl_client.privacy_accounting import rdp_epsilon
from fl_client.privacy_ledger import (
    LEDGER_FILE,
    Ledger,
    Release,
    now,
    privacy_unit_key,
    write_ledger,
)
from fl_client.privacy_report import EXHAUSTED_SHARE, site_privacy_report
from fl_client.retention import customer_spend, forget, row_policy
from fl_client.rows import SiteDataError
from fl_client.site_data import load_site
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol.wire import RUN_CONFIG_DEFAULTS as DEFAULTS
from fl_protocol.wire import Reason
from models import get_model_family

LABELS = ["card_lost", "refund"]


def write_site(site_dir: Path) -> Path:
    """A site folder: 30 training rows of customers cust-0 to cust-9 (three each), two tests."""
    site_dir.mkdir()
    lines = ["conversation_id,text,label,customer_id"]
    for i in range(30):
        label = LABELS[i % 2]
        text = "I lost my card" if label == "card_lost" else "please refund my order"
        lines.append(f"conv-{i},{text} number {i},{label},cust-{i // 3}")
    (site_dir / "train.csv").write_text("\n".join(lines) + "\n")
    (site_dir / "test.csv").write_text("text,label\nlost card,card_lost\nrefund,refund\n")
    return site_dir


def context(site_dir: Path, state_dir: Path) -> Context:
    """A deployed site's context, its state folder set up as ``fedintent init-site`` does."""
    create_site_secret(state_dir)
    node_config = {"data-path": str(site_dir), "state-dir": str(state_dir),
                   "retention-days": math.inf, "max-epsilon": 10.0}
    config = DEFAULTS | {"target-epsilon": 4.0, "batch-size": 4096, "local-epochs": 1}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(),
                   run_config=config)


def message(kind: str, labels) -> Message:
    """A round's message of ``kind`` with the family's own model; no labels for ``None``."""
    head = get_model_family("minilm-head").build_model(2)
    config = ConfigRecord({"server-round": 1, "num-rounds": 3, "run-name": "run-a"})
    if labels is not None:
        config["labels"] = labels
    return Message(content=RecordDict({"arrays": ArrayRecord(head.state_dict()),
                                       "config": config}), dst_node_id=7, message_type=kind)


@pytest.fixture
def reads(monkeypatch) -> list:
    """Every load of the site's rows (the real load still runs)."""
    read: list = []
    real = client_app.load_site
    monkeypatch.setattr(client_app, "load_site",
                        lambda *args, **kwargs: read.append(args) or real(*args, **kwargs))
    return read


# --- fl_client/data_files.py, fl_client/row_parsing.py (through load_site) -------------------


def test_a_missing_data_folder_is_named_not_found(tmp_path):
    """``list_site_dirs`` of a folder that is not there is a ``SiteDataError`` saying so, not
    the ``FileNotFoundError`` of listing it."""
    with pytest.raises(SiteDataError, match=r"^data folder not found: .*nope$"):
        list_site_dirs(tmp_path / "nope")


def test_the_data_folder_may_be_given_as_text(tmp_path):
    for name in ("site-01", "site-00"):
        (tmp_path / name).mkdir()
    assert [p.name for p in list_site_dirs(str(tmp_path))] == ["site-00", "site-01"]
    with pytest.raises(SiteDataError, match="not found"):
        list_site_dirs(str(tmp_path / "nope"))


@pytest.mark.parametrize("header", ["label", "intent", "text;category", "label;text_body",
                                    "text\tcategory", "intent\tnotes"])
def test_no_separator_hint_where_the_header_would_not_read_split_either(tmp_path, header):
    """The hint that the columns are separated by semicolons or tabs is given only where the
    header, split so, names both 'text' and 'label' (or 'intent'): one of them is no reason to
    tell the site to re-export its file."""
    (tmp_path / "train.csv").write_text(f"{header}\nlost card;card_lost\n")
    first = str(load_site(tmp_path, LABELS).rejected[0])
    assert "CSV header must name" in first
    assert "separated by" not in first


@pytest.mark.parametrize(("header", "hint"), [("text;intent", "semicolons"),
                                              ("text\tlabel", "tabs"),
                                              ("Text;Label", "semicolons")])
def test_the_separator_hint_where_the_header_would_read_split(tmp_path, header, hint):
    """Also where the columns are named in capitals, as an Excel export has them (found by the
    mutation pass: only the case was named, not the separator)."""
    (tmp_path / "train.csv").write_text(f"{header}\nlost card;card_lost\n")
    assert f"separated by {hint}" in str(load_site(tmp_path, LABELS).rejected[0])


def test_an_unusable_header_of_eight_columns_is_shown_whole(tmp_path):
    """The columns of an unusable header are shown up to eight, with "(N in all)" only past
    eight."""
    eight = ",".join(f"c{i}" for i in range(8))
    (tmp_path / "train.csv").write_text(f"{eight}\na,b,c,d,e,f,g,h\n")
    first = str(load_site(tmp_path, LABELS).rejected[0])
    assert "its 8 columns (" in first and "in all" not in first
    (tmp_path / "train.csv").write_text(f"{eight},c8\na,b,c,d,e,f,g,h,i\n")
    first = str(load_site(tmp_path, LABELS).rejected[0])
    assert "its 9 columns (" in first and ", ... (9 in all))" in first


# --- fl_client/site_policy.py: check_labels, through the ClientApp ----------------------------


@pytest.mark.usefixtures("task_identity")
@pytest.mark.parametrize("kind", ["train", "evaluate"])
@pytest.mark.parametrize("labels", [None, [1, 2], [0.5, 1.5]])
def test_labels_that_are_not_a_list_of_names_are_refused_before_any_read(
        tmp_path, reads, kind, labels):
    """No labels, or labels that are numbers, are the server's fault: refused with the labels'
    fixed reason before a row is read or anything charged (not an internal error, nor a round
    run on labels no row carries)."""
    state = tmp_path / "state"
    reply = client_app.app(message(kind, labels), context(write_site(tmp_path / "site"), state))
    assert reply.has_error() and reply.error.reason == Reason.LABELS_REFUSED.value
    assert not reads and not (state / LEDGER_FILE).exists()


# --- fl_client/retention.py: forget, customer_spend -------------------------------------------


def test_forget_of_a_data_folder_that_cannot_be_read_records_the_erasure_and_says_so(tmp_path):
    """The erasure is recorded before the rows are read: a data folder that cannot be read is a
    ``RetentionError`` naming what was not done, and no later load uses the customer's rows."""
    site_dir, state = write_site(tmp_path / "site"), tmp_path / "state"
    create_site_secret(state)
    moved = site_dir.rename(tmp_path / "elsewhere")
    with pytest.raises(RetentionError, match="^the erasure is recorded"):
        forget(site_dir, state, "cust-1", math.inf, actor="test")
    moved.rename(site_dir)
    used = load_site(site_dir, LABELS, keep=row_policy(state, math.inf)).train
    assert "cust-1" not in set(used.customers) and "cust-0" in set(used.customers)


def test_forget_of_a_customer_without_rows_counts_one_form_of_the_id(tmp_path):
    site_dir, state = write_site(tmp_path / "site"), tmp_path / "state"
    create_site_secret(state)
    erasure = forget(site_dir, state, "cust-404", math.inf, "test")
    assert (erasure.rows_found, erasure.forms, erasure.other_case_rows) == (0, 1, 0)
    assert forget(site_dir, state, "CUST-1", math.inf, "test").forms == 1  # 3 rows, one form


@pytest.mark.parametrize("customer", ["", "   "])
def test_customer_spend_of_an_empty_id_is_refused(tmp_path, customer):
    site_dir, state = write_site(tmp_path / "site"), tmp_path / "state"
    create_site_secret(state)
    with pytest.raises(ValueError, match="the customer id is empty"):
        customer_spend(site_dir, state, customer)


def with_ledger(state: Path, privacy_unit: str, spends: dict[str, float]) -> Ledger:
    """``state``'s ledger, written: one release, and a spend per identity under the unit."""
    secret = site_secret(state)
    ledger = Ledger(privacy_unit=privacy_unit, order=4.0, delta=1e-5)
    ledger.releases.append(Release(
        run="r", server_round=1, num_rounds=1, noise_multiplier=2.0, sample_rate=1.0, steps=1,
        clip_norm=1.0, delta=1e-5, accountant="rdp", units=len(spends), rdp=max(spends.values()),
        time=now()))
    ledger.spend = {privacy_unit_key(secret, privacy_unit, identity): spend
                    for identity, spend in spends.items()}
    write_ledger(state, ledger, secret)
    return ledger


def test_customer_spend_with_no_ledger_is_nothing_at_no_delta(tmp_path):
    site_dir, state = write_site(tmp_path / "site"), tmp_path / "state"
    create_site_secret(state)
    spend = customer_spend(site_dir, state, "cust-1")
    assert (spend.rows_found, spend.units, spend.epsilon, spend.epsilon_alone) == (3, 0, 0.0, 0.0)
    assert math.isnan(spend.delta)


def test_under_the_customer_unit_the_ids_spend_outlives_its_rows(tmp_path):
    """Under the customer unit the ledger's spend of the id itself counts, rows or not (their
    rows deleted since); under another unit an id is no unit of the ledger."""
    site_dir, state = write_site(tmp_path / "site"), tmp_path / "state"
    create_site_secret(state)
    ledger = with_ledger(state, "customer", {"cust-42": 0.5})
    spend = customer_spend(site_dir, state, "cust-42")
    assert (spend.rows_found, spend.units, spend.delta) == (0, 1, ledger.delta)
    assert spend.epsilon == rdp_epsilon(0.5, ledger.order, ledger.delta) > 0
    erasure = forget(site_dir, state, "cust-42", math.inf, "test")
    assert (erasure.ledger_units, erasure.ledger_epsilon, erasure.ledger_delta) == (
        1, spend.epsilon, ledger.delta)
    with_ledger(state, "utterance", {"cust-42": 0.5})
    assert customer_spend(site_dir, state, "cust-42").units == 0


# --- fl_client/privacy_report.py: site_privacy_report ----------------------------------------


def test_the_privacy_report_takes_its_state_folder_as_text_and_names_a_file_a_file(tmp_path):
    state = tmp_path / "state"
    create_site_secret(state)
    with_ledger(state, "utterance", {"u1": 0.5})
    assert site_privacy_report(str(state), 8.0).units == 1
    labels = tmp_path / "labels.txt"
    labels.write_text("card_lost\nrefund\n")
    with pytest.raises(FileNotFoundError, match=r"is a file, not a folder: give the site's "
                                                r"state folder \(its --state-dir\)$"):
        site_privacy_report(labels, 8.0)


def test_a_unit_at_exactly_the_exhausted_share_of_the_budget_is_exhausted(tmp_path):
    state = tmp_path / "state"
    create_site_secret(state)
    ledger = with_ledger(state, "utterance", {"u1": 0.5})
    spent = rdp_epsilon(0.5, ledger.order, ledger.delta)
    budget = spent / EXHAUSTED_SHARE
    for _ in range(64):  # the float whose share is the spend exactly
        if EXHAUSTED_SHARE * budget == spent:
            break
        budget = math.nextafter(budget, math.inf if EXHAUSTED_SHARE * budget < spent else 0)
    assert EXHAUSTED_SHARE * budget == spent
    assert site_privacy_report(state, budget).exhausted == 1
    assert site_privacy_report(state, math.nextafter(budget, math.inf)).exhausted == 0
