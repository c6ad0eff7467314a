"""Retention and erasure at their edges: the row policy's window and secret, what purges and
erasures record, what ``forget`` reports, and a deletion log lost or grown back. Found by
mutation testing (fl_client/retention.py: each test kills a change that no other test caught;
docs/TESTING.md)."""

import builtins
import errno
import getpass
import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl_client.client_app as client_app
from fl_client.deletion_log import (
    DELETION_LOG,
    RetentionError,
    check_deletion_log,
    recorded_retention_days,
)
from fl_client.privacy_ledger import LEDGER_FILE, LedgerError
from fl_client.retention import (
    ERASED,
    FUTURE,
    UNDATED,
    RowPolicy,
    customer_key,
    forget,
    purge,
    retention_window,
    row_policy,
    who_deletes,
)
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol.hash_chain import append_entry, head_path
from fl_protocol.wire import (
    RUN_CONFIG_DEFAULTS,
    Reason,
)
from models import get_model_family

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["card_lost", "refund"]
NOW = datetime.now(UTC)


def row(i: int, days_ago: float | None, customer: str) -> dict:
    label = LABELS[i % 2]
    text = (f"I lost my card at shop {i}" if label == "card_lost"
            else f"please refund order {i} today")
    out = {"conversation_id": f"conv-{i}", "text": text, "label": label, "customer_id": customer}
    if days_ago is not None:
        out["timestamp"] = (NOW - timedelta(days=days_ago)).isoformat()
    return out


def write_site(site_dir, rows: list[dict], broken: tuple[str, ...] = ()) -> None:
    site_dir.mkdir(exist_ok=True)
    (site_dir / "train.jsonl").write_text("".join(
        [line + "\n" for line in broken] + [json.dumps(r) + "\n" for r in rows]))


def some_rows() -> list[dict]:
    return [row(i, 1, f"cust-{i}") for i in range(20)]


@pytest.fixture
def site(tmp_path):
    """(site folder with 20 rows dated yesterday, its state folder, set up)."""
    create_site_secret(tmp_path / "state")
    write_site(tmp_path / "site", some_rows())
    return tmp_path / "site", tmp_path / "state"


def train(site_dir, state_dir, server_round: int) -> Message:
    node = {"data-path": str(site_dir), "state-dir": str(state_dir), "max-epsilon": 20.0,
            "retention-days": math.inf}
    ctx = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(),
                  run_config=RUN_CONFIG_DEFAULTS | {"target-epsilon": 4.0, "batch-size": 4096})
    head = get_model_family("minilm-head").build_model(len(LABELS))
    config = ConfigRecord({"labels": LABELS, "server-round": server_round, "num-rounds": 3,
                           "run-name": "run-a"})
    return client_app.app(Message(content=RecordDict({"arrays": ArrayRecord(head.state_dict()),
                                                      "config": config}),
                                  dst_node_id=7, message_type="train"), ctx)


def test_a_row_dated_more_than_a_day_ahead_is_not_used(tmp_path):
    now = datetime(2026, 12, 1, 10, 20, tzinfo=UTC)
    policy = row_policy(tmp_path, 30, now)
    assert policy(("c",), now + timedelta(hours=20)) is None
    assert policy(("c",), now + timedelta(hours=36)) == FUTURE


@pytest.mark.parametrize("days", [1e6, 1e308])
def test_a_retention_longer_than_the_calendar_keeps_every_dated_row(tmp_path, days):
    """Found in review: a retention reaching back before the year 1 was a traceback in purge,
    forget, check-data and every round of the site. It keeps every dated row; an undated row is
    still not used, as under any finite retention."""
    assert retention_window(days)[0] == datetime.min.replace(tzinfo=UTC)
    policy = row_policy(tmp_path, days)
    assert policy(("c",), datetime(1, 1, 1, tzinfo=UTC)) is None
    assert policy(("c",), NOW) is None and policy(("c",), None) == UNDATED


def test_the_row_policy_never_shows_the_site_secret():
    policy = RowPolicy(not_before=None, not_after=NOW, secret=b"the-site-secret")
    assert "the-site-secret" not in repr(policy)


