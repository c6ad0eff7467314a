"""Redaction at its edges: the validators' boundaries, the shapes of dates and ranges that are
left alone (and the near misses that are not), the documented placeholder of each phone and
card shape, and the Chinese name and address rules where a changed condition would leave a
name or an address readable. Found by mutation testing (fl_client/redaction.py and
fl_client/redaction_zh.py: each test kills a change that no other test caught; docs/TESTING.md).

Every number here is synthetic: IDs carry a computed check character, cards a computed Luhn
digit.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from fl_client.redaction import luhn_valid, redact, resident_id_valid


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 from its definition (weight of position i is 2**(17 - i) mod 11)."""
    total = sum(int(char) * pow(2, 17 - i, 11) for i, char in enumerate(first17))
    return "10X98765432"[total % 11]


def resident_id(birth: str, region: str = "110105", sequence: str = "123") -> str:
    """A synthetic resident ID born on ``birth`` (YYYYMMDD) with the right check character."""
    first17 = region + birth + sequence
    return first17 + id_check_char(first17)


# --- resident_id_valid: check character and birth date at their ends --------------------------


@pytest.mark.parametrize("region", ["371122", "652928", "419999"])
def test_every_position_of_an_id_is_weighted(region: str) -> None:
    """MOD 11-2 weighs each of the first 17 digits. The other tests' IDs have a 0 as the
    region's third and fifth digit, where a wrong weight changes nothing; here no digit is 0,
    so a wrong weight anywhere refuses a valid ID (and, split by commas, leaves it readable)."""
    valid = resident_id("19871128", region=region, sequence="137")
    assert "0" not in valid[:17]
    assert resident_id_valid(valid)
    assert redact(f"身份证{valid[:6]}，{valid[6:14]}，{valid[14:]}") == "身份证[ID]"
    for position in [*range(6), *range(14, 17)]:  # the birth date stays a real date
        changed = str(int(valid[position]) % 9 + 1)
        assert not resident_id_valid(valid[:position] + changed + valid[position + 1 :])


@pytest.mark.parametrize("last", ["中", "Ｙ", "#"])
def test_an_id_whose_18th_character_is_no_check_character_is_invalid(last: str) -> None:
    """A valid ID with its check character replaced by a non-ASCII character must not validate
    (a check of the wrong position let any 18th character through: full-width text is
    normalised to X, which may be the right check character)."""
    valid = "11010519491231002X"
    assert resident_id_valid(valid)
    assert not resident_id_valid(valid[:17] + last)


@pytest.mark.parametrize("birth", ["19900231", "19900431", "20230229", "19900631"])
def test_a_birth_date_past_the_months_end_is_invalid(birth: str) -> None:
    """The day is read from both digits: 31 April is no date even though 1 April is."""
    assert not resident_id_valid(resident_id(birth))


def test_the_earliest_birth_date_is_accepted_and_the_day_before_it_is_not() -> None:
    """1900-01-01 is the first birth date taken, inclusive; split by commas, an ID is claimed
    only if it validates, so a wrongly refused date left its last four characters readable."""
    earliest = resident_id("19000101")
    assert resident_id_valid(earliest)
    assert not resident_id_valid(resident_id("18991231"))
    grouped = f"{earliest[:6]}，{earliest[6:14]}，{earliest[14:]}"
    assert redact(f"身份证{grouped}") == "身份证[ID]"


def test_a_birth_date_of_today_is_accepted_and_tomorrow_is_not() -> None:
    """The newest birth date is today, inclusive (read twice: a test run across midnight)."""
    for _ in range(2):
        today = date.today()
        tomorrow = today + timedelta(days=1)
        born_today = resident_id_valid(resident_id(today.strftime("%Y%m%d")))
        born_tomorrow = resident_id_valid(resident_id(tomorrow.strftime("%Y%m%d")))
        if date.today() == today:
            break
    assert born_today
    assert not born_tomorrow


