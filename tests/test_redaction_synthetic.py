"""Redaction against the PII the synthetic generator plants in call-center conversations."""

from data_synth import write_sites


def test_every_planted_number_and_email_is_removed(tmp_path, benchmark_script):
    write_sites(tmp_path, n_sites=4, seed=5, languages=["en", "zh"], size=150)
    results = benchmark_script("redaction_on_synthetic").measure(tmp_path)
    for kind in ("PHONE", "ID", "CARD", "EMAIL", "ORDER", "ACCOUNT"):
        assert results[kind]["planted"] > 0, kind
        assert results[kind]["recall"] == 1.0, (kind, results[kind])
    assert results["ALL FLAGGED"]["typed"] >= 0.98  # precision: flagged spans are planted PII


def test_chinese_names_and_addresses_are_removed(tmp_path, benchmark_script):
    """The generator's own names and addresses: a sanity check, not a measure of real recall
    (the hand-written sets in test_redaction_zh_names.py are that)."""
    write_sites(tmp_path, n_sites=4, seed=5, languages=["zh"], size=150)
    results = benchmark_script("redaction_on_synthetic").measure(tmp_path)
    for kind in ("NAME (zh)", "ADDRESS (zh)"):
        assert results[kind]["planted"] > 0, kind
        assert results[kind]["recall"] >= 0.99, (kind, results[kind])
        assert results[kind]["precision"] >= 0.99, (kind, results[kind])
