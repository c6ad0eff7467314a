"""One synthetic customer-service conversation: who says what, with PII and channel noise.

A conversation is built from segments ``(text, pii_type)``: literal text gets the channel's
noise (ASR errors on the phone, typos in typed channels, code-switching for Chinese) while
PII segments are left untouched, so every planted value appears verbatim in its turn and can be
recorded in the ``pii`` field for measuring a redactor.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data_synth import pii
from data_synth.taxonomy import SLOT_VALUES, TEMPLATES, domain_of, vague_templates

CHANNELS = ("phone", "chat", "email", "app")

# Share of intent turns phrased vaguely enough to fit a group of related intents.
VAGUE_SHARE = 0.2

Segment = tuple[str, str | None]

_PII_SLOTS = {
    "name": "NAME", "phone": "PHONE", "id": "ID", "card": "CARD", "email": "EMAIL",
    "address": "ADDRESS", "order": "ORDER", "account": "ACCOUNT",
}
_SLOT_RE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Customer:
    """A caller and the personal data they give out, the same on every call they make."""

    customer_id: str
    language: str
    name: str
    phone: str
    email: str
    resident_id: str
    card: str
    account: str
    address: str
    order: str


@dataclass(frozen=True)
class Style:
    """How a site's customers talk: the knobs that make sites differ beyond their intent mix."""

    typo_rate: float
    politeness: float
    smalltalk: float
    code_switch: float
    chattiness: float


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def new_customer(rng: np.random.Generator, customer_id: str, language: str) -> Customer:
    """A customer with a consistent identity; English speakers mostly have foreign numbers."""
    if language == "zh":
        name, phone = pii.person_name_zh(rng), pii.chinese_mobile(rng)
    else:
        name = pii.person_name_en(rng)
        phone = pii.international_mobile(rng) if rng.random() < 0.75 else pii.chinese_mobile(rng)
    return Customer(
        customer_id=customer_id,
        language=language,
        name=name,
        phone=phone,
        email=pii.email(rng, language),
        resident_id=pii.resident_id(rng),
        card=pii.bank_card(rng),
        account=pii.account_number(rng),
        address=pii.street_address(rng, language),
        order=pii.order_number(rng),
    )


# ---------------------------------------------------------------------------- slot values

_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
              "September", "October", "November", "December")


def _ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def _amount(rng: np.random.Generator, language: str) -> str:
    value = float(np.exp(rng.normal(4.3, 1.0)))
    whole = max(1, round(value))
    if language == "zh":
        style = int(rng.integers(5))
        if style == 0:
            return f"¥{value:.2f}"
        if style == 4 and whole >= 100:
            return f"{whole // 100}百多块"
        return f"{whole}{_pick(rng, ('元', '块', '块钱', '元钱'))}"
    style = int(rng.integers(5))
    if style == 0:
        return f"${value:,.2f}"
    if style == 1:
        return f"£{value:.2f}"
    if style == 2:
        return f"{whole} dollars"
    if style == 3:
        return f"€{whole}"
    return f"${whole}"


def _big_amount(rng: np.random.Generator, language: str) -> str:
    thousands = int(rng.choice((5, 8, 10, 15, 20, 30, 50, 80, 100, 200, 300, 500)))
    if language == "zh":
        if thousands >= 10 and rng.random() < 0.7:
            return f"{thousands // 10}万" + _pick(rng, ("", "块", "元"))
        return f"{thousands * 1000}元"
    return _pick(rng, (f"${thousands},000", f"{thousands}k", f"£{thousands},000",
                       f"{thousands} thousand dollars"))


def _past_date(rng: np.random.Generator, language: str) -> str:
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    if language == "zh":
        if rng.random() < 0.6:
            return _pick(rng, ("昨天", "前天", "上周五", "今天早上", "上个月底", "这周一",
                               "上礼拜", "大前天", "昨天晚上"))
        return _pick(rng, (f"{month}月{day}号", f"{month}月{day}日", f"{day}号"))
    if rng.random() < 0.6:
        return _pick(rng, ("yesterday", "last Friday", "two days ago", "this morning",
                           "last week", "on Monday", "over the weekend", "last night"))
    return _pick(rng, (f"on {_EN_MONTHS[month - 1]} {_ordinal(day)}", f"on the {_ordinal(day)}",
                       f"on {month}/{day}"))


