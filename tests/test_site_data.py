"""Site data: every kind of bad row is skipped with file:line and a reason, never a crash."""

import json

import pytest

from fl_client.site_data import SiteDataError, list_site_dirs, load_site
from fl_protocol.label_file import LabelFileError, read_labels

LABELS = ["card_lost", "refund"]


def conversation(text="I lost my card", intent="card_lost", customer="c1", **extra) -> dict:
    return {
        "conversation_id": "x", "customer_id": customer, "timestamp": "2026-01-01T00:00:00Z",
        "channel": "chat", "language": "en",
        "turns": [{"speaker": "agent", "text": "Hello, how can I help?"},
                  {"speaker": "customer", "text": text}],
        "intent": intent,
    } | extra


def write_jsonl(path, lines: list) -> None:
    path.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")


def test_jsonl_conversations_use_the_first_customer_turn_by_default(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [conversation(), conversation("refund please", "refund")])
    write_jsonl(tmp_path / "test.jsonl", [conversation(customer="c9")])
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["I lost my card", "refund please"]
    assert site.train.labels == [0, 1]
    assert site.train.units == ["c1", "c1"]
    assert len(site.test) == 1 and not site.rejected


def test_intent_turn_selects_the_turn(tmp_path):
    record = conversation()
    record["turns"].append({"speaker": "customer", "text": "actually I want a refund"})
    record.update(intent="refund", intent_turn=2)
    write_jsonl(tmp_path / "train.jsonl", [record])
    assert load_site(tmp_path, LABELS).train.texts == ["actually I want a refund"]


def test_every_kind_of_bad_row_is_reported_with_its_line(tmp_path):
    lines = [
        conversation(),                                   # 1 ok
        "{not json",                                      # 2 invalid JSON
        json.dumps([1, 2]),                               # 3 not an object
        json.dumps(conversation(text="   ")),             # 4 empty text
        json.dumps({"customer_id": "c", "intent": "refund"}),  # 5 no text
        json.dumps(conversation(intent=7)),               # 6 wrong type
        json.dumps(conversation(intent="unknown_intent")),  # 7 unknown label: counted
        json.dumps(conversation() | {"intent_turn": 0}),  # 8 agent turn
        json.dumps(conversation() | {"intent_turn": 9}),  # 9 out of range
        json.dumps(conversation() | {"turns": "hello"}),  # 10 bad turns
    ]
    write_jsonl(tmp_path / "train.jsonl", lines)
    with open(tmp_path / "train.jsonl", "ab") as f:
        f.write(b'{"text": "caf\xe9", "label": "refund"}\n')  # 11 undecodable bytes
    site = load_site(tmp_path, LABELS)
    assert len(site.train) == 1
    reasons = {row.line: row.reason for row in site.rejected}
    assert sorted(reasons) == [2, 3, 4, 5, 6, 8, 9, 10, 11]
    assert "invalid JSON" in reasons[2]
    assert "JSON object" in reasons[3]
    assert "empty text" in reasons[4]
    assert "missing text" in reasons[5]
    assert "intent" in reasons[6]
    assert "not a customer turn" in reasons[8]
    assert "not an index" in reasons[9]
    assert "turns" in reasons[10]
    assert "undecodable" in reasons[11]
    assert str(site.rejected[0]).startswith("train.jsonl:2: ")
    assert site.unknown_labels == {"unknown_intent": 1}
    assert site.rows_read == 11


def test_csv_rows_and_bad_csv_rows(tmp_path):
    (tmp_path / "train.csv").write_text(
        'text,label\n"lost my card, help",card_lost\nrefund now,refund\n'
        ",refund\nonly-one-field\nsomething,not_a_label\n"
    )
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["lost my card, help", "refund now"]
    assert {r.line for r in site.rejected} == {4, 5}
    assert site.unknown_labels == {"not_a_label": 1}


def test_csv_without_text_and_label_header_names_the_file(tmp_path):
    (tmp_path / "train.csv").write_text("utterance,intent_name\nhello,refund\n")
    with pytest.raises(SiteDataError, match="train.csv:1"):
        load_site(tmp_path, LABELS)


def test_pii_is_redacted_before_anything_else_sees_the_text(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [
        conversation("my card 4111 1111 1111 1111 is lost, call 13812345678"),
    ])
    text = load_site(tmp_path, LABELS).train.texts[0]
    assert "4111" not in text and "13812345678" not in text
    assert "[CARD]" in text and "[PHONE]" in text
    raw = load_site(tmp_path, LABELS, redact_pii=False).train.texts[0]
    assert "13812345678" in raw


def test_unsplit_site_is_split_by_customer_deterministically(tmp_path):
    rows = [conversation(f"text {i}", customer=f"cust-{i // 3}") for i in range(300)]
    write_jsonl(tmp_path / "conversations.jsonl", rows)
    first, second = load_site(tmp_path, LABELS), load_site(tmp_path, LABELS)
    assert first.train.texts == second.train.texts
    assert 0.1 < len(first.test) / 300 < 0.3
    assert not set(first.train.units) & set(first.test.units)


def test_rows_have_identities_that_survive_edits_reorders_and_file_changes(tmp_path):
    first = conversation("my card is lost")
    second = conversation("refund please")
    first["conversation_id"], second["conversation_id"] = "c-1", "c-2"
    write_jsonl(tmp_path / "train.jsonl", [first, second])
    before = load_site(tmp_path, LABELS).train.ids
    assert len(set(before)) == 2
    first["turns"][0]["text"] = "my card is lost, fixed typo"
    write_jsonl(tmp_path / "train.jsonl", [second, first])
    assert load_site(tmp_path, LABELS).train.ids == [before[1], before[0]]
    (tmp_path / "train.jsonl").rename(tmp_path / "conversations.jsonl")
    renamed = load_site(tmp_path, LABELS)
    assert set(renamed.train.ids + renamed.test.ids) == set(before)


def test_rows_without_an_id_are_known_by_customer_and_text(tmp_path):
    (tmp_path / "train.csv").write_text("text,label,customer_id\nhello,card_lost,c1\n"
                                        "hello,card_lost,c2\nhello,card_lost,c1\n")
    ids = load_site(tmp_path, LABELS).train.ids
    assert ids[0] == ids[2] != ids[1]  # the same customer saying the same thing: one utterance


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SiteDataError, match="not found"):
        load_site(tmp_path / "nope", LABELS)
    with pytest.raises(SiteDataError, match="no data files"):
        load_site(tmp_path, LABELS)
    with pytest.raises(SiteDataError, match="no site folders"):
        list_site_dirs(tmp_path)


def test_site_folders_are_sorted_and_hidden_ones_skipped(tmp_path):
    for name in ("site-02", "site-00", ".fedintent-state", "site-01"):
        (tmp_path / name).mkdir()
    assert [p.name for p in list_site_dirs(tmp_path)] == ["site-00", "site-01", "site-02"]


def test_label_file_checks(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n\nc\n")
    assert read_labels(path) == ["a", "b", "c"]
    path.write_text("a\nb\na\n")
    with pytest.raises(LabelFileError, match="duplicate"):
        read_labels(path)
    path.write_text("only\n")
    with pytest.raises(LabelFileError, match="at least 2"):
        read_labels(path)
