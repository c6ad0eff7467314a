"""Redaction recall and precision on the synthetic call-center sites' planted PII.

Recall: a planted value counts as caught when none of its digits (or, for emails, names and
addresses, none of its text) survives redaction. Precision: of the spans the redactor flags,
the share that overlaps a planted value; for names and addresses, per language, the share of
``[NAME]`` (``[ADDRESS]``) findings that overlap a planted name (address).

    python benchmarks/redaction_on_synthetic.py --sites 10 --size 300 --lang en,zh --seed 0

The generator's names and addresses come from its own lists, and the redactor must not know
them, so the synthetic numbers are checked against a held-out, hand-written Chinese set
(tests/test_redaction_zh_names.py):

    python benchmarks/redaction_on_synthetic.py --held-out

Throughput (utterances per second, the table in docs/REDACTION.md) is measured here, not in the
tests, because a wall-clock number depends on the machine and its load:

    python benchmarks/redaction_on_synthetic.py --throughput

It times ``redact`` over the planted-PII corpus of ``tests/test_redaction.py`` (20,000 short
utterances, most holding PII), over as many PII-free ones, and over 20,000 Chinese customer
turns of the synthetic sites, best of three passes, one core.
"""

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from data_synth import write_sites
from fl_client.redaction import find_pii, redact

EXPECTED_PLACEHOLDER = {"PHONE": "[PHONE]", "ID": "[ID]", "CARD": "[CARD]", "EMAIL": "[EMAIL]",
                        "ORDER": "[NUMBER]", "ACCOUNT": "[NUMBER]", "NAME": "[NAME]",
                        "ADDRESS": "[ADDRESS]"}


PER_LANGUAGE = ("NAME", "ADDRESS")