def luhn_check_digit(payload: str) -> str:
    """The digit that makes ``payload`` + digit Luhn-valid (computed without the module)."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value // 10 + value % 10
    return str(-total % 10)


@pytest.mark.parametrize("first", ["1", "7", "8"])
def test_a_19_digit_card_split_by_commas_is_redacted_whatever_its_first_digit(first: str) -> None:
    """Joined groups are a card only from a card network's first digit (3-6, 9), except at 19
    digits, which no list of years reaches: refusing those left five groups readable."""
    payload = first + "12345678901234567"
    card = payload + luhn_check_digit(payload)
    assert luhn_valid(card)
    groups = "、".join([card[:4], card[4:8], card[8:12], card[12:16], card[16:]])
    assert redact(f"卡号{groups}") == "卡号[CARD]"


# --- Digit runs: clock times, dates and ranges ----------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("账号:12 3456 7890", "账号:[NUMBER]"),
        ("ref:30 123456", "ref:[NUMBER]"),
        ("1:30 123456", "1:30 [NUMBER]"),
    ],
)
def test_two_digits_after_a_colon_are_minutes_only_after_an_hour(text: str, expected: str) -> None:
    """"12:30 2026-03-04" keeps its minutes out of the date; a field label's colon is no clock,
    so the two digits after it belong to the number and are redacted with it."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "04-03-2026",
        "25-12-2026",
        "12-25-2026",
        "1900-01-01",
        "2099-12-31",
        "1900-1901",
        "2098-2099",
        "2026-03-04 13812345678 2026-03-05",
    ],
)
def test_dates_and_year_ranges_at_their_ends_are_left_alone(text: str) -> None:
    """Dates either way round (day or month first), years 1900 to 2099 inclusive, and the dates
    on both sides of a phone number: over-redacting them would hide what the text is about."""
    expected = text.replace("13812345678", "[PHONE]")
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2026-003-04",
        "2026-03-004",
        "004-03-2026",
        "04-003-2026",
        "04-03-02026",
        "1234-05-06",
        "1899-12-31",
        "2100-01-01",
        "1234-5678",
        "1899-1900",
        "2099-2100",
        "300000-500000",
    ],
)
def test_numbers_just_outside_a_date_or_range_shape_are_redacted(text: str) -> None:
    """Seven to nine digits in groups of at most four look like a date or a year range only
    when they are one: a three-digit month, a five-digit year, a year before 1900 or after 2099
    taken for a date would leave an identifier readable (no group has six digits, so the
    six-digit guarantee would not notice). A range of round amounts has groups of at most five
    digits: 300000-500000 left whole would break that guarantee itself."""
    assert redact(f"ref {text}") == "ref [NUMBER]"


# --- IP addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("地址:2001:db8::1", "地址:[IP]"),
        ("IPv6地址:::1", "IPv6地址:[IP]"),
        ("30a5:::974", "30a5:[IP]"),
    ],
)
def test_an_ipv6_address_after_a_rejected_candidate_is_found(text: str, expected: str) -> None:
    """A field label's colon glued to an address makes a candidate (":2001:db8::1") that is no
    address; the search resumes one character later, so the address itself is found whole, not
    from its second group on ("2001:" left readable)."""
    assert redact(text) == expected


@pytest.mark.parametrize("text", ["a :: b", "x ::: y", "C++ :: operator"])
def test_bare_colons_are_not_an_ip_address(text: str) -> None:
    """"::" parses as the IPv6 unspecified address, but colons alone identify nothing."""
    assert redact(text) == text


# --- Documented placeholders of phone and card shapes ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "+" then 8 to 15 digits, not starting with 0
        ("+12345678", "[PHONE]"),
        ("+123456789012345", "[PHONE]"),
        ("+1234567", "[NUMBER]"),
        ("+1234567890123456", "[NUMBER]"),
        ("+0123456789", "[NUMBER]"),
        # a separate 00 + country code group of 3 to 5 digits, then 8 to 15 digits
        ("0044 7911 123456", "[PHONE]"),
        ("001 212 555 2671", "[PHONE]"),
        ("00852 9123 4567", "[PHONE]"),
        ("0040 721 234 567", "[PHONE]"),
        ("0044 123456", "[PHONE]"),
        ("0044 1234567890123", "[PHONE]"),
        ("0044 12345", "[NUMBER]"),
        ("0044 12345678901234", "[NUMBER]"),
        ("00 44 7911 123456", "[NUMBER]"),
        ("008521 9123 4567", "[NUMBER]"),
        ("0004 7911 123456", "[NUMBER]"),
        ("00447911123451", "[NUMBER]"),
        # North American shapes, with a leading 1
        ("1-212-555-2671", "[PHONE]"),  # not 1[3-9]: no Chinese mobile either
        ("1 (212) 5552671", "[PHONE]"),
        ("(212) 5552671", "[PHONE]"),
        ("212 5552671", "[NUMBER]"),
        ("112-555-2671", "[NUMBER]"),
        # Chinese landlines: the local number starts with 2-9
        ("010-62345678", "[PHONE]"),
        ("010-12345678", "[NUMBER]"),
        # cards: groups of 3 to 6 digits, the last at most 6
        ("378 282 246 310 005", "[CARD]"),
        ("4111 111111 111111", "[CARD]"),
        ("4111 1111 11111111", "[NUMBER]"),
        ("41111 1111 1111111", "[NUMBER]"),
        ("4111111 111111111", "[NUMBER]"),
        ("4111 1111 1111111 1", "[NUMBER]"),
        ("+4111 1111 1111 1111", "[NUMBER]"),
        # a parenthesised group is no year range
        ("(2019)-2023", "[NUMBER]"),
    ],
)
def test_each_written_shape_gets_its_documented_placeholder(text: str, expected: str) -> None:
    """docs/REDACTION.md's table at its ends. All are redacted either way; the placeholder is
    what `find_pii` counts and what the model sees in place of the number."""
    assert luhn_valid("378282246310005") and luhn_valid("4111111111111111")
    assert redact(f"call {text} now") == f"call {expected} now"