def _future_date(rng: np.random.Generator, language: str) -> str:
    if language == "zh":
        return _pick(rng, ("明天", "下周五", "下个月初", "后天", "这周末", "月底"))
    return _pick(rng, ("tomorrow", "next Friday", "next week", "on the 20th", "this weekend",
                       "at the end of the month"))


def _slot(rng: np.random.Generator, name: str, customer: Customer) -> Segment:
    language = customer.language
    if name in _PII_SLOTS:
        attribute = {"id": "resident_id"}.get(name, name)
        return getattr(customer, attribute), _PII_SLOTS[name]
    if name == "amount":
        return _amount(rng, language), None
    if name == "top_up":
        value = int(rng.choice((10, 15, 20, 25, 30, 50, 100)))
        if language == "zh":
            return f"{value}{_pick(rng, ('元', '块', '块钱'))}", None
        return _pick(rng, (f"${value}", f"£{value}", f"{value} dollars", f"{value} quid")), None
    if name == "big_amount":
        return _big_amount(rng, language), None
    if name == "date":
        return _past_date(rng, language), None
    if name == "future":
        return _future_date(rng, language), None
    if name == "last4":
        return f"{int(rng.integers(0, 10000)):04d}", None
    return _pick(rng, SLOT_VALUES[language][name]), None


def fill(template: str, rng: np.random.Generator, customer: Customer) -> list[Segment]:
    """Split ``template`` into literal and slot segments, drawing a value for every slot."""
    segments: list[Segment] = []
    position = 0
    for match in _SLOT_RE.finditer(template):
        segments.append((template[position : match.start()], None))
        segments.append(_slot(rng, match.group(1), customer))
        position = match.end()
    segments.append((template[position:], None))
    return [s for s in segments if s[0]]


# ---------------------------------------------------------------------------- phrasing

_PHRASES = {
    "en": {
        "opening": (
            "Hi, ", "Hello, ", "Hey, ", "Good morning, ", "Hi there. ", "Sorry to bother you, but ",
            "Yes hi, ", "So basically ", "Hi, I hope you can help. ", "Quick question, ",
            "Hello, I was hoping you could help me. ", "Good afternoon. ", "Hiya, ",
        ),
        "intro": (
            "My name is {name}. ", "This is {name} calling. ", "It's {name} here. ",
            "I'm {name}. ",
        ),
        "context": (
            "I've been a customer for years.", "I'm kind of in a hurry.",
            "This is the second time I'm contacting you about this.", "I already tried the app.",
            "My phone number is {phone}.", "You can reach me on {phone}.",
            "My email is {email}.", "I'm a bit stressed about this honestly.",
            "My husband usually deals with this stuff.", "Your website wasn't much help.",
        ),
        "closing": (
            "Thanks.", "Thank you.", "Can you help?", "Please help.", "Thanks in advance.",
            "Any help would be appreciated.", "What should I do?", "Please advise.",
            "This is really frustrating.", "Thanks so much.",
        ),
        "email_opening": ("Dear Sir or Madam, ", "Hello team, ", "To whom it may concern, ",
                          "Hi support, ", "Dear customer service, "),
        "email_closing": ("Best regards, {name}", "Kind regards, {name}", "Thanks, {name}",
                          "Regards, {name}", "Many thanks, {name}"),
    },
    "zh": {
        "opening": (
            "你好，", "您好，", "麻烦问一下，", "不好意思打扰一下，", "请问一下，",
            "客服你好，", "在吗，", "我想问下，", "你好，有个事想咨询一下，", "你好啊，",
        ),
        "intro": ("我是{name}，", "我叫{name}，", "我是机主{name}，", "本人{name}，"),
        "context": (
            "我是你们的老客户了", "有点急", "这已经是第二次找你们了", "APP上试过了没用",
            "我手机号是{phone}", "我电话{phone}，有事打给我", "身份证号{id}",
            "我邮箱{email}", "真的很着急", "网上查了半天也没搞明白",
        ),
        "closing": (
            "谢谢", "麻烦尽快处理一下", "急！", "在线等", "怎么办？", "谢谢了", "帮帮忙吧",
            "真的很无语", "辛苦了", "麻烦你们了",
        ),
        "email_opening": ("您好：", "客服您好，", "尊敬的客服：", "你好，"),
        "email_closing": ("谢谢！{name}", "此致 {name}", "盼复，{name}", "{name} 敬上"),
    },
}

