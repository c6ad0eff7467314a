"""Redaction recall and precision on the synthetic call-center sites' planted PII.

Recall: a planted value counts as caught when none of its digits (or, for emails, none of its
text) survives redaction. Precision: of the spans the redactor flags, the share that overlaps a
planted value. Names and addresses are reported too: a regex redactor does not find them.

    python benchmarks/redaction_on_synthetic.py --sites 10 --size 300 --lang en,zh --seed 0

Throughput (utterances per second, the table in docs/REDACTION.md) is measured here, not in the
tests, because a wall-clock number depends on the machine and its load:

    python benchmarks/redaction_on_synthetic.py --throughput

It times ``redact`` over the planted-PII corpus of ``tests/test_redaction.py`` (20,000 short
utterances, most holding PII) and over as many PII-free ones, best of three passes, one core.
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
                        "ORDER": "[NUMBER]", "ACCOUNT": "[NUMBER]"}


def measure(data_dir: Path) -> dict[str, dict[str, float]]:
    planted, caught, typed = Counter(), Counter(), Counter()
    flagged, flagged_on_pii = 0, 0
    for path in sorted(data_dir.glob("site-*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            conversation = json.loads(line)
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
                    planted[kind] += 1
                    if _survives(value, kind, redacted):
                        continue
                    caught[kind] += 1
                    if EXPECTED_PLACEHOLDER.get(kind, "") in redacted:
                        typed[kind] += 1
                spans = [(text.find(i["value"]), text.find(i["value"]) + len(i["value"]))
                         for i in items]
                for span in find_pii(text):
                    flagged += 1
                    if any(span.start < end and start < span.end for start, end in spans):
                        flagged_on_pii += 1
    results = {kind: {"planted": planted[kind], "recall": caught[kind] / planted[kind],
                      "typed": typed[kind] / planted[kind]} for kind in sorted(planted)}
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
    for name, texts in (("planted corpus (most hold PII)", corpus), ("no PII", plain)):
        best = min(_timed(texts) for _ in range(passes))
        results[name] = {"utterances_per_s": len(texts) / best,
                         "mean_chars": sum(map(len, texts)) / len(texts)}
    return results


def _timed(texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        redact(text)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=10)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--lang", default="en,zh")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--throughput", action="store_true",
                        help="time redaction on short utterances instead")
    args = parser.parse_args()
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
    print("| type | planted | recall (value gone) | typed placeholder |")
    print("| --- | ---: | ---: | ---: |")
    for kind, row in results.items():
        if kind == "ALL FLAGGED":
            print(f"| precision: flagged spans on planted PII | {row['planted']} | | "
                  f"{row['typed']:.4f} |")
        else:
            print(f"| {kind} | {row['planted']} | {row['recall']:.4f} | {row['typed']:.4f} |")


if __name__ == "__main__":
    main()
