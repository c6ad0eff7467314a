"""How a site reads a ``customer_id``: the one form in which two ways of writing the same id
are one customer.

CRM exports write one customer's id in more than one way: another case, full-width digits typed
with a CJK input method, a zero-width space pasted from a web form. An erasure recorded under
one way must bind the others, or they stay in use (``retention.RowPolicy``); and the privacy
ledger must charge them as one customer, or that person is protected at the epsilon of each
form (``site_data`` trains a split's forms of one id as one unit; the ledger records every
customer's spend under ``ledger_name`` too, so a form seen later starts from it).
"""

import re
import unicodedata

_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3"
    "\U0001d173-\U0001d17a\U000e0000-\U000e0fff]")
"""Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters that show
nothing, most of them format characters (Cf), some not (a combining grapheme joiner, Hangul
fillers, variation selectors)."""


def canonical_customer(customer: str, fold_case: bool = True) -> str:
    """The form an erasure is recorded under and matched in: NFKC (full-width digits typed
    with a CJK input method read as ASCII ones), without Unicode's default-ignorable characters
    (a zero-width space pasted from a web form, an emoji keyboard's variation selector), control
    characters (NUL padding from a fixed-width export) and the blank Braille pattern, every dash
    a hyphen (a Japanese keyboard's long-vowel mark and the minus signs too), every decimal
    digit an ASCII one, and (``fold_case``) case-folded, the Turkish dotted and dotless I as i
    (and ``str.lower``'s dotted i, whatever marks follow it; the result is its own form). Ids
    that differ only so are erased together: over-erasure is the safe side (found in review:
    each such variant of an erased id was still used). An id of invisible characters only is
    its own form. Part of the deletion log's format: a change keeps the forms before it in
    ``erasure_forms``."""
    return _folded(customer, fold_case, FORM_VERSION)


FORM_VERSION = 3
"""The current ``canonical_customer``: 1 (stop 51's first build) NFKC without format
characters, case-folded; 2 also without the other default-ignorables, dashes and digit scripts
folded, the Turkish I; 3 also without control characters and the blank Braille pattern, the
long-vowel mark and minus signs as dashes, ``str.lower``'s dotted i, and an exact (not folded)
form composed again."""


def ledger_name(customer: str) -> str:
    """The name every written form of a customer id records its spend under in the privacy
    ledger (``privacy_units.unit_aliases``): its ``canonical_customer`` form, of the form
    version recorded since (3; a later version must ask this one too, as ``erasure_forms``
    does). The NULs keep it apart from any id a row writes."""
    return f"\0customer-form-3\0{_folded(customer, True, 3)}"


def erasure_forms(customer: str) -> set[str]:
    """Every form an erasure of this row's customer may be recorded under: as written, and in
    each ``canonical_customer`` form releases have recorded erasures in (found in review: an
    erasure recorded before a change of the form stopped binding after it)."""
    forms = {customer, *(_folded(customer, True, version)
                         for version in range(1, FORM_VERSION + 1))}
    forms.discard("")
    return forms


_DASH_LIKE = "\u02d7\u2043\u2796\u30fc"
"""Signs read as a hyphen that Unicode does not class as dashes (Pd) besides the minus sign
(U+2212, folded since form 2): the other minus signs, and the long-vowel mark a Japanese
keyboard types for "-" (its half-width form is NFKC's to fold)."""


def _folded(customer: str, fold_case: bool, version: int) -> str:
    kept = []
    for char in unicodedata.normalize("NFKC", customer):
        category = unicodedata.category(char)
        if category == "Cf" or (version >= 2 and _DEFAULT_IGNORABLE.match(char)) or (
                version >= 3 and (category == "Cc" or char == "\u2800")):
            continue
        if version >= 2 and (category == "Pd" or char == "\u2212") or (
                version >= 3 and char in _DASH_LIKE):
            char = "-"
        elif version >= 2 and category == "Nd":
            char = str(unicodedata.decimal(char))
        elif version >= 2 and fold_case and char in "\u0130\u0131":
            char = "i"
        kept.append(char)
    visible = "".join(kept).strip()
    if fold_case:
        folded = visible.casefold()
        if version >= 3:  # before composing: a mark after the dot composes with the i then
            folded = re.sub("i\u0307+", "i", folded)
        visible = unicodedata.normalize("NFKC", folded)
    elif version >= 3:
        visible = unicodedata.normalize("NFKC", visible)
    return visible or (customer.strip() if version >= 2 else "")
