"""Realistic personal data for synthetic conversations, plus the validators that define "valid".

Every generator takes a ``numpy.random.Generator`` so that output is reproducible from a seed.
The values are shaped like the real thing (check digits, issuer prefixes, region codes), so a
PII redactor measured on them faces the same patterns it will meet in production transcripts.
"""

from collections.abc import Sequence
from datetime import date, timedelta

import numpy as np

PII_TYPES = ("PHONE", "ID", "CARD", "EMAIL", "NAME", "ADDRESS", "ORDER", "ACCOUNT")

_EN_FIRST = (
    "James", "Mary", "Robert", "Patricia", "Michael", "Jennifer", "David", "Linda", "Daniel",
    "Sarah", "Thomas", "Emily", "Kevin", "Jessica", "Brian", "Ashley", "Oliver", "Amelia",
    "George", "Sophie", "Harry", "Chloe", "Jack", "Grace", "Liam", "Olivia", "Noah", "Emma",
    "Priya", "Carlos", "Fatima", "Mohammed", "Aisha", "Diego", "Hannah", "Ryan", "Megan",
)
_EN_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Wilson",
    "Taylor", "Anderson", "Thomas", "Moore", "Martin", "Thompson", "White", "Harris", "Clarke",
    "Walker", "Wright", "Robinson", "Hughes", "Evans", "Patel", "Nguyen", "Kim", "O'Brien",
    "Murphy", "Kowalski", "Hernandez", "Lopez", "Singh", "Campbell", "Mitchell", "Foster",
)
# Surname, pinyin; the pinyin feeds e-mail addresses so they match the name.
_ZH_SURNAMES = (
    ("王", "wang"), ("李", "li"), ("张", "zhang"), ("刘", "liu"), ("陈", "chen"), ("杨", "yang"),
    ("黄", "huang"), ("赵", "zhao"), ("吴", "wu"), ("周", "zhou"), ("徐", "xu"), ("孙", "sun"),
    ("马", "ma"), ("朱", "zhu"), ("胡", "hu"), ("郭", "guo"), ("何", "he"), ("林", "lin"),
    ("高", "gao"), ("罗", "luo"), ("郑", "zheng"), ("梁", "liang"), ("谢", "xie"), ("宋", "song"),
    ("唐", "tang"), ("许", "xu"), ("韩", "han"), ("冯", "feng"), ("邓", "deng"), ("曹", "cao"),
    ("欧阳", "ouyang"), ("司马", "sima"),
)
_ZH_GIVEN = (
    ("伟", "wei"), ("芳", "fang"), ("娜", "na"), ("敏", "min"), ("静", "jing"), ("丽", "li"),
    ("强", "qiang"), ("磊", "lei"), ("军", "jun"), ("洋", "yang"), ("勇", "yong"), ("艳", "yan"),
    ("杰", "jie"), ("涛", "tao"), ("明", "ming"), ("超", "chao"), ("秀英", "xiuying"),
    ("建华", "jianhua"), ("志强", "zhiqiang"), ("晓东", "xiaodong"), ("思琪", "siqi"),
    ("子涵", "zihan"), ("浩然", "haoran"), ("雨桐", "yutong"), ("欣怡", "xinyi"),
    ("梓轩", "zixuan"), ("海燕", "haiyan"), ("国平", "guoping"), ("文博", "wenbo"),
    ("佳怡", "jiayi"), ("一鸣", "yiming"),
)

# Real county-level administrative division codes (GB/T 2260), the first six digits of an ID.
RESIDENT_ID_REGIONS = (
    "110101", "110105", "110108", "120101", "130102", "140105", "210102", "220102", "230103",
    "310101", "310104", "310115", "320102", "320506", "330102", "330106", "340104", "350203",
    "360102", "370202", "410105", "420111", "430104", "440103", "440106", "440305", "450103",
    "500103", "510107", "520102", "530102", "610113", "620102", "650102",
)
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK_CHARS = "10X98765432"

# (prefix, total length): UnionPay debit/credit BINs of large Chinese banks, Visa, Mastercard.
_CARD_ISSUERS = (
    ("622202", 19), ("621700", 19), ("622848", 19), ("621661", 19), ("622588", 16),
    ("625807", 16), ("436742", 19), ("4", 16), ("51", 16), ("53", 16), ("55", 16),
)

