"""Fuzz the site-data loaders and the label-file reader with generated inputs.

    python benchmarks/fuzz_loaders.py --inputs 12000 --seed 0

Each input is one generated file, in turn a JSON-lines file, a CSV file, a file of raw bytes
(random, or a valid file with bytes flipped, cut or spliced in) and a label file. Data files are
read with ``load_site`` (PII redaction on, as in training), label files with ``read_labels``.
It prints the inputs, the rows loaded, counted with an unknown label and reported, and two
failures: exceptions that escaped (anything but ``LabelFileError`` from ``read_labels``) and
rows neither loaded nor reported (a file's readable, non-blank lines against ``rows_read``). It
exits 1 if either is not zero (or a row is reported twice, or a loaded text breaks the loader's
text rules). ``tests/test_site_data_fuzz.py`` runs the same properties with
Hypothesis on a few hundred inputs in the suite.
"""

import argparse
import json
import random
import sys
import tempfile
import time
import unicodedata
from collections import Counter
from pathlib import Path

from fl_client.data_files import MAX_LINE_BYTES, wide_encoding
from fl_client.row_parsing import MAX_TEXT_CHARS
from fl_client.site_data import load_site
from fl_protocol.label_file import LabelFileError, read_labels

LABELS = ["card_lost", "refund", "check_balance"]
WORDS = ["I", "lost", "my", "card", "refund", "please", "call", "+1 415 555 0199", "4111 1111",
         "jane@example.org", "http://x.io/a", "10.0.0.1", "::1", "退款", "挂失", "13812345678"]
TRICKY = ["\ud800", "\udbff", "\udc00", "\udfff", "\x00", "\x01", "\x1b[31m", "\x7f", "\x85",
          "\u2028", "\u2029", "\ufeff", "\u200b", "\u202e", "\ufffe", "\t", "\n", "\r", ",", '"',
          "\\", "'", "{", "}", "[", "]", ":", "-", "(", ")", "１２３", "ｘ"]
UNACCOUNTED = "rows neither loaded nor reported"
REPORTED_TWICE = "rows reported twice"
BAD_TEXTS = "loaded texts breaking the text rules"
KEYS = ["text", "label", "intent", "turns", "speaker", "customer_id", "conversation_id", "id",
        "intent_turn", "timestamp"]


def text(rng: random.Random) -> str:
    """An utterance-like string salted with control characters, lone surrogates, quotes,
    CSV and JSON punctuation, PII-looking runs; now and then over ``MAX_TEXT_CHARS``."""
    if rng.random() < 0.02:
        return rng.choice("ab -.,1") * rng.randint(MAX_TEXT_CHARS - 5, MAX_TEXT_CHARS + 5)
    parts = []
    for _ in range(rng.randint(0, 8)):
        roll = rng.random()
        if roll < 0.5:
            parts.append(rng.choice(WORDS))
        elif roll < 0.8:
            parts.append(rng.choice(TRICKY))
        else:
            parts.append(chr(rng.randint(0, 0x10FFFF)))
    return rng.choice([" ", "", "\t"]).join(parts)


def json_value(rng: random.Random, depth: int = 0) -> object:
    roll = rng.random()
    if depth > 3 or roll < 0.5:
        return rng.choice([None, True, False, rng.randint(-10, 10), rng.random() * 1e308,
                           float("inf"), float("nan"), 10 ** rng.randint(1, 400), text(rng),
                           rng.choice(LABELS), "customer"])
    if roll < 0.75:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(KEYS) if rng.random() < 0.7 else text(rng): json_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


def record(rng: random.Random) -> dict:
    """A flat or conversation record, valid in shape, with one field now and then wrong."""
    if rng.random() < 0.5:
        row: dict = {"text": text(rng), "label": rng.choice(LABELS + ["unknown", ""])}
    else:
        turns = [{"speaker": rng.choice(["agent", "customer"]), "text": text(rng)}
                 for _ in range(rng.randint(1, 3))]
        row = {"turns": turns, "intent": rng.choice(LABELS)}
        if rng.random() < 0.3:
            row["intent_turn"] = rng.randint(-1, 3)
    for key in ("customer_id", "conversation_id", "id"):
        if rng.random() < 0.3:
            row[key] = rng.choice([text(rng), rng.randint(0, 10 ** 6)])
    if rng.random() < 0.3:
        row[rng.choice(KEYS)] = json_value(rng)
    return row


