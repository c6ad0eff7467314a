"""Behaviour of the synthetic site generator: format contract, PII validity, non-IID skew."""

import json
import math
import re
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from data_synth import pii, write_sites
from data_synth.taxonomy import LABELS, TEMPLATES
from fl_client.redaction import luhn_valid, resident_id_valid

REQUIRED_FIELDS = {
    "conversation_id": str,
    "customer_id": str,
    "timestamp": str,
    "channel": str,
    "language": str,
    "turns": list,
    "intent": str,
    "intent_turn": int,
}


def read_split(site_dir: Path, split: str) -> list[dict]:
    lines = (site_dir / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def all_conversations(out_dir: Path) -> list[dict]:
    return [
        record
        for site_dir in sorted(out_dir.glob("site-*"))
        for split in ("train", "test")
        for record in read_split(site_dir, split)
    ]


def folder_bytes(out_dir: Path) -> dict[str, bytes]:
    files = sorted(p for p in out_dir.rglob("*") if p.is_file())
    return {str(p.relative_to(out_dir)): p.read_bytes() for p in files}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict]:
    out_dir = tmp_path_factory.mktemp("mixed")
    manifest = write_sites(out_dir, n_sites=4, seed=11, languages=("en", "zh"), size=200)
    return out_dir, manifest


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    write_sites(tmp_path / "a", n_sites=3, seed=5, languages=("en", "zh"), size=80)
    write_sites(tmp_path / "b", n_sites=3, seed=5, languages=("en", "zh"), size=80)
    write_sites(tmp_path / "c", n_sites=3, seed=6, languages=("en", "zh"), size=80)
    a, b, c = (folder_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert "site-02/train.jsonl" in a
    assert a["site-00/train.jsonl"] != c["site-00/train.jsonl"]
    assert not any(name.endswith(".tmp") for name in a), "temporary files left behind"


def test_labels_file_is_the_sorted_shared_taxonomy(mixed):
    out_dir, manifest = mixed
    labels = (out_dir / "labels.txt").read_text(encoding="utf-8").splitlines()
    assert labels == sorted(set(labels)) == list(LABELS) == manifest["labels"]
    assert len(labels) >= 40
    assert {label.split(".")[0] for label in labels} == {"banking", "telecom", "ecommerce"}
    for label in ("banking.card_lost", "telecom.roaming_activation", "ecommerce.refund_status"):
        assert label in labels


def test_every_intent_has_many_phrasings_in_both_languages():
    for label, by_language in TEMPLATES.items():
        for language in ("en", "zh"):
            assert len(set(by_language[language])) >= 8, (label, language)


def test_every_line_matches_the_schema(mixed):
    out_dir, _ = mixed
    labels = set((out_dir / "labels.txt").read_text(encoding="utf-8").splitlines())
    conversations = all_conversations(out_dir)
    assert conversations
    for record in conversations:
        for name, kind in REQUIRED_FIELDS.items():
            assert isinstance(record[name], kind), (name, record)
        datetime.strptime(record["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
        assert record["channel"] in {"phone", "chat", "email", "app"}
        assert record["language"] in {"en", "zh"}
        assert record["intent"] in labels
        for turn in record["turns"]:
            assert turn["speaker"] in {"customer", "agent"}
            assert isinstance(turn["text"], str) and turn["text"].strip()
        intent_turn = record["turns"][record["intent_turn"]]
        assert intent_turn["speaker"] == "customer"
    ids = [record["conversation_id"] for record in conversations]
    assert len(ids) == len(set(ids))


def test_intent_turn_is_not_always_the_first_turn(mixed):
    out_dir, _ = mixed
    positions = Counter(record["intent_turn"] for record in all_conversations(out_dir))
    assert positions[0] > 0 and sum(n for i, n in positions.items() if i > 0) > 0


def _is_chinese_format(phone: str) -> bool:
    return phone.startswith("+86") or not phone.startswith("+")


def test_planted_pii_is_valid_and_appears_verbatim(mixed):
    out_dir, _ = mixed
    seen = Counter()
    for record in all_conversations(out_dir):
        for item in record["pii"]:
            assert item["type"] in pii.PII_TYPES
            assert item["value"] in record["turns"][item["turn"]]["text"], item
            assert record["turns"][item["turn"]]["speaker"] == "customer"
            seen[item["type"]] += 1
            value = item["value"]
            if item["type"] == "ID":
                assert resident_id_valid(value), value
            elif item["type"] == "CARD":
                assert luhn_valid(re.sub(r"[ -]", "", value)), value
                assert 16 <= len(re.sub(r"[ -]", "", value)) <= 19
            elif item["type"] == "PHONE" and _is_chinese_format(value):
                assert re.fullmatch(r"1[3-9]\d{9}", re.sub(r"^\+86|[ -]", "", value)), value
            elif item["type"] == "PHONE":
                assert re.fullmatch(r"\+44 7\d{3} \d{6}|\+1 \(\d{3}\) \d{3}-\d{4}", value), value
            elif item["type"] == "EMAIL":
                assert re.fullmatch(r"[\w.]+@[\w.]+\.\w+", value), value
    assert set(seen) == set(pii.PII_TYPES), seen


def test_generators_produce_valid_values_in_several_formats():
    rng = np.random.default_rng(3)
    mobiles = [pii.chinese_mobile(rng) for _ in range(200)]
    assert all(re.fullmatch(r"1[3-9]\d{9}", re.sub(r"^\+86|[ -]", "", m)) for m in mobiles)
    assert any(" " in m for m in mobiles) and any(m.startswith("+86") for m in mobiles)
    cards = [pii.bank_card(rng) for _ in range(200)]
    assert all(luhn_valid(re.sub(r"[ -]", "", c)) for c in cards)
    assert any(re.fullmatch(r"\d{4}( \d{4}){3,4}( \d{1,3})?", c) for c in cards)
    ids = [pii.resident_id(rng) for _ in range(200)]
    assert all(resident_id_valid(i) for i in ids)  # the redactor's checks: it finds them
    assert all(i[:6] in pii.RESIDENT_ID_REGIONS for i in ids)


def _mean_label_entropy(manifest: dict) -> float:
    entropies = []
    for site in manifest["sites"].values():
        counts = np.array(list(site["label_counts"].values()), dtype=float)
        p = counts / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return sum(entropies) / len(entropies)


def test_smaller_alpha_gives_more_skewed_sites(tmp_path):
    skewed = write_sites(tmp_path / "skewed", n_sites=4, seed=2, alpha=0.1, size=150)
    uniform = write_sites(tmp_path / "uniform", n_sites=4, seed=2, alpha=100.0, size=150)
    assert _mean_label_entropy(skewed) < _mean_label_entropy(uniform) - 1.0
    assert _mean_label_entropy(uniform) > 0.85 * math.log(len(LABELS))


def test_sites_differ_in_size_language_and_channel_mix(mixed):
    out_dir, manifest = mixed
    sizes = [site["train"] + site["test"] for site in manifest["sites"].values()]
    assert len(set(sizes)) > 1 and min(sizes) >= 40
    zh_shares = [
        site["languages"].get("zh", 0) / (site["train"] + site["test"])
        for site in manifest["sites"].values()
    ]
    assert max(zh_shares) - min(zh_shares) > 0.1
    phone_shares = []
    for site_dir in sorted(out_dir.glob("site-*")):
        records = read_split(site_dir, "train") + read_split(site_dir, "test")
        phone_shares.append(sum(r["channel"] == "phone" for r in records) / len(records))
    assert max(phone_shares) - min(phone_shares) > 0.1


def test_customers_never_span_train_and_test_and_some_call_again(mixed):
    out_dir, manifest = mixed
    repeat_shares = []
    for site_dir in sorted(out_dir.glob("site-*")):
        train, test = read_split(site_dir, "train"), read_split(site_dir, "test")
        train_customers = {r["customer_id"] for r in train}
        test_customers = {r["customer_id"] for r in test}
        assert not train_customers & test_customers
        assert all(c.startswith(site_dir.name) for c in train_customers | test_customers)
        calls = Counter(r["customer_id"] for r in train + test)
        repeat_shares.append(sum(n >= 2 for n in calls.values()) / len(calls))
        assert 0.1 <= len(test) / (len(train) + len(test)) <= 0.3
    assert 0.15 <= sum(repeat_shares) / len(repeat_shares) <= 0.35


def test_both_languages_are_present_and_written_in_their_script(mixed):
    out_dir, _ = mixed
    by_language = {"en": [], "zh": []}
    for record in all_conversations(out_dir):
        by_language[record["language"]].append(record["turns"][record["intent_turn"]]["text"])
    assert by_language["en"] and by_language["zh"]
    cjk = re.compile(r"[\u4e00-\u9fff]")
    assert all(cjk.search(text) for text in by_language["zh"])
    assert not any(cjk.search(text) for text in by_language["en"])
    assert any(re.search(r"[\u4e00-\u9fff] [a-z]+", text) for text in by_language["zh"]), (
        "no code-switched Chinese"
    )


def test_phone_transcripts_look_like_asr_output(mixed):
    out_dir, _ = mixed
    phone = [r for r in all_conversations(out_dir) if r["channel"] == "phone"]
    assert phone
    texts = []
    for record in phone:
        text = record["turns"][record["intent_turn"]]["text"]
        for item in record["pii"]:
            text = text.replace(item["value"], "")
        texts.append((record["language"], text))
    assert not any(re.search(r"[,?!，。？！]", text) for _, text in texts)
    assert not any(re.search(r"[A-Z]", text) for language, text in texts if language == "en")
    fillers = {"en": r"\b(uh|um|hmm|you know)\b", "zh": r"嗯|那个|就是|呃"}
    for language, pattern in fillers.items():
        assert any(re.search(pattern, t) for lang, t in texts if lang == language), language


def test_manifest_counts_match_the_files(mixed):
    out_dir, manifest = mixed
    on_disk = json.loads((out_dir / "manifest.json").read_text(encoding="utf-8"))
    assert on_disk == manifest
    assert manifest["generator"] == {
        "seed": 11, "languages": ["en", "zh"], "alpha": 0.5, "size": 200, "n_sites": 4,
        "test_fraction": 0.2,
    }
    assert sorted(manifest["sites"]) == [f"site-{i:02d}" for i in range(4)]
    for name, site in manifest["sites"].items():
        train, test = read_split(out_dir / name, "train"), read_split(out_dir / name, "test")
        assert (site["train"], site["test"]) == (len(train), len(test))
        assert site["languages"] == dict(Counter(r["language"] for r in train + test))
        assert site["label_counts"] == dict(Counter(r["intent"] for r in train + test))


def test_unknown_language_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="languages"):
        write_sites(tmp_path, n_sites=1, seed=0, languages=("fr",))


@pytest.mark.parametrize("language", ["en", "zh"])
def test_tfidf_baseline_lands_in_the_target_band(tmp_path, language):
    pytest.importorskip("sklearn")
    from data_synth.baseline import tfidf_baseline_accuracy

    write_sites(tmp_path, n_sites=10, seed=0, languages=(language,), size=300)
    assert 0.75 <= tfidf_baseline_accuracy(tmp_path, language) <= 0.92