_EN_QUESTION_START = re.compile(
    r"^(how|what|when|where|why|can|could|is|are|do|does|did|will|has|have|am|which|who)\b",
    re.IGNORECASE,
)
_ZH_QUESTION = re.compile(r"吗|呢|么|多少|怎么|为什么|什么时候|哪|几|多久|(.)不\1")
_SENTENCE_END = re.compile(r"[.!?。！？]$")


def _is_question(sentence: str, language: str) -> bool:
    if language == "zh":
        clause = re.split(r"[，,]", sentence)[-1]
        return _ZH_QUESTION.search(clause) is not None
    return _EN_QUESTION_START.match(sentence.strip()) is not None


def _last_sentence(text: str) -> str:
    pieces = [p for p in re.split(r"(?<=[.!?])\s+|(?<=[。！？])", text) if p.strip()]
    return pieces[-1] if pieces else text


def _mark(text: str, language: str, rng: np.random.Generator, final: bool) -> str:
    """The punctuation a writer puts after ``text``: mid-turn, or at the very end."""
    question = _is_question(_last_sentence(text), language)
    if language == "en":
        return "?" if question else "."
    if question:
        return "？"
    return _pick(rng, ("。", "！", "") if final else ("，", "。"))


def _sentence_join(parts: list[list[Segment]], language: str, rng) -> list[Segment]:
    """Join sentences with the punctuation a writer would add, fixing English capitalisation.

    Openers that end in a space or comma ("So basically ", "Hi, ") run on into the next part.
    """
    joined: list[Segment] = []
    for part in parts:
        if joined:
            previous = "".join(text for text, _ in joined)
            runs_on = previous[-1].isspace() or previous.endswith(("，", "：", ","))
            if not runs_on and not _SENTENCE_END.search(previous):
                joined.append((_mark(previous, language, rng, final=False), None))
            if language == "en" and not joined[-1][0].endswith(" "):
                joined.append((" ", None))
            new_sentence = _SENTENCE_END.search("".join(t for t, _ in joined).rstrip())
            part = _recase_first(part, upper=new_sentence is not None)
        joined.extend(part)
    return joined


def _recase_first(part: list[Segment], upper: bool) -> list[Segment]:
    first, pii_type = part[0]
    if pii_type or not first[:1].isascii() or not first[:1].isalpha():
        return part
    if upper:
        first = first[0].upper() + first[1:]
    elif not re.match(r"I\b", first):
        first = first[0].lower() + first[1:]
    return [(first, pii_type), *part[1:]]


