"""Retention and erasure at the site, attacked through the real ClientApp and the site's
commands: expired and erased rows never train, no derived copy of them survives a purge (every
file under the state folder is searched for their cached vectors), the ledger keeps the spend,
and the deletion log is tamper-evident."""

import errno
import gc
import json
import math
import os
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

import fl_client.client_app as client_app
import fl_client.retention as retention
from fedintent.cli import main as fedintent
from fl_client.customer_ids import canonical_customer
from fl_client.deletion_log import DELETION_LOG, RetentionError
from fl_client.privacy_accounting import rdp_epsilon
from fl_client.privacy_ledger import read_ledger, unit_key
from fl_client.redaction import redact
from fl_client.retention import (
    ERASED,
    EXPIRED,
    FUTURE,
    UNDATED,
    RowPolicy,
    customer_key,
    customer_spend,
    forget,
    purge,
    row_policy,
)
from fl_client.rows import SiteDataError
from fl_client.site_data import SiteData, load_site
from fl_client.site_secret import create_site_secret, site_secret
from fl_protocol import durable_files, hash_chain
from fl_protocol.hash_chain import canonical_json, entry_hash, head_path
from fl_protocol.wire import RUN_CONFIG_DEFAULTS, Reason
from fl_server.progress import format_epsilon
from models import feature_store, get_model_family

pytestmark = pytest.mark.usefixtures("task_identity")

LABELS = ["card_lost", "refund"]
NOW = datetime.now(UTC)
FRESH, OLD = 20, 10
"""Rows dated yesterday, and rows dated 40 days ago (past a 30-day policy)."""


@pytest.fixture(autouse=True)
def site_state(tmp_path):
    """``tmp_path / "state"``, the state folder of these tests' site, set up as ``fedintent
    init-site`` does."""
    create_site_secret(tmp_path / "state")


def row(i: int, days_ago: float, customer: str | None = None) -> dict:
    label = LABELS[i % 2]
    text = (f"I lost my card at shop {i}" if label == "card_lost"
            else f"please refund order {i} today")
    return {"conversation_id": f"conv-{i}", "text": text, "label": label,
            "customer_id": customer or f"cust-{i}",
            "timestamp": (NOW - timedelta(days=days_ago)).isoformat()}


def write_site(site_dir, rows: list[dict]) -> None:
    site_dir.mkdir(exist_ok=True)
    (site_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def site_rows() -> list[dict]:
    return ([row(i, 1) for i in range(FRESH)]
            + [row(i, 40) for i in range(FRESH, FRESH + OLD)])


def context(site_dir, state_dir, retention) -> Context:
    create_site_secret(state_dir)  # as ``fedintent init-site`` does
    node = {"data-path": str(site_dir), "state-dir": str(state_dir), "max-epsilon": 20.0,
            "retention-days": retention}
    config = RUN_CONFIG_DEFAULTS | {"target-epsilon": 4.0, "batch-size": 4096}
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config=config)


def train_message(labels=LABELS, run="run-a", server_round=1) -> Message:
    head = get_model_family("minilm-head").build_model(len(labels))
    config = ConfigRecord({"labels": labels, "server-round": server_round, "num-rounds": 3,
                           "run-name": run})
    return Message(content=RecordDict({"arrays": ArrayRecord(head.state_dict()),
                                       "config": config}), dst_node_id=7, message_type="train")


def train(ctx, run="run-a", server_round=1, labels=LABELS) -> Message:
    return client_app.app(train_message(labels, run, server_round), ctx)


def spend(state_dir, conversation: str) -> float:
    secret = site_secret(state_dir)
    book = read_ledger(state_dir, secret)
    return book.spend.get(unit_key(secret, f"utterance\0id:{conversation}"), 0.0)


def stored_vectors(state_dir, texts: list[str]) -> list[bytes]:
    """The exact bytes the feature store holds for ``texts`` (read back through the store)."""
    kinds = [p for p in (state_dir / "features").iterdir() if p.is_dir()]
    assert len(kinds) == 1
    found = {}
    for chunk in kinds[0].glob("chunk-*.npz"):
        with np.load(chunk) as data:
            for key, vector in zip(data["keys"], data["features"], strict=True):
                found[bytes(key)] = vector.astype(np.float32).tobytes()
    return [found[feature_store.text_key(text)] for text in texts]


def cached_texts(state_dir, texts: list[str]) -> set[str]:
    """Those of ``texts`` (redacted as a site redacts them) the feature store holds a vector
    for."""
    keys = set()
    for chunk in (state_dir / "features").rglob("chunk-*.npz"):
        with np.load(chunk) as data:
            keys |= {bytes(key) for key in data["keys"]}
    return {text for text in texts if feature_store.text_key(redact(text)) in keys}


def files_holding(state_dir, needles: list[bytes]) -> list[str]:
    """Every file under the state folder that holds any of ``needles``."""
    return sorted(str(path) for path in state_dir.rglob("*") if path.is_file()
                  and any(needle in path.read_bytes() for needle in needles))


def log_entries(state_dir) -> list[dict]:
    return [json.loads(line) for line in (state_dir / DELETION_LOG).read_text().splitlines()]


# --- the policy ------------------------------------------------------------------------------


def test_the_policy_expires_old_undated_and_future_rows_and_erases_up_to_the_request():
    secret = b"s" * 32
    erased_at = NOW - timedelta(days=2)
    policy = RowPolicy(not_before=NOW - timedelta(days=30), not_after=NOW + timedelta(days=1),
                       erased=((customer_key(secret, "alice"), erased_at),), secret=secret)
    assert policy(("bob",), NOW - timedelta(days=29)) is None
    assert policy(("bob",), NOW - timedelta(days=31)) == EXPIRED
    assert policy(("bob",), None) == UNDATED
    assert policy(("bob",), NOW + timedelta(days=3)) == FUTURE
    assert policy(("alice",), NOW - timedelta(days=3)) == ERASED
    assert policy(("alice",), None) == ERASED
    assert policy(("alice",), NOW - timedelta(days=1)) is None  # came back after the request
    assert policy((), NOW) is None  # a row without a customer is its own unit
    unlimited = RowPolicy(not_before=None, not_after=NOW, secret=secret)
    assert unlimited(("bob",), None) is None
    assert unlimited(("bob",), NOW - timedelta(days=9999)) is None


def test_an_erasure_recorded_under_the_id_as_written_covers_undated_and_future_rows(tmp_path):
    """Found in review: the id as written was asked only when the stripped one let a row
    through, so an erasure recorded under it (as older releases did) lost to "undated" and
    "future", and ``--delete-from-data`` left those rows in the data folder."""
    site, secret = tmp_path / "site", b"s" * 32
    undated = {k: v for k, v in row(1, 1, " dana ").items() if k != "timestamp"}
    future = row(2, -1.25, " dana ")  # 30 hours ahead: past not_after, covered by the erasure
    write_site(site, [row(0, 1, " dana "), undated, future, row(3, 1)])
    policy = RowPolicy(not_before=NOW - timedelta(days=30), not_after=NOW + timedelta(days=1),
                       erased=((customer_key(secret, " dana "), NOW + timedelta(days=2)),),
                       secret=secret)
    assert load_site(site, LABELS, keep=policy).excluded == {ERASED: 3}


def test_the_cut_off_is_rounded_so_rows_expire_early_never_late(tmp_path):
    now = datetime(2026, 12, 1, 10, 20, tzinfo=UTC)
    policy = row_policy(tmp_path, 30, now)
    assert policy.not_before == datetime(2026, 11, 1, 11, 0, tzinfo=UTC)
    assert policy(("c",), now - timedelta(days=30)) == EXPIRED  # 40 minutes early, not late
    assert row_policy(tmp_path, math.inf, now).not_before is None


def test_timestamps_are_read_in_any_offset_and_a_bad_one_rejects_its_row(tmp_path):
    site = tmp_path / "site"
    write_site(site, [row(0, 1) | {"timestamp": "2026-11-30T10:00:00+08:00"},
                      row(1, 1) | {"timestamp": "2026-11-30 10:00:00"},
                      row(2, 1) | {"timestamp": "yesterday"},
                      row(3, 1) | {"timestamp": 1764000000}])
    seen = []
    data = load_site(site, LABELS, keep=lambda customers, when: seen.append(when))
    assert seen == [datetime(2026, 11, 30, 2, tzinfo=UTC), datetime(2026, 11, 30, 10, tzinfo=UTC)]
    assert [str(r) for r in data.rejected] == [
        "train.jsonl:3: timestamp is not an ISO 8601 date-time (a string of length 9)",
        "train.jsonl:4: timestamp must be a string, got int"]


