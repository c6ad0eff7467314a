"""Site data: every kind of bad row is skipped with file:line and a reason, never a crash."""

import errno
import io
import json
from pathlib import Path

import pytest

import fl_client.data_files
from fedintent.cli import main
from fl_client.data_checks import record_languages
from fl_client.data_files import MAX_LINE_BYTES, list_site_dirs
from fl_client.row_parsing import MAX_TEXT_CHARS
from fl_client.rows import SiteDataError
from fl_client.shown import rejection_lines, shown
from fl_client.site_data import load_site
from fl_protocol.label_file import (
    MAX_LABEL_LENGTH,
    MAX_LABELS,
    LabelFileError,
    label_list_problem,
    read_labels,
)

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
    assert reasons[11].startswith("undecodable bytes") and "save the file as UTF-8" in reasons[11]
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


def test_a_quoted_csv_field_spanning_lines_rejects_both_halves(tmp_path):
    """Found in review: read a line at a time, the head was rejected for its field count and
    the tail accepted as a row of truncated text."""
    (tmp_path / "train.csv").write_text(
        'text,label,customer_id\n"my card,\nI lost my card",card_lost,C9\n'
        '"he said ""stop""",refund,C8\n'
        'refund now, refund ,C7\n'
    )
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ['he said "stop"', "refund now"]
    assert {r.line for r in site.rejected} == {2, 3}
    assert all("quoted field spanning lines" in r.reason for r in site.rejected)
    assert site.train.labels == [1, 1]  # " refund " is the label refund