# --- Chinese addresses and names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("住7号楼3层", "住[ADDRESS]"),
        ("送到5栋12层", "送到[ADDRESS]"),
    ],
)
def test_a_building_and_a_floor_are_an_address(text: str, expected: str) -> None:
    """A unit (号楼, 栋) and a number (层) together locate a home, as two units do."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("寄到布吉街道中兴路12号", "寄到[ADDRESS]"),
        ("住在深圳市龙岗区布吉街道中兴路12号", "住在[ADDRESS]"),
    ],
)
def test_a_place_name_may_hold_any_han_character_but_the_stop_characters(
    text: str, expected: str
) -> None:
    """Place names are Han characters minus particles and suffixes; the class is built from
    code point ranges, and an off-by-one there dropped the character after each excluded one
    (布 follows 市), breaking the chain and leaving 深圳市龙岗区布 readable."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("王丽华先生您好", "[NAME]先生您好"),
        ("张伟收", "[NAME]收"),
        ("收件人改为王丽华先生", "收件人改为[NAME]先生"),
        ("为王丽华女士办理了退款", "为[NAME]女士办理了退款"),
        ("给王丽华先生留言", "给[NAME]先生留言"),
        ("周末王丽华先生来过", "周末[NAME]先生来过"),
    ],
)
def test_a_full_name_before_a_title_is_redacted_whole(text: str, expected: str) -> None:
    """At the start of the text, after a cue link (为), a particle (给) or a blocked word (周末),
    the name before a title starts at its surname; a missed boundary took the last given
    character (华, itself a surname) for the name and left 王丽 readable."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("联系张华先生", "联系[NAME]先生"),
        ("找李文经理", "找[NAME]经理"),
        ("请转告王丽华女士", "请转告[NAME]女士"),
    ],
)
def test_a_name_ending_in_a_surname_character_after_a_verb_is_redacted_whole(
    text: str, expected: str
) -> None:
    """Found by this file: after a verb that is no boundary (联系, 找, 转告), when the last
    given character is itself a surname (华, 文, 金, 林, 宁 ...), the shortest candidate before
    the title was that character alone, so the surname (张, 李, 王丽) stayed readable."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("客户王丽骞经理来电", "客户[NAME]经理来电"),
        ("联系人张子骞先生", "联系人[NAME]先生"),
    ],
)
def test_a_name_two_rules_find_at_different_lengths_is_redacted_to_the_longer(
    text: str, expected: str
) -> None:
    """After 客户 only common given characters count (王丽), before 经理 any do (王丽骞): the
    overlapping findings merge to the longer one, so no rare given character is left readable."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("王芳啊，13812345678", "[NAME]啊，[PHONE]"),
        ("王芳嗯啊，13812345678", "[NAME]嗯啊，[PHONE]"),
        ("手机13812345678，王芳", "手机[PHONE]，[NAME]"),
        ("13812345678 王芳", "[PHONE] [NAME]"),
        ("13812345678，那个王芳", "[PHONE]，那个[NAME]"),
        ("王芳那个，13812345678", "[NAME]那个，[PHONE]"),
        ("嗯那个欧阳娜娜，13812345678", "嗯那个[NAME]，[PHONE]"),
        ("就是说那个欧阳娜娜，13812345678", "就是说那个[NAME]，[PHONE]"),
        ("卡号4111111111111111。嗯，李娜", "卡号[CARD]。嗯，[NAME]"),
    ],
)
def test_a_name_clause_next_to_other_pii_is_redacted(text: str, expected: str) -> None:
    """A clause that is only a name, with spoken fillers after it, or after a phone or card
    number (not only before one), is a name."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("王芳，[PHONE]", "[NAME]，[PHONE]"),
        ("[PHONE]，王芳", "[PHONE]，[NAME]"),
        ("嗯王芳 [ID]", "嗯[NAME] [ID]"),
    ],
)
def test_a_placeholder_reads_as_the_pii_it_replaced(text: str, expected: str) -> None:
    """Text redacted upstream (a CRM export) keeps its names next to a placeholder findable:
    [PHONE] reads as the blanked phone number, so a second pass decides as the first did."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("张伟收，谢谢", "[NAME]收，谢谢"),
        ("我是高收入人群", "我是高收入人群"),
    ],
)
def test_shou_is_a_recipient_mark_only_at_the_end_of_a_clause(text: str, expected: str) -> None:
    """收 after a name ends an envelope line (张伟收，): the next character, not the one after,
    is the clause's end; inside a word (高收入) it marks no one."""
    assert redact(text) == expected


@pytest.mark.parametrize("text", ["姓名余额，", "户名金额："])
def test_two_characters_after_a_naming_cue_never_run_through_a_common_word(text: str) -> None:
    """Only a three-character name may run through a blocked word (我叫黄金凤); 余额 and 金额
    after 姓名 or 户名 are the words, not a name."""
    assert redact(text) == text