def test_the_erasure_key_is_the_128_bit_key_older_deletion_logs_hold():
    assert customer_key(b"s" * 32, "cust-1") == "209b20e1f9eab81446b1b89e363032c5"


def test_the_retention_window_defaults_to_now():
    not_before, not_after = retention_window(30)
    assert not_before < datetime.now(UTC) < not_after


def test_the_retention_window_is_whole_hours():
    """A loaded copy of the data is keyed by the policy: whole hours keep it valid for up to an
    hour (found by the mutation run: no test held the minutes, seconds or microseconds)."""
    now = datetime(2026, 12, 1, 10, 20, 30, 456, tzinfo=UTC)
    assert retention_window(30, now) == (datetime(2026, 11, 1, 11, tzinfo=UTC),
                                         datetime(2026, 12, 2, 10, tzinfo=UTC))


def test_the_clientapps_purge_entry_records_no_data_row_deleted(site):
    site_dir, state = site
    assert not train(site_dir, state, 1).has_error()
    write_site(site_dir, some_rows()[:10])  # 10 rows gone from the data: pruned from the store
    assert not train(site_dir, state, 2).has_error()
    entries = [json.loads(line) for line in (state / DELETION_LOG).read_text().splitlines()]
    [entry] = [e for e in entries if e["event"] == "purge"]
    assert entry["deleted"]["data rows"] == 0 and entry["deleted"]["feature rows"] == 10


def test_a_purge_under_a_default_retention_is_never_recorded_as_the_sites(site):
    site_dir, state = site
    purge(site_dir, state, 30, "test", default_retention=True)
    assert recorded_retention_days(state) is None


def test_the_recorded_retention_is_none_until_a_purge_records_one_then_the_last(site):
    site_dir, state = site
    forget(site_dir, state, "cust-1", math.inf, "test")  # a log without any retention
    assert recorded_retention_days(state) is None
    purge(site_dir, state, 365, "test")
    purge(site_dir, state, math.inf, "test")
    assert recorded_retention_days(state) == math.inf
    purge(site_dir, state, 7, "test")
    assert recorded_retention_days(state) == 7


def test_forget_records_the_erasure_of_a_customer_with_an_undated_row(site):
    site_dir, state = site
    write_site(site_dir, [*some_rows(), row(50, 1, "dana"), row(51, None, "dana")])
    erasure = forget(site_dir, state, "dana", math.inf, "test")
    assert erasure.rows_found == 2
    assert row_policy(state, math.inf)(("dana",), None) == ERASED


def test_forget_names_a_broken_line_that_holds_the_customer_id_escaped(site):
    site_dir, state = site
    broken = '{"conversation_id": "conv-90", "text": "this is jos\\u00e9 again, my card'
    write_site(site_dir, some_rows(), broken=(broken,))
    erasure = forget(site_dir, state, "jos\u00e9", math.inf, "test")
    assert erasure.rejected_mentions == ("train.jsonl:1",)


def test_forget_names_a_broken_first_line_that_holds_the_customer(site):
    site_dir, state = site
    write_site(site_dir, some_rows(),
               broken=('{"conversation_id": "conv-90", "customer_id": "dana", "text": "my',))
    assert forget(site_dir, state, "dana", math.inf, "test").rejected_mentions == (
        "train.jsonl:1",)


@pytest.mark.parametrize("lost", ["log", "head"])
def test_a_deletion_log_without_its_head_or_a_head_without_its_log_is_never_taken_for_none(
        site, lost):
    site_dir, state = site
    write_site(site_dir, [*some_rows(), row(50, 1, "dana")])
    forget(site_dir, state, "dana", math.inf, "test")
    log = state / DELETION_LOG
    (log if lost == "log" else head_path(log)).unlink()
    try:
        policy = row_policy(state, math.inf)
    except RetentionError:
        return  # refused: the site does not use its data
    assert policy(("dana",), NOW - timedelta(days=1)) == ERASED


def test_a_site_with_erasures_trains_round_after_round(site):
    site_dir, state = site
    forget(site_dir, state, "cust-1", math.inf, "test")  # two entries, no ledger yet
    assert not train(site_dir, state, 1).has_error()
    assert not train(site_dir, state, 2).has_error()
    check_deletion_log(state)