def test_a_csv_without_a_usable_header_costs_its_rows_not_the_site(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nrefund now,refund\n")
    (tmp_path / "test.csv").write_text("utterance,intent_name\nhello,refund\n\nbye,refund\n")
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["refund now"] and len(site.test) == 0
    assert [str(row) for row in site.rejected] == [
        "test.csv:1: CSV header must name 'text' and 'label' (or 'intent'); its 2 columns "
        "('utterance', 'intent_name') lack 'text' and 'label' (column names are case-sensitive: "
        "write them in lower case; a file without a header line has its first row read as the "
        "header)",
        "test.csv:2: skipped: the file's header (line 1) is unusable",
        "test.csv:4: skipped: the file's header (line 1) is unusable",
    ]
    assert site.rows_read == 4


def test_a_semicolon_separated_export_is_named_so_and_its_rows_are_one_line(tmp_path, capsys):
    """Found in review: a semicolon-separated export (Excel's default in much of Europe) was
    told only that its one column lacked 'text' and 'label', and check-data printed a line per
    row (thousands for a real export; the site's log as many)."""
    (tmp_path / "train.csv").write_text("text;label\n" + "".join(
        f"lost my card {i};card_lost\n" for i in range(30)) + "other,row\n")
    site = load_site(tmp_path, LABELS)
    assert site.rows_read == len(site.rejected) == 32  # each row still counted
    assert rejection_lines(site.rejected) == [
        "train.csv:1: CSV header must name 'text' and 'label' (or 'intent'); its 1 columns "
        "(<a string of length 10, not shown>) lack 'text' and 'label' (column names are "
        "case-sensitive: write them in lower case; a file without a header line has its first "
        "row read as the header); its columns are separated by semicolons: export the file "
        "comma-separated (in Excel: CSV UTF-8, comma delimited)",
        "train.csv:2-32 (31 rows): skipped: the file's header (line 1) is unusable"]
    assert main(["check-data", str(tmp_path)]) == 1  # no valid row
    out = capsys.readouterr().out
    assert out.count("  rejected ") == 2
    assert "  rejected train.csv:2-32 (31 rows): skipped: the file's header (line 1)" in out
    (tmp_path / "train.csv").write_text('"text";"label"\n"lost card";card_lost\n')
    assert "separated by semicolons" in str(load_site(tmp_path, LABELS).rejected[0])
    (tmp_path / "train.csv").write_text("when;where\nlost card;card_lost\n")
    assert "separated by" not in str(load_site(tmp_path, LABELS).rejected[0])


def test_a_capitalised_csv_header_is_named_with_the_columns_found_and_the_case_rule(tmp_path):
    """Found in review: Excel's `Text,Label` was said to lack 'text' and 'label', with nothing
    to show why; the columns found are shown, and that the names are lower case."""
    (tmp_path / "train.csv").write_text("Text,Label\nlost card,card_lost\n")
    [header, row] = [str(row) for row in load_site(tmp_path, LABELS).rejected]
    assert header.startswith("train.csv:1: CSV header must name 'text' and 'label' (or "
                             "'intent'); its 2 columns ('Text', 'Label') lack 'text' and "
                             "'label' (column names are case-sensitive: write them in lower "
                             "case;")
    assert row == "train.csv:2: skipped: the file's header (line 1) is unusable"


def test_a_headerless_csvs_first_row_is_not_quoted_as_its_columns(tmp_path):
    """Found in review: the first row of a CSV without a header line, read as its header, was
    quoted in the message, and a customer id is label-shaped: it reached check-data's output
    and the site's log. Names of columns are still quoted, whatever their case."""
    (tmp_path / "train.csv").write_text("AB-4711,lost card,card_lost,2026-12-01\n"
                                        "AB-4711,refund me,refund,2026-12-01\n")
    [header, _] = [str(row) for row in load_site(tmp_path, LABELS).rejected]
    assert "AB-4711" not in header and "card_lost" not in header
    assert "its 4 columns (<a string of length 7, not shown>, <a string of length 9, not " in header
    for value in ("CUSTOMER-4711", "Customer_Jane_Doe", "call_me_back"):
        (tmp_path / "train.csv").write_text(f"{value},lost card\n{value},refund me\n")
        [header, _] = [str(row) for row in load_site(tmp_path, LABELS).rejected]
        assert value not in header, header
    (tmp_path / "train.csv").write_text("Customer_ID,Utterance,Intent_Name,Date\nx,y,z,w\n")
    [header, _] = [str(row) for row in load_site(tmp_path, LABELS).rejected]
    assert "('Customer_ID', 'Utterance', 'Intent_Name', 'Date')" in header


@pytest.mark.parametrize(("line", "reason"), [
    ('{"text": "lost card", "label": "card', "invalid JSON (Invalid control character at the "
     "end of the line: it may be cut short)"),
    ('{"text": "lost card", ', "invalid JSON (Expecting property name enclosed in double quotes "
     "at the end of the line: it may be cut short)"),
    ('{"text": "lost card" "label": 1}', "invalid JSON (Expecting ',' delimiter at column 22)"),
], ids=["inside a string", "between fields", "mid-line"])
def test_invalid_json_says_where_parsing_stopped_and_when_the_line_may_be_cut_short(
        tmp_path, line, reason):
    """Found in review: a truncated line gave `invalid JSON (Invalid control character at)`,
    the position cut off and nothing saying the line was cut short."""
    write_jsonl(tmp_path / "train.jsonl", [conversation(), line])
    with open(tmp_path / "train.jsonl", "a") as f:  # a last line cut short, with no line break
        f.write('{"text": "lost card')
    assert [str(row) for row in load_site(tmp_path, LABELS).rejected] == [
        f"train.jsonl:2: {reason}",
        "train.jsonl:3: invalid JSON (Unterminated string starting at column 10; the line may "
        "be cut short)",
    ]


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


def test_an_utterance_keeps_its_aliases_however_its_row_is_written(tmp_path):
    line = conversation("my card is lost")
    write_jsonl(tmp_path / "train.jsonl", [line])
    as_conversation = load_site(tmp_path, LABELS).train
    (tmp_path / "train.jsonl").unlink()
    (tmp_path / "train.csv").write_text(
        "conversation_id,text,label,customer_id\nx,my card is lost,card_lost,c1\n")
    as_row = load_site(tmp_path, LABELS).train
    (tmp_path / "train.csv").write_text("text,label,customer_id\nmy card is lost,card_lost,c1\n")
    without_id = load_site(tmp_path, LABELS).train
    assert as_conversation.ids == ["id:x#1"] and as_row.ids == ["id:x"]
    assert as_conversation.aliases == as_row.aliases
    assert set(as_row.aliases[0]) & set(without_id.aliases[0])  # its customer and text
    assert "conversation:x" in as_row.aliases[0]


@pytest.mark.parametrize("id_column", ["conversation_id", None])
def test_a_csv_written_with_spaces_after_its_commas_names_the_same_units(tmp_path, id_column):
    """Found in review: the same CSV exported with ", " between fields gave every id, customer
    and text a leading space, so every unit a new identity and a fresh budget. Identities are
    taken without surrounding white space; the written forms stay aliases, so a spend recorded
    under them is still found."""
    fields = [name for name in ("text", id_column, "label", "customer_id") if name]
    values = [value for value in ("my card is lost", "x-1" if id_column else None, "card_lost",
                                  "c1") if value]
    (tmp_path / "train.csv").write_text(f"{','.join(fields)}\n{','.join(values)}\n")
    tight = load_site(tmp_path, LABELS).train
    (tmp_path / "train.csv").write_text(f"{', '.join(fields)}\n{', '.join(values)} \n")
    spaced = load_site(tmp_path, LABELS).train
    assert spaced.ids == tight.ids and spaced.units == tight.units == ["c1"]
    assert spaced.texts == tight.texts
    assert set(tight.aliases[0]) < set(spaced.aliases[0])  # and the forms it was read as
    if id_column:
        assert "conversation: x-1" in spaced.aliases[0]


def test_ids_in_json_lines_are_taken_without_surrounding_white_space(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [conversation(customer="c1", conversation_id="x")])
    tight = load_site(tmp_path, LABELS).train
    write_jsonl(tmp_path / "train.jsonl", [conversation(customer=" c1\t",
                                                        conversation_id="x ")])
    spaced = load_site(tmp_path, LABELS).train
    assert (spaced.ids, spaced.units) == (tight.ids, tight.units) == (["id:x#1"], ["c1"])
    write_jsonl(tmp_path / "train.jsonl", [conversation(customer="  ")])
    rejected = load_site(tmp_path, LABELS).rejected
    assert rejected[0].reason == "customer_id must be a non-empty string"


def test_rows_without_an_id_are_known_by_customer_and_text(tmp_path):
    (tmp_path / "train.csv").write_text("text,label,customer_id\nhello,card_lost,c1\n"
                                        "hello,card_lost,c2\nhello,card_lost,c1\n")
    ids = load_site(tmp_path, LABELS).train.ids
    assert ids[0] == ids[2] != ids[1]  # the same customer saying the same thing: one utterance


def test_a_folder_of_sites_given_for_one_site_is_named_as_such(tmp_path):
    """Found in review: "no data files" said no more, for the folder that holds the sites."""
    for name in ("site-b", "site-a", ".hidden", "empty"):
        (tmp_path / name).mkdir()
    for name in ("site-b", "site-a", ".hidden"):
        (tmp_path / name / "train.jsonl").write_text('{"text": "hi", "label": "a"}\n')
    with pytest.raises(SiteDataError, match=r"it holds site folders \(site-a, site-b\): give "
                                            "one of them$"):
        load_site(tmp_path, LABELS)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(SiteDataError, match="not found"):
        load_site(tmp_path / "nope", LABELS)
    with pytest.raises(SiteDataError, match=r"no data files in \S+: expected [^;]*$"):
        load_site(tmp_path, LABELS)
    with pytest.raises(SiteDataError, match=r"no site folders in \S+$"):
        list_site_dirs(tmp_path)
    (tmp_path / "train.jsonl").write_text('{"text": "hi", "label": "a"}\n')
    with pytest.raises(SiteDataError, match="it holds data files itself, so it is one site's "
                       "folder: give the folder that holds the site folders"):
        list_site_dirs(tmp_path)  # found in review: --data given one site's folder


def test_site_folders_are_sorted_and_hidden_ones_skipped(tmp_path):
    for name in ("site-02", "site-00", ".fedintent-state", "site-01"):
        (tmp_path / name).mkdir()
    assert [p.name for p in list_site_dirs(tmp_path)] == ["site-00", "site-01", "site-02"]


def test_label_file_checks(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("a\nb\n\nc\n")
    assert read_labels(path) == ["a", "b", "c"]
    with pytest.raises(LabelFileError, match="label file not found: .*missing.txt"):
        read_labels(tmp_path / "missing.txt")
    with pytest.raises(LabelFileError, match="/dev/null is not a regular file"):
        read_labels(Path("/dev/null"))  # found in review: it was "not found"
    path.write_text("a\nb\n\na\n")
    with pytest.raises(LabelFileError, match=r"labels.txt:4: the label of line 1 again \(dup"):
        read_labels(path)
    path.write_text("only\n")
    with pytest.raises(LabelFileError, match="at least 2"):
        read_labels(path)
    # found in review: a site builds a head row per label before it checks what it was sent
    path.write_text("".join(f"intent_{i}\n" for i in range(MAX_LABELS + 1)))
    with pytest.raises(LabelFileError, match=f"{MAX_LABELS + 1} labels, more than the "):
        read_labels(path)
    path.write_text("".join(f"intent_{i}\n" for i in range(MAX_LABELS)))
    assert len(read_labels(path)) == MAX_LABELS
    path.write_text("a\n" + "b" * (MAX_LABEL_LENGTH + 1) + "\n")
    with pytest.raises(LabelFileError,
                       match=f"labels.txt:2: {MAX_LABEL_LENGTH + 1} characters, longer than"):
        read_labels(path)


def test_a_data_file_given_as_the_label_file_is_refused_without_quoting_its_rows(tmp_path):
    """Found in review: the over-long-label refusal quoted the label's first 40 characters,
    which for a data file given as --labels (at a site's check-data, or the server's train) was
    a customer's words; nor does a label the server sends get quoted back."""
    row = ("Hi this is Johnathan Q Customer, SSN 123-45-6789, my card was stolen yesterday "
           "at the station and I need a new one sent to 12 Baker Street, " * 3)
    path = tmp_path / "train.csv"
    path.write_text(f"text,label\n{row},card_lost\n{row},card_lost\n")
    with pytest.raises(LabelFileError) as refused:
        read_labels(path)
    assert "train.csv:2:" in str(refused.value) and "Johnathan" not in str(refused.value)
    short = "Hi this is Johnathan Q Customer, SSN 123-45-6789"
    path.write_text(f"text,label\n{short},card_lost\n{short},card_lost\n")
    with pytest.raises(LabelFileError) as refused:
        read_labels(path)
    assert "train.csv:3: the label of line 2 again" in str(refused.value)
    assert "Johnathan" not in str(refused.value)
    problem = label_list_problem(["refund", row])
    assert problem.startswith("label 2: ") and "Johnathan" not in problem
    problem = label_list_problem(["refund", short, "card_lost", short])
    assert problem == "duplicate labels: label 4 is label 2 again"
    assert (label_list_problem(["refund", "card\x00lost"])
            == "label 2: control character '\\x00'; is this a binary file?")


DEEP_ARRAY = "[" * 100_000 + "]" * 100_000
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
HUGE_INT = "9" * 5_000


@pytest.mark.parametrize("line,reason", [
    (DEEP_ARRAY, "nested too deeply"),
    (DEEP_OBJECT, "nested too deeply"),
    ('{"text": "hi", "label": "refund", "customer_id": ' + HUGE_INT + "}", "digits"),
    ('{"text": "hi", "label": "refund", "extra": [-' + HUGE_INT + "]}", "digits"),
    (json.dumps(conversation(intent_turn=int(HUGE_INT[:4000]))), "is not an index"),
])
def test_json_the_parser_cannot_take_costs_one_row_not_the_site(tmp_path, line, reason):
    """Nesting past the recursion limit and integers past Python's digit limit raise from the
    JSON parser itself: each is one rejected row, whatever its shape."""
    write_jsonl(tmp_path / "train.jsonl", [line, conversation()])
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["I lost my card"]
    [rejected] = site.rejected
    assert rejected.line == 1 and reason in rejected.reason and len(rejected.reason) < 120


@pytest.mark.parametrize("template", [
    '{"text": "refund SUR", "label": "refund", "id": "r1"}',
    '{"text": "refund SUR", "label": "refund"}',
    '{"turns": [{"speaker": "customer", "text": "SUR"}], "intent": "refund", "id": "r1"}',
    '{"text": "refund", "label": "refundSUR", "id": "r1"}',
    '{"text": "refund", "label": "refund", "customer_id": "cSUR", "id": "r1"}',
    '{"text": "refund", "label": "refund", "conversation_id": "SUR"}',
])
@pytest.mark.parametrize("surrogate", ["\\ud800", "\\udfff", "\\ude00x\\ud83d"])
def test_a_lone_surrogate_in_any_field_used_rejects_the_row_at_load(tmp_path, template,
                                                                    surrogate):
    """Valid JSON, invalid Unicode: it cannot be encoded, so it would fail the site later (in a
    hash, a tokenizer, a cache); check-data and training reject it at load instead."""
    write_jsonl(tmp_path / "train.jsonl", [template.replace("SUR", surrogate), conversation()])
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["I lost my card"], site.rejected
    [rejected] = site.rejected
    assert rejected.line == 1 and "lone surrogate" in rejected.reason
    assert not site.unknown_labels


def test_control_characters_become_spaces_in_text_and_reject_a_label(tmp_path):
    """NUL is the redactor's mask and other controls upset tokenizers and terminals: a text keeps
    tab and line breaks, every other control character becomes a space; a label with one can
    never be in a taxonomy, so its row is rejected."""
    (tmp_path / "train.csv").write_bytes(
        b"text,label,id\nlost\x00my\x1bcard\x7f\xc2\x85now\t!,card_lost,a\n"
        b"\x00\x01\x02,refund,b\nhello,ref\x01und,c\n"
    )
    write_jsonl(tmp_path / "test.jsonl", [{"text": "two\nlines\r\u0000", "label": "refund"}])
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["lost my card  now\t!"]
    assert site.test.texts == ["two\nlines\r "]
    reasons = {row.line: row.reason for row in site.rejected}
    assert reasons == {3: "empty text", 4: "label holds a control character"}


def test_overlong_lines_and_texts_are_rejected_by_stated_limits(tmp_path, monkeypatch):
    monkeypatch.setattr(fl_client.data_files, "MAX_LINE_BYTES", 100)
    long_line = json.dumps({"text": "x" * 300, "label": "refund"})
    write_jsonl(tmp_path / "train.jsonl", [long_line, {"text": "refund", "label": "refund"},
                                           "y" * 250])
    (tmp_path / "test.csv").write_text("text,label\n" + "z" * 92 + ",refund\n")  # 100 bytes
    site = load_site(tmp_path, LABELS)
    assert site.train.texts == ["refund"] and site.test.texts == ["z" * 92]
    assert [str(row) for row in site.rejected] == [
        "train.jsonl:1: line longer than 100 bytes", "train.jsonl:3: line longer than 100 bytes"]

    monkeypatch.undo()
    write_jsonl(tmp_path / "train.jsonl", [{"text": "1-" * MAX_TEXT_CHARS, "label": "refund"},
                                           {"text": "x" * MAX_TEXT_CHARS, "label": "refund"}])
    site = load_site(tmp_path, LABELS)
    assert len(site.train) == 1
    assert [str(row) for row in site.rejected] == [
        f"train.jsonl:1: text longer than {MAX_TEXT_CHARS} characters"]


def test_a_file_that_cannot_be_read_is_reported_and_the_others_still_load(tmp_path, monkeypatch):
    write_jsonl(tmp_path / "train.jsonl", [conversation()])
    write_jsonl(tmp_path / "test.jsonl", [conversation(customer="c2")] * 3)

    def unreadable(path, mode, **kwargs):
        if path.name == "train.jsonl":
            raise PermissionError(errno.EACCES, "Permission denied")
        return FailingAfterOneLine(path)

    monkeypatch.setattr(fl_client.data_files, "open", unreadable, raising=False)
    site = load_site(tmp_path, LABELS)
    assert len(site.train) == 0 and len(site.test) == 1
    assert [str(row) for row in site.rejected] == [
        "train.jsonl: unreadable file (Permission denied)",
        "test.jsonl:2: read failed (Input/output error); the rest of the file is skipped",
    ]


class FailingAfterOneLine(io.BytesIO):
    """A file whose disk fails after its first line (its descriptor the real file's)."""

    def __init__(self, path):
        super().__init__(path.read_bytes())
        self.real = open(path, "rb")  # noqa: SIM115 (closed with this one)

    def fileno(self):
        return self.real.fileno()

    def close(self):
        self.real.close()
        super().close()

    def readline(self, size=-1):
        if self.tell():
            raise OSError(errno.EIO, "Input/output error")
        return super().readline(size)


@pytest.mark.parametrize("kind", ["dangling link", "folder"])
@pytest.mark.parametrize("name", ["train.jsonl", "test.csv", "extra.jsonl"])
def test_a_data_file_that_is_no_regular_file_stops_the_site_instead_of_being_skipped(
        tmp_path, capsys, kind, name):
    """Found in review: a train.jsonl linked into a data volume that was not mounted was passed
    over, so the site read its test file as unsplit data and trained on four fifths of it,
    exit 0 and no word; a folder named like a data file was passed over the same way."""
    site = tmp_path / "site"
    site.mkdir()
    readable = {"train.jsonl": "test.jsonl", "test.csv": "train.jsonl",
                "extra.jsonl": "data.jsonl"}[name]  # the last: no split, every file is read
    write_jsonl(site / readable, [conversation(customer=f"c{i}") for i in range(10)])
    if kind == "folder":
        (site / name).mkdir()
    else:
        (site / name).symlink_to(tmp_path / "not-mounted" / name)
    with pytest.raises(SiteDataError, match=f"{name}: a (folder|link to .*not-mounted.*, which "
                                            "is not there), not a data file"):
        load_site(site, LABELS)
    assert main(["check-data", str(site)]) == 2
    assert "is the data volume mounted?" in capsys.readouterr().err


def test_a_bug_in_the_loader_is_not_taken_for_bad_data(tmp_path, monkeypatch):
    """Only what data can make the parsers raise is a rejected row; a programming error must
    surface, not silently drop every row."""
    def broken(line):
        raise TypeError("bug")

    monkeypatch.setattr(json, "loads", broken)
    write_jsonl(tmp_path / "train.jsonl", [conversation()])
    with pytest.raises(TypeError, match="bug"):
        load_site(tmp_path, LABELS)


def test_label_file_with_a_byte_order_mark_keeps_its_first_label(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcard_lost\r\nrefund\r\n".encode())
    assert read_labels(path) == ["card_lost", "refund"]


@pytest.mark.parametrize("data,problem", [
    ("退款\n挂失\n".encode("gbk"), "not UTF-8 text (byte 0xcd at offset 0)"),
    ("card_lost\nrefund\n".encode("utf-16"), "not UTF-8 text (byte 0xff at offset 0)"),
    (bytes(range(256)), "not UTF-8 text (byte 0x80 at offset 128)"),
    (b"card_lost\nref\x00und\n", "2: control character '\\x00'; is this a binary file?"),
])
def test_label_file_that_is_not_utf8_text_is_one_clear_error(tmp_path, data, problem):
    path = tmp_path / "labels.txt"
    path.write_bytes(data)
    with pytest.raises(LabelFileError) as raised:
        read_labels(path)
    assert str(raised.value).startswith(f"{path}") and problem in str(raised.value)
    assert "\n" not in str(raised.value)


def test_unreadable_label_file_is_one_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "labels.txt"
    path.write_text("card_lost\nrefund\n")

    def unreadable(self):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(type(path), "read_bytes", unreadable)
    with pytest.raises(LabelFileError, match="labels.txt: cannot be read \\(Permission denied\\)"):
        read_labels(path)


def test_check_data_reports_rows_the_parser_cannot_take_instead_of_a_traceback(tmp_path, capsys):
    site = tmp_path / "site-00"
    site.mkdir()
    (tmp_path / "labels.txt").write_bytes("\ufeffcard_lost\nrefund\n".encode())
    write_jsonl(site / "train.jsonl", [
        DEEP_ARRAY,
        '{"text": "hi", "label": "refund", "n": ' + HUGE_INT + "}",
        '{"text": "refund \\ud800", "label": "refund", "id": "r1"}',
        conversation(),
    ])
    assert main(["check-data", str(site)]) == 0
    out = capsys.readouterr().out
    assert "4 rows read, 1 valid (1 train, 0 test), 3 rejected, 0 with a label not in" in out
    assert "train.jsonl:1: nested too deeply" in out
    assert "train.jsonl:2: unusable value" in out
    assert "train.jsonl:3: text holds a lone surrogate" in out
    assert "card_lost" in out.split("(train / test):")[1]


def test_check_data_with_a_label_file_that_is_not_utf8_fails_in_one_line(tmp_path, capsys):
    site = tmp_path / "site-00"
    site.mkdir()
    write_jsonl(site / "train.jsonl", [conversation()])
    (tmp_path / "labels.txt").write_bytes("退款\n挂失\n".encode("gbk"))
    assert main(["check-data", str(site)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "labels.txt: not UTF-8 text" in err


def test_check_data_says_why_a_site_without_usable_rows_cannot_train(tmp_path, capsys):
    site = tmp_path / "site-00"
    site.mkdir()
    (tmp_path / "labels.txt").write_text("card_lost\nrefund\n")
    write_jsonl(site / "train.jsonl", [DEEP_ARRAY, conversation(intent="other")])
    assert main(["check-data", str(site)]) == 1
    err = capsys.readouterr().err
    assert ("no valid training rows (2 read: 1 rejected, 1 with an unknown label, 0 not used "
            "under the retention policy)") in err


def test_check_data_names_unread_customer_columns_and_counts_rows_without_a_customer_id(
        tmp_path, capsys):
    """Found in review: the loader reads only ``customer_id``, so a column named ``caller_id``
    left every row a unit of its own under privacy-unit customer, and check-data said nothing.
    It counts those rows and names the columns and keys that look like a customer's; a key
    holding anything but letters and separators is never shown."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "train.csv").write_text("text,label,caller_id,channel\n" + "".join(
        f"lost card {i},card_lost,c{i % 2},phone\n" for i in range(4)))
    write_jsonl(site / "test.jsonl", [
        conversation(customer="c9"),
        {"text": "refund", "label": "refund", "customerId": "c8", "Customer Number": "c8",
         f"customer {CANARY_PHONE}": 1, f"client{CANARY_NAME}": 1},
    ])
    assert main(["check-data", str(site)]) == 0
    out = capsys.readouterr().out
    assert "customer_id: 5 rows without one (each its own privacy unit under privacy-unit " \
        "customer)" in out
    named = [line.split(":")[0:2] for line in out.splitlines() if "looks like a customer" in line]
    assert named == [["  train.csv", " 'caller_id' looks like a customer key but is not read"],
                     ["  test.jsonl", " 'customerId' looks like a customer key but is not read"],
                     ["  test.jsonl",
                      " 'Customer Number' looks like a customer key but is not read"]]
    assert "this site would decline to train: no training row has a customer_id" in out
    assert "decline a DP evaluation" not in out
    assert all(canary not in out for canary in CANARY_FORMS)


def test_check_data_reports_rows_with_a_duplicated_id_as_used_once_not_as_valid(tmp_path, capsys):
    """Found in review: training uses the first row of each id, but check-data counted the
    others as valid, with their PII: it names them and leaves them out of its counts."""
    site = tmp_path / "site"
    site.mkdir()
    write_jsonl(site / "train.jsonl", [
        {"id": "c1", "text": "lost card", "label": "card_lost", "customer_id": "a"},
        {"id": "c2", "text": "refund please", "label": "refund", "customer_id": "b"},
        {"id": "c1", "text": f"call me on {CANARY_PHONE}", "label": "refund"},
    ])
    assert main(["check-data", str(site)]) == 0
    out = capsys.readouterr().out
    assert ("3 rows read, 2 valid (2 train, 0 test), 0 rejected, 1 with a duplicated id (used "
            "once)") in out
    assert "  skipped train.jsonl:3: duplicated id, used once (the row used is train.jsonl:1)" \
        in out
    assert "PII found" not in out and "customer_id:" not in out
    assert "'refund'                                      1 /" in out


def test_the_languages_a_site_names_are_read_past_whatever_the_loader_skips(tmp_path):
    """What a simulated site declares (and ``train`` picks its model by) is read with the
    loader's guards: a folder named like a data file, nesting past the recursion limit, bytes
    that are not UTF-8 and an over-long line cost a line, never the run."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "a.jsonl").write_text('{"language": "zh-TW"}\n' + "[" * 100_000 + "\n[1]\n"
                                  '{"language": 5}\n', encoding="utf-8")
    (site / "b.jsonl").mkdir()
    (site / "c.jsonl").write_bytes(b'\xe9{"language": "fr"}\n{"language": "'
                                   + b"x" * MAX_LINE_BYTES + b'"}\n{"language": " EN "}\n')
    assert record_languages(site) == {"zh", "en"}


CANARY_NAME = "张伟"
CANARY_PHONE = "13812345678"
CANARY = f"我叫{CANARY_NAME}，电话{CANARY_PHONE}"
CANARY_FORMS = (CANARY_NAME, CANARY_PHONE, ascii(CANARY_NAME)[1:-1])
"""The canary as written, and as an ``ascii()`` escape, which reads back trivially."""


def write_canary_site(site) -> None:
    """One row per message that once quoted a value, with a name and a phone number there."""
    site.mkdir()
    write_jsonl(site / "train.jsonl", [
        conversation(),
        conversation(timestamp=CANARY),
        conversation(intent_turn=CANARY),
        conversation(intent_turn=int(CANARY_PHONE)),
        conversation(intent=CANARY),
        conversation(intent=CANARY_NAME),
        conversation(intent=CANARY_PHONE),
    ])
    (site / "train.csv").write_text(f"{CANARY},card_lost\nlost card,card_lost\n")  # no header
    (site / "test.csv").write_text(f"text,label,timestamp\nlost card,card_lost,{CANARY}\n")


def test_no_message_about_a_row_quotes_its_values(tmp_path, capsys):
    """A name and a phone number where a timestamp, an intent_turn, a header or a label belongs
    reach neither the rejection reasons (the site's log), the unknown-label warnings nor
    ``check-data``'s output: each message says what is wrong and where, never the value."""
    site = tmp_path / "site"
    write_canary_site(site)
    data = load_site(site, LABELS)
    reasons = [str(row) for row in data.rejected]
    assert reasons == [
        "train.jsonl:2: timestamp is not an ISO 8601 date-time (a string of length 18)",
        "train.jsonl:3: intent_turn is not an index into turns (a string of length 18)",
        "train.jsonl:4: intent_turn is not an index into turns (outside 0 to 1)",
        "train.csv:1: CSV header must name 'text' and 'label' (or 'intent'); its 2 columns "
        "(<a string of length 18, not shown>, <a string of length 9, not shown>) lack 'text' and "
        "'label' (column names "
        "are case-sensitive: write them in lower case; a file without a header line has its "
        "first row read as the header)",
        "train.csv:2: skipped: the file's header (line 1) is unusable",
        "test.csv:2: timestamp is not an ISO 8601 date-time (a string of length 18)",
    ]
    warnings = [shown(label) for label in data.unknown_labels]
    assert warnings == ["<a string of length 18, not shown>", "<a string of length 2, not shown>",
                        "<a string of length 11, not shown>"]

    assert main(["check-data", str(site)]) == 0  # labels as read from the rows
    (tmp_path / "labels.txt").write_text("card_lost\nrefund\n")
    assert main(["check-data", str(site)]) == 0  # labels the taxonomy does not know
    captured = capsys.readouterr()
    assert ("unknown label <a string of length 2, near no label of the run, not shown>: 1 row\n"
            in captured.out)
    for text in [*reasons, *warnings, captured.out, captured.err]:
        for canary in CANARY_FORMS:
            assert canary not in text, (canary, text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("banking.card_lost", "'banking.card_lost'"),
        ("run-2026-01-01", "'run-2026-01-01'"),
        (3, "3"),
        ("John Smith", "<a string of length 10, not shown>"),
        ("zhangwei13812345678", "<a string of length 19, not shown>"),
        ("www.example.com", "<a string of length 15, not shown>"),
        ("x" * 41, "<a string of length 41, not shown>"),
        (13812345678, "<an int, not shown>"),
        (["a", "list"], "<a list, not shown>"),
    ],
)
def test_only_label_shaped_values_are_shown(value, expected):
    assert shown(value) == expected


ROWS_IN_ANOTHER_ENCODING = [{"text": "lost card", "label": "card_lost"},
                            {"text": "退款", "label": "refund", "customer_id": "c1"}]


@pytest.mark.parametrize(("encoding", "named"), [
    ("utf-16", "UTF-16"), ("utf-16-le", "UTF-16"), ("utf-16-be", "UTF-16"), ("utf-32", "UTF-32")])
@pytest.mark.parametrize("name", ["train.jsonl", "train.csv"])
def test_a_data_file_in_utf16_or_utf32_is_one_rejection_of_the_whole_file(tmp_path, capsys,
                                                                          encoding, named, name):
    """Found in review: Excel's "Unicode text" export (UTF-16) gave a rejection per line, each
    saying something else ("undecodable bytes", "invalid JSON"); the file is named once, with
    what to do, and none of its rows is used. Without a byte-order mark, UTF-16 is known by
    its NULs."""
    if name.endswith(".csv"):
        body = "text,label\n" + "".join(f"{r['text']},{r['label']}\n"
                                         for r in ROWS_IN_ANOTHER_ENCODING)
    else:
        body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ROWS_IN_ANOTHER_ENCODING)
    (tmp_path / name).write_bytes(body.encode(encoding))
    write_jsonl(tmp_path / "test.jsonl", [conversation()])
    site = load_site(tmp_path, LABELS)
    reason = f"{name}: not UTF-8 text (saved as {named}); save it as UTF-8"
    assert [str(row) for row in site.rejected] == [reason]
    assert len(site.train) == 0 and site.test.texts == ["I lost my card"]

    main(["check-data", str(tmp_path), "--labels", str(write_labels(tmp_path))])
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "rejected " in line] == [f"  rejected {reason}"]


def write_labels(folder):
    path = folder / "run-labels.txt"
    path.write_text("\n".join(LABELS) + "\n")
    return path


@pytest.mark.parametrize("name", ["train.jsonl", "train.csv"])
def test_a_utf8_byte_order_mark_is_dropped(tmp_path, name):
    body = ("text,label\n退款,refund\n" if name.endswith(".csv")
            else json.dumps({"text": "退款", "label": "refund"}, ensure_ascii=False) + "\n")
    (tmp_path / name).write_bytes(body.encode("utf-8-sig"))
    site = load_site(tmp_path, LABELS)
    assert not site.rejected and len(site.train) + len(site.test) == 1


@pytest.mark.parametrize(("line", "reason"), [
    ({"text": "hello", "label": 5}, "missing or non-string label"),
    ({"text": "hello"}, "missing or non-string label"),
    ({"text": "hello", "label": "ref\u0001und"}, "label holds a control character"),
    ({"text": "hello", "intent": 5}, "missing or non-string intent"),
    (conversation(intent=5), "missing or non-string intent"),
    ({k: v for k, v in conversation().items() if k != "intent"}, "missing or non-string intent"),
    ("text,label\nhello, ", "missing or non-string label"),
    ("text,intent\nhello, ", "missing or non-string intent"),
])
def test_a_bad_label_is_named_by_the_field_the_row_uses(tmp_path, line, reason):
    """Found in review: a flat ``{"text", "label"}`` row with a bad label was said to have a bad
    ``intent``, a field it does not have."""
    if isinstance(line, str):
        (tmp_path / "train.csv").write_text(line + "\n")
    else:
        write_jsonl(tmp_path / "train.jsonl", [line])
    [rejected] = load_site(tmp_path, LABELS).rejected
    assert rejected.reason == reason


def test_check_data_counts_a_single_row_in_the_singular(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", [
        {"text": "lost card", "label": "card_lost", "timestamp": "2020-01-01T00:00:00Z"},
        {"text": "hello", "label": "nope"},
    ])
    labels = write_labels(tmp_path)
    main(["check-data", str(tmp_path), "--labels", str(labels)])
    out = capsys.readouterr().out
    assert ": 2 rows read, 1 valid" in out
    assert "  unknown label 'nope': 1 row\n" in out
    assert "timestamps: 1 row dated (2020-01-01 to 2020-01-01), 1 undated" in out
    assert "customer_id: 1 row without one (each its own privacy unit" in out
    main(["check-data", str(tmp_path), "--labels", str(labels), "--retention-days", "30"])
    assert "  not used under retention-days 30: 1 row " in capsys.readouterr().out

    write_jsonl(tmp_path / "train.jsonl", [{"text": "lost card", "label": "card_lost"}])
    main(["check-data", str(tmp_path)])
    out, err = capsys.readouterr()
    assert ": 1 row read, 1 valid" in out and "no taxonomy given, 1 label found" in out
    assert "would use 0 of this 1 row;" in out
    assert " 1 rows" not in out
    # found in review: nothing but that line told that a deployed site would train on none
    assert "warning: a deployed site at its default retention-days (30) would use none" in err
    assert "(undated rows are not used under a limit): give each row its conversation's " in err

    # found in review: the same undated clause for a site whose every row is dated
    write_jsonl(tmp_path / "train.jsonl", [
        {"text": "lost card", "label": "card_lost", "timestamp": "2020-01-01T00:00:00Z"}])
    main(["check-data", str(tmp_path)])
    out, err = capsys.readouterr()
    assert "1 row dated (2020-01-01 to 2020-01-01), 0 undated" in out
    assert err == ("warning: a deployed site at its default retention-days (30) would use none "
                   "of these rows (each is dated more than 30 days ago, or in the future): set "
                   "the site's retention-days (RETENTION_DAYS in the container; inf: no "
                   "limit)\n")


def test_check_data_names_empty_files_and_gives_no_retention_hint_without_valid_rows(
        tmp_path, capsys):
    """Found in review: an empty file read as "0 rows read" and nothing more, followed by "would
    use 0 of these 0 rows"."""
    (tmp_path / "train.jsonl").write_text("")
    (tmp_path / "test.csv").write_text("text,label\n\n")
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "  train.jsonl is empty (no rows)\n  test.csv is empty (no rows)\n" in out
    assert "would use" not in out

    write_jsonl(tmp_path / "train.jsonl", ["{broken", {"text": "lost card", "label": "card_lost"}])
    (tmp_path / "test.csv").write_text("text,label\nrefund please,refund\n")
    main(["check-data", str(tmp_path)])
    out = capsys.readouterr().out
    assert "is empty" not in out and "would use 0 of these 2 rows" in out

    write_jsonl(tmp_path / "train.jsonl", ["{broken"])
    (tmp_path / "test.csv").write_text("text,label\n,refund\n")
    assert main(["check-data", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "2 rejected" in out and "would use" not in out and "is empty" not in out