def measure(data_dir: Path) -> dict[str, dict[str, float]]:
    """Per planted type (names and addresses also per language, e.g. ``NAME (zh)``): planted,
    recall, typed; for names and addresses also precision of that placeholder."""
    planted, caught, typed = Counter(), Counter(), Counter()
    flagged, flagged_on_pii = 0, 0
    kind_flagged, kind_on_planted = Counter(), Counter()
    for path in sorted(data_dir.glob("site-*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            conversation = json.loads(line)
            language = conversation.get("language", "?")
            by_turn: dict[int, list[dict]] = {}
            for item in conversation.get("pii", []):
                by_turn.setdefault(item["turn"], []).append(item)
            for index, turn in enumerate(conversation["turns"]):
                if turn["speaker"] != "customer":
                    continue
                text, items = turn["text"], by_turn.get(index, [])
                redacted = redact(text)
                for item in items:
                    kind, value = item["type"], item["value"]
                    if kind in PER_LANGUAGE:
                        kind = f"{kind} ({language})"
                    planted[kind] += 1
                    if _survives(value, kind, redacted):
                        continue
                    caught[kind] += 1
                    if EXPECTED_PLACEHOLDER.get(kind.split()[0], "") in redacted:
                        typed[kind] += 1
                spans = [(text.find(i["value"]), text.find(i["value"]) + len(i["value"]),
                          i["type"]) for i in items]
                for span in find_pii(text):
                    flagged += 1
                    if any(span.start < end and start < span.end for start, end, _ in spans):
                        flagged_on_pii += 1
                    if span.kind in PER_LANGUAGE:
                        kind = f"{span.kind} ({language})"
                        kind_flagged[kind] += 1
                        kind_on_planted[kind] += any(
                            span.start < end and start < span.end and planted_kind == span.kind
                            for start, end, planted_kind in spans)
    results = {kind: {"planted": planted[kind], "recall": caught[kind] / planted[kind],
                      "typed": typed[kind] / planted[kind]} for kind in sorted(planted)}
    for kind in results:
        if kind.split()[0] in PER_LANGUAGE:
            results[kind]["flagged"] = kind_flagged[kind]
            results[kind]["precision"] = kind_on_planted[kind] / max(kind_flagged[kind], 1)
    results["ALL FLAGGED"] = {"planted": flagged, "recall": float("nan"),
                              "typed": flagged_on_pii / max(flagged, 1)}
    return results


def _survives(value: str, kind: str, redacted: str) -> bool:
    digits = re.sub(r"\D", "", value)
    if kind in ("PHONE", "ID", "CARD", "ORDER", "ACCOUNT") and len(digits) >= 6:
        return digits[-6:] in re.sub(r"\D", "", redacted) or value in redacted
    return value in redacted


def throughput(count: int = 20_000, passes: int = 3, seed: int = 10) -> dict[str, dict]:
    """Utterances per second of ``redact`` on the tests' planted corpus and on PII-free text."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_redaction import BENIGN_FILLERS, TEMPLATES, planted_utterance

    rng = random.Random(seed)
    corpus = [planted_utterance(rng).text for _ in range(count)]
    plain = [rng.choice(BENIGN_FILLERS) + " " + rng.choice(TEMPLATES).format("") for _ in corpus]
    results = {}
    chinese = _chinese_customer_turns(count)
    for name, texts in (
        ("planted corpus (most hold PII)", corpus),
        ("no PII", plain),
        ("Chinese customer turns of the synthetic sites", chinese),
    ):
        best = min(_timed(texts) for _ in range(passes))
        results[name] = {"utterances_per_s": len(texts) / best,
                         "mean_chars": sum(map(len, texts)) / len(texts)}
    return results


def _chinese_customer_turns(count: int) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        write_sites(Path(tmp), n_sites=4, seed=0, languages=["zh"], size=300)
        texts = [turn["text"] for path in sorted(Path(tmp).glob("site-*/*.jsonl"))
                 for line in path.read_text(encoding="utf-8").splitlines()
                 for turn in json.loads(line)["turns"] if turn["speaker"] == "customer"]
    return (texts * (count // max(len(texts), 1) + 1))[:count]


def _timed(texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        redact(text)
    return time.perf_counter() - start


def held_out() -> dict[str, dict[str, dict[str, int]]]:
    """Scores on the hand-written Chinese sentences of tests/test_redaction_zh_names.py."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import test_redaction_zh_names as zh

    return {
        "held-out": zh.score(zh.HELD_OUT_PII + zh.HELD_OUT_CLEAN),
        "fresh": zh.score(zh.FRESH_PII + zh.FRESH_CLEAN),
        "unseen": zh.score(zh.UNSEEN_PII + zh.UNSEEN_CLEAN),
        "adversarial (no PII)": zh.score(zh.ADVERSARIAL_CLEAN),
    }


def _print_held_out() -> None:
    print("| set | kind | gold | recall (value gone) | exact span | findings | precision |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, scores in held_out().items():
        for kind, row in scores.items():
            gold, found = row.get("gold", 0), row.get("found", 0)
            gone, right = row.get("gone", 0), found - row.get("false", 0)
            exact = f"{row.get('exact', 0)}/{gold}"
            print(f"| {name} | {kind} | {gold} | {_ratio(gone, gold)} | {exact} | {found} | "
                  f"{_ratio(right, found)} |")


def _ratio(part: int, whole: int) -> str:
    return f"{part}/{whole} = {part / whole:.3f}" if whole else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--lang", default="en,zh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--throughput", action="store_true",
                        help="time redaction on short utterances instead")
    parser.add_argument("--held-out", action="store_true",
                        help="score names and addresses on the hand-written Chinese sentences")
    args = parser.parse_args()
    if args.held_out:
        _print_held_out()
        return
    if args.throughput:
        print("| utterances | mean length | utterances/s |")
        print("| --- | ---: | ---: |")
        for name, row in throughput().items():
            print(f"| {name} | {row['mean_chars']:.0f} chars | "
                  f"~{row['utterances_per_s']:,.0f} |")
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_sites(Path(tmp), n_sites=args.sites, seed=args.seed,
                    languages=args.lang.split(","), size=args.size)
        results = measure(Path(tmp))
    print("| type | planted | recall (value gone) | typed placeholder | flagged | precision |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for kind, row in results.items():
        if kind == "ALL FLAGGED":
            print(f"| precision: flagged spans on planted PII | {row['planted']} | | | | "
                  f"{row['typed']:.4f} |")
        elif "precision" in row:
            precision = f"{row['precision']:.4f}" if row["flagged"] else "n/a"
            print(f"| {kind} | {row['planted']} | {row['recall']:.4f} | {row['typed']:.4f} | "
                  f"{row['flagged']} | {precision} |")
        else:
            print(f"| {kind} | {row['planted']} | {row['recall']:.4f} | {row['typed']:.4f} | | |")


if __name__ == "__main__":
    main()