def intent_utterance(
    rng: np.random.Generator,
    intent: str,
    customer: Customer,
    channel: str,
    style: Style,
) -> list[Segment]:
    """The customer turn that carries ``intent``, with openings, context and closings."""
    language = customer.language
    phrases = _PHRASES[language]
    vague = vague_templates(intent, language)
    use_vague = bool(vague) and rng.random() < VAGUE_SHARE
    template = _pick(rng, vague if use_vague else TEMPLATES[intent][language])
    email = channel == "email"

    parts: list[list[Segment]] = []
    if email or rng.random() < style.politeness:
        parts.append(fill(_pick(rng, phrases["email_opening" if email else "opening"]),
                          rng, customer))
    if not email and rng.random() < 0.12:
        parts.append(fill(_pick(rng, phrases["intro"]), rng, customer))
    parts.append(fill(template, rng, customer))
    if rng.random() < style.chattiness:
        parts.append(fill(_pick(rng, phrases["context"]), rng, customer))
    if email:
        parts.append(fill(_pick(rng, phrases["email_closing"]), rng, customer))
    elif rng.random() < style.politeness * 0.6:
        parts.append(fill(_pick(rng, phrases["closing"]), rng, customer))
    segments = _sentence_join(parts, language, rng)
    text = "".join(t for t, _ in segments)
    if not email and not _SENTENCE_END.search(text) and rng.random() < 0.5:
        segments.append((_mark(text, language, rng, final=True), None))
    return segments


# ---------------------------------------------------------------------------- channel noise

_EN_ASR_CONFUSIONS = {
    "card": "car", "lost": "last", "bill": "build", "refund": "refined", "data": "beta",
    "roaming": "roman", "account": "a count", "cancel": "council", "order": "border",
    "plan": "plant", "sim": "sin", "charged": "charge", "want to": "wanna", "going to": "gonna",
    "transfer": "transfers", "statement": "state meant", "pin": "pen", "limit": "limited",
    "balance": "balanced", "abroad": "a broad", "blocked": "block", "coupon": "cue pawn",
    "invoice": "in voice", "cancelled": "canceled", "activate": "active eight",
    "exchange": "extreme", "upgrade": "up great", "wifi": "why fi", "receipt": "recede",
}
_EN_FILLERS = ("uh", "um", "so", "like", "you know", "yeah", "hmm", "okay so", "i mean")
_EN_MISSPELLINGS = {
    "received": "recieved", "definitely": "definately", "account": "acount",
    "transfer": "tranfer", "payment": "payemnt", "address": "adress", "cancel": "cancell",
    "tomorrow": "tommorow", "because": "becuase", "already": "allready", "password": "pasword",
    "delivery": "delivary", "please": "pls", "you": "u", "thanks": "thx", "your": "ur",
    "I'm": "im", "don't": "dont", "can't": "cant", "doesn't": "doesnt", "it's": "its",
    "what's": "whats", "I've": "ive", "didn't": "didnt", "immediately": "immediatly",
    "activate": "activte", "balance": "balence", "statement": "statment", "receipt": "reciept",
    "wrong": "wrnog", "card": "crad", "refund": "refudn", "order": "oder", "haven't": "havent",
    "money": "mony", "really": "realy", "received.": "recieved.",
}
_KEYBOARD_NEIGHBOURS = dict(zip(
    "qwertyuiopasdfghjklzxcvbnm",
    ("wa", "qes", "wrd", "etf", "ryg", "tuh", "yij", "uok", "ipl", "ol", "qsz", "awdx", "sefc",
     "drgv", "fthb", "gyjn", "hukm", "jil", "kop", "xas", "zcs", "xvd", "cbf", "vng", "bmh", "nj"),
    strict=True,
))
_ZH_ASR_CONFUSIONS = {
    "挂失": "挂湿", "流量": "流亮", "漫游": "慢游", "退款": "退宽", "账单": "帐单", "套餐": "套惨",
    "激活": "机活", "额度": "额渡", "冻结": "动结", "快递": "快地", "宽带": "宽待", "信号": "信好",
    "订单": "定单", "密码": "蜜码", "转账": "转帐", "优惠券": "优惠卷", "发票": "发飘",
}
_ZH_FILLERS = ("嗯", "那个", "就是", "然后", "呃", "啊", "就是说", "那个什么")
_ZH_TYPOS = {
    "在": "再", "再": "在", "的": "地", "已经": "已近", "账": "帐", "订单": "定单",
    "怎么": "怎摸", "什么": "神马", "没有": "没油", "收到": "收道", "一下": "一哈",
    "优惠券": "优惠卷", "帐": "账", "是不是": "是部是", "吗": "嘛",
}
_ZH_CODE_SWITCH = {
    "信用卡": "credit card", "银行卡": "bank card", "冻结": "freeze", "被锁": "被 block",
    "锁了": "block 了", "密码": "password", "订单": "order", "退款": "refund", "退货": "return",
    "账单": "bill", "套餐": "plan", "流量": "data", "漫游": "roaming", "转账": "transfer",
    "额度": "limit", "优惠券": "coupon", "优惠码": "promo code", "发票": "invoice",
    "登录": "login", "登不上": "login 不了", "账号": "account", "激活": "activate",
    "升级": "upgrade", "取消": "cancel", "查一下": "check 一下", "确认": "confirm",
    "物流信息": "tracking", "验证码": "code", "邮箱": "email", "快递": "快递 package",
    "截图": "screenshot", "退回": "refund", "到账": "到 account",
}
_ZH_PUNCT = "，。！？、：；,.!?~"