_EN_STREETS = (
    "Maple", "Oak", "Elm", "Cedar", "Park", "Washington", "Lake", "Hill", "Church", "High",
    "Station", "Victoria", "Mill", "King", "Sunset", "Pine", "Riverside", "Queen",
)
_EN_STREET_KINDS = ("Street", "Avenue", "Road", "Lane", "Drive", "Boulevard", "Close", "Way")
_EN_TOWNS = (
    "Springfield, IL 62704", "Austin, TX 78701", "San Jose, CA 95112", "Seattle, WA 98109",
    "Manchester M1 4BT", "Leeds LS1 5DL", "Bristol BS1 6QA", "London SW1A 2AA",
    "Brooklyn, NY 11201", "Denver, CO 80203", "Toronto, ON M5V 2T6", "Sydney NSW 2000",
)
_ZH_CITIES = (
    ("北京市", ("朝阳区", "海淀区", "东城区", "丰台区")),
    ("上海市", ("浦东新区", "徐汇区", "静安区", "闵行区")),
    ("广州市", ("天河区", "越秀区", "海珠区", "番禺区")),
    ("深圳市", ("南山区", "福田区", "宝安区", "龙岗区")),
    ("杭州市", ("西湖区", "余杭区", "拱墅区", "滨江区")),
    ("成都市", ("武侯区", "锦江区", "高新区", "青羊区")),
    ("武汉市", ("洪山区", "江汉区", "武昌区")),
    ("南京市", ("玄武区", "鼓楼区", "江宁区")),
)
_ZH_ROADS = (
    "建国路", "人民路", "中山路", "解放路", "文三路", "天河北路", "张杨路", "科技园南路",
    "长江路", "和平大街", "学院路", "滨江大道", "东风路", "新华街", "光华大道",
)
_EN_MAIL_DOMAINS = ("gmail.com", "outlook.com", "yahoo.com", "icloud.com", "hotmail.co.uk")
_ZH_MAIL_DOMAINS = ("qq.com", "163.com", "126.com", "sina.com", "foxmail.com", "gmail.com")


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _digits(rng: np.random.Generator, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, size=n))


def _group(digits: str, sizes: Sequence[int], sep: str) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(digits[start : start + size])
        start += size
    if start < len(digits):
        parts.append(digits[start:])
    return sep.join(p for p in parts if p)


def person_name_en(rng: np.random.Generator) -> str:
    """A first and last name as an English speaker would say it."""
    return f"{_pick(rng, _EN_FIRST)} {_pick(rng, _EN_LAST)}"


def person_name_zh(rng: np.random.Generator) -> str:
    """A Chinese full name (surname first, one- or two-character given name)."""
    return _zh_name(rng)[0]


def _zh_name(rng: np.random.Generator) -> tuple[str, str]:
    surname, surname_py = _pick(rng, _ZH_SURNAMES)
    given, given_py = _pick(rng, _ZH_GIVEN)
    return surname + given, surname_py + given_py


def chinese_mobile(rng: np.random.Generator) -> str:
    """A mainland mobile number ``1[3-9]`` + 9 digits, in one of the ways people write it."""
    digits = "1" + str(int(rng.integers(3, 10))) + _digits(rng, 9)
    style = int(rng.integers(6))
    if style == 1:
        return _group(digits, (3, 4, 4), " ")
    if style == 2:
        return _group(digits, (3, 4, 4), "-")
    if style == 3:
        return "+86 " + _group(digits, (3, 4, 4), " ")
    if style == 4:
        return "+86" + digits
    return digits


def international_mobile(rng: np.random.Generator) -> str:
    """A UK (+44 7...) or North American (+1 (NPA) NXX-XXXX) mobile number."""
    if rng.random() < 0.5:
        return f"+44 7{_digits(rng, 3)} {_digits(rng, 6)}"
    area = _pick(rng, ("415", "212", "646", "312", "617", "206", "512", "416", "604"))
    exchange = str(int(rng.integers(2, 10))) + _digits(rng, 2)
    return f"+1 ({area}) {exchange}-{_digits(rng, 4)}"