def test_a_restored_deletion_log_grown_back_to_the_recorded_length_still_stops_the_site(site):
    site_dir, state = site
    assert not train(site_dir, state, 1).has_error()
    log = state / DELETION_LOG
    purge(site_dir, state, math.inf, "test")
    older = {path: path.read_bytes() for path in (log, head_path(log))}
    forget(site_dir, state, "cust-1", math.inf, "test")  # two entries, recorded by the ledger
    for path, data in older.items():
        path.write_bytes(data)
    with pytest.raises(RetentionError, match="nothing is recorded"):  # this release: refused
        purge(site_dir, state, math.inf, "test")
    for _ in range(2):  # one before it appended: the same length again, another last entry
        append_entry(log, "purge", {"actor": "an older release"}, key=site_secret(state))
    with pytest.raises(LedgerError):
        check_deletion_log(state)
    reply = train(site_dir, state, 2)
    assert reply.has_error() and reply.error.reason == Reason.LEDGER_UNREADABLE.value


def test_forget_reports_no_spend_where_the_ledger_holds_none(site):
    site_dir, state = site
    first = forget(site_dir, state, "cust-1", math.inf, "test")  # no ledger yet
    assert (first.ledger_units, first.ledger_epsilon) == (0, 0.0)
    assert not train(site_dir, state, 1).has_error()
    nobody = forget(site_dir, state, "nobody", math.inf, "test")  # a ledger, no spend of theirs
    assert (nobody.ledger_units, nobody.ledger_epsilon) == (0, 0.0)


def test_forget_with_an_unreadable_ledger_reports_no_spend(site):
    site_dir, state = site
    (state / LEDGER_FILE).write_text('{"garbage": 1}')
    erasure = forget(site_dir, state, "cust-1", math.inf, "test")
    assert erasure.ledger_problem
    assert (erasure.ledger_units, erasure.ledger_epsilon) == (0, 0.0)


def test_who_deletes_names_a_uid_without_a_user_name(monkeypatch):
    def no_name():
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(getpass, "getuser", no_name)
    assert "(user uid " in who_deletes("fedintent purge")



def unreadable_after(monkeypatch, name: str, opens: int) -> None:
    """``open`` of the data file ``name`` fails (EACCES) from its ``opens + 1``-th call on (root
    reads any file whatever its mode)."""
    real_open, count = io.open, [0]

    def patched(path, *args, **kwargs):
        if isinstance(path, str | Path) and Path(path).name == name:
            count[0] += 1
            if count[0] > opens:
                raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", patched)
    monkeypatch.setattr(io, "open", patched)


def test_forget_names_a_data_file_it_could_not_read(site, monkeypatch):
    site_dir, state = site
    (site_dir / "test.jsonl").write_text(json.dumps(row(60, 1, "dana")) + "\n")
    unreadable_after(monkeypatch, "test.jsonl", 0)
    erasure = forget(site_dir, state, "dana", math.inf, "test")
    assert erasure.rejected_mentions == ("test.jsonl (unreadable: not searched)",)


def test_forget_names_a_file_whose_broken_lines_it_could_not_search(site, monkeypatch):
    site_dir, state = site
    (site_dir / "test.jsonl").write_text('{"conversation_id": "c61", "customer_id": "dana"\n')
    unreadable_after(monkeypatch, "test.jsonl", 1)  # read once by the loader, then not again
    erasure = forget(site_dir, state, "dana", math.inf, "test")
    assert erasure.rejected_mentions == ("test.jsonl (unreadable: Permission denied)",)


def test_forget_names_broken_lines_by_their_numbers_after_the_deletion_only(site):
    site_dir, state = site
    other = row(62, 1, "cust-62") | {"text": "please call dana back about the refund"}
    (site_dir / "train.jsonl").write_text("".join([
        json.dumps(row(61, 1, "dana")) + "\n",  # deleted: the lines below move up by one
        '{"conversation_id": "conv-90", "customer_id": "dana", "text": "my card\n',
        json.dumps(other) + "\n",
        *(json.dumps(r) + "\n" for r in some_rows())]))
    erasure = forget(site_dir, state, "dana", math.inf, "test", delete_from_data=True)
    assert erasure.deletion.data_rows == 1
    assert erasure.rejected_mentions == ("train.jsonl:1",)
