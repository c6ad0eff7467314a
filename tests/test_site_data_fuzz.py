"""Generated site files (bytes, JSON lines, CSV) and label files against the loaders: nothing
escapes them but their own one-line errors, and every input row is either loaded or reported.

Derandomized with modest example counts, so the suite runs the same inputs every time in a few
seconds; ``benchmarks/fuzz_loaders.py`` runs tens of thousands more.
"""

import contextlib
import csv
import io
import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedintent.cli import main
from fl_client.data_files import MAX_LINE_BYTES, wide_encoding
from fl_client.row_parsing import MAX_TEXT_CHARS
from fl_client.site_data import load_site
from fl_protocol.label_file import LabelFileError, read_labels

LABELS = ["card_lost", "refund"]
FUZZ = settings(max_examples=150, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TRICKY = ["\ud800", "\udfff", "\x00", "\x1b", "\x7f", "\x85", "\u2028", "\ufeff", "\t", "\n",
          "\r", ",", '"', "\\", "{", "[", "1", "-", " ", "@", ":", "退"]
text = st.lists(st.sampled_from(TRICKY) | st.characters(), max_size=30).map("".join)
"""Text with lone surrogates too, which ``st.text`` never draws."""
KEYS = ["text", "label", "intent", "turns", "speaker", "customer_id", "conversation_id", "id",
        "intent_turn"]
scalar = (st.none() | st.booleans() | st.integers() | st.floats() | text
          | st.sampled_from(LABELS + ["customer", "agent"]))
json_value = st.recursive(
    scalar,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | text, inner, max_size=5),
    max_leaves=12,
)
turn = st.fixed_dictionaries({"speaker": st.sampled_from(["customer", "agent"]) | json_value,
                              "text": text | json_value})
record = st.fixed_dictionaries(
    {},
    optional={"text": text | json_value, "label": st.sampled_from(LABELS) | text | json_value,
              "intent": st.sampled_from(LABELS) | json_value, "customer_id": text | json_value,
              "id": text | json_value, "turns": st.lists(turn, max_size=3) | json_value,
              "intent_turn": st.integers(-1, 3) | json_value},
)
near_valid = (
    st.fixed_dictionaries({"text": text, "label": st.sampled_from(LABELS)},
                          optional={"customer_id": text, "id": text})
    | st.fixed_dictionaries({
        "turns": st.tuples(text).map(lambda said: [{"speaker": "agent", "text": "hello"},
                                                   {"speaker": "customer", "text": said[0]}]),
        "intent": st.sampled_from(LABELS),
    }, optional={"conversation_id": text | st.integers(), "intent_turn": st.integers(0, 2)})
)
parser_breakers = st.sampled_from([
    "[" * 5_000 + "]" * 5_000,
    '{"a":' * 5_000 + "0" + "}" * 5_000,
    '{"text": "hi", "label": "refund", "n": ' + "7" * 4_301 + "}",
    '{"text": "' + "1-" * MAX_TEXT_CHARS + '", "label": "refund"}',
    '{"text": "' + "x" * MAX_LINE_BYTES + '", "label": "refund"}',
])