def _keyed_sub(text: str, table: dict[str, str], rate: float, rng, boundary: bool) -> str:
    """Replace each occurrence of a key of ``table`` with probability ``rate``, longest first."""
    keys = sorted(table, key=len, reverse=True)
    alternation = "|".join(re.escape(k) for k in keys)
    pattern = rf"\b({alternation})\b" if boundary else f"({alternation})"

    def replace(match: re.Match) -> str:
        return table[match.group(1)] if rng.random() < rate else match.group(1)

    return re.sub(pattern, replace, text)


def _insert_fillers(text: str, fillers: Sequence[str], rate: float, rng, sep: str) -> str:
    tokens = re.split(r"(\s+)", text)
    out = []
    for token in tokens:
        if token.strip() and rng.random() < rate:
            out.append(_pick(rng, fillers) + sep)
        out.append(token)
    return "".join(out)


def asr_en(text: str, rng: np.random.Generator, filler_rate: float = 0.06) -> str:
    """What a phone transcript looks like: lower case, no punctuation, misheard words, fillers."""
    text = re.sub(r"[,!?;:\"]|\.(?=\s|$)", "", text.lower())
    text = _keyed_sub(text, _EN_ASR_CONFUSIONS, 0.15, rng, boundary=True)
    text = _insert_fillers(text, _EN_FILLERS, filler_rate, rng, " ")
    return re.sub(
        r"\b(i|my|the|it|we)\b(?= )",
        lambda m: m.group(1) + (" " + m.group(1) if rng.random() < filler_rate else ""),
        text,
    )


def asr_zh(text: str, rng: np.random.Generator, filler_rate: float = 0.3) -> str:
    """A Chinese phone transcript: no punctuation, homophone errors, 嗯/那个/就是 fillers."""
    text = _keyed_sub(text, _ZH_ASR_CONFUSIONS, 0.15, rng, boundary=False)
    pieces = re.split(f"[{_ZH_PUNCT}]+", text)
    for i in range(1, len(pieces)):
        if pieces[i] and rng.random() < filler_rate:
            pieces[i] = _pick(rng, _ZH_FILLERS) + pieces[i]
    return " ".join(pieces)


def _char_typo(word: str, rng: np.random.Generator) -> str:
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(4))
    if kind == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind == 1:
        return word[:i] + word[i + 1 :]
    if kind == 2:
        return word[:i] + word[i] + word[i:]
    neighbours = _KEYBOARD_NEIGHBOURS.get(word[i].lower())
    return word[:i] + _pick(rng, neighbours) + word[i + 1 :] if neighbours else word


def typos_en(text: str, rng: np.random.Generator, rate: float) -> str:
    """Typing slips: common misspellings, texting shorthand and fat-finger errors."""
    tokens = re.split(r"(\s+)", text)
    for i, token in enumerate(tokens):
        if not token.strip() or rng.random() >= rate:
            continue
        if token in _EN_MISSPELLINGS:
            tokens[i] = _EN_MISSPELLINGS[token]
        elif len(token) > 3 and token.isalpha():
            tokens[i] = _char_typo(token, rng)
    return "".join(tokens)