def parser_breaker(rng: random.Random) -> str:
    depth = rng.choice([rng.randint(500, 3_000), 100_000])
    return rng.choice([
        "[" * depth + "]" * depth,
        '{"a":' * depth + "0" + "}" * depth,
        "[" * depth,
        '{"text": "hi", "label": "refund", "n": ' + "9" * rng.randint(4_000, 6_000) + "}",
        '{"text": "' + "x" * (MAX_LINE_BYTES + rng.randint(-30, 30)) + '", "label": "refund"}',
    ])


def encode(line: str, rng: random.Random) -> bytes:
    """UTF-8, but a lone surrogate written as raw bytes (not UTF-8 either) now and then."""
    return line.encode("utf-8", "surrogatepass" if rng.random() < 0.5 else "replace")


def jsonl_file(rng: random.Random) -> bytes:
    lines = []
    for _ in range(rng.randint(0, 8)):
        roll = rng.random()
        if roll < 0.55:
            line = json.dumps(record(rng), ensure_ascii=rng.random() < 0.6)
        elif roll < 0.75:
            line = json.dumps(json_value(rng), ensure_ascii=rng.random() < 0.6)
        elif roll < 0.8:
            line = parser_breaker(rng)
        else:
            line = text(rng)
        lines.append(encode(line.replace("\n", " "), rng))
    return join(lines, rng)


def csv_file(rng: random.Random) -> bytes:
    header = rng.choice(["text,label", "\ufefftext,label", "text,intent", "label,text,customer_id",
                         "id,text,label", "utterance,label", "", text(rng)])
    lines = [encode(header, rng)]
    for _ in range(rng.randint(0, 8)):
        fields = [text(rng), rng.choice(LABELS + [text(rng)])][: rng.randint(1, 2)]
        fields += [text(rng) for _ in range(rng.choice([0, 0, 0, 1, 2]))]
        if rng.random() < 0.02:
            fields[0] = "y" * rng.randint(130_000, 140_000)
        quoted = [f'"{f.replace(chr(34), chr(34) * 2)}"' if rng.random() < 0.8 else f
                  for f in fields]
        lines.append(encode(",".join(quoted).replace("\n", " "), rng))
    return join(lines, rng)


def raw_bytes(rng: random.Random) -> bytes:
    """Random bytes, or a valid file mutated: bytes flipped, cut, or spliced in."""
    if rng.random() < 0.4:
        return rng.randbytes(rng.randint(0, 400))
    data = bytearray(rng.choice([jsonl_file, csv_file])(rng))
    for _ in range(rng.randint(1, 8)):
        if not data:
            break
        at = rng.randrange(len(data))
        roll = rng.random()
        if roll < 0.4:
            data[at] = rng.randrange(256)
        elif roll < 0.6:
            del data[at:]
        else:
            data[at:at] = rng.choice([b"\x00", b"\xff", b"\xef\xbb\xbf", b"\r", b"\n", b'"',
                                      b"\xed\xa0\x80", b"\xc0\xaf", rng.randbytes(4)])
    return bytes(data)


def label_file(rng: random.Random) -> bytes:
    labels = [rng.choice(LABELS + [text(rng), " padded ", ""]) for _ in range(rng.randint(0, 5))]
    content = "\n".join(labels)
    return rng.choice([
        lambda: content.encode("utf-8", "surrogatepass"),
        lambda: b"\xef\xbb\xbf" + content.encode("utf-8", "replace"),
        lambda: content.encode("gbk", "replace"),
        lambda: content.encode("utf-16", "replace"),
        lambda: rng.randbytes(rng.randint(0, 200)),
    ])()


def join(lines: list[bytes], rng: random.Random) -> bytes:
    end = rng.choice([b"\n", b"\r\n", b"\n\n"])
    return b"".join(line + end for line in lines)[: None if rng.random() < 0.9 else -1]


