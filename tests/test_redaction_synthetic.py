"""Redaction against the PII the synthetic generator plants in call-center conversations."""

import importlib.util
from pathlib import Path

from data_synth import write_sites

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "redaction_on_synthetic.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("redaction_on_synthetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_planted_number_and_email_is_removed(tmp_path):
    write_sites(tmp_path, n_sites=4, seed=5, languages=["en", "zh"], size=150)
    results = load_benchmark().measure(tmp_path)
    for kind in ("PHONE", "ID", "CARD", "EMAIL", "ORDER", "ACCOUNT"):
        assert results[kind]["planted"] > 0, kind
        assert results[kind]["recall"] == 1.0, (kind, results[kind])
    assert results["ALL FLAGGED"]["typed"] >= 0.98  # precision: flagged spans are planted PII


def test_chinese_names_and_addresses_are_removed(tmp_path):
    """The generator's own names and addresses: a sanity check, not a measure of real recall
    (the hand-written sets in test_redaction_zh_names.py are that)."""
    write_sites(tmp_path, n_sites=4, seed=5, languages=["zh"], size=150)
    results = load_benchmark().measure(tmp_path)
    for kind in ("NAME (zh)", "ADDRESS (zh)"):
        assert results[kind]["planted"] > 0, kind
        assert results[kind]["recall"] >= 0.99, (kind, results[kind])
        assert results[kind]["precision"] >= 0.99, (kind, results[kind])