def typos_zh(text: str, rng: np.random.Generator, rate: float) -> str:
    """Pinyin input slips (homophones picked by mistake) and half-width punctuation."""
    text = _keyed_sub(text, _ZH_TYPOS, rate, rng, boundary=False)
    if rng.random() < rate * 4:
        text = text.replace("，", ",").replace("？", "?")
    return text


def code_switch(text: str, rng: np.random.Generator, rate: float) -> str:
    """Mix English into Chinese the way bilingual customers do (我的 credit card 被 block 了)."""
    table = {k: f" {v} " for k, v in _ZH_CODE_SWITCH.items()}
    return _keyed_sub(text, table, rate, rng, boundary=False)


def _tidy(text: str, language: str) -> str:
    text = re.sub(r"\s{2,}", " ", text).strip()
    if language == "zh":
        text = re.sub(r"\s*([，。！？：；])\s*", r"\1", text)
    return text


def _noisy(
    segments: list[Segment], language: str, channel: str, style: Style, customer_turn: bool, rng
) -> list[Segment]:
    casual = customer_turn and channel in ("chat", "app") and rng.random() < style.typo_rate * 6
    out = []
    for text, pii_type in segments:
        if pii_type is None:
            if language == "zh" and customer_turn:
                text = code_switch(text, rng, style.code_switch)
            if channel == "phone":
                fillers = 1.0 if customer_turn else 0.0
                if language == "zh":
                    text = asr_zh(text, rng, 0.3 * fillers)
                else:
                    text = asr_en(text, rng, 0.04 * fillers)
            elif customer_turn:
                rate = style.typo_rate / (3 if channel == "email" else 1)
                if language == "zh":
                    text = typos_zh(text, rng, rate)
                else:
                    text = typos_en(text, rng, rate)
                    if casual:
                        text = text.lower()
        out.append((text, pii_type))
    if channel == "phone" and customer_turn and language == "zh" and rng.random() < 0.3:
        out.insert(0, (_pick(rng, _ZH_FILLERS), None))
    return out


# ---------------------------------------------------------------------------- dialogue