def test_load_site_counts_the_rows_the_policy_leaves_out(tmp_path):
    site = tmp_path / "site"
    write_site(site, site_rows() + [{k: v for k, v in row(99, 1).items() if k != "timestamp"}])
    data = load_site(site, LABELS, keep=row_policy(tmp_path / "state", 30))
    assert len(data.train) + len(data.test) == FRESH
    assert data.excluded == {EXPIRED: OLD, UNDATED: 1}
    assert data.rows_read == FRESH + OLD + 1


# --- the feature store -----------------------------------------------------------------------


def fake_features(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[float(len(t)), float(sum(map(ord, t)))] for t in texts])


def test_the_store_prunes_rows_no_longer_in_use_and_every_file_it_does_not_know(tmp_path):
    store = tmp_path / "features"
    feature_store.cached("kind", ["a", "b", "c"], store, fake_features)
    feature_store.cached("kind", ["d"], store, fake_features)
    (store / "features-0123.npy").write_bytes(b"an older version's whole-split cache")
    pruned = feature_store.prune(store, ["a", "d"])
    assert (pruned.rows, pruned.files) == (2, 1)
    computed = []
    result = feature_store.cached("kind", ["a", "d"], store,
                                  lambda t: computed.append(t) or fake_features(t))
    assert computed == [] and torch.equal(result, fake_features(["a", "d"]))
    assert not (store / "features-0123.npy").exists()
    assert feature_store.prune(store, []).rows == 2
    assert not list(store.rglob("*.npz"))


def test_many_small_chunks_are_merged_and_sequence_rows_padded(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_store, "MAX_CHUNKS", 2)
    store = tmp_path / "features"

    def sequences(texts: list[str]) -> torch.Tensor:  # zero-padded like token states
        out = torch.zeros(len(texts), max(len(t) for t in texts), 2)
        for i, text in enumerate(texts):
            out[i, : len(text)] = 1.0 + i
        return out

    first = feature_store.cached("seq", ["ab"], store, sequences)
    feature_store.cached("seq", ["abcd"], store, sequences)
    feature_store.cached("seq", ["x"], store, sequences)  # third write: merged into one
    assert len(list(store.rglob("chunk-*.npz"))) == 1
    both = feature_store.cached("seq", ["ab", "abcd"], store, lambda t: pytest.fail(str(t)))
    assert both.shape == (2, 4, 2)
    assert torch.equal(both[0, :2], first[0]) and not both[0, 2:].any()


# --- through the ClientApp -------------------------------------------------------------------