@st.composite
def jsonl_line(draw) -> bytes:
    kind = draw(st.sampled_from(["near_valid", "record", "value", "raw", "breaker", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=40)).replace(b"\n", b"")
    if kind == "raw":
        line = draw(text)
    elif kind == "breaker":
        line = draw(parser_breakers)
    else:
        strategy = {"near_valid": near_valid, "record": record, "value": json_value}[kind]
        # Escaped, a lone surrogate is valid JSON; raw, it is bytes that are not UTF-8.
        line = json.dumps(draw(strategy), ensure_ascii=kind == "near_valid" or draw(st.booleans()))
    return line.replace("\n", " ").encode("utf-8", "surrogatepass")


@st.composite
def csv_line(draw) -> bytes:
    fields = draw(st.tuples(text, st.sampled_from(LABELS)).map(list)
                  | st.lists(text | st.sampled_from(LABELS), min_size=1, max_size=4))
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(fields)
    line = out.getvalue() if draw(st.booleans()) else ",".join(fields)
    return line.replace("\n", " ").encode("utf-8", "surrogatepass")


def joined(lines: list[bytes], crlf: bool) -> bytes:
    return b"".join(line + (b"\r\n" if crlf else b"\n") for line in lines)


jsonl_file = st.builds(joined, st.lists(jsonl_line(), max_size=6), st.booleans())
csv_header = st.sampled_from([b"text,label", b"\xef\xbb\xbftext,label", b"text,intent",
                              b"text,label,customer_id", b"utterance,label", b""]) | csv_line()
csv_file = st.builds(lambda header, rows, crlf: joined([header, *rows], crlf),
                     csv_header, st.lists(csv_line(), max_size=6), st.booleans())


def raw_lines(data: bytes) -> list[bytes]:
    """The file's lines as the loader reads them: each with its line break."""
    pieces = data.split(b"\n")
    return [piece + b"\n" for piece in pieces[:-1]] + [piece for piece in pieces[-1:] if piece]


def expected_rows(name: str, data: bytes) -> tuple[int, int | None]:
    """(rows the loader must account for, the line a CSV header is read from): every line that
    is over-long, not UTF-8, or not blank; a CSV's first other line is its header. A file in
    UTF-16 or UTF-32 is one rejection, the whole file's."""
    if wide_encoding(data) is not None:
        return 1, None
    count, first_readable = 0, None
    for number, raw in enumerate(raw_lines(data), start=1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            count += 1
            continue
        if len(raw) > MAX_LINE_BYTES:
            count += 1
        elif line.strip():
            count += 1
            first_readable = first_readable or number
    return count, first_readable if name.endswith(".csv") else None


def assert_every_row_is_loaded_or_reported(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        site_dir = Path(folder)
        for name, data in files.items():
            (site_dir / name).write_bytes(data)
        site = load_site(site_dir, LABELS)
    reported = [(row.file, row.line) for row in site.rejected]
    assert len(reported) == len(set(reported)), site.rejected
    expected = 0
    for name, data in files.items():
        count, header_line = expected_rows(name, data)
        header_accepted = header_line is not None and (name, header_line) not in reported
        expected += count - header_accepted
    assert site.rows_read == expected, (files, site.rejected)
    for split in (site.train, site.test):
        for loaded in split.texts:
            assert loaded.strip() and len(loaded) <= MAX_TEXT_CHARS
            assert loaded.encode("utf-8")
            assert not any(ord(c) < 32 and c not in "\t\n\r" for c in loaded)


@FUZZ
@given(jsonl_file, jsonl_file)
def test_generated_json_lines(train, test):
    assert_every_row_is_loaded_or_reported({"train.jsonl": train, "test.jsonl": test})


@FUZZ
@given(csv_file, csv_file)
def test_generated_csv(train, other):
    assert_every_row_is_loaded_or_reported({"a.csv": train, "b.csv": other})


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["train.jsonl", "train.csv"]))
def test_generated_bytes(data, name):
    assert_every_row_is_loaded_or_reported({name: data})


@FUZZ
@given(st.binary(max_size=200) | st.lists(text, max_size=5).map(
    lambda labels: "\n".join(labels).encode("utf-8", "surrogatepass")))
def test_label_file_reads_or_raises_its_own_error(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.txt"
        path.write_bytes(data)
        try:
            labels = read_labels(path)
        except LabelFileError as err:
            assert str(err).startswith(str(path)) and "\n" not in str(err)
            return
    assert len(labels) == len(set(labels)) >= 2
    assert all(label == label.strip() and label.encode("utf-8") for label in labels)


@settings(FUZZ, max_examples=60)
@given(jsonl_file, csv_file, st.binary(max_size=100) | st.sampled_from(
    [b"card_lost\nrefund\n", b"\xef\xbb\xbfcard_lost\r\nrefund\r\n"]))
def test_check_data_never_ends_in_a_traceback(train, test, labels):
    with tempfile.TemporaryDirectory() as folder:
        site_dir = Path(folder) / "site"
        site_dir.mkdir()
        (site_dir / "train.jsonl").write_bytes(train)
        (site_dir / "test.csv").write_bytes(test)
        (Path(folder) / "labels.txt").write_bytes(labels)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["check-data", str(site_dir)])
    assert code in (0, 1, 2) and "Traceback" not in err.getvalue()