_BRANDS = {
    "en": {"banking": ("Northbridge Bank", "Harbor Trust"), "telecom": ("Skylink Mobile", "Volt"),
           "ecommerce": ("ShopNow", "Cartwheel")},
    "zh": {"banking": ("华信银行", "汇通银行"), "telecom": ("云通移动", "天联通信"),
           "ecommerce": ("优品商城", "惠购网")},
}
_GREETINGS = {
    "en": {
        "voice": ("Thank you for calling {brand}, how can I help you today?",
                  "Good morning, {brand} customer service, how may I help?",
                  "Hi, you're through to {brand}. What can I do for you?"),
        "typed": ("Hi! Welcome to {brand} support. How can I help you today?",
                  "Hello, thanks for reaching out to {brand}. What can I help with?",
                  "Hi there, you're chatting with the {brand} team. How can we help?"),
    },
    "zh": {
        "voice": ("您好，{brand}客服中心，请问有什么可以帮您？",
                  "您好，很高兴为您服务，请问您要办理什么业务？",
                  "您好，这里是{brand}，请问有什么可以帮到您？"),
        "typed": ("亲，您好，{brand}客服很高兴为您服务~",
                  "您好，欢迎咨询{brand}，请问有什么可以帮您？",
                  "您好，在的，请问有什么可以帮您？"),
    },
}
_SMALLTALK = {
    "en": (
        ("Hi, how are you doing today?", "I'm doing well, thanks for asking! How can I help?"),
        ("Hello? Can you hear me okay?", "Yes, I can hear you fine. How can I help?"),
        ("Finally! I've been on hold for ages.", "I'm so sorry about the wait. How can I help?"),
        ("Hi there, hope you're having a good day.", "Thank you, you too! What can I do for you?"),
        ("Hey, quick question if you have a minute.", "Of course, go ahead."),
        ("Hi, my name is {name}.", "Nice to meet you. How can I help today?"),
        ("Sorry, it's a bit noisy here, I'm on the street.", "No problem, take your time."),
    ),
    "zh": (
        ("喂，你好，听得到吗？", "您好，听得到的，请问有什么可以帮您？"),
        ("终于打通了，排了好久的队。", "非常抱歉让您久等了，请问有什么可以帮您？"),
        ("你好，在吗？", "在的，请问有什么可以帮您？"),
        ("你好，我是{name}。", "您好，请问有什么可以帮您？"),
        ("你好，想咨询点事情。", "您好，请讲。"),
        ("不好意思，我这边有点吵。", "没关系，您慢慢说。"),
    ),
}
_VERIFICATION = {
    "en": {
        "banking": (
            ("For security, can I have your full name and the phone number on the account?",
             ("Sure, it's {name}, and the number is {phone}.", "{name}. Phone is {phone}.",
              "yeah it's {name}, {phone}")),
            ("Could you confirm your account number please?", ("It's {account}.", "{account}")),
            ("Can you confirm the email address we have on file?",
             ("{email}", "It should be {email}.")),
        ),
        "telecom": (
            ("Can I have the mobile number in question?", ("It's {phone}.", "{phone}")),
            ("Could I get the account holder's name and account number?",
             ("{name}, account {account}.", "It's under {name}. Account number {account}.")),
            ("Can you confirm the address on the account?", ("{address}", "It's {address}.")),
        ),
        "ecommerce": (
            ("Can I have your order number please?",
             ("It's {order}.", "Sure, {order}", "order number {order}")),
            ("What's the email on your account?", ("{email}", "It's {email}.")),
            ("Can you confirm the delivery address?", ("{address}", "It's {address}.")),
        ),
    },
    "zh": {
        "banking": (
            ("为了核实身份，请提供一下您的姓名和身份证号码。",
             ("{name}，身份证{id}", "我叫{name}，身份证号是{id}")),
            ("请问您预留的手机号是多少？", ("{phone}", "手机号{phone}")),
            ("麻烦提供一下您的账号。", ("{account}", "账号是{account}")),
        ),
        "telecom": (
            ("请问是哪个号码要办理？", ("就是{phone}", "{phone}这个号")),
            ("请提供一下机主姓名和身份证号码。", ("{name}，{id}", "{name}，身份证号{id}")),
            ("请问装机地址是哪里？", ("{address}", "地址是{address}")),
        ),
        "ecommerce": (
            ("麻烦提供一下订单号。", ("{order}", "订单号是{order}")),
            ("请问收货地址和电话是？", ("{address}，电话{phone}", "{address}，{phone}")),
            ("请问账号绑定的邮箱是多少？", ("{email}", "邮箱是{email}")),
        ),
    },
}
_TELL_ME_MORE = {
    "en": ("Could you tell me a bit more about that?", "Sorry, can you explain a little more?",
           "Okay, and what exactly happened?"),
    "zh": ("您能具体说一下情况吗？", "不好意思，能再详细描述一下吗？", "好的，具体是什么情况呢？"),
}
_RESOLUTION = {
    "en": ("Thanks, I've got your details up. Let me look into this for you.",
           "Okay, I've made a note on the account and you'll get a confirmation by text shortly.",
           "Alright, that's sorted. Is there anything else I can help with?",
           "I understand. I'm passing this to the right team and they'll contact you in 48 hours."),
    "zh": ("好的，已经帮您查到了，请稍等。", "好的，已经为您登记，稍后会有短信通知您。",
           "已经为您处理好了，请问还有其他可以帮您的吗？",
           "理解您的心情，这边帮您升级处理，48小时内会有专人联系您。"),
}
_CUSTOMER_THANKS = {
    "en": ("Great, thank you.", "Okay thanks a lot.", "No that's everything, thanks.",
           "Cool, appreciate it.", "How long will that take?", "ok"),
    "zh": ("好的，谢谢。", "行，麻烦了。", "没有了，谢谢。", "那要多久？", "好的好的。", "嗯嗯"),
}
_AGENT_GOODBYE = {
    "en": ("You're welcome, have a great day!", "Thanks for contacting us. Bye!"),
    "zh": ("不客气，祝您生活愉快，再见！", "感谢您的来电，再见。", "亲，还有问题随时找我们哦~"),
}
_EMAIL_REPLY = {
    "en": ("Dear customer, thank you for your email. We have received your request and will "
           "respond within 2 business days.",),
    "zh": ("尊敬的客户您好，您的邮件已收到，我们会在2个工作日内回复。",),
}