def expected_rows(name: str, data: bytes) -> tuple[int, int | None]:
    """(rows the loader must account for, the line a CSV header is read from): every line that
    is over-long, not UTF-8, or not blank; a CSV's first other line is its header. A file that
    is UTF-16 or UTF-32 (``wide_encoding``) is one rejection, the whole file's."""
    if wide_encoding(data) is not None:
        return 1, None
    pieces = data.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]] + [piece for piece in pieces[-1:] if piece]
    count, first_readable = 0, None
    for number, raw in enumerate(lines, start=1):
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


def fuzz_data_file(site_dir: Path, name: str, data: bytes, counts: Counter) -> None:
    path = site_dir / name
    path.write_bytes(data)
    try:
        site = load_site(site_dir, LABELS)
    finally:
        path.unlink()
    counts["rows loaded"] += len(site.train) + len(site.test)
    counts["rows with an unknown label"] += sum(site.unknown_labels.values())
    counts["rows reported"] += len(site.rejected)
    expected, header_line = expected_rows(name, data)
    reported = {(row.file, row.line) for row in site.rejected}
    header_accepted = header_line is not None and (name, header_line) not in reported
    counts[UNACCOUNTED] += abs(expected - header_accepted - site.rows_read)
    counts[REPORTED_TWICE] += len(site.rejected) - len(reported)
    counts[BAD_TEXTS] += sum(not text_follows_the_rules(t)
                             for t in site.train.texts + site.test.texts)


def text_follows_the_rules(loaded: str) -> bool:
    """Valid Unicode, not blank, not over-long, no control character but tab and line breaks."""
    return (bool(loaded.strip()) and len(loaded) <= MAX_TEXT_CHARS
            and not any(0xD800 <= ord(c) <= 0xDFFF or (unicodedata.category(c) == "Cc"
                                                        and c not in "\t\n\r") for c in loaded))


def fuzz_label_file(folder: Path, data: bytes, counts: Counter) -> None:
    path = folder / "labels.txt"
    path.write_bytes(data)
    try:
        read_labels(path)
        counts["label files read"] += 1
    except LabelFileError:
        counts["label files refused with LabelFileError"] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=12_000, help="inputs (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    kinds = [("train.jsonl", jsonl_file), ("train.csv", csv_file),
             ("conversations.jsonl", raw_bytes), ("rows.csv", raw_bytes), ("labels.txt", None)]
    counts: Counter = Counter()
    escaped: Counter = Counter()
    examples: list[str] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        site_dir = Path(folder) / "site"
        site_dir.mkdir()
        for number in range(args.inputs):
            name, make = kinds[number % len(kinds)]
            data = (make or label_file)(rng)
            counts[f"inputs: {name}"] += 1
            try:
                if make is None:
                    fuzz_label_file(Path(folder), data, counts)
                else:
                    fuzz_data_file(site_dir, name, data, counts)
            except Exception as err:  # the harness: every escape is counted, none stops it
                escaped[type(err).__name__] += 1
                if len(examples) < 5:
                    examples.append(f"input {number} ({name}, {len(data)} bytes): "
                                    f"{type(err).__name__}: {str(err)[:200]}")
    inputs = sum(v for k, v in counts.items() if k.startswith("inputs"))
    print(f"fuzz_loaders: seed {args.seed}, {inputs} inputs in "
          f"{time.perf_counter() - started:.1f} s")
    for key in sorted(counts.keys() - {UNACCOUNTED, REPORTED_TWICE, BAD_TEXTS}):
        print(f"  {key}: {counts[key]}")
    print(f"  escaped exceptions: {sum(escaped.values())} {dict(escaped) or ''}")
    for example in examples:
        print(f"    {example}")
    for key in (UNACCOUNTED, REPORTED_TWICE, BAD_TEXTS):
        print(f"  {key}: {counts[key]}")
    return 1 if escaped or counts[UNACCOUNTED] or counts[REPORTED_TWICE] or counts[BAD_TEXTS] else 0


if __name__ == "__main__":
    sys.exit(main())