def resident_id_check_digit(first17: str) -> str:
    """The ISO 7064 MOD 11-2 check character of a Chinese resident ID."""
    total = sum(int(d) * w for d, w in zip(first17, _ID_WEIGHTS, strict=True))
    return _ID_CHECK_CHARS[total % 11]


def resident_id(rng: np.random.Generator) -> str:
    """An 18-character resident ID: real region code, plausible birth date, valid check digit."""
    birth = date(1950, 1, 1) + timedelta(days=int(rng.integers(0, 20000)))
    first17 = _pick(rng, RESIDENT_ID_REGIONS) + birth.strftime("%Y%m%d") + _digits(rng, 3)
    return first17 + resident_id_check_digit(first17)


def _luhn_check_digit(payload: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(payload)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def bank_card(rng: np.random.Generator) -> str:
    """A Luhn-valid card number with a real issuer prefix, sometimes grouped by four."""
    prefix, length = _pick(rng, _CARD_ISSUERS)
    payload = prefix + _digits(rng, length - 1 - len(prefix))
    digits = payload + _luhn_check_digit(payload)
    style = rng.random()
    if style < 0.35:
        return _group(digits, (4, 4, 4, 4), " ")
    if style < 0.45:
        return _group(digits, (4, 4, 4, 4), "-")
    return digits


def email(rng: np.random.Generator, language: str = "en") -> str:
    """A personal e-mail address of the kind English or Chinese customers use."""
    if language == "zh":
        if rng.random() < 0.3:
            return f"{int(rng.integers(10**7, 10**10))}@qq.com"
        _, pinyin = _zh_name(rng)
        local = pinyin + _pick(rng, ("", str(int(rng.integers(1970, 2006))), _digits(rng, 3)))
        return f"{local}@{_pick(rng, _ZH_MAIL_DOMAINS)}"
    first, last = _pick(rng, _EN_FIRST).lower(), _pick(rng, _EN_LAST).lower().replace("'", "")
    sep = _pick(rng, (".", "_", ""))
    local = _pick(rng, (f"{first}{sep}{last}", f"{first[0]}{last}", f"{first}{last[0]}"))
    local += _pick(rng, ("", "", str(int(rng.integers(1, 99))), str(int(rng.integers(1970, 2006)))))
    return f"{local}@{_pick(rng, _EN_MAIL_DOMAINS)}"


def street_address(rng: np.random.Generator, language: str = "en") -> str:
    """A street address: US/UK style for English, city-district-road-number-room for Chinese."""
    if language == "zh":
        city, districts = _pick(rng, _ZH_CITIES)
        road, number = _pick(rng, _ZH_ROADS), int(rng.integers(1, 999))
        address = f"{city}{_pick(rng, districts)}{road}{number}号"
        if rng.random() < 0.8:
            building, floor, flat = (int(rng.integers(1, n)) for n in (30, 33, 6))
            address += f"{building}栋{floor}0{flat}室"
        return address
    number, name = int(rng.integers(1, 2999)), _pick(rng, _EN_STREETS)
    street = f"{number} {name} {_pick(rng, _EN_STREET_KINDS)}"
    if rng.random() < 0.3:
        street += f", Apt {int(rng.integers(1, 40))}{_pick(rng, 'ABCD')}"
    return f"{street}, {_pick(rng, _EN_TOWNS)}"


def order_number(rng: np.random.Generator) -> str:
    """An online-shop order reference in one of several common shapes."""
    shapes = (
        lambda: f"{_digits(rng, 3)}-{_digits(rng, 7)}-{_digits(rng, 7)}",  # marketplace
        lambda: f"ORD-2026{_digits(rng, 4)}-{_digits(rng, 5)}",
        lambda: "#" + str(int(rng.integers(1, 10))) + _digits(rng, 9),
        lambda: str(int(rng.integers(1, 10))) + _digits(rng, 15),  # Chinese platforms
    )
    return shapes[int(rng.integers(len(shapes)))]()


def account_number(rng: np.random.Generator) -> str:
    """A bank or billing account number (not Luhn-checked, unlike a card)."""
    style = int(rng.integers(3))
    if style == 0:
        return _group(str(int(rng.integers(1, 10))) + _digits(rng, 11), (4, 4, 4), " ")
    if style == 1:
        return "AC" + _digits(rng, 9)
    return _digits(rng, 10)