def _say(rng, options: Sequence[str], customer: Customer) -> list[Segment]:
    return fill(_pick(rng, options), rng, customer)


def make_conversation(
    rng: np.random.Generator,
    conversation_id: str,
    customer: Customer,
    intent: str,
    channel: str,
    timestamp: str,
    style: Style,
) -> dict:
    """A full conversation record (the JSONL schema) whose ``intent_turn`` carries ``intent``."""
    language = customer.language
    domain = domain_of(intent)
    customer = _with_new_order(customer, rng)
    turns: list[tuple[str, list[Segment]]] = []
    voice_or_typed = "voice" if channel == "phone" else "typed"

    if channel != "email":
        if rng.random() < 0.7:
            greeting = _pick(rng, _GREETINGS[language][voice_or_typed])
            brand = _pick(rng, _BRANDS[language][domain])
            turns.append(("agent", [(greeting.replace("{brand}", brand), None)]))
        if rng.random() < style.smalltalk:
            said, answered = _pick(rng, _SMALLTALK[language])
            turns.append(("customer", fill(said, rng, customer)))
            turns.append(("agent", [(answered, None)]))
    intent_turn = len(turns)
    turns.append(("customer", intent_utterance(rng, intent, customer, channel, style)))

    if channel == "email":
        if rng.random() < 0.5:
            turns.append(("agent", [(_pick(rng, _EMAIL_REPLY[language]), None)]))
    else:
        _follow_up(rng, turns, intent, customer, domain)

    records, planted = [], []
    for index, (speaker, segments) in enumerate(turns):
        noisy = _noisy(segments, language, channel, style, speaker == "customer", rng)
        records.append({"speaker": speaker, "text": _tidy("".join(t for t, _ in noisy), language)})
        planted.extend(
            {"turn": index, "type": pii_type, "value": text}
            for text, pii_type in noisy
            if pii_type is not None
        )
    return {
        "conversation_id": conversation_id,
        "customer_id": customer.customer_id,
        "timestamp": timestamp,
        "channel": channel,
        "language": language,
        "turns": records,
        "intent": intent,
        "intent_turn": intent_turn,
        "pii": planted,
    }


def _with_new_order(customer: Customer, rng: np.random.Generator) -> Customer:
    """Each conversation is about its own order; the rest of the identity stays the same."""
    fields = dict(customer.__dict__, order=pii.order_number(rng))
    return Customer(**fields)


def _follow_up(rng, turns: list, intent: str, customer: Customer, domain: str) -> None:
    language = customer.language
    if rng.random() < 0.3:
        turns.append(("agent", [(_pick(rng, _TELL_ME_MORE[language]), None)]))
        turns.append(("customer", fill(_pick(rng, TEMPLATES[intent][language]), rng, customer)))
    if rng.random() < 0.6:
        question, answers = _pick(rng, _VERIFICATION[language][domain])
        turns.append(("agent", [(question, None)]))
        turns.append(("customer", _say(rng, answers, customer)))
    if rng.random() < 0.6:
        turns.append(("agent", [(_pick(rng, _RESOLUTION[language]), None)]))
        if rng.random() < 0.7:
            turns.append(("customer", _say(rng, _CUSTOMER_THANKS[language], customer)))
            if rng.random() < 0.5:
                turns.append(("agent", [(_pick(rng, _AGENT_GOODBYE[language]), None)]))
