"""PII redaction run on every utterance before a site tokenizes or encodes it.

Detectors run in a fixed order and each later one only sees text the earlier ones left
unclaimed: URL, email, IPv6, IPv4, digit groups joined by a comma, 、 or slash (typed shapes
only), then digit runs (resident ID, phone, bank card, and a
``[NUMBER]`` fallback for any other run of six or more digits), then Chinese addresses and
names (``fl_client.redaction_zh``). docs/REDACTION.md explains the order, the validity
rules and what a rule-based redactor cannot find.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass
from datetime import date
from typing import Literal

from fl_client.redaction_zh import PII_MASK, blank_spans, find_zh_pii

PiiKind = Literal["PHONE", "ID", "CARD", "EMAIL", "IP", "URL", "NUMBER", "NAME", "ADDRESS"]

_MIN_NUMBER_DIGITS = 6
_MIN_TYPED_DIGITS = 8
_MAX_TYPED_DIGITS = 19
_MASK = PII_MASK

_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"
_EARLIEST_BIRTH_DATE = date(1900, 1, 1)

_URL = re.compile(
    r"(?<![A-Za-z@._%+\-])(?:https?://|www\.)"
    r"[A-Za-z0-9\-._~:/?#@!$&'()*+,;=%]*[A-Za-z0-9\-_~/#=&+%]",
    re.IGNORECASE,
)
# Length caps are RFC 5321's (64 for the local part, 63 per label); they also keep the
# backtracking linear on long runs of letters.
# Full-width letters, digits and dots too, and 。 between domain labels: a Chinese keyboard
# types them (found in review: zhang.wei＠163．com was left whole).
_EMAIL = re.compile(
    r"[A-Za-z0-9._%+\-Ａ-Ｚａ-ｚ０-９．]{1,64}[@＠]"
    r"[A-Za-z0-9\-Ａ-Ｚａ-ｚ０-９]{1,63}(?:[.．。][A-Za-z0-9\-Ａ-Ｚａ-ｚ０-９]{1,63})*"
    r"[.．。][A-Za-zＡ-Ｚａ-ｚ]{2,63}"
)
_IPV6_CANDIDATE = re.compile(
    r"(?<![0-9A-Za-z\]])"
    r"(?:[0-9A-Fa-f]{1,4})?(?::(?:[0-9A-Fa-f]{1,4})?){2,8}"
    r"(?:(?<=:)[0-9]{1,3}(?:\.[0-9]{1,3}){3})?"
    r"(?:%[0-9A-Za-z]+)?"
    r"(?![0-9A-Za-z:\[]|\.[0-9\[])"
)
_IPV4_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"(?<![0-9.])(?:{_IPV4_OCTET}\.){{3}}{_IPV4_OCTET}(?![0-9])(?!\.[0-9\[])")

# A digit run is digit groups joined by one separator: up to two spaces (any Unicode
# space, zero-width ones included) around an optional dash, a dot followed by three digits
# (415.555.2671, but not the cents of 1250.00), or nothing next to a parenthesis
# ("(+86)138..."). A separator never swallows a following clock time, so
# "2026-03-04 12:30" stays a date. Only the first group may carry "+", any group may be
# parenthesized ("(415)", "（+86）"), and a group may end in X, a resident ID check character.
_SPACE = r"[ \t\u00a0\u2000-\u200d\u202f\u205f\u2060\u3000\ufeff]"
_DASH = r"[\-\u2010-\u2015\u2212\ufe58\ufe63\uff0d]"
_SEPARATOR = (
    rf"(?:{_SPACE}{{0,2}}{_DASH}{_SPACE}{{0,2}}|{_SPACE}{{1,2}}|\.(?=\d{{3}})|(?<=[)）])|(?=[(（]))"
    r"(?!\d{1,2}[:：]\d{2}(?![\dXxＸｘ]))"
)
_ID_CHECK_X = r"(?:[XxＸｘ](?![\dA-Za-z\[]))?"
_FIRST_GROUP = rf"(?:[(（][+＋]?\d{{1,4}}[)）]|[+＋]?\d+{_ID_CHECK_X})"
_NEXT_GROUP = rf"(?:[(（]\d{{1,4}}[)）]|\d+{_ID_CHECK_X})"
_DIGIT_RUN = re.compile(rf"{_FIRST_GROUP}(?:{_SEPARATOR}{_NEXT_GROUP})*")
_DIGIT_GROUP = re.compile(r"[(（][+＋]?\d+[)）]|[+＋]?\d+[XxＸｘ]?")

# Groups joined by a comma, 、, a middle dot, a slash, an underscore or a soft hyphen: ASR
# punctuation and typists write pauses in a number this way ("138，1234，5678"), but amounts
# (1,250,000), dates (2026/03/04) and lists are written this way too. So such a run is not a
# digit run: a window of it is claimed only when its group lengths are a typed identifier's
# written shape (_JOINED_SHAPES) and its digits pass that type's rule, never as [NUMBER].
# Wider gaps go the same way (found in review: a card or mobile left whole when its groups were
# on separate lines, three spaces apart, or split by |, *, 。 or ". "): transcripts keep their
# line breaks, and tables and masked forms write numbers so, but so are lists of figures.
# Any line break counts (found in review: \r alone, a blank line, \u2028, a join character or a
# period at a line's end, a bullet at the next one's start and nine spaces left a card whole).
# Every separator holds a non-digit and is bounded, so matching stays linear. ";" is not one:
# it separates the values of a list ("...166; 3767-1233-...": a mobile taken across it left
# part of the card after it whole).
_JOIN = r"[,，、·・/／_\u00ad|｜*＊。]"
_BREAK = r"[\r\n\v\f\x85\u2028\u2029]"
_LINE_SPACE = rf"(?:{_SPACE}|{_BREAK})"
_WIDE_GAP = (rf"(?:{_SPACE}{{3,16}}|{_SPACE}{{0,3}}{_BREAK}{_LINE_SPACE}{{0,8}}"
             rf"|\.{_LINE_SPACE}{{1,8}})")
_JOINED_SEPARATOR = (rf"(?:{_LINE_SPACE}{{0,8}}(?:{_JOIN}|{_DASH}){_LINE_SPACE}{{0,8}}"
                     rf"|{_WIDE_GAP}|{_SPACE}{{1,2}})")
_JOINED_RUN = re.compile(rf"(?<!\d)\d+(?:{_JOINED_SEPARATOR}\d+)+{_ID_CHECK_X}")
_JOINED_GROUP = re.compile(r"\d+[XxＸｘ]?")
_JOIN_CHAR = re.compile(rf"{_JOIN}|{_WIDE_GAP}")
_JOINED_SHAPES: tuple[tuple[tuple[int, ...], PiiKind], ...] = (
    ((4, 4, 4, 4, 3), "CARD"),
    ((6, 8, 4), "ID"),
    ((6, 4, 4, 4), "ID"),
    ((4, 4, 4, 4), "CARD"),
    ((4, 6, 5), "CARD"),
    ((3, 4, 4), "PHONE"),
    ((7, 4), "PHONE"),
    ((3, 8), "PHONE"),
)

_CN_MOBILE = re.compile(r"(?:0086|86)?1[3-9]\d{9}")
_CN_LANDLINE_AREA = re.compile(r"0\d{2,3}")
_CN_LANDLINE_LOCAL = re.compile(r"[2-9]\d{6,7}")
_NANP_DIGITS = re.compile(r"[2-9]\d{2}[2-9]\d{6}")
_ROUND_AMOUNT = re.compile(r"[1-9]\d*00")


@dataclass(frozen=True, order=True, slots=True)
class PiiSpan:
    """One finding: ``text[start:end]`` is replaced by the placeholder ``[kind]``."""

    start: int
    end: int
    kind: PiiKind


@dataclass(frozen=True, slots=True)
class _DigitGroup:
    """One group of a digit run, with its digits mapped to ASCII (a trailing X kept)."""

    start: int
    end: int
    digits: str
    plus: bool
    parens: bool


def redact(text: str) -> str:
    """Replace every PII span with its typed placeholder, e.g. ``[PHONE]``."""
    spans = find_pii(text)
    if not spans:
        return text
    parts = []
    position = 0
    for span in spans:
        parts.append(text[position : span.start])
        parts.append(f"[{span.kind}]")
        position = span.end
    parts.append(text[position:])
    return "".join(parts)


def find_pii(text: str) -> list[PiiSpan]:
    """Sorted, non-overlapping PII spans; earlier detectors win, so the order is the policy."""
    spans: list[PiiSpan] = []
    unclaimed = text
    for find in (_find_urls, _find_emails, _find_ipv6, _find_ipv4, _find_joined_numbers):
        found = find(unclaimed)
        if found:
            spans.extend(found)
            unclaimed = _mask(unclaimed, found)
    digit_spans = _find_digit_pii(unclaimed)
    spans.extend(digit_spans)
    unclaimed = _mask(unclaimed, digit_spans)
    spans.extend(PiiSpan(start, end, kind) for start, end, kind in find_zh_pii(unclaimed))
    spans.sort()
    return spans


def luhn_valid(digits: str) -> bool:
    """Luhn mod-10 check of a string of digits only; every bank card number passes it."""
    if not digits.isdecimal():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def resident_id_valid(s: str) -> bool:
    """True for an 18-character PRC resident ID: MOD 11-2 check character and a real birth date.

    Both must hold, so a random 18-digit number passes with odds of roughly 1 in 30.
    """
    if len(s) != 18 or not s[:17].isdecimal():
        return False
    if not (s[17].isdecimal() or s[17] in "XxＸｘ"):
        return False
    normalized = _normalize_digits(s)
    return _id_check_char(normalized) == normalized[17] and _has_plausible_birth_date(normalized)


def _id_check_char(id_digits: str) -> str:
    weighted = zip(id_digits[:17], _ID_WEIGHTS, strict=True)
    total = sum(int(char) * weight for char, weight in weighted)
    return _ID_CHECK_CHARS[total % 11]


def _has_plausible_birth_date(id_digits: str) -> bool:
    """Positions 7-14 of a resident ID are YYYYMMDD; it must be a real, non-future date."""
    born = _parse_date(id_digits[6:10], id_digits[10:12], id_digits[12:14])
    return born is not None and _EARLIEST_BIRTH_DATE <= born <= date.today()


def _parse_date(year: str, month: str, day: str) -> date | None:
    if not (year.isdecimal() and month.isdecimal() and day.isdecimal()):
        return None
    try:
        return date(int(year), int(month), int(day))
    except ValueError:
        return None


def _normalize_digits(token: str) -> str:
    """Map Unicode decimal digits (full-width １３８ from Chinese IMEs) to ASCII, x/Ｘ to X."""
    if token.isascii():
        return token.upper()
    return "".join(str(unicodedata.decimal(char)) if char.isdecimal() else "X" for char in token)


def _mask(text: str, spans: list[PiiSpan]) -> str:
    """Blank out found spans, keeping offsets, so later detectors cannot match inside them."""
    return blank_spans(text, [(span.start, span.end) for span in spans], _MASK)


def _find_urls(text: str) -> list[PiiSpan]:
    return [PiiSpan(m.start(), m.end(), "URL") for m in _URL.finditer(text)]


def _find_emails(text: str) -> list[PiiSpan]:
    if "@" not in text and "＠" not in text:
        return []
    return [PiiSpan(m.start(), m.end(), "EMAIL") for m in _EMAIL.finditer(text)]


def _find_ipv6(text: str) -> list[PiiSpan]:
    """Search again just past a rejected candidate: "30a5:::974" holds the address "::974"."""
    if text.count(":") < 2:
        return []
    spans = []
    candidate = _IPV6_CANDIDATE.search(text)
    while candidate is not None:
        if _is_ipv6(candidate.group()):
            spans.append(PiiSpan(candidate.start(), candidate.end(), "IP"))
            candidate = _IPV6_CANDIDATE.search(text, candidate.end())
        else:
            candidate = _IPV6_CANDIDATE.search(text, candidate.start() + 1)
    return spans


def _is_ipv6(candidate: str) -> bool:
    """The candidate regex is loose (clock times match it); the stdlib parser decides."""
    if not candidate.strip(":"):
        return False
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


def _find_ipv4(text: str) -> list[PiiSpan]:
    if "." not in text:
        return []
    return [PiiSpan(m.start(), m.end(), "IP") for m in _IPV4.finditer(text)]


def _find_joined_numbers(text: str) -> list[PiiSpan]:
    """Phones, IDs and cards whose groups are joined by a comma, 、, slash, ... (_JOIN).

    Runs before the digit-run rules, which would otherwise claim a part ("1234 5678" of
    "138，1234 5678") and leave the rest readable; a window is taken only if a _JOIN
    character is inside it, so every number the digit-run rules handle stays theirs.
    """
    if _JOIN_CHAR.search(text) is None:
        return []
    spans = []
    for run in _JOINED_RUN.finditer(text):
        groups = list(_JOINED_GROUP.finditer(text, run.start(), run.end()))
        index = 0
        while index < len(groups):
            found = _joined_window(text, groups, index)
            if found is None:
                index += 1
                continue
            end, kind = found
            spans.append(PiiSpan(groups[index].start(), groups[end - 1].end(), kind))
            index = end
    return spans


def _joined_window(
    text: str, groups: list[re.Match[str]], start: int
) -> tuple[int, PiiKind] | None:
    """(end, kind) of the typed shape that starts at ``groups[start]``, or None."""
    for shape, kind in _JOINED_SHAPES:
        end = start + len(shape)
        window = groups[start:end]
        if tuple(len(group.group()) for group in window) != shape:
            continue
        joined = _JOIN_CHAR.search(text, window[0].end(), window[-1].start()) is not None
        if joined and _is_joined_kind("".join(g.group() for g in window), kind):
            return end, kind
    return None


def _is_joined_kind(token: str, kind: PiiKind) -> bool:
    """The type's own rule: a 1[3-9] mobile, a valid resident ID, or a Luhn-valid card
    from a card network (first digit 3-6 or 9, any for 19 digits: a list of years starts
    with 1 or 2)."""
    digits = _normalize_digits(token)
    if kind == "ID":
        return resident_id_valid(token)
    if not digits.isdecimal():
        return False
    if kind == "PHONE":
        return _CN_MOBILE.fullmatch(digits) is not None
    # 19 digits: no list of years is that long, and 9558 cards (ICBC) start with a 9
    return (len(digits) == 19 or digits[0] in "34569") and luhn_valid(digits)


def _find_digit_pii(text: str) -> list[PiiSpan]:
    spans = []
    for run in _DIGIT_RUN.finditer(text):
        if run.end() - run.start() < _MIN_NUMBER_DIGITS:
            continue
        groups = _digit_groups(text, run)
        if _is_clock_field(text, groups[0]):
            groups = groups[1:]
        if groups:
            spans.extend(_classify_run(groups))
    return spans


def _is_clock_field(text: str, group: _DigitGroup) -> bool:
    """The minutes of "12:30 2026-03-04" belong to the clock time, not to the date after it.

    Before the colon is a digit, or the "]" of a placeholder that replaced one.
    """
    if len(group.digits) != 2 or group.start < 2:
        return False
    before_colon = text[group.start - 2]
    return (before_colon.isdecimal() or before_colon == "]") and text[group.start - 1] in ":："


def _digit_groups(text: str, run: re.Match[str]) -> list[_DigitGroup]:
    return [
        _DigitGroup(
            start=m.start(),
            end=m.end(),
            digits=_normalize_digits(m.group().strip("()（）+＋")),
            plus=m.group().lstrip("(（")[0] in "+＋",
            parens=m.group()[0] in "(（",
        )
        for m in _DIGIT_GROUP.finditer(text, run.start(), run.end())
    ]


def _classify_run(groups: list[_DigitGroup]) -> list[PiiSpan]:
    """Typed entities if they account for the whole run (dates may sit between), else NUMBER.

    A typed window inside a longer run that fails as a whole, such as the mobile-shaped
    tail of a Luhn-invalid card, is a fragment of one identifier: labelling only the
    fragment would mislabel it, and leave the rest readable when that rest is short.
    """
    typed, leftovers = _partition(groups)
    if typed and all(_is_benign(chunk) for chunk in leftovers):
        return typed
    return _fallback_spans(groups)


def _partition(
    groups: list[_DigitGroup],
) -> tuple[list[PiiSpan], list[list[_DigitGroup]]]:
    """Greedy left to right, longest typed window first; unmatched groups become leftovers."""
    typed: list[PiiSpan] = []
    leftovers: list[list[_DigitGroup]] = []
    pending: list[_DigitGroup] = []
    index = 0
    while index < len(groups):
        match = _longest_typed_window(groups, index)
        if match is None:
            pending.append(groups[index])
            index += 1
            continue
        end, kind = match
        if pending:
            leftovers.append(pending)
            pending = []
        typed.append(_span_over(groups[index:end], kind))
        index = end
    if pending:
        leftovers.append(pending)
    return typed, leftovers


def _longest_typed_window(groups: list[_DigitGroup], start: int) -> tuple[int, PiiKind] | None:
    ends = []
    digit_count = 0
    for end in range(start, len(groups)):
        digit_count += len(groups[end].digits)
        if digit_count > _MAX_TYPED_DIGITS:
            break
        ends.append(end + 1)
    for end in reversed(ends):
        kind = _typed_kind(groups[start:end])
        if kind is not None:
            return end, kind
    return None


def _typed_kind(window: list[_DigitGroup]) -> PiiKind | None:
    """ID before PHONE before CARD: the most specific validity rule claims the window."""
    digits = "".join(group.digits for group in window)
    if len(digits) < _MIN_TYPED_DIGITS:
        return None
    if len(digits) == 18 and resident_id_valid(digits):
        return "ID"
    if not digits.isdecimal():
        return None
    if _is_phone(window, digits):
        return "PHONE"
    if _is_card(window, digits):
        return "CARD"
    return None


def _is_phone(window: list[_DigitGroup], digits: str) -> bool:
    return (
        _CN_MOBILE.fullmatch(digits) is not None
        or _is_international_phone(window, digits)
        or _is_nanp_phone(window, digits)
        or _is_cn_landline(window, digits)
    )


def _is_international_phone(window: list[_DigitGroup], digits: str) -> bool:
    """E.164: "+" (or a separate 00 group) then a country code, 8-15 digits in all."""
    first = window[0]
    if first.plus:
        return 8 <= len(digits) <= 15 and digits[0] != "0"
    has_00_prefix = first.digits.startswith("00") and 3 <= len(first.digits) <= 5
    return len(window) > 1 and has_00_prefix and digits[2] != "0" and 8 <= len(digits) - 2 <= 15


def _is_nanp_phone(window: list[_DigitGroup], digits: str) -> bool:
    """North American numbers only in their written shapes: 415-555-2671, (415) 5552671."""
    if len(window) > 1 and window[0].digits == "1":
        window = window[1:]
        digits = digits[1:]
    shape = tuple(len(group.digits) for group in window)
    written_shape = shape == (3, 3, 4) or (shape == (3, 7) and window[0].parens)
    return written_shape and _NANP_DIGITS.fullmatch(digits) is not None


def _is_cn_landline(window: list[_DigitGroup], digits: str) -> bool:
    """A separate 0-prefixed area code then a 7-8 digit local number: 010-12345678."""
    area = window[0].digits
    return (
        len(window) > 1
        and _CN_LANDLINE_AREA.fullmatch(area) is not None
        and _CN_LANDLINE_LOCAL.fullmatch(digits[len(area) :]) is not None
    )


def _is_card(window: list[_DigitGroup], digits: str) -> bool:
    """13-19 Luhn-valid digits, contiguous or in groups of 3-6 (the last one may be shorter).

    An 18-digit number with a real birth date at positions 7-14 is a mistyped resident ID
    far more often than an 18-digit card, so it stays ``[NUMBER]``.
    """
    if not 13 <= len(digits) <= 19 or any(group.plus or group.parens for group in window):
        return False
    card_shape = len(window) == 1 or (
        all(3 <= len(group.digits) <= 6 for group in window[:-1]) and len(window[-1].digits) <= 6
    )
    looks_like_id = len(digits) == 18 and _has_plausible_birth_date(digits)
    return card_shape and not looks_like_id and luhn_valid(digits)


def _fallback_spans(chunk: list[_DigitGroup]) -> list[PiiSpan]:
    if _digit_count(chunk) < _MIN_NUMBER_DIGITS or _is_benign(chunk):
        return []
    return [_span_over(chunk, "NUMBER")]


def _digit_count(chunk: list[_DigitGroup]) -> int:
    """Digits only: a trailing X counts for resident IDs, not towards the six-digit rule."""
    return sum(len(group.digits.rstrip("X")) for group in chunk)


def _span_over(groups: list[_DigitGroup], kind: PiiKind) -> PiiSpan:
    return PiiSpan(groups[0].start, groups[-1].end, kind)


def _is_benign(chunk: list[_DigitGroup]) -> bool:
    """Dates and year or round-amount ranges: long digit runs that identify no one.

    Every group is at most five digits, so no run of six digits ever survives.
    """
    if any(group.plus or group.parens for group in chunk):
        return False
    values = [group.digits for group in chunk]
    return _is_date(values) or _is_benign_range(values)


def _is_date(values: list[str]) -> bool:
    """2026-03-04, 04-03-2026 or 03-04-2026 (day/month either way)."""
    if len(values) != 3:
        return False
    first, middle, last = values
    if len(first) == 4 and len(middle) <= 2 and len(last) <= 2:
        return _is_calendar_date(first, middle, last)
    if len(first) <= 2 and len(middle) <= 2 and len(last) == 4:
        return _is_calendar_date(last, middle, first) or _is_calendar_date(last, first, middle)
    return False


def _is_calendar_date(year: str, month: str, day: str) -> bool:
    parsed = _parse_date(year, month, day)
    return parsed is not None and 1900 <= parsed.year <= 2099


def _is_benign_range(values: list[str]) -> bool:
    """2019-2023 or 3000-5000: a year range or a range of round amounts."""
    if len(values) != 2 or not all(len(value) <= 5 and value.isdecimal() for value in values):
        return False
    both_years = all(len(value) == 4 and 1900 <= int(value) <= 2099 for value in values)
    both_round = all(_ROUND_AMOUNT.fullmatch(value) for value in values)
    return both_years or both_round
