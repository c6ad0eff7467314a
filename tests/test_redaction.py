"""Tests for fl_client.redaction: every detector, its validity rule, and attempts to break it.

The planted-corpus test prints the precision and recall quoted in docs/REDACTION.md:
    python -m pytest tests/test_redaction.py -s -n 0 -k corpus
Throughput is a benchmark, not a test (a wall-clock floor fails on a loaded machine):
    python benchmarks/redaction_on_synthetic.py --throughput
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fl_client.redaction import PiiSpan, find_pii, luhn_valid, redact, resident_id_valid

SIX_DIGITS = re.compile(r"\d{6}")
PLACEHOLDER = re.compile(r"\[(?:PHONE|ID|CARD|EMAIL|IP|URL|NUMBER)\]")
KINDS = ("PHONE", "ID", "CARD", "EMAIL", "IP", "URL", "NUMBER")


# --- Independent reference implementations used to build test data --------------------


def luhn_check_digit(payload: str) -> str:
    """The digit that makes payload + digit Luhn-valid (computed without the module)."""
    total = 0
    for position, char in enumerate(reversed(payload)):
        value = int(char) * (2 if position % 2 == 0 else 1)
        total += value // 10 + value % 10
    return str(-total % 10)


def id_check_char(first17: str) -> str:
    """ISO 7064 MOD 11-2 from its definition: weight of position i is 2**(17 - i) mod 11."""
    total = sum(int(char) * pow(2, 17 - i, 11) for i, char in enumerate(first17))
    return "10X98765432"[total % 11]


def wrong_id_check_digit(first17: str) -> str:
    """A decimal check character that is not the right one."""
    right = id_check_char(first17)
    return next(d for d in "0123456789" if d != right)


# --- Generators of planted PII ----------------------------------------------------------

REGIONS = ("110105", "310104", "440305", "510107", "330106", "130102", "650102", "210203")
CARD_PREFIXES = (
    ("4", 16),
    ("4", 13),
    ("51", 16),
    ("55", 16),
    ("62", 19),
    ("6222", 16),
    ("37", 15),
    ("35", 16),
)
EMAIL_DOMAINS = ("qq.com", "163.com", "gmail.com", "example.co.uk", "bank-mail.cn", "outlook.com")
URL_DOMAINS = ("bank.example.com", "example.cn", "support.telco.com.cn", "pay.example.org")


def digits(rng: random.Random, count: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(count))


def birth_date(rng: random.Random) -> str:
    return f"{rng.randint(1940, 2005)}{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"


def resident_id(rng: random.Random) -> str:
    first17 = rng.choice(REGIONS) + birth_date(rng) + digits(rng, 3)
    return first17 + id_check_char(first17)


def invalid_resident_id(rng: random.Random) -> str:
    first17 = rng.choice(REGIONS) + birth_date(rng) + digits(rng, 3)
    return first17 + wrong_id_check_digit(first17)


def card_number(rng: random.Random) -> str:
    prefix, length = rng.choice(CARD_PREFIXES)
    payload = prefix + digits(rng, length - len(prefix) - 1)
    return payload + luhn_check_digit(payload)


def invalid_card_number(rng: random.Random) -> str:
    valid = card_number(rng)
    return valid[:-1] + str((int(valid[-1]) + rng.randint(1, 9)) % 10)


def cn_mobile(rng: random.Random) -> str:
    return "1" + rng.choice("3456789") + digits(rng, 9)


def nanp_digits(rng: random.Random) -> str:
    return rng.choice("23456789") + digits(rng, 2) + rng.choice("23456789") + digits(rng, 6)


def group(number: str, sizes: tuple[int, ...], separator: str) -> str:
    parts, position = [], 0
    for size in sizes:
        parts.append(number[position : position + size])
        position += size
    if position < len(number):
        parts.append(number[position:])
    return separator.join(parts)


def formatted_cn_mobile(rng: random.Random) -> str:
    number = cn_mobile(rng)
    return rng.choice(
        (
            number,
            group(number, (3, 4, 4), " "),
            group(number, (3, 4, 4), "-"),
            "+86 " + group(number, (3, 4, 4), " "),
            "+86-" + group(number, (3, 4, 4), "-"),
            "+86" + number,
            "0086 " + number,
            "(+86)" + number,
            "（+86）" + group(number, (3, 4, 4), " "),
        )
    )


def formatted_other_phone(rng: random.Random) -> str:
    nanp = nanp_digits(rng)
    return rng.choice(
        (
            f"+44 7{digits(rng, 3)} {digits(rng, 6)}",
            f"+1 ({nanp[:3]}) {nanp[3:6]}-{nanp[6:]}",
            f"({nanp[:3]}) {nanp[3:6]}-{nanp[6:]}",
            f"{nanp[:3]}-{nanp[3:6]}-{nanp[6:]}",
            f"{nanp[:3]}.{nanp[3:6]}.{nanp[6:]}",
            f"+49 30 {digits(rng, 8)}",
            f"+33 6 {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)} {digits(rng, 2)}",
            f"010-{rng.choice('2345678')}{digits(rng, 7)}",
            f"0755-{rng.choice('2345678')}{digits(rng, 3)}-{digits(rng, 4)}",
        )
    )


def planted_phone(rng: random.Random) -> str:
    return formatted_cn_mobile(rng) if rng.random() < 0.6 else formatted_other_phone(rng)


def planted_id(rng: random.Random) -> str:
    number = resident_id(rng)
    return rng.choice((number, number.lower(), group(number, (6, 8, 4), " ")))


def planted_card(rng: random.Random) -> str:
    number = card_number(rng)
    return rng.choice((number, group(number, (4, 4, 4, 4), " "), group(number, (4, 4, 4, 4), "-")))


def planted_email(rng: random.Random) -> str:
    local = rng.choice(
        (
            digits(rng, rng.randint(6, 11)),
            "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 8))),
            f"zhang.san{rng.randint(1, 99)}",
            f"li_si+{rng.choice(('bank', 'shop'))}",
        )
    )
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def planted_ip(rng: random.Random) -> str:
    if rng.random() < 0.6:
        octets = (rng.randint(1, 223), *rng.choices(range(256), k=3))
        return ".".join(map(str, octets))
    if rng.random() < 0.5:
        return str(ipaddress.IPv6Address(rng.getrandbits(128)))
    return f"fe80::{rng.getrandbits(16):x}:{rng.getrandbits(16):x}"


def planted_url(rng: random.Random) -> str:
    domain = rng.choice(URL_DOMAINS)
    path = rng.choice(("", "/reset", f"/u/{digits(rng, 8)}", f"/login?next=/a&id={digits(rng, 6)}"))
    return rng.choice(("https://", "http://", "www.")) + domain + path


def planted_number(rng: random.Random) -> str:
    return rng.choice(
        (
            rng.choice("123456789") + digits(rng, rng.choice((5, 6, 7, 8, 9, 11))),
            rng.choice("123456789") + digits(rng, 3) + "-" + digits(rng, 4) + "-" + digits(rng, 2),
            invalid_resident_id(rng),
            group(invalid_card_number(rng), (4, 4, 4, 4), " "),
        )
    )


PLANTERS: dict[str, Callable[[random.Random], str]] = {
    "PHONE": planted_phone,
    "ID": planted_id,
    "CARD": planted_card,
    "EMAIL": planted_email,
    "IP": planted_ip,
    "URL": planted_url,
    "NUMBER": planted_number,
}

# Utterance shapes: the value at the start, the end, between words, and glued to CJK text.
TEMPLATES = (
    "{}",
    "My number is {}.",
    "please use {} for that",
    "{} is the one on file",
    "It's {}, thanks!",
    "can you check {}? it failed",
    "我的是{}，谢谢",
    "{}是我的",
    "请核对{}。",
    "号码：{}",
    "信息({})有误",
    "帐户{}已经冻结了吗",
    "您好，{}",
)

# Ordinary text that must survive untouched: amounts, dates, times, plans, percentages.
BENIGN_FILLERS = (
    "I paid $1,250.00 last week",
    "the bill was 3000元",
    "on 2026-03-04 at 12:30",
    "due 03/04/2026",
    "my 5G plan",
    "rate is 3.5%",
    "from 2019-2023",
    "额度3000-5000元",
    "2026年3月4日下午3点",
    "I have 2 cards",
    "room 101",
    "¥12,345.67",
    "99.9% uptime",
    "iPhone 15 Pro",
    "10:00-18:00",
    "套餐月租128元",
)


def benign_filler(rng: random.Random) -> str:
    """Ordinary numbers with random values: amounts, dates, times, percentages, plans."""
    year, month, day = rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)
    return rng.choice(
        (
            rng.choice(BENIGN_FILLERS),
            f"I paid ${rng.randint(1, 999)},{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}",
            f"余额{rng.randint(1, 99999)}元",
            f"¥{rng.randint(1, 99)},{rng.randint(0, 999):03d},{rng.randint(0, 999):03d}.00",
            f"on {year}-{month:02d}-{day:02d}",
            f"due {month:02d}/{day:02d}/{year}",
            f"{year}年{month}月{day}日",
            f"at {rng.randint(0, 23)}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}",
            f"{year}-{month:02d}-{day:02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}",
            f"rate {rng.randint(0, 99)}.{rng.randint(0, 99)}%",
            f"{rng.choice(('4G', '5G', '5G+'))} plan, {rng.randint(1, 999)} GB",
            f"from {year - rng.randint(1, 9)}-{year}",
            f"{rng.randint(1, 99)}00-{rng.randint(100, 999)}00元",
            f"{rng.randint(1, 99999)} points",
        )
    )


@dataclass(frozen=True)
class PlantedUtterance:
    text: str
    spans: frozenset[tuple[int, int, str]]


def planted_utterance(rng: random.Random) -> PlantedUtterance:
    """One utterance with 0-2 planted values and maybe a benign filler, with true spans."""
    text = ""
    spans = set()
    for _ in range(rng.choice((0, 1, 1, 1, 2))):
        kind = rng.choice(KINDS)
        value = PLANTERS[kind](rng)
        before, after = rng.choice(TEMPLATES).split("{}")
        text += ("; " if text else "") + before
        spans.add((len(text), len(text) + len(value), kind))
        text += value + after
    if not spans or rng.random() < 0.5:
        text += ("; " if text else "") + benign_filler(rng)
    return PlantedUtterance(text, frozenset(spans))


def random_text(rng: random.Random, alphabet: str, max_length: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, max_length)))


DIGIT_HEAVY_ALPHABET = "0123456789" * 6 + " --..+()（）xX:/@的号码，。ab１２３\u200b"
MIXED_ALPHABET = "0123456789" * 3 + " -.:@/+()_%wh" + "abcdefxyzXWT" + "我的手机号是，。：" + "９８"


def assert_well_formed(text: str, spans: list[PiiSpan]) -> None:
    assert spans == sorted(spans)
    for previous, current in zip(spans, spans[1:], strict=False):
        assert previous.end <= current.start
    for span in spans:
        assert 0 <= span.start < span.end <= len(text)
        assert span.kind in KINDS


# --- Validators ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("4111111111111111", True),
        ("378282246310005", True),
        ("5555555555554444", True),
        ("4111111111111112", False),
        ("4111 1111 1111 1111", False),
        ("", False),
        ("41111111111111a1", False),
        ("４１１１１１１１１１１１１１１１", True),
    ],
)
def test_luhn_valid_known_numbers(number: str, expected: bool) -> None:
    assert luhn_valid(number) is expected


def test_luhn_valid_accepts_generated_cards_and_rejects_every_wrong_check_digit() -> None:
    rng = random.Random(1)
    for _ in range(300):
        card = card_number(rng)
        assert luhn_valid(card)
        for wrong in set("0123456789") - {card[-1]}:
            assert not luhn_valid(card[:-1] + wrong)


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("11010519491231002X", True),
        ("11010519491231002x", True),
        ("11010519491231002Ｘ", True),
        ("110105194912310021", False),
        ("11010519491231002", False),
        ("11010519491231002XX", False),
        ("1101051949123100AX", False),
        ("", False),
    ],
)
def test_resident_id_valid_known_numbers(number: str, expected: bool) -> None:
    assert resident_id_valid(number) is expected


@pytest.mark.parametrize("birth", ["19900230", "19901301", "18991231", "20991231", "19900000"])
def test_resident_id_with_right_check_char_but_impossible_birth_date_is_invalid(birth: str) -> None:
    first17 = "110105" + birth + "123"
    assert not resident_id_valid(first17 + id_check_char(first17))


def test_resident_id_valid_agrees_with_reference_on_generated_ids() -> None:
    rng = random.Random(2)
    for _ in range(500):
        number = resident_id(rng)
        assert resident_id_valid(number)
        for wrong in set("0123456789X") - {number[-1]}:
            assert not resident_id_valid(number[:-1] + wrong)


# --- Each kind, in English and Chinese, with and without separators ------------------------

VALID_ID = "11010519491231002X"
VALID_DIGIT_ID = "110105199003071239"
INVALID_ID = "110105199003071234"
VISA = "4111111111111111"
UNIONPAY_19 = "6222021234567890128"
AMEX = "378282246310005"


def test_fixture_numbers_are_what_their_names_say() -> None:
    assert resident_id_valid(VALID_ID) and resident_id_valid(VALID_DIGIT_ID)
    assert not resident_id_valid(INVALID_ID)
    assert luhn_valid(VISA) and luhn_valid(UNIONPAY_19) and luhn_valid(AMEX)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("我的手机号是13812345678，谢谢", "我的手机号是[PHONE]，谢谢"),
        ("13812345678", "[PHONE]"),
        ("13812345678是我的号码", "[PHONE]是我的号码"),
        ("手机：138 1234 5678。", "手机：[PHONE]。"),
        ("手机138-1234-5678", "手机[PHONE]"),
        ("call +86 138 1234 5678 today", "call [PHONE] today"),
        ("call me on +86-138-1234-5678.", "call me on [PHONE]."),
        ("0086 13812345678", "[PHONE]"),
        ("(+86)13812345678", "[PHONE]"),
        ("（＋86）138 1234 5678！", "[PHONE]！"),
        ("+8613812345678!", "[PHONE]!"),
        ("my UK mobile is +44 7911 123456", "my UK mobile is [PHONE]"),
        ("US office +1 (415) 555-2671.", "US office [PHONE]."),
        ("(415) 555-2671 is my desk", "[PHONE] is my desk"),
        ("415-555-2671", "[PHONE]"),
        ("415.555.2671", "[PHONE]"),
        ("+1(415)555-2671", "[PHONE]"),
        ("座机010-62345678", "座机[PHONE]"),
        ("电话（0755）8888 1234。", "电话[PHONE]。"),
        ("我的手机号是１３８１２３４５６７８", "我的手机号是[PHONE]"),
        ("138\u200b1234\u200b5678", "[PHONE]"),
        ("138 - 1234 - 5678", "[PHONE]"),
        ("13812345678,13912345678", "[PHONE],[PHONE]"),
        ("13812345678 13912345678", "[PHONE] [PHONE]"),
        ("tel:13812345678", "tel:[PHONE]"),
    ],
)
def test_phone_numbers(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"身份证号码{VALID_ID}，谢谢", "身份证号码[ID]，谢谢"),
        (f"身份证{VALID_DIGIT_ID}", "身份证[ID]"),
        (VALID_ID, "[ID]"),
        (f"{VALID_ID.lower()} is my ID.", "[ID] is my ID."),
        (f"ID: {VALID_DIGIT_ID[:6]} {VALID_DIGIT_ID[6:14]} {VALID_DIGIT_ID[14:]}", "ID: [ID]"),
        (f"证件号{VALID_ID[:17]}Ｘ。", "证件号[ID]。"),
        (f"{VALID_ID}是我的", "[ID]是我的"),
        (f"身份证号码{INVALID_ID}", "身份证号码[NUMBER]"),
        (f"my id {INVALID_ID}.", "my id [NUMBER]."),
        (f"{VALID_DIGIT_ID} {VALID_ID}", "[ID] [ID]"),
    ],
)
def test_resident_ids(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_legacy_15_digit_id_is_a_long_number() -> None:
    legacy = "110105900307123"
    assert not luhn_valid(legacy)
    assert redact(f"老身份证{legacy}") == "老身份证[NUMBER]"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"card {VISA[:4]} {VISA[4:8]} {VISA[8:12]} {VISA[12:]} please", "card [CARD] please"),
        (f"{VISA[:4]}-{VISA[4:8]}-{VISA[8:12]}-{VISA[12:]}", "[CARD]"),
        (f"卡号{VISA}谢谢", "卡号[CARD]谢谢"),
        (f"银行卡：{UNIONPAY_19}。", "银行卡：[CARD]。"),
        (f"Amex {AMEX[:4]} {AMEX[4:10]} {AMEX[10:]}", "Amex [CARD]"),
        (f"card {VISA} exp 2026", "card [CARD] exp 2026"),
        ("card 4111 1111 1111 1112", "card [NUMBER]"),
        ("卡号6222021234567890127", "卡号[NUMBER]"),
    ],
)
def test_bank_cards(text: str, expected: str) -> None:
    assert redact(text) == expected


def joined(number: str, sizes: tuple[int, ...], separator: str) -> str:
    """``number`` cut into groups of ``sizes``, joined by ``separator``."""
    cuts = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    return separator.join(number[a:b] for a, b in zip(cuts, cuts[1:], strict=False))


@pytest.mark.parametrize("separator", ["，", "、", "·", "/", "／", "_", "\u00ad", ",", ", "])
@pytest.mark.parametrize(
    ("number", "sizes", "kind"),
    [
        ("13812345678", (3, 4, 4), "PHONE"),
        ("6225882914177768", (4, 4, 4, 4), "CARD"),
        (UNIONPAY_19, (4, 4, 4, 4, 3), "CARD"),
        (AMEX, (4, 6, 5), "CARD"),
        (VALID_ID, (6, 8, 4), "ID"),
        (VALID_DIGIT_ID, (6, 4, 4, 4), "ID"),
    ],
)
def test_groups_joined_by_commas_slashes_and_dots_are_redacted_whole(
    number: str, sizes: tuple[int, ...], kind: str, separator: str
) -> None:
    """ASR punctuation and Chinese typists write pauses in a number as ，or 、."""
    assert redact(f"号码：{joined(number, sizes, separator)}，谢谢") == f"号码：[{kind}]，谢谢"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("手机138，1234 5678", "手机[PHONE]"),
        ("６２２５，８８２９，１４１７，７７６８", "[CARD]"),
        ("+86，138，1234，5678", "+86，[PHONE]"),
        ("13812345678，13912345678", "[PHONE]，[PHONE]"),
        ("110105，19491231，0021", "[NUMBER]，[NUMBER]，0021"),  # wrong ID check character
        # found in review: a 19-digit 9558 card and a mobile split 7 + 4 or 3 + 8
        ("卡号9558、8012、3456、7890、128", "卡号[CARD]"),
        ("手机1381234，5678", "手机[PHONE]"),
        ("电话138，12345678", "电话[PHONE]"),
        # found in review: groups on separate lines, three spaces apart, or split by |, *, 。
        # or ". " were left whole
        ("card 4111   1111   1111   1111 thanks", "card [CARD] thanks"),
        ("card 4111\n1111\n1111\n1111 thanks", "card [CARD] thanks"),
        ("card 4111\r\n1111\r\n1111\r\n1111", "card [CARD]"),
        ("card 4111|1111|1111|1111", "card [CARD]"),
        ("卡号 4111*1111*1111*1111", "卡号 [CARD]"),
        ("card 4111. 1111. 1111. 1111.", "card [CARD]."),
        ("call 139   1234   5678", "call [PHONE]"),
        ("手机139。1234。5678", "手机[PHONE]"),
        # found in review: \r alone, a blank line, a paragraph separator, a join or a period at
        # a line's end, a bullet at the next line's start and nine spaces left them whole
        ("card 4111\r1111\r1111\r1111", "card [CARD]"),
        ("card 4111\n\n1111\n\n1111\n\n1111", "card [CARD]"),
        ("card 4111 \n \n 1111 \n \n 1111 \n \n 1111", "card [CARD]"),
        ("card 4111\u20281111\u20291111\u20281111", "card [CARD]"),
        ("card 4111.\n1111.\n1111.\n1111", "card [CARD]"),
        ("手机138，\n1234，\n5678", "手机[PHONE]"),
        ("card\n- 4111\n- 1111\n- 1111\n- 1111", "card\n- [CARD]"),
        ("card\n* 4111\n* 1111\n* 1111\n* 1111", "card\n* [CARD]"),
        ("card " + (" " * 9).join(["4111", "1111", "1111", "1111"]), "card [CARD]"),
    ],
)
def test_joined_groups_mixed_with_other_separators(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "1,000,000",
        "¥1,250,000.00",
        "12,345,678,901元",
        "2026/03/04",
        "2026/03/04/2027",
        "03/04/2026, 04/05/2026",
        "2019、2020、2021、2022年",
        "价格128，1234，5678",  # not a 1[3-9] mobile
        "4111，1111，1111，1112",  # fails Luhn
        "2017、2018、2019、2020年",  # Luhn-valid, but a card starting with 2 is not taken
        "1、2、3、4、5、6、7、8",
        "2019   2020   2021   2022",
        "1000\n2000\n3000\n4000",
        "第1页\n第2页",
        "4111|1111|1111|1112",  # fails Luhn
        "2019;2020;2021;2022",
        "12:30; 13:45",
        "1000\n\n2000\n\n3000\n\n4000",
    ],
)
def test_joined_groups_in_no_typed_shape_are_left_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail john.doe+bank@example.co.uk today", "mail [EMAIL] today"),
        ("邮箱zhang_san@163.com。", "邮箱[EMAIL]。"),
        ("13812345678@qq.com", "[EMAIL]"),
        ("email: A.B-C@Sub.Example.ORG.", "email: [EMAIL]."),
        ("我的邮箱是li.si＠qq.com谢谢", "我的邮箱是[EMAIL]谢谢"),
        ("john@www.example.com", "[EMAIL]"),
        ("reply to @support please", "reply to @support please"),
        # typed on a Chinese keyboard (found in review: each was left whole)
        ("zhang.wei＠163．com 谢谢", "[EMAIL] 谢谢"),
        ("我的邮箱zhangwei@qq。com。", "我的邮箱[EMAIL]。"),
        ("ｚｈａｎｇｗｅｉ＠１６３．ｃｏｍ", "[EMAIL]"),
        ("价格@5。00元", "价格@5。00元"),
    ],
)
def test_emails(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("my IP is 192.168.1.10.", "my IP is [IP]."),
        ("IP是10.0.0.1，", "IP是[IP]，"),
        ("v6 2001:db8::1, ok", "v6 [IP], ok"),
        ("fe80::1%eth0", "[IP]"),
        ("::ffff:192.0.2.1", "[IP]"),
        ("地址2001:0db8:85a3:0000:0000:8a2e:0370:7334。", "地址[IP]。"),
        ("port:2001:db8::2", "port:[IP]"),
        ("256.1.1.1", "256.1.1.1"),
        ("meet at 12:30:45", "meet at 12:30:45"),
    ],
)
def test_ip_addresses(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("visit https://bank.example.com/reset?token=abc123.", "visit [URL]."),
        ("请访问https://example.cn/u/13812345678，谢谢", "请访问[URL]，谢谢"),
        ("www.example.com", "[URL]"),
        ("(see WWW.Example.com/help)", "(see [URL])"),
        ("http://192.168.1.1/admin", "[URL]"),
        ("https://x.com/a?email=john@x.com", "[URL]"),
        ("[链接]https://example.cn/u/abc", "[链接][URL]"),
        ("订单123456www.example.com", "订单[NUMBER][URL]"),
    ],
)
def test_urls(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("订单号123456", "订单号[NUMBER]"),
        ("123456", "[NUMBER]"),
        ("account 1234-5678-9012 closed", "account [NUMBER] closed"),
        ("ref: 987654321.", "ref: [NUMBER]."),
        ("12 3456", "[NUMBER]"),
        ("x123456y", "x[NUMBER]y"),
        ("1234567890123456789012345", "[NUMBER]"),
        ("order 12 13812345678", "order [NUMBER]"),
        ("6222 0212 3456 7891", "[NUMBER]"),
        ("20260304", "[NUMBER]"),
        ("100000元", "[NUMBER]元"),
        ("１２３４５６", "[NUMBER]"),
    ],
)
def test_long_digit_fallback(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "I paid $1,250.00 yesterday",
        "账单3000元",
        "¥1,250,000.00",
        "on 2026-03-04",
        "due 03/04/2026",
        "2026/03/04",
        "2026.03.04",
        "2026年3月4日",
        "at 12:30",
        "12:30:45",
        "2026-03-04 12:30",
        "12:30 2026-03-04",
        "my 5G plan",
        "4G LTE",
        "rate 3.5%",
        "99.9% uptime",
        "from 2019-2023",
        "额度3000-5000元",
        "room 101",
        "12345",
        "1 2 3 4 5",
        "iPhone 15 Pro",
        "10:00-18:00",
        "version 2.3.1",
        "",
        "no digits at all",
        "没有数字",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact(text) == text
    assert find_pii(text) == []


# --- Detector order ---------------------------------------------------------------------


def test_resident_id_wins_over_card_when_both_validate() -> None:
    rng = random.Random(3)
    number = next(n for n in iter(lambda: resident_id(rng), None) if luhn_valid(n))
    assert redact(number) == "[ID]"


def test_prefixed_mobile_wins_over_card_when_both_validate() -> None:
    rng = random.Random(4)
    number = next(n for n in iter(lambda: "0086" + cn_mobile(rng), None) if luhn_valid(n))
    assert redact(number) == "[PHONE]"


def test_invalid_id_that_passes_luhn_is_still_number() -> None:
    rng = random.Random(5)
    numbers = (invalid_resident_id(rng) for _ in range(10_000))
    number = next(n for n in numbers if luhn_valid(n))
    assert redact(number) == "[NUMBER]"


def test_whole_email_and_url_win_over_the_digits_inside_them() -> None:
    spans = find_pii("13812345678@qq.com and https://x.cn/u/13812345678?ip=10.0.0.1")
    assert [span.kind for span in spans] == ["EMAIL", "URL"]


# --- find_pii ---------------------------------------------------------------------------


def test_find_pii_spans_let_callers_count_findings() -> None:
    text = f"手机13812345678，卡{VISA}，邮箱a@qq.com，订单123456，再打13912345678"
    spans = find_pii(text)
    assert Counter(span.kind for span in spans) == {"PHONE": 2, "CARD": 1, "EMAIL": 1, "NUMBER": 1}
    assert [text[span.start : span.end] for span in spans][:2] == ["13812345678", VISA]


def test_pii_span_is_frozen() -> None:
    span = PiiSpan(0, 11, "PHONE")
    with pytest.raises(dataclasses.FrozenInstanceError):
        span.start = 1  # type: ignore[misc]


# --- Properties over random strings -------------------------------------------------------


@pytest.mark.parametrize("alphabet", [DIGIT_HEAVY_ALPHABET, MIXED_ALPHABET])
def test_no_six_digit_run_survives_and_redaction_is_idempotent(alphabet: str) -> None:
    rng = random.Random(6)
    for _ in range(4000):
        text = random_text(rng, alphabet, 60)
        spans = find_pii(text)
        assert_well_formed(text, spans)
        redacted = redact(text)
        assert not SIX_DIGITS.search(redacted), (text, redacted)
        assert redact(redacted) == redacted, text


def test_no_six_digit_run_survives_in_token_soup() -> None:
    """Glue placeholders, URL and IP fragments, times and dates to digits: context changes
    made by a first redaction must not make a second one find more."""
    tokens = (
        "www.",
        "https://",
        "@",
        "::",
        ".com",
        "[NUMBER]",
        "[IP]",
        "12:30",
        "2026-03-04",
        "+86",
        "(",
        ")",
        "（",
        " ",
        "-",
        ".",
        "x",
        "的",
    ) + tuple("0123456789") * 3
    rng = random.Random(11)
    for _ in range(4000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 30)))
        redacted = redact(text)
        assert not SIX_DIGITS.search(redacted), (text, redacted)
        assert redact(redacted) == redacted, text


@pytest.mark.parametrize(
    "text",
    [
        "85151-２:9１0833412:4154",
        "12:30@499071712:30-2420(3@12:307",
        "96-03 xxX42X1992-8 20x105X 8544389 76771X8",
        "f .7.e d:b1993 30a5:::974 f",
        "x@gmail.com31@gmail.com",
        "+86 163 4545 4983https://（+86）199 2846 7342",
        "fe80::7848:32ca.650102194003142660",
        "(160.12.46.150.92.221.121.225.",
        "24682-3:04x\u200b3678517203",
        "35685-1:20３742923",
    ],
)
def test_idempotence_regressions_found_by_fuzzing(text: str) -> None:
    redacted = redact(text)
    assert not SIX_DIGITS.search(redacted)
    assert redact(redacted) == redacted


def test_planted_values_never_survive_in_random_surroundings() -> None:
    rng = random.Random(7)
    delimiters = (" ", "，", "。", "的", "是", ", ", "; ", "! ", "\n", "：")
    for _ in range(3000):
        kind = rng.choice(KINDS)
        value = PLANTERS[kind](rng)
        text = (
            random_text(rng, MIXED_ALPHABET, 20)
            + rng.choice(delimiters)
            + value
            + rng.choice(delimiters)
            + random_text(rng, MIXED_ALPHABET, 20)
        )
        redacted = redact(text)
        assert value not in redacted, (kind, text, redacted)
        assert not SIX_DIGITS.search(redacted), (text, redacted)
        assert redact(redacted) == redacted, text


def test_text_outside_spans_is_unchanged() -> None:
    rng = random.Random(8)
    for _ in range(1000):
        text = planted_utterance(rng).text
        kept = PLACEHOLDER.split(redact(text))
        gaps, position = [], 0
        for span in find_pii(text):
            gaps.append(text[position : span.start])
            position = span.end
        gaps.append(text[position:])
        assert kept == gaps


# --- Planted corpus: precision and recall per type -----------------------------------------


def per_kind_scores(corpus: list[PlantedUtterance]) -> dict[str, tuple[int, int, int]]:
    """(true positives, false positives, false negatives) per kind, by exact span and kind."""
    found_by_kind: Counter[str] = Counter()
    planted_by_kind: Counter[str] = Counter()
    hits: Counter[str] = Counter()
    for utterance in corpus:
        found = {(span.start, span.end, span.kind) for span in find_pii(utterance.text)}
        found_by_kind.update(kind for _, _, kind in found)
        planted_by_kind.update(kind for _, _, kind in utterance.spans)
        hits.update(kind for _, _, kind in found & utterance.spans)
    return {
        kind: (hits[kind], found_by_kind[kind] - hits[kind], planted_by_kind[kind] - hits[kind])
        for kind in KINDS
    }


def test_planted_corpus_precision_and_recall() -> None:
    rng = random.Random(2026)
    corpus = [planted_utterance(rng) for _ in range(20_000)]
    scores = per_kind_scores(corpus)
    print(f"\nplanted corpus: {len(corpus)} utterances")
    print(f"{'kind':<8}{'planted':>9}{'found':>8}{'precision':>11}{'recall':>8}")
    for kind, (true_pos, false_pos, false_neg) in scores.items():
        precision = true_pos / (true_pos + false_pos)
        recall = true_pos / (true_pos + false_neg)
        print(
            f"{kind:<8}{true_pos + false_neg:>9}{true_pos + false_pos:>8}"
            f"{precision:>11.4f}{recall:>8.4f}"
        )
        assert true_pos + false_neg > 500, kind
        assert false_neg == 0, f"{kind}: {false_neg} planted values missed"
        assert precision >= 0.99, kind


def test_planted_corpus_leaves_fillers_and_templates_intact() -> None:
    rng = random.Random(9)
    for _ in range(2000):
        utterance = planted_utterance(rng)
        found = {(span.start, span.end, span.kind) for span in find_pii(utterance.text)}
        assert found == utterance.spans, utterance.text


# --- Work per digit group (throughput itself: benchmarks/redaction_on_synthetic.py) ---------


def test_work_grows_linearly_with_the_digit_groups_in_a_text(monkeypatch) -> None:
    """A long or hostile transcript must not make redaction quadratic: the number of candidate
    windows the classifier examines is at most one per (start group, window length up to the
    longest typed identifier), so it grows linearly with the digit groups in one run. Counted
    operations, not seconds, so a loaded machine cannot fail it. The worst case is one run of
    single digits (every group starts many windows)."""
    import fl_client.redaction as redaction

    calls = 0
    real_typed_kind = redaction._typed_kind

    def counted(window):
        nonlocal calls
        calls += 1
        return real_typed_kind(window)

    monkeypatch.setattr(redaction, "_typed_kind", counted)
    rng = random.Random(11)
    windows: dict[int, int] = {}
    for groups in (250, 500, 1000, 2000):
        text = "call " + " ".join(str(rng.randrange(10)) for _ in range(groups)) + " thanks"
        calls = 0
        redacted = redact(text)
        windows[groups] = calls
        assert redacted == "call [NUMBER] thanks"  # one long number, fully redacted
    max_window = redaction._MAX_TYPED_DIGITS
    for groups, count in windows.items():
        assert groups <= count <= groups * max_window, (groups, count)
    # Eight times the groups, about eight times the work (quadratic would be 64 times).
    assert windows[2000] <= 8.5 * windows[250], windows