def test_expired_rows_never_train_and_no_derived_copy_survives_the_purge(tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    old_conversations = [f"conv-{i}" for i in range(FRESH, FRESH + OLD)]
    # Before the policy: a run without retention trains on (and caches) every row.
    assert not train(context(site, state, math.inf), "run-a").has_error()
    old_spend = [spend(state, c) for c in old_conversations]
    assert min(old_spend) > 0
    old_texts = load_site(site, LABELS).train.texts[FRESH:]
    vectors = stored_vectors(state, old_texts)
    assert len(files_holding(state, vectors)) == 1  # the search finds them where they are

    reply = train(context(site, state, 30), "run-b")

    assert not reply.has_error()
    assert reply.content["metrics"]["privacy-units"] == FRESH
    assert [spend(state, c) for c in old_conversations] == old_spend  # never trained again
    assert spend(state, "conv-0") > 0
    assert files_holding(state, vectors) == []  # purged before the round, from every file
    [entry] = log_entries(state)
    assert entry["event"] == "purge" and entry["retention_days"] == 30
    assert entry["rows_not_used"] == {EXPIRED: OLD}
    assert entry["deleted"]["feature rows"] == OLD
    assert "ClientApp, before round 1 of run 'run-b'" in entry["actor"]


def test_the_servers_label_set_never_decides_what_the_store_deletes(tmp_path):
    """A run asking for one intent (a site without labels-file answers it) trains on that
    intent's rows only, but the other intents' rows are still the site's data: their features
    stay cached, and no purge is logged that the retention policy did not make."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(i, 1) for i in range(FRESH)])
    assert not train(context(site, state, 30), "run-a").has_error()
    refund_texts = [text for text, label in zip(*_texts_and_labels(site), strict=True)
                    if label == "refund"]
    vectors = stored_vectors(state, refund_texts)
    reply = train(context(site, state, 30), "run-b", labels=["card_lost", "no_such_intent"])
    assert not reply.has_error()
    assert reply.content["metrics"]["num-examples"] == FRESH // 2
    assert stored_vectors(state, refund_texts) == vectors
    assert not (state / DELETION_LOG).exists()


def _texts_and_labels(site) -> tuple[list[str], list[str]]:
    split = load_site(site, LABELS).train
    return split.texts, [LABELS[i] for i in split.labels]


def test_an_erased_customer_is_removed_everywhere_and_the_ledger_keeps_their_spend(
        tmp_path, capsys):
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[3]["customer_id"] = rows[5]["customer_id"] = "alice@example"
    rows[4]["text"] += ", call me on 415-555-0134"  # stored redacted: kept, not pruned
    write_site(site, rows)
    assert not train(context(site, state, math.inf), "run-a").has_error()
    spent = {c: spend(state, c) for c in ("conv-3", "conv-5", "conv-4")}
    texts = load_site(site, LABELS).train.texts
    vectors = stored_vectors(state, [texts[3], texts[5]])

    code = fedintent(["forget", "--site", str(site), "--customer", "alice@example",
                      "--state-dir", str(state), "--retention-days", "inf",
                      "--delete-from-data"])

    out = capsys.readouterr().out
    assert code == 0
    assert "2 rows of this customer" in out and "removed from the data folder: 2 rows" in out
    book = read_ledger(state, site_secret(state))
    assert all(release.sample_rate == 1 for release in book.releases)  # full batch: a bound
    together = rdp_epsilon((math.sqrt(spent["conv-3"]) + math.sqrt(spent["conv-5"])) ** 2,
                           book.order, book.delta)
    assert (f"keeps the spend of their 2 privacy unit(s) (largest lifetime epsilon "
            f"{rdp_epsilon(max(spent['conv-3'], spent['conv-5']), book.order, book.delta):.3g} "
            f"at delta {book.delta:g}; under privacy-unit utterance that is one utterance's: "
            f"all of theirs together at most {format_epsilon(together)}); a returning "
            "customer") in out
    # the site's counts, labelled so (found in review: read as this customer's)
    assert "  removed, whole site: 2 cached feature rows, 0 files from the feature store" in out
    assert "alice" not in (site / "train.jsonl").read_text()
    assert len((site / "train.jsonl").read_text().splitlines()) == len(rows) - 2
    assert files_holding(state, vectors) == []
    assert files_holding(state, [b"alice"]) == []  # the log names the customer only keyed
    request, done = log_entries(state)
    assert request["event"] == "erasure" and request["rows_found"] == 2
    assert request["customer"] == customer_key(site_secret(state), "alice@example")
    assert done["event"] == "erasure-done" and done["deleted"]["feature rows"] == 2
    assert "fedintent forget" in request["actor"]
    # The next round trains without them; their spend stays, the others' grows.
    assert not train(context(site, state, math.inf), "run-b").has_error()
    assert spend(state, "conv-3") == spent["conv-3"] and spend(state, "conv-5") == spent["conv-5"]
    assert spend(state, "conv-4") > spent["conv-4"]
    assert audit_verify(capsys, state / DELETION_LOG)[0] == 0
    # Found in review: asked again once their rows were gone, the site said "never trained
    # on", and a repeated request exited 3, "check the id", while the ledger kept their spend.
    asked = request["requested_at"][:19]
    assert request["ledger_units"] == 2
    assert fedintent(["privacy-report", str(state), "--customer", "alice@example",
                      "--site", str(site)]) == 0
    out = capsys.readouterr().out
    assert (f"customer: no row in {site} has this customer_id; an erasure of theirs asked for "
            f"at {asked}") in out
    assert "found the spend of 2 privacy unit(s) of theirs in the ledger, which keeps it" in out
    assert "never trained on" not in out
    assert fedintent(["forget", "--site", str(site), "--customer", "alice@example",
                      "--state-dir", str(state), "--retention-days", "inf"]) == 0
    out, err = capsys.readouterr()
    assert f"privacy ledger: an erasure of theirs asked for at {asked}+00:00 found the spend" in out
    assert "never trained on" not in out and "check the id" not in err
    # an id no erasure found spend of stays one to check, however often it is asked (review)
    for _ in range(2):
        assert fedintent(["forget", "--site", str(site), "--customer", "alise@example",
                          "--state-dir", str(state), "--retention-days", "inf"]) == 3
        out, err = capsys.readouterr()
        assert "never trained on" in out and "check the id" in err


def test_an_erasure_an_earlier_release_recorded_is_still_taken_for_one(tmp_path, capsys):
    """Found in review: erasures logged before they counted the spend they found (no
    ``ledger_units``) were skipped, so a customer they deleted was "never trained on" again and
    a repeated forget exited 3. One that found rows is taken for an erasure, its spend hedged."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[3]["customer_id"] = "dave"
    write_site(site, rows)
    assert not train(context(site, state, math.inf), "run-a").has_error()
    secret = site_secret(state)
    asked = datetime.now(UTC)
    hash_chain.append_entry(state / DELETION_LOG, "erasure", {
        "actor": "an earlier release", "customer": customer_key(secret, "dave"),
        "requested_at": asked.isoformat(), "erased_at": asked.isoformat(), "rows_found": 1},
        key=secret)
    write_site(site, rows[:3] + rows[4:])  # its rows deleted, as --delete-from-data did
    assert fedintent(["privacy-report", str(state), "--customer", "dave", "--site",
                      str(site)]) == 0
    out = capsys.readouterr().out
    assert (f"an erasure of theirs asked for at {asked.isoformat(timespec='seconds')} found rows "
            "of theirs (it did not count their spend") in out
    assert "if they were trained on, the ledger keeps that spend" in out
    assert fedintent(["forget", "--site", str(site), "--customer", "dave", "--state-dir",
                      str(state), "--retention-days", "inf"]) == 0
    assert "check the id" not in capsys.readouterr().err


def test_a_customer_erased_before_any_training_is_never_said_to_have_spend_kept(tmp_path):
    """Found in review: a customer whose rows were deleted before the site ever trained was
    reported as spend the ledger keeps, from the erasure alone."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[2]["customer_id"] = "carol"
    write_site(site, rows)
    erasure = forget(site, state, "carol", math.inf, "test", delete_from_data=True)
    assert erasure.rows_found == 1 and erasure.ledger_units == 0
    assert log_entries(state)[0]["ledger_units"] == 0
    spend = customer_spend(site, state, "carol")
    assert (spend.rows_found, spend.units, spend.earlier_erasure) == (0, 0, None)


def test_an_erasure_binds_every_later_load_even_with_the_rows_still_in_the_data(tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[0]["customer_id"] = "bob"
    write_site(site, rows)
    erasure = forget(site, state, "bob", math.inf, "test", now=NOW - timedelta(days=3))
    assert erasure.rows_found == 1 and erasure.deletion.data_rows == 0
    assert erasure.ledger_units == 0  # never trained on
    returning = row(77, 0, customer="bob")  # a new call, after the request and its cut-off
    write_site(site, rows + [returning])
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.excluded == {ERASED: 1}
    assert "conv-0" not in str(data.train.ids + data.test.ids)
    assert "id:conv-77" in data.train.ids + data.test.ids


def test_an_erasure_covers_every_row_present_whatever_clock_or_time_zone_dated_it(tmp_path):
    """Found in review: the cut-off was the request's time, so a row exported in local time
    without an offset (read as UTC, hours "ahead" at a UTC+8 site), or from a clock running
    ahead, survived the erasure it was counted in."""
    site, state = tmp_path / "site", tmp_path / "state"
    local = row(90, 0, customer="carol")
    local["timestamp"] = (NOW + timedelta(hours=8) - timedelta(minutes=5)).replace(
        tzinfo=None).isoformat()  # 5 minutes ago, in UTC+8 local time without an offset
    skewed = row(91, -0.5, customer="carol")  # a clock 12 hours ahead
    far = row(92, -3, customer="carol")  # dated 3 days ahead
    write_site(site, site_rows() + [local, skewed, far])
    erasure = forget(site, state, "carol", math.inf, "test", now=NOW)
    assert erasure.rows_found == 3
    assert erasure.erased_until == datetime.fromisoformat(far["timestamp"])
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.excluded == {ERASED: 3}
    assert not {"id:conv-90", "id:conv-91", "id:conv-92"} & set(data.train.ids + data.test.ids)
    [request] = [e for e in log_entries(state) if e["event"] == "erasure"]
    assert request["requested_at"] == NOW.isoformat()


def test_deleting_from_data_rewrites_a_linked_files_target_or_refuses(tmp_path):
    """Found in review: the rewrite replaced a symbolic link by a new file, so the exporter's
    file it named kept the erased row; a hard link's other name keeps it too."""
    site, state, exports = tmp_path / "site", tmp_path / "state", tmp_path / "exports"
    rows = site_rows()
    rows[2]["customer_id"] = "dave"
    write_site(exports, rows)
    site.mkdir()
    (site / "train.jsonl").symlink_to(exports / "train.jsonl")
    erasure = forget(site, state, "dave", math.inf, "test", delete_from_data=True)
    assert erasure.deletion.data_rows == 1 and (site / "train.jsonl").is_symlink()
    assert "dave" not in (exports / "train.jsonl").read_text()

    rows[4]["customer_id"] = "erin"
    write_site(exports, rows)
    (site / "train.jsonl").unlink()
    (site / "train.jsonl").hardlink_to(exports / "train.jsonl")
    with pytest.raises(SiteDataError, match="1 other hard link"):
        forget(site, state, "erin", math.inf, "test", delete_from_data=True)
    assert "erin" in (exports / "train.jsonl").read_text()  # refused, nothing half-done
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert "id:conv-4" not in data.train.ids + data.test.ids  # the erasure itself holds


def test_a_clock_set_back_does_not_bring_expired_rows_back(tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    purge(site, state, 30, "test")
    behind = row_policy(state, 30, now=NOW - timedelta(days=40))
    data = load_site(site, LABELS, keep=behind)
    assert data.excluded == {EXPIRED: OLD}


def test_a_purge_run_after_the_clock_was_set_back_does_not_bring_expired_rows_back(
        tmp_path, monkeypatch):
    """Found in review: "now" was the deletion log's last entry at the earliest, and that entry
    is stamped by the same clock: one scheduled purge after the clock was set back logged the
    earlier time, and from then on the purged rows were used again."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    purge(site, state, 30, "test")

    class Behind(datetime):
        @classmethod
        def now(cls, tz=None):
            return NOW - timedelta(days=40)

    monkeypatch.setattr(hash_chain, "datetime", Behind)
    purge(site, state, 30, "test", now=NOW - timedelta(days=40))
    assert log_entries(state)[-1]["time"] < log_entries(state)[0]["time"]  # the premise
    behind = row_policy(state, 30, now=NOW - timedelta(days=40))
    assert load_site(site, LABELS, keep=behind).excluded == {EXPIRED: OLD}


def test_purge_applies_the_policy_to_the_data_folder_when_asked(tmp_path, capsys):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    (site / "train.jsonl").chmod(0o640)
    code = fedintent(["purge", str(site), "--state-dir", str(state), "--delete-from-data",
                      "--retention-days", "30"])
    out = capsys.readouterr().out
    assert code == 0 and f"{OLD} expired" in out and f"data folder: {OLD} rows" in out
    lines = (site / "train.jsonl").read_text().splitlines()
    assert [json.loads(line)["conversation_id"] for line in lines] == [
        f"conv-{i}" for i in range(FRESH)]
    assert (site / "train.jsonl").stat().st_mode & 0o777 == 0o640
    [entry] = log_entries(state)  # the scheduled purge logs every run
    assert entry["deleted"]["data rows"] == OLD and entry["delete_from_data"] is True
    again = purge(site, state, 30, "test")
    assert (again.data_rows, again.feature_rows, again.log_entry) == (0, 0, 2)


def test_a_purge_logged_while_the_clock_ran_ahead_deletes_no_row_still_within_the_retention(
        tmp_path, monkeypatch, capsys):
    """Found in review: "now" for use is never earlier than the deletion log's newest entry, so
    one purge stamped two years ahead (a clock glitch) made every later ``--delete-from-data``
    delete rows of the last 200 days for good. They stay unused until the log's time passes,
    and leave the data folder only once this clock, too, has them expired."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())

    class Ahead(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(days=730)

    monkeypatch.setattr(hash_chain, "datetime", Ahead)
    assert fedintent(["purge", str(site), "--state-dir", str(state), "--retention-days",
                      "365"]) == 0
    monkeypatch.setattr(hash_chain, "datetime", datetime)
    assert fedintent(["purge", str(site), "--state-dir", str(state), "--retention-days", "365",
                      "--delete-from-data"]) == 0
    assert "removed from the data folder: 0 rows" in capsys.readouterr().out
    assert len((site / "train.jsonl").read_text().splitlines()) == FRESH + OLD
    assert fedintent(["purge", str(site), "--state-dir", str(state), "--retention-days", "30",
                      "--delete-from-data"]) == 0
    assert len((site / "train.jsonl").read_text().splitlines()) == FRESH


def test_purge_and_forget_on_a_state_folder_that_lost_its_secret_say_so_without_a_traceback(
        tmp_path, capsys):
    """Found in review: the commands did not catch the lost-secret error and printed a
    traceback; nothing is deleted or logged without the secret that signs the log."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    (state / "site-secret").unlink()
    capsys.readouterr()
    logged = (state / DELETION_LOG).read_bytes()
    for command in (["purge", str(site)], ["forget", "--site", str(site), "--customer", "cust-1"]):
        code = fedintent([*command, "--state-dir", str(state), "--delete-from-data",
                          "--retention-days", "1"])
        out, err = capsys.readouterr()
        assert code == 2 and "site-secret" in err and "Traceback" not in out + err
    assert (state / DELETION_LOG).read_bytes() == logged
    assert len((site / "train.jsonl").read_text().splitlines()) == FRESH + OLD
    assert fedintent(["forget", "--site", str(site), "--customer", " ", "--state-dir",
                      str(state)]) == 2
    assert "--customer: the customer id is empty" in capsys.readouterr().err


def test_forget_with_an_unreadable_ledger_reports_the_erasure_done_and_the_ledger_apart(
        tmp_path, capsys):
    """Found in review: the erasure was recorded and done, yet the command only printed the
    ledger's error, so the operator took the erasure for failed."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    (state / "privacy-ledger.json").write_text('{"garbage": 1}')
    capsys.readouterr()
    code = fedintent(["forget", "--site", str(site), "--customer", "cust-1", "--state-dir",
                      str(state)])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert "erasure recorded:" in out
    assert "the erasure above is recorded and done" in err and "privacy-ledger.json" in err
    assert [entry["event"] for entry in log_entries(state)][-2:] == ["erasure", "erasure-done"]


def test_forget_names_the_broken_lines_that_hold_the_customer_and_fails_if_asked_to_delete(
        tmp_path, capsys):
    """Found in review: ``forget --delete-from-data`` left the customer's rows that failed
    validation (a bad timestamp, no label, broken JSON) in the data file, raw text and all, and
    reported success."""
    site, state = tmp_path / "site", tmp_path / "state"
    broken = [json.dumps(row(90, 1, "cust-Q7X3") | {"timestamp": "yesterday"}),
              '{"conversation_id": "conv-91", "customer_id": "cust-Q7X3", "text": "my card',
              json.dumps(row(92, 1, "cust-Q7X30"))[:-1]]  # another customer, broken too
    write_site(site, [row(0, 1, "cust-Q7X3"), *site_rows()])
    with open(site / "train.jsonl", "a") as f:
        f.write("".join(line + "\n" for line in broken))
    total = len(site_rows()) + 1
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0  # the site has run
    base = ["forget", "--site", str(site), "--customer", "cust-Q7X3", "--state-dir", str(state)]
    assert fedintent(base) == 0
    assert (f"note: lines that failed validation name this customer (never used, left as they "
            f"are): train.jsonl:{total + 1}, train.jsonl:{total + 2}"
            in capsys.readouterr().out)
    assert fedintent([*base, "--delete-from-data"]) == 2
    out, err = capsys.readouterr()
    assert "removed from the data folder: 1 row\n" in out
    assert (f"lines that failed validation name this customer and were left in the data folder "
            f"(the loader cannot tell whose a broken row is): train.jsonl:{total}, "
            f"train.jsonl:{total + 1}; delete or fix them by hand") in err


def test_forget_refuses_a_state_folder_no_site_has_run_in(tmp_path, capsys):
    """Found in review: without --state-dir (or with a mistyped one) forget made a new folder,
    secret and deletion log, printed "erasure recorded" and exited 0, while the site kept
    training on the customer from its real state folder."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert fedintent(["forget", "--site", str(site), "--customer", "cust-1"]) == 2
    err = capsys.readouterr().err
    assert f"{site / '.fedintent-state'} holds no site secret" in err
    assert not (site / ".fedintent-state").exists()


def test_forget_of_an_id_no_row_or_spend_holds_warns_but_records_it(tmp_path, capsys):
    """Found in review: a mistyped id in a data-subject request printed "erasure recorded: 0
    rows" and exited 0, like a real erasure; then (review 89) warned, still with exit 0, which
    an automated erasure queue cannot tell from a done erasure: it exits 3."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert fedintent(["forget", "--site", str(site), "--customer", "cust-99", "--state-dir",
                      str(state)]) == 3
    assert "no row in" in capsys.readouterr().err
    assert log_entries(state)[-2]["event"] == "erasure"
    assert fedintent(["forget", "--site", str(site), "--customer", "cust-1", "--state-dir",
                      str(state)]) == 0
    assert "no row in" not in capsys.readouterr().err


# --- the deletion log ------------------------------------------------------------------------


def audit_verify(capsys, path, *extra: str) -> tuple[int, str, str]:
    """``fedintent audit verify``: (exit code, stdout, stderr)."""
    code = fedintent(["audit", "verify", str(path), *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def deletion_log(tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    purge(site, state, 30, "test")
    forget(site, state, "cust-3", 30, "test")
    return state / DELETION_LOG


def test_a_one_byte_edit_of_the_deletion_log_is_detected(deletion_log, capsys):
    assert "hash chain, head and MACs intact" in audit_verify(capsys, deletion_log)[1]
    data = bytearray(deletion_log.read_bytes())
    data[data.index(b'"feature rows":') + 15] ^= 1  # one digit of a count
    deletion_log.write_bytes(bytes(data))
    code, out, _ = audit_verify(capsys, deletion_log)
    assert code == 1 and "BROKEN at line 1" in out


def test_an_erasure_is_never_appended_to_a_broken_log_nor_made_for_no_one(deletion_log,
                                                                         tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    data = bytearray(deletion_log.read_bytes())
    data[data.index(b'"feature rows":') + 15] ^= 1  # an edit in the first entry
    deletion_log.write_bytes(bytes(data))
    with pytest.raises(RetentionError, match="deletion log"):
        forget(site, state, "cust-4", 30, "test")
    assert deletion_log.read_bytes() == bytes(data)
    deletion_log.write_bytes(deletion_log.read_bytes()[:-1])  # a torn last line
    with pytest.raises(RetentionError, match="deletion log"):
        forget(site, state, "cust-4", 30, "test")
    with pytest.raises(ValueError, match="empty"):
        forget(site, state, "  ", 30, "test")


def test_a_row_exported_after_the_request_but_dated_within_a_day_of_it_stays_erased(tmp_path):
    """A call before the request, exported later by a system whose clock runs ahead: the
    cut-off's day of slack covers it."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    forget(site, state, "dana", math.inf, "test", now=NOW)
    late = row(95, -0.25, customer="dana")  # dated 6 hours after the request
    write_site(site, site_rows() + [late])
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.excluded == {ERASED: 1}


@pytest.mark.parametrize("damage", ["deleted", "older copy"])
def test_a_deletion_log_deleted_or_restored_behind_the_ledger_stops_the_site(tmp_path, damage):
    """Found in review: deleting the log with its head (or restoring an older copy) was not
    detected, and every customer erased since was used again. The ledger records the log's
    length at each charge; a log shorter than that, or another one, stops the site."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[2]["customer_id"] = "erin"
    erin_text = rows[2]["text"]
    write_site(site, rows)
    forget(site, state, "someone-else", math.inf, "test")
    log = state / DELETION_LOG
    older = {p.name: p.read_bytes() for p in (log, head_path(log))}
    forget(site, state, "erin", math.inf, "test")
    assert not train(context(site, state, math.inf), "run-a").has_error()
    forget(site, state, "nobody", math.inf, "test")  # a log longer than recorded is fine
    assert not train(context(site, state, math.inf), "run-a", 2).has_error()
    if damage == "deleted":
        log.unlink()
        head_path(log).unlink()
    else:
        for name, data in older.items():
            (state / name).write_bytes(data)
    # nor extend it (found in review: an erasure recorded there, reported done, was lost when
    # the newest copy was restored over it, as the guide says; each scheduled purge added one)
    damaged = {p.name: p.read_bytes() for p in (log, head_path(log)) if p.exists()}
    for command in (lambda: purge(site, state, math.inf, "test"),
                    lambda: forget(site, state, "dana", math.inf, "test")):
        with pytest.raises(RetentionError, match="nothing is recorded or removed.*run this "
                                                 "again"):
            command()
    assert {p.name: p.read_bytes() for p in (log, head_path(log)) if p.exists()} == damaged
    reply = train(context(site, state, math.inf), "run-a", 3)
    assert reply.has_error() and reply.error.reason == Reason.LEDGER_UNREADABLE.value
    assert len(read_ledger(state, site_secret(state)).releases) == 2
    # stopped before the rows were read (found in review: the check ran only at the charge):
    # erin's text was not featurized again, and an exact evaluation, never charged, is refused
    assert erin_text not in cached_texts(state, [r["text"] for r in rows])
    ctx = context(site, state, math.inf)
    ctx.node_config["evaluation"] = "exact"
    asked = train_message(["card_lost", "refund"])
    reply = client_app.app(Message(content=asked.content, dst_node_id=7,
                                   message_type="evaluate"), ctx)
    assert reply.has_error() and reply.error.reason == Reason.LEDGER_UNREADABLE.value


def test_a_deletion_log_rewritten_without_the_site_secret_is_detected(deletion_log, tmp_path,
                                                                      capsys):
    """Hashes and head recomputed: an unkeyed chain would pass; the MACs do not."""
    entries = [json.loads(line) for line in deletion_log.read_text().splitlines()]
    del entries[1]  # the erasure request: its customer's rows would be used again
    previous = "0" * 64
    for seq, entry in enumerate(entries, start=1):
        entry |= {"seq": seq, "prev": previous}
        entry["hash"] = previous = entry_hash(entry)
    deletion_log.write_text("".join(canonical_json(e) + "\n" for e in entries))
    head = json.loads(head_path(deletion_log).read_text())
    head_path(deletion_log).write_text(canonical_json(head | {
        "entries": len(entries), "hash": previous}) + "\n")
    code, out, _ = audit_verify(capsys, deletion_log)
    assert code == 1 and "MAC does not match" in out
    reply = train(context(tmp_path / "site", tmp_path / "state", 30))
    assert reply.has_error() and reply.error.reason == Reason.DATA_UNUSABLE.value


def test_a_forged_entry_appended_past_the_head_is_detected(deletion_log, capsys):
    """One entry beyond the head passes as an interrupted append; only its MAC tells a forged
    one (here: a purge that never ran) from a real one."""
    last = json.loads(deletion_log.read_text().splitlines()[-1])
    forged = last | {"seq": last["seq"] + 1, "prev": last["hash"], "event": "purge",
                     "actor": "fedintent purge (scheduled)"}
    forged["hash"] = entry_hash(forged)
    with open(deletion_log, "a") as log:
        log.write(canonical_json(forged) + "\n")
    code, out, _ = audit_verify(capsys, deletion_log)
    assert code == 1 and "BROKEN at line 4: MAC does not match" in out


@pytest.mark.parametrize("forgery", ["emptied", "rewritten without MACs"])
def test_a_site_log_stripped_of_its_macs_is_still_checked_with_the_secret(deletion_log, capsys,
                                                                          forgery):
    """Found in review: the command decided from the first line whether a log had MACs, so an
    emptied deletion log with a forged head lacking one verified as an intact log without
    them."""
    entries = [json.loads(line) for line in deletion_log.read_text().splitlines()]
    if forgery == "emptied":
        entries = []
    deletion_log.write_text("".join(
        canonical_json({k: v for k, v in e.items() if k != "mac"}) + "\n" for e in entries))
    head_path(deletion_log).write_text(canonical_json(
        {"entries": len(entries), "hash": entries[-1]["hash"] if entries else "0" * 64}) + "\n")
    code, out, _ = audit_verify(capsys, deletion_log)
    assert code == 1 and out.startswith("BROKEN") and "MAC" in out


def test_a_keyed_log_without_its_secret_cannot_be_called_intact(deletion_log, tmp_path, capsys):
    code, _, err = audit_verify(capsys, deletion_log, "--state-dir", str(tmp_path / "elsewhere"))
    assert code == 2 and "MACs need the site secret" in err


@pytest.mark.parametrize("days", ["thirty", 0, -1.0, math.nan])
def test_a_malformed_retention_policy_stops_the_site(tmp_path, days):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    reply = train(context(site, state, days))
    assert reply.has_error() and reply.error.reason == Reason.SITE_CONFIG_INVALID.value


def test_an_erasure_binds_the_customer_however_its_id_is_spaced(tmp_path):
    """Identities are read without surrounding white space (found in review: a CSV exported
    with ", " between fields gave every unit a fresh budget). The same holds for erasure: a
    request for " cust-1 " covers rows naming "cust-1", and one recorded under the form a row
    was written in ("  cust-2", as before the strip) still covers that row."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(1, 1, "cust-1"), row(2, 1, "  cust-2"), row(3, 1, "cust-3")])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0  # the site has run
    erasure = forget(site, state, " cust-1 ", math.inf, "test")
    assert erasure.rows_found == 1
    secret = site_secret(state)
    policy = row_policy(state, math.inf)
    policy = RowPolicy(policy.not_before, policy.not_after,
                       (*policy.erased, (customer_key(secret, "  cust-2"), NOW)), secret)
    data = load_site(site, LABELS, keep=policy)
    assert data.excluded == {ERASED: 2}
    assert data.train.units + data.test.units == ["cust-3"]


SPELLINGS = ["AB-4711", "ab-4711", "\uff21\uff22-\uff14\uff17\uff11\uff11", "AB-47\u200b11",
             "AB-4711\ufe0f", "AB-47\u034f11", "AB-4711\u3164", "AB\u20114711", "AB\u20134711",
             "AB-\u0664\u0667\u0661\u0661", "\uff21\uff22\u30fc\uff14\uff17\uff11\uff11",
             "AB-4711\x00", "AB\u02d74711", "AB-47\u280011"]
"""One customer's id as exports write it: another case, full-width (a CJK input method), a
zero-width space (a web form), a variation selector (an emoji keyboard), a combining grapheme
joiner, a Hangul filler, a non-breaking hyphen, an en dash, Arabic-Indic digits, a Japanese
keyboard's long-vowel mark for the dash, NUL padding (a fixed-width export), a modifier minus,
a blank Braille pattern."""


def test_an_erasure_binds_the_customer_however_its_id_is_cased_widened_or_hidden(tmp_path):
    """Found in review, twice: an id matched only as written, then only up to format
    characters, so other spellings of an erased customer were still used after ``forget``.
    Each is erased with the request, later rows too, a broken line in any form is named (its
    JSON escapes read), the spend of the one unit they train as is reported, and only the
    rows in the id's own case leave the data files (a case-sensitive system may hold another
    customer in another)."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(i, 1, c) for i, c in enumerate(SPELLINGS)] + [row(19, 1, "AB-4712")])
    with open(site / "train.jsonl", "a") as f:
        f.write('{"text": "a broken line", "customer_id": "\uff41b-4711"\n'
                '{"text": "another", "customer_id": "\\u0041B-4711"\n')
    ctx = context(site, state, math.inf)
    ctx.node_config["privacy-unit"] = ctx.run_config["privacy-unit"] = "customer"
    assert not train(ctx).has_error()
    erasure = forget(site, state, "AB-4711", math.inf, "test", delete_from_data=True)
    assert erasure.rows_found == erasure.forms == len(SPELLINGS)
    assert erasure.other_case_rows == 1 and erasure.deletion.data_rows == len(SPELLINGS) - 1
    assert erasure.ledger_units == 1 and erasure.ledger_epsilon > 0  # its forms: one unit
    assert erasure.rejected_mentions == ("train.jsonl:3", "train.jsonl:4")  # after the 9 went
    write_site(site, [row(i, 0.5, c) for i, c in enumerate(SPELLINGS)] + [row(19, 1, "AB-4712")])
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.excluded == {ERASED: len(SPELLINGS)}
    assert data.train.units + data.test.units == ["AB-4712"]


def test_an_erasure_of_a_turkish_or_an_invisible_id_binds_it(tmp_path):
    """The dotted and dotless I are one letter to an erasure; an id of invisible characters
    only is its own form (found in review: ``forget`` then failed and recorded nothing)."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, "ID-1"), row(1, 1, "\u0131d-1"), row(2, 1, "\u0130D-1"),
                      row(3, 1, "\u200b"), row(4, 1, "E-1")])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0  # the site has run
    assert forget(site, state, "id-1", math.inf, "test").rows_found == 3
    assert forget(site, state, "\u200b", math.inf, "test").rows_found == 1
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.excluded == {ERASED: 4} and data.train.units + data.test.units == ["E-1"]


def test_forget_says_which_rows_it_left_in_the_data_files(tmp_path, capsys):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, "0015g00000AbCdE"), row(1, 1, "0015g00000abcde"), row(2, 1)])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert fedintent(["forget", "--site", str(site), "--state-dir", str(state), "--customer",
                      "0015g00000AbCdE", "--delete-from-data"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "2 rows of this customer in" in out and "(their id written in 2 forms)" in out
    assert "note: 1 of those rows write the id in another case: no run uses them" in out
    assert "0015g00000abcde" in (site / "train.jsonl").read_text()
    assert "0015g00000AbCdE" not in (site / "train.jsonl").read_text()


def test_an_erasure_logged_under_the_id_as_written_still_binds_it(tmp_path):
    """Erasures logged by releases before the canonical form keep binding the rows they bound."""
    site, secret = tmp_path / "site", b"s" * 32
    policy = RowPolicy(None, NOW + timedelta(days=1),
                       ((customer_key(secret, "\uff21B-4711"), NOW + timedelta(days=1)),), secret)
    write_site(site, [row(0, 1, "\uff21B-4711"), row(1, 1, "AB-4712")])
    assert load_site(site, LABELS, keep=policy).excluded == {ERASED: 1}


EARLIER_FORMS = [
    ("\u0130ZMIR-7", "i\u0307zmir-7"), ("AB\u20114711", "ab\u20104711"),
    ("AB-\u0664\u0667\u0661\u0661", "ab-\u0664\u0667\u0661\u0661"),
    ("AB-4711\ufe0f", "ab-4711\ufe0f"),
    ("\uff21\uff22\u30fc\uff14\uff17\uff11\uff11", "ab\u30fc4711"), ("AB-4711\x00", "ab-4711\x00"),
]
"""(a row's id, the form an earlier release recorded its erasure under): stop 51's first
build (NFKC without format characters, case-folded) for the first four, its last (dashes,
digits, the other invisible characters and the Turkish I folded) for the last two."""


@pytest.mark.parametrize(("written", "recorded"), EARLIER_FORMS)
def test_an_erasure_recorded_in_an_earlier_form_keeps_binding(tmp_path, written, recorded):
    """Found in review: the canonical form changed and erasures recorded in the one before
    matched nothing after the upgrade, even the spelling erased; rows were trained again."""
    site, secret = tmp_path / "site", b"s" * 32
    policy = RowPolicy(None, NOW + timedelta(days=1),
                       ((customer_key(secret, recorded), NOW + timedelta(days=1)),), secret)
    write_site(site, [row(0, 1, written), row(1, 1, "AB-4712")])
    assert load_site(site, LABELS, keep=policy).excluded == {ERASED: 1}


@pytest.mark.parametrize("erased", ["\u0130ZMIR-7", "i\u0307zmir-7", "izmir-7"])
def test_the_turkish_capital_i_and_its_lowercase_are_one_id(tmp_path, erased):
    """``str.lower`` (as Java's, JavaScript's and ICU's) writes the Turkish capital dotted I
    as an i and a combining dot; found in review: erasing either left the other in use."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, "\u0130ZMIR-7"), row(1, 1, "i\u0307zmir-7"), row(2, 1, "E-1")])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0  # the site has run
    assert forget(site, state, erased, math.inf, "test").rows_found == 2
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.train.units + data.test.units == ["E-1"]


def test_the_canonical_form_is_its_own_canonical_form():
    """An erasure records the canonical form and a row is matched by its own: a form that read
    again were another would split one id in two (found in review: an i with a dot and an
    accent, as a Lithuanian-locale lowercase or an NFD export writes it, composed only on the
    second reading, so erasing one spelling left the other in use)."""
    marks = [chr(c) for c in range(0x300, 0x370)] + ["\u0345", "\u1dc0", "\u20d7"]
    bases = ["i", "I", "\u0130", "\u0131", "a", "\u03b9", "j"]
    cases = [b + m + n for b in bases for m in marks for n in ("", "\u0300", "\u0307", "\u0301")]
    cases += ["Stra\u00dfe-1", "\u1e9e-9", "\ufb01-2", "\u2160-3", "\u1f88-2", "\u2126-4",
              "\u212b-5", "\u01c5-6", "\u200b", " x\u3164 ", *SPELLINGS]
    for customer in cases:
        once = canonical_customer(customer)
        assert canonical_customer(once) == once, ascii(customer)


def test_an_erasure_binds_an_accented_dotted_i_however_it_is_composed(tmp_path):
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, "\u00cc-1"), row(1, 1, "i\u0307\u0300-1"), row(2, 1, "i\u0300-1"),
                      row(3, 1, "E-1")])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0  # the site has run
    assert forget(site, state, "\u00cc-1", math.inf, "test").rows_found == 3
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.train.units + data.test.units == ["E-1"]


def test_forget_refuses_an_id_that_is_not_valid_text(tmp_path, capsys):
    """An id typed in a Latin-1 terminal reaches Python as lone surrogates; found in review:
    forget crashed with a traceback and recorded nothing. It says what is wrong instead."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, "M\u00fcller-1")])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    capsys.readouterr()
    assert fedintent(["forget", "--site", str(site), "--state-dir", str(state), "--customer",
                      "M\udcfcller-1"]) == 2
    err = capsys.readouterr().err
    assert "not valid UTF-8" in err and "Traceback" not in err


@pytest.mark.parametrize("written", ['"AB\\/4711"', '"AB-\\uD835\\uDFD2\\ud835\\udfd5"'])
def test_a_broken_line_is_found_however_json_escapes_the_id(tmp_path, capsys, written):
    """PHP escapes every ``/``; a character beyond the BMP is escaped as a surrogate pair
    (found in review: neither line was named, and --delete-from-data exited 0)."""
    customer = "AB/4711" if "/" in written else "AB-\U0001d7d2\U0001d7d5"
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, customer)])
    with open(site / "train.jsonl", "a") as f:
        f.write('{"text": "a broken line", "customer_id": ' + written + "\n")
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    assert forget(site, state, customer, math.inf, "test").rejected_mentions == ("train.jsonl:2",)


def test_delete_from_data_takes_a_same_case_id_with_an_invisible_character_in_an_accent(
        tmp_path):
    """Found in review: a combining grapheme joiner between a letter and its accent left the
    accent uncomposed in the case-keeping form, so the row was kept as "another case"."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, [row(0, 1, "Caf\u00e9-1"), row(1, 1, "Cafe\u034f\u0301-1"), row(2, 1, "E-1")])
    assert fedintent(["purge", str(site), "--state-dir", str(state)]) == 0
    erasure = forget(site, state, "Caf\u00e9-1", math.inf, "test", delete_from_data=True)
    assert erasure.rows_found == 2 and erasure.other_case_rows == 0
    assert erasure.deletion.data_rows == 2


def test_privacy_report_says_one_customers_spend_without_erasing_them(tmp_path, capsys):
    """Found in review: a site could not answer "how much epsilon has customer X spent?" but
    with forget, which erases them."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[0]["customer_id"] = rows[3]["customer_id"] = "Dana-7"
    write_site(site, rows)
    assert not train(context(site, state, math.inf)).has_error()
    log = (state / DELETION_LOG).read_bytes() if (state / DELETION_LOG).exists() else None
    report = ["privacy-report", str(state), "--site", str(site), "--customer"]
    for form in ("Dana-7", "dana-7"):
        assert fedintent([*report, form]) == 0
        expected = max(spend(state, "conv-0"), spend(state, "conv-3"))
        book = read_ledger(state, site_secret(state))
        together = rdp_epsilon((math.sqrt(spend(state, "conv-0"))
                                + math.sqrt(spend(state, "conv-3"))) ** 2, book.order, book.delta)
        assert (f"customer: 2 rows in {site} (any written form of the id); the ledger holds "
                "the spend of 2 privacy unit(s) of theirs, largest lifetime epsilon "
                f"{rdp_epsilon(expected, book.order, book.delta):.3f} at delta {book.delta:g}; "
                "under privacy-unit utterance that is one utterance's: all of theirs together "
                f"at most {format_epsilon(together)}\n" in capsys.readouterr().out)
    assert fedintent([*report, "erin"]) == 0
    assert (f"customer: no row in {site} has this customer_id; the ledger holds no spend of "
            "theirs") in capsys.readouterr().out
    assert ((state / DELETION_LOG).read_bytes() if (state / DELETION_LOG).exists()
            else None) == log  # nothing erased
    assert fedintent(["privacy-report", str(state), "--customer", "erin"]) == 2
    assert "--customer and --site go together" in capsys.readouterr().err


def test_a_customers_utterances_after_a_sampled_release_are_not_read_as_bounded(tmp_path,
                                                                               capsys):
    """Review 126 H1: under the utterance unit the largest unit's epsilon is one utterance's, and
    a customer's several utterances together lose about their number squared times as much
    Rényi DP; after a Poisson-sampled release the ledger holds no proven bound for them
    together, and the report says so rather than a number."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[0]["customer_id"] = rows[3]["customer_id"] = "Dana-7"
    write_site(site, rows)
    ctx = context(site, state, math.inf)
    ctx.run_config["batch-size"] = 4  # sampled: rate 4 / rows
    assert not train(ctx).has_error()
    assert any(release.sample_rate < 1
               for release in read_ledger(state, site_secret(state)).releases)
    assert fedintent(["privacy-report", str(state), "--site", str(site), "--customer",
                      "Dana-7"]) == 0
    assert ("under privacy-unit utterance that is one utterance's, and after a sampled release "
            "the ledger bounds none of their utterances together: only privacy-unit customer "
            "protects a customer as one\n") in capsys.readouterr().out


def test_check_data_counts_the_customers_in_both_splits(tmp_path, capsys):
    """Found in review: at the defaults a customer in both split files spent their whole
    lifetime budget in the first run's DP evaluations and sat out training, unannounced."""
    site = tmp_path / "site"
    write_site(site, [row(0, 1, "AB-4711"), row(1, 1, "Cd-9"), row(2, 1, "E-1")])
    (site / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        row(3, 1, "ab-4711"), row(4, 1, "Cd-9"), row(5, 1, "F-2"))))
    assert fedintent(["check-data", str(site)]) == 0
    out = capsys.readouterr().out
    assert "customer_id: 2 customers have rows in both train and test" in out
    assert "no valid test rows" not in out
    assert "4711" not in out and "Cd-9" not in out
    (site / "test.jsonl").write_text(json.dumps(row(5, 1, "F-2")) + "\n")
    assert fedintent(["check-data", str(site)]) == 0
    assert "in both train and test" not in capsys.readouterr().out


def test_check_data_counts_the_customers_written_in_more_than_one_form(tmp_path, capsys):
    """The site trains a customer's forms as one unit, but splits by the id as written, so
    one customer's rows can be in both splits: the site is told, by count, never by id."""
    site = tmp_path / "site"
    write_site(site, [row(0, 1, "AB-4711"), row(1, 1, "ab-4711"), row(2, 1, "AB-47\u200b11"),
                      row(3, 1, "Cd-9"), row(4, 1, "cD-9"), row(5, 1, "E-1")])
    assert fedintent(["check-data", str(site)]) == 0
    out = capsys.readouterr().out
    assert "customer_id: 2 customers are written in more than one form" in out
    assert "up to 3)" in out and "4711" not in out and "Cd-9" not in out
    write_site(site, [row(0, 1, "AB-4711"), row(5, 1, "E-1")])
    assert fedintent(["check-data", str(site)]) == 0
    assert "more than one form" not in capsys.readouterr().out


def test_purge_and_forget_each_explain_their_own_options(capsys):
    """Found in review: both shared one help text for --delete-from-data and --retention-days
    ("purge: expired or erased; forget: the customer's")."""
    for command, own, other in (("purge", "the rows expired or erased", "customer's rows"),
                                ("forget", "customer's rows go whatever their age", "expired")):
        with pytest.raises(SystemExit):
            fedintent([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert own in text and other not in text and "purge:" not in text


def test_a_scheduled_purge_on_a_lost_state_folder_refuses_and_makes_none(tmp_path, capsys):
    """Found in review: the container's scheduled purge on a state folder not mounted would have
    made a new secret there, and the site then trained on an empty ledger."""
    site, lost = tmp_path / "site", tmp_path / "unmounted"
    write_site(site, site_rows())
    assert fedintent(["purge", str(site), "--state-dir", str(lost)]) == 2
    assert "holds no site secret" in capsys.readouterr().err
    assert not lost.exists()


@pytest.mark.parametrize("deletion", ["erasure", "purge"])
def test_a_deletion_log_restored_from_before_a_deletion_made_after_the_last_charge_stops_the_site(
        tmp_path, deletion):
    """Found in review: the ledger recorded the log's length only at charges, so a log restored
    from a copy taken after the last charge (as the guide said) lost the erasures and purges
    made since, and nothing noticed: the erased customer's rows were used again."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[2]["customer_id"] = "erin"
    write_site(site, rows)
    forget(site, state, "someone-else", math.inf, "test")
    assert not train(context(site, state, math.inf), "run-a").has_error()
    log = state / DELETION_LOG
    older = {p.name: p.read_bytes() for p in (log, head_path(log))}
    if deletion == "erasure":
        forget(site, state, "erin", math.inf, "test")
    else:
        purge(site, state, 30, "test")
    for name, data in older.items():
        (state / name).write_bytes(data)
    reply = train(context(site, state, math.inf), "run-a", 2)
    assert reply.has_error() and reply.error.reason == Reason.LEDGER_UNREADABLE.value
    assert len(read_ledger(state, site_secret(state)).releases) == 1


def test_a_full_disk_under_the_deletion_logs_head_never_locks_the_log(tmp_path, capsys,
                                                                      monkeypatch):
    """Found in review: an entry appended while its head could not be written (a full disk)
    was kept, so two such erasures left the log two past its head, which reads as deleted
    entries: the site stopped using its data for good, and ``forget`` printed a traceback."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    forget(site, state, "cust-1", math.inf, "test")
    write_head = hash_chain.write_bytes_atomic

    def disk_full(path, data, mode=0o644):
        if str(path).endswith(".head"):
            raise OSError(28, "No space left on device", str(path))
        write_head(path, data, mode)

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", disk_full)
    capsys.readouterr()
    for customer in ("cust-2", "cust-3"):
        code = fedintent(["forget", "--site", str(site), "--customer", customer,
                          "--state-dir", str(state), "--retention-days", "inf"])
        out, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in out + err
        assert "No space left on device" in err and "deletions.jsonl.head" in err
    monkeypatch.setattr(hash_chain, "write_bytes_atomic", write_head)
    assert audit_verify(capsys, state / DELETION_LOG)[0] == 0
    assert [e["event"] for e in log_entries(state)] == ["erasure", "erasure-done"]
    forget(site, state, "cust-2", math.inf, "test")  # the disk freed: it records again
    data = load_site(site, LABELS, keep=row_policy(state, math.inf))
    assert data.excluded == {ERASED: 2}


def test_a_head_left_one_behind_by_a_crash_is_brought_up_before_the_next_entry(tmp_path,
                                                                               monkeypatch):
    """A crash between an entry and its head leaves the head one behind, which reads as an
    interrupted append; an append after it whose own head then fails must not leave it two
    behind."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    forget(site, state, "cust-1", math.inf, "test")
    log = state / DELETION_LOG
    head = head_path(log).read_bytes()
    purge(site, state, math.inf, "test")
    head_path(log).write_bytes(head)  # as if the process died before the last head write
    write_head = hash_chain.write_bytes_atomic
    writes = []

    def second_head_write_fails(path, data, mode=0o644):
        writes.append(path)
        if len(writes) == 2:
            raise OSError(28, "No space left on device", str(path))
        write_head(path, data, mode)

    monkeypatch.setattr(hash_chain, "write_bytes_atomic", second_head_write_fails)
    with pytest.raises(OSError):
        forget(site, state, "cust-3", math.inf, "test")
    monkeypatch.undo()
    assert hash_chain.verify_log(log, site_secret(state)).ok
    assert json.loads(head_path(log).read_text())["entries"] == len(log_entries(state)) == 3


def test_forget_on_a_read_only_data_folder_removes_the_derived_copies_and_says_what_is_left(
        tmp_path, capsys, monkeypatch):
    """Found in review: the data folder was rewritten before the feature store was pruned, so
    a read-only one stopped the erasure with the customer's features still cached, nothing
    logged after the request, and an error that read as if nothing had been done."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[3]["customer_id"] = "dana"
    write_site(site, rows)
    assert not train(context(site, state, math.inf), "run-a").has_error()
    texts = [r["text"] for r in rows]
    assert rows[3]["text"] in cached_texts(state, texts)

    def read_only(path, lines, stamp):
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(retention, "remove_lines", read_only)  # as root, chmod would not do
    capsys.readouterr()
    code = fedintent(["forget", "--site", str(site), "--customer", "dana", "--state-dir",
                      str(state), "--retention-days", "inf", "--delete-from-data"])
    err = capsys.readouterr().err
    assert code == 2 and "derived copies of the rows are removed and logged" in err
    assert "0 of their lines in the data folder" in err and "mounted read-only" in err
    assert rows[3]["text"] not in cached_texts(state, texts)
    done = log_entries(state)[-1]
    assert done["event"] == "erasure-done" and done["delete_from_data"] == "failed"
    assert done["deleted"]["feature rows"] == 1 and done["deleted"]["data rows"] == 0
    assert "dana" in (site / "train.jsonl").read_text()


def test_a_data_file_rewritten_before_its_folder_flush_failed_is_logged_as_rewritten(
        tmp_path, capsys, monkeypatch):
    """Found in review: an I/O error flushing the data folder after a file was replaced read
    as "nothing removed": the log recorded 0 data rows and the error said the lines were still
    there, though every reader already saw the file without them."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[3]["customer_id"] = "dana"
    write_site(site, rows)
    fsync = os.fsync

    def failing_for_the_data_folder(fd):
        if os.path.samestat(os.fstat(fd), site.stat()):
            raise OSError(errno.EIO, "Input/output error")
        fsync(fd)

    monkeypatch.setattr(durable_files.os, "fsync", failing_for_the_data_folder)
    code = fedintent(["forget", "--site", str(site), "--customer", "dana", "--state-dir",
                      str(state), "--retention-days", "inf", "--delete-from-data"])
    err = capsys.readouterr().err
    assert code == 2 and "1 of their lines in the data folder" in err
    assert "could not be flushed: Input/output error" in err and "check the disk" in err
    done = log_entries(state)[-1]
    assert done["delete_from_data"] == "failed" and done["deleted"]["data rows"] == 1
    assert "dana" not in "".join(p.read_text() for p in site.glob("*.jsonl"))


def test_an_erased_customers_text_is_not_kept_in_the_clientapps_memory(tmp_path):
    """Found in review: the ClientApp cached its last four loads of the site, so the load from
    before an erasure, with the customer's text, stayed in memory after it."""
    site, state = tmp_path / "site", tmp_path / "state"
    rows = site_rows()
    rows[3]["customer_id"] = "dana"
    rows[3]["text"] = "my card was stolen at the canary shop"
    write_site(site, rows)
    assert not train(context(site, state, math.inf), "run-a").has_error()
    forget(site, state, "dana", math.inf, "test")
    assert not train(context(site, state, math.inf), "run-a", 2).has_error()
    gc.collect()
    held = [obj for obj in gc.get_objects() if type(obj) is SiteData]
    assert held and not any("canary shop" in text for data in held
                            for text in data.train.texts + data.test.texts)


def test_purge_without_retention_days_applies_the_last_one_and_never_deletes_data_under_it(
        tmp_path, capsys):
    """Found in review: ``purge --delete-from-data`` without ``--retention-days`` applied 30
    days, so a site that keeps rows 365 days lost every row older than 30 for good; and later
    the retention an earlier purge recorded, so a one-off ``--retention-days 1`` for the derived
    stores deleted every row of the data folder on the next run."""
    site, state = tmp_path / "site", tmp_path / "state"
    write_site(site, site_rows())
    rows = FRESH + OLD

    def purge(*args: str) -> tuple[int, str]:
        code = fedintent(["purge", str(site), "--state-dir", str(state), *args])
        out, err = capsys.readouterr()
        return code, out + err

    code, out = purge()  # derived stores
    assert code == 0 and "the default: the deletion log records none yet" in out
    assert purge("--retention-days", "365")[0] == 0
    code, out = purge()
    assert code == 0 and "retention 365 days, as the site last applied it" in out
    assert purge("--retention-days", "1")[0] == 0  # a one-off, for the derived stores
    code, said = purge("--delete-from-data")
    assert code == 2 and "--delete-from-data needs --retention-days" in said
    assert len((site / "train.jsonl").read_text().splitlines()) == rows
    assert purge("--delete-from-data", "--retention-days", "365")[0] == 0
    assert len((site / "train.jsonl").read_text().splitlines()) == rows
    assert purge("--delete-from-data", "--retention-days", "30")[0] == 0
    assert len((site / "train.jsonl").read_text().splitlines()) == FRESH


def test_a_simulated_sites_state_folder_is_found_where_train_keeps_it(tmp_path, capsys):
    """Found in review: ``purge DATA/site-00`` looked in ``DATA/site-00/.fedintent-state``,
    not where ``fedintent train`` kept the site's state (``DATA/.fedintent-state/site-00``),
    and the error suggested making a ledger inside the data folder."""
    site = tmp_path / "data" / "site-00"
    site.parent.mkdir()
    write_site(site, site_rows())
    simulated = tmp_path / "data" / ".fedintent-state" / "site-00"
    assert not train(context(site, simulated, math.inf)).has_error()
    assert fedintent(["purge", str(site), "--retention-days", "inf"]) == 0
    out = capsys.readouterr().out
    assert f"state folder: {simulated} (where fedintent train keeps a simulated site's" in out
    assert f"state {simulated})" in out and not (site / ".fedintent-state").exists()
    own = site / ".fedintent-state"
    create_site_secret(own)  # a deployed site's own, by its default, is taken first
    assert fedintent(["purge", str(site), "--retention-days", "inf"]) == 0
    assert f"state {own})" in capsys.readouterr().out
