"""The form an erasure reads a ``customer_id`` in: each fold on its own, and every earlier form
an erasure may have been recorded under (``fl_client/customer_ids.py``). Pure functions, so
each rule is pinned here directly; tests/test_retention.py drives them through ``forget``."""

import pytest

from fl_client.customer_ids import FORM_VERSION, canonical_customer, erasure_forms


@pytest.mark.parametrize(("written", "canonical"), [
    ("AB-4711", "ab-4711"),
    ("\uff21\uff22-\uff14\uff17\uff11\uff11", "ab-4711"),  # full width (NFKC)
    ("AB-47\u200b11", "ab-4711"),  # a format character (Cf)
    ("AB-47\u034f11", "ab-4711"),  # default-ignorable, not Cf: a combining grapheme joiner
    ("AB-4711\ufe0f", "ab-4711"),  # a variation selector
    ("AB-4711\u3164", "ab-4711"),  # a Hangul filler
    ("AB-4711\x00", "ab-4711"),  # NUL padding (Cc)
    ("AB-47\x7f11", "ab-4711"),  # DEL (Cc)
    ("AB-47\u280011", "ab-4711"),  # the blank Braille pattern
    ("AB\u20134711", "ab-4711"),  # an en dash (Pd)
    ("AB\u20114711", "ab-4711"),  # a non-breaking hyphen (Pd)
    ("AB\u22124711", "ab-4711"),  # the minus sign
    ("AB\u02d74711", "ab-4711"),  # a modifier minus
    ("AB\u20434711", "ab-4711"),  # a hyphen bullet
    ("AB\u27964711", "ab-4711"),  # a heavy minus
    ("AB\u30fc4711", "ab-4711"),  # a Japanese keyboard's long-vowel mark
    ("AB\uff704711", "ab-4711"),  # its half-width form
    ("AB-\u0664\u0667\u0661\u0661", "ab-4711"),  # Arabic-Indic digits (Nd)
    ("AB-\u0967\u0968", "ab-12"),  # Devanagari digits
    ("\u0130D-1", "id-1"),  # the Turkish dotted capital I
    ("\u0131d-1", "id-1"),  # the dotless i
    ("i\u0307d-1", "id-1"),  # str.lower's dotted i
    ("i\u0307\u0307d-1", "id-1"),
    ("i\u0307\u0300-1", "\u00ec-1"),  # a dotted i with an accent: the accent composes
    ("  AB-4711 ", "ab-4711"),
    ("\u200b", "\u200b"),  # invisible characters only: its own form
    (" \u2060\u200b ", "\u2060\u200b"),
])
def test_each_fold_reads_the_id_as_one_customer(written, canonical):
    assert canonical_customer(written) == canonical


@pytest.mark.parametrize(("written", "exact"), [
    ("AB-4711", "AB-4711"),
    ("\uff21\uff22\u30fc\uff14\uff17\uff11\uff11", "AB-4711"),
    ("\u0130D-1", "\u0130D-1"),  # no case folded, the Turkish I kept
    ("Cafe\u034f\u0301-1", "Caf\u00e9-1"),  # composed once the joiner is gone
    ("AB-4711\x00", "AB-4711"),
])
def test_the_form_that_keeps_case_folds_everything_but_case(written, exact):
    assert canonical_customer(written, fold_case=False) == exact


@pytest.mark.parametrize(("written", "forms"), [
    # stop 51's first build (NFKC without format characters, case-folded), then its last
    ("\u0130ZMIR-7", {"\u0130ZMIR-7", "i\u0307zmir-7", "izmir-7"}),
    ("AB\u20114711", {"AB\u20114711", "ab\u20104711", "ab-4711"}),
    ("AB-4711\ufe0f", {"AB-4711\ufe0f", "ab-4711\ufe0f", "ab-4711"}),
    ("AB-\u0664\u0667\u0661\u0661", {"AB-\u0664\u0667\u0661\u0661", "ab-\u0664\u0667\u0661\u0661",
                                     "ab-4711"}),
    ("\uff21\uff22\u30fc\uff14\uff17\uff11\uff11",
     {"\uff21\uff22\u30fc\uff14\uff17\uff11\uff11", "ab\u30fc4711", "ab-4711"}),
    ("AB-4711\x00", {"AB-4711\x00", "ab-4711\x00", "ab-4711"}),
    ("AB-47\u034f11", {"AB-47\u034f11", "ab-47\u034f11", "ab-4711"}),
    # NUL padding, kept by both of stop 51's forms, tells its last form from the first
    ("AB\u20114711\x00", {"AB\u20114711\x00", "ab\u20104711\x00", "ab-4711\x00", "ab-4711"}),
    ("AB-47\u034f11\x00", {"AB-47\u034f11\x00", "ab-47\u034f11\x00", "ab-4711\x00", "ab-4711"}),
    ("AB-\u0664\u0667\u0661\u0661\x00", {"AB-\u0664\u0667\u0661\u0661\x00",
                                         "ab-\u0664\u0667\u0661\u0661\x00", "ab-4711\x00",
                                         "ab-4711"}),
    ("\u0130D-1\x00", {"\u0130D-1\x00", "i\u0307d-1\x00", "id-1\x00", "id-1"}),
    ("ab-4711", {"ab-4711"}),
    ("\u200b", {"\u200b"}),  # the first build's form of it was empty: it recorded none
])
def test_an_erasure_is_looked_up_in_every_form_releases_recorded(written, forms):
    assert FORM_VERSION == 3
    assert erasure_forms(written) == forms
