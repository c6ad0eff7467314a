"""Chinese personal names and street addresses, found by rules.

A Chinese name has no checkable structure, and most surnames are also ordinary characters
(周末, 马上, 高兴, 余额), so a surname alone is never enough: a name is found only with a
context cue (我叫, 姓名, 联系人 ...), a title after it (先生, 女士, 经理 ...), or standing
alone as a whole clause next to other PII ("张伟，138..."); the weaker of these also need
given characters common in names ("我是路人" stays). Addresses are found as a chain
of at least two components (省/市/区/县, 镇/街道/村, 路/街/巷, 小区/大厦, 号/栋/单元/室).
docs/REDACTION.md lists the rules, the measured precision and recall, and the known misses.

The rules hold Simplified characters; Traditional text (Taiwan, Hong Kong) is read through
``simplified``, one character for one, so the spans found point into the text as written.

``find_zh_pii`` is called by ``fl_client.redaction.find_pii`` on text in which earlier
detectors' findings are already blanked with ``PII_MASK``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from opencc import OpenCC

PII_MASK = "\x00"
_NAME_MASK = "\x01"
_MAX_ROUNDS = 4

_HAN = "\u3400-\u4dbf\u4e00-\u9fff"
_HAN_CHAR = re.compile(f"[{_HAN}]")


@lru_cache(maxsize=1)
def _traditional_to_simplified() -> OpenCC:
    return OpenCC("t2s")


@lru_cache(maxsize=65536)
def _simplified_char(char: str) -> str:
    converted = _traditional_to_simplified().convert(char)
    return converted if len(converted) == 1 else char


def simplified(text: str) -> str:
    """``text`` with each Traditional Han character replaced by its Simplified form (OpenCC's
    table), character for character: the same length, so every offset found in it is an offset
    into ``text`` (found in review: 陳先生 and 台北市大安區... were left as written)."""
    return "".join(_simplified_char(char) if "\u3400" <= char <= "\u9fff" else char
                   for char in text)


def _words(text: str) -> tuple[str, ...]:
    """Whitespace-separated word lists keep the vocabulary below readable."""
    return tuple(text.split())


# Common single-character surnames (241: roughly the most frequent in the PRC), minus a few
# that are far more often ordinary words than names (和 时 明 成 全 应 商 师 单 解 车 麻 于).
_SINGLE_SURNAMES = frozenset(
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘蒋蔡余杜叶"
    "程苏魏吕丁任沈姚卢姜崔钟谭陆汪范金石廖贾夏韦付傅方白邹孟熊秦邱江尹薛闫阎段雷侯龙史陶"
    "黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤常温康施文牛樊葛邢安齐易乔伍庞颜倪庄聂章鲁岳翟殷"
    "詹申欧耿关兰焦俞左柳甘祝包宁尚符舒阮柯纪梅童凌毕季裴霍涂苗谷盛曲翁冉骆蓝路游辛靳"
    "管柴蒙鲍华喻祁蒲房滕屈饶牟艾尤阳穆农卓古吉缪简项连芦麦褚娄窦戚岑景党宫费卜冷晏席"
    "卫米柏宗瞿桂佟臧闵苟邬边卞姬仇栾隋刁沙荣巫寇桑郎甄丛仲虞敖巩佘池查苑迟邝"
)
_COMPOUND_SURNAMES = _words(
    "欧阳 司马 诸葛 上官 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 令狐 夏侯 "
    "端木 独孤 南宫 西门 轩辕 呼延 百里 东郭 闻人 澹台 万俟 申屠 钟离 赫连 "
    "拓跋 司空 太史 公冶"
)

# Characters common in given names, from general knowledge of Chinese naming (not from any
# generator). Rules with weaker evidence (我是, 叫, 客户, 我妈, a clause next to a phone
# number) take only these; a naming cue (我叫, 姓名) or a title takes any character.
_COMMON_GIVEN = frozenset(
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉萍红玲芬燕鹏辉建国文斌宇浩凯俊峰婷"
    "雪琳晶慧颖倩欣佳怡梅兰鑫博晨阳昊轩涵子梓睿思雨嘉诗一可晓志海春东波林宁成新亮飞彬鸿"
    "龙云翔帆旭达生荣福祥德光永庆兵利清金立民学正宏振松元江良长家和宝兴安忠义胜坤泽航哲"
    "铭宸皓然逸凡鹤琪瑶璐露薇蕾莹菲洁悦妍彤馨岚珊月冰晴蓉琴莉淑珍凤菊翠香君丹青美花群爱"
    "素秋冬夏毅卫威武健锋瑞祺琦璇瑾璟弘泓源渊沛沁潇瀚晗曦昕暄晖煜炜烨焱熙灿若茜芸芷蔓萱"
    "蕊菁蓓苗茹芝敬朋小大天乐心喜远山川庭楠柏森桐楷鸣少中世宗承继仁礼智信孝贤善淳雅婉"
    "娴媛婧姗妮娅婕娇妙星辰昭晋景晟昌盛隆兆顺吉寿富贵发旺珠瑛琼瑜环虹彩雯霖霜泉溪湘漫"
    "洪汉军国红卫东方晶亚莉琪蕾佩瑾欢笑宜嫣媛颖萌蒙晔彦炎焕煊烁耀锦钰铮锐钧镇铁刚毅勤"
    "俭诚实朗明亮峻岩峥嵘崇岳峰巍奇杰豪雄伦仲伯叔季孟昆仑琨珏璋瑄玮璞珉玥玲珑"
)

# Characters that end a name: particles, pronouns, common verbs. None is a given name.
_NOT_GIVEN = frozenset(
    "的了是在和与跟给说叫要想就也都还又很不没有个这那吗呢吧啊呀哦嗯哈啦嘛么们我你他她它您"
    "把被让请帮用到从对往去来过着本姓号码电话卡账帐地址等已会能再打办查问谢收发寄送住怎什哪谁"
)
# Words that begin with a surname character but are not names, including provinces, cities
# and brands. An occurrence blocks a name over its characters ("谢谢王先生" finds 王).
_NOT_NAMES = _words(
    "周末 周一 周二 周三 周四 周五 周六 周日 周年 周围 周到 周期 周边 马上 马路 马虎 高兴 高中 "
    "高速 高铁 高级 高端 高峰 高温 高清 高价 高额 余额 余下 金额 金融 金卡 金色 黄金 黄色 万一 "
    "万元 万块 万多 万能 万达 万科 安全 安装 安排 安心 安静 安卓 方便 方法 方式 方面 方案 方向 "
    "白天 白金 白色 白条 张开 张贴 李子 江湖 程序 许多 许可 何时 何必 何况 夏天 常常 常用 常规 "
    "常见 谢谢 陆续 钱包 钱款 毛病 石头 石油 包括 包裹 包月 包年 包邮 龙头 关于 关心 关闭 关注 "
    "关系 关机 关门 温馨 温度 康复 施工 牛奶 齐全 易用 宁可 尚未 符合 舒服 童年 凌晨 毕业 季度 "
    "管理 柴油 华为 路上 路口 路费 游戏 游客 辛苦 项目 连续 连接 费用 费心 冷静 卫生 米饭 高考 "
    "沙发 荣幸 文件 文字 文化 向上 向下 付款 付费 任何 任务 任意 严重 严格 武器 颜色 章节 申请 "
    "申报 欧元 祝福 祝贺 左边 左右 贺卡 顾客 顾问 焦急 岳父 岳母 雷达 史上 陶瓷 党员 宫颈 "
    "简单 简直 景区 景点 邮件 蓝色 蓝牙 古代 吉利 古董 秦朝 熊猫 孔雀 汤圆 苗条 谷歌 卜卦 "
    "东方航空 康师傅 王府井 王者 苏宁 "
    "江西 江苏 浙江 黑龙江 吉林 安徽 湖南 湖北 河南 河北 山东 山西 广东 广西 云南 贵州 四川 "
    "福建 甘肃 青海 陕西 宁夏 新疆 西藏 海南 台湾 香港 澳门 重庆 武汉 常州 温州 金华 宁波 "
    "石家庄 郑州 许昌 周口 黄山 黄冈 万州 吉安 龙岩 梅州 韶关 江门 汕头 柳州 桂林 南宁 洛阳 "
    "徐州 连云港 邯郸 包头 鞍山 秦皇岛 唐山 潍坊 烟台 邢台 焦作 岳阳 常德 邵阳 曲靖 昆明 "
    "兰州 宁德 莆田 泉州 漳州 江阴 昆山 苏州 杭州 广州 福州 贵阳 长沙 成都",
)

_TITLES = _words(
    "先生 女士 小姐 太太 夫人 经理 老师 医生 大夫 律师 主任 师傅 阿姨 同学 "
    "老板 教授 博士 警官 处长 科长 局长 院长 校长 总监 总经理 书记 会计 本人 "
    "名下 敬上 谨上 拜上 收"
)
_SIGN_OFF_MARKERS = _words("敬上 谨上 拜上 收")
# A cue right before a name; STRONG cues take the name's usual length, WEAK ones only a
# name that ends at a clear boundary ("我是张伟，" but not "我是王府井店的").
_STRONG_CUES = _words(
    "我叫 名叫 叫做 姓名 名字 全名 本人 机主 户主 户名 持卡人 联系人 收件人 "
    "收货人 寄件人 签收人 申请人 开户人 投保人 被保险人 被保人 受益人 监护人 "
    "经办人 代理人 客户 用户 业主 车主 持有人 代办人 办理人 账户人 收款人 付款人 转账给"
)
# Cues that introduce a name and nothing else ("客户" may precede "高考完了").
_NAMING_CUES = _words("我叫 名叫 叫做 姓名 名字 全名 户名")
_WEAK_CUES = _words("我是 我就是 这里是 这边是 叫")
# A relative or friend named next: only a full three-character name that ends at a clear
# boundary counts ("我儿子韦子轩今年..."), since verbs follow these words too ("我爸付了").
_KIN_CUES = _words(
    "我妈 我爸 我妈妈 我爸爸 我母亲 我父亲 我老婆 我老公 我爱人 我妻子 我丈夫 我儿子 "
    "我女儿 我哥 我姐 我弟 我妹 我哥哥 我姐姐 我弟弟 我妹妹 我朋友 我同事 我外婆 我外公 "
    "我奶奶 我爷爷 我婆婆 我公公 我岳母 我岳父"
)
_CUE_LINKS = ("是", "为", "叫", "：", ":")
# Spaces may follow a cue and its link, as forms and CRM notes write it: "姓名: 张伟".
_CUE_SPACES = "[ \t\u3000]*"
_SIGN_OFF_BEFORE = _words("此致 敬礼 谢谢 多谢 感谢 祝好 盼复 商祺 顺颂")
_FIELD_WORDS = _words("身份证 证件 手机 电话 联系方式 卡号 账号 帐号 邮箱 地址 住址 微信")

# --- addresses ---
_ADDRESS_STOP = "的是在到住往寄送址我你他她您们了把给从去来为请帮烦就要想说个这那吗呢吧啊呀"
_ADDRESS_SUFFIX_CHARS = "省市区县号室栋幢层弄路街巷镇乡村道"


def _han_class_without(excluded: str) -> str:
    """A regex class of Han characters minus ``excluded``: one class, no per-char lookahead."""
    ranges = []
    for low, high in ((0x3400, 0x4DBF), (0x4E00, 0x9FFF)):
        start = low
        for code in sorted({ord(char) for char in excluded if low <= ord(char) <= high}):
            if start < code:
                ranges.append(f"{chr(start)}-{chr(code - 1)}")
            start = code + 1
        if start <= high:
            ranges.append(f"{chr(start)}-{chr(high)}")
    return "[" + "".join(ranges) + "]"


_PLACE = _han_class_without(_ADDRESS_STOP + _ADDRESS_SUFFIX_CHARS)
# Every component ends in one of these; text without any of them holds no address.
_ADDRESS_HINT = re.compile("[省市区县州盟旗镇乡村道路街巷同苑园厦场寓楼庄馆庭号栋幢座元室弄层房]")
_NUM = (
    r"(?:[甲乙丙丁]?[0-9０-９]{1,5}(?:[-－][0-9０-９]{1,5}){0,2}"
    r"|(?<![A-Za-z])[A-Za-zＡ-Ｚａ-ｚ]|[一二三四五六七八九十百零〇两]{1,4})"
)
_ADDRESS_COMPONENT = re.compile(
    rf"(?P<admin>{_PLACE}{{2,4}}(?:自治区|特别行政区)|{_PLACE}{{2,3}}省"
    rf"|{_PLACE}{{1,4}}(?:市|州(?!大道|大街|路|街|巷)|盟)|{_PLACE}{{1,4}}(?:新区|(?<![小社])区|县|旗))"
    rf"|(?P<town>{_PLACE}{{1,4}}(?:街道|镇|乡|村|社区))"
    rf"|(?P<road>{_PLACE}{{1,6}}(?:大道|大街|路|街|巷|胡同)(?:[东西南北中一二三四五六七八九十]段|[东西南北中](?=[0-9０-９]))?)"
    rf"|(?P<estate>{_PLACE}{{2,6}}(?:小区|花园|公寓|大厦|广场|家园|新村|苑|大楼|山庄|公馆|华庭))"
    rf"|(?P<unit>(?<![0-9０-９]){_NUM}(?:号院|号楼|栋|幢|座|单元|室)"
    rf"(?:[0-9０-９]{{2,5}}(?![0-9０-９号室栋幢楼层座单弄房]))?)"
    rf"|(?P<number>(?<![0-9０-９]){_NUM}(?:号(?![线码])|弄|楼|层|房))"
)
_ADDRESS_GAP = re.compile(r"[ \u3000]?")
# 成 cannot be a stop character (成都), so "改成西安市..." would start the address at 改.
_ADDRESS_LEADS = _words("改成 换成 变成 写成")

_PII_TOKEN = re.compile(r"\[(?:PHONE|ID|CARD|EMAIL|IP|URL|NUMBER|ADDRESS)\]")
_NAME_TOKEN = re.compile(r"\[NAME\]")
_CLAUSE = re.compile(f"[{_HAN}]+")


def find_zh_pii(text: str) -> list[tuple[int, int, str]]:
    """(start, end, kind) for Chinese addresses and names, sorted and non-overlapping.

    Rules run to a fixed point on text where each finding is blanked, and an earlier
    placeholder such as ``[PHONE]`` reads the same as a blanked finding, so running this
    again on redacted text finds nothing new: redaction stays idempotent.
    """
    if not _HAN_CHAR.search(text):
        return []
    work = simplified(text)
    if "[" in work:
        work = _PII_TOKEN.sub(lambda m: PII_MASK * len(m.group()), work)
        work = _NAME_TOKEN.sub(lambda m: _NAME_MASK * len(m.group()), work)
    found: list[tuple[int, int, str]] = []
    for _ in range(_MAX_ROUNDS):
        addresses = _find_addresses(work)
        work = blank_spans(work, addresses, PII_MASK)
        names = _find_names(work)
        work = blank_spans(work, names, _NAME_MASK)
        found += [(s, e, "ADDRESS") for s, e in addresses] + [(s, e, "NAME") for s, e in names]
        if not addresses and not names:
            break
    return sorted(found)


def blank_spans(text: str, spans: list[tuple[int, int]], mask: str) -> str:
    """Mask sorted, non-overlapping (start, end) spans, keeping offsets, so later detectors
    cannot match inside them; one pass, so linear in the text. ``fl_client.redaction`` masks
    its own findings with it too."""
    if not spans:
        return text
    parts, position = [], 0
    for start, end in spans:
        parts += [text[position:start], mask * (end - start)]
        position = end
    parts.append(text[position:])
    return "".join(parts)


# --- addresses ------------------------------------------------------------------------


def _find_addresses(text: str) -> list[tuple[int, int]]:
    """Chains of adjacent components that are specific enough to locate a home or office."""
    if not _ADDRESS_HINT.search(text):
        return []
    spans = []
    chain: list[re.Match[str]] = []
    for match in _ADDRESS_COMPONENT.finditer(text):
        if chain and _ADDRESS_GAP.fullmatch(text, chain[-1].end(), match.start()):
            chain.append(match)
            continue
        if _is_address(chain):
            spans.append(_address_span(text, chain))
        chain = [match]
    if _is_address(chain):
        spans.append(_address_span(text, chain))
    return spans


def _address_span(text: str, chain: list[re.Match[str]]) -> tuple[int, int]:
    start = chain[0].start()
    for lead in _ADDRESS_LEADS:
        if text.startswith(lead, start) and start + len(lead) < chain[0].end() - 1:
            start += len(lead)
    return start, chain[-1].end()


def _is_address(chain: list[re.Match[str]]) -> bool:
    """Two components with a street, estate or village among them; or a building and a
    room ("3栋502室"); or three administrative levels ("河南省周口市鹿邑县"). A city and a
    district alone ("北京市朝阳区") locate no one and stay."""
    if len(chain) < 2:
        return False
    kinds = [match.lastgroup for match in chain]
    if any(kind in ("road", "estate", "town") for kind in kinds):
        return True
    if "unit" in kinds and kinds.count("unit") + kinds.count("number") >= 2:
        return True
    return kinds.count("admin") >= 3


# --- names ------------------------------------------------------------------------------


def _find_names(text: str) -> list[tuple[int, int]]:
    if not _SURNAME_CHAR.search(text):
        return []
    blocked = _blocked_positions(text)
    spans = _after_cues(text, blocked) + _before_titles(text, blocked)
    spans += _after_surname_word(text, blocked) + _standalone_clauses(text, blocked)
    return _merge(spans)


def _blocked_positions(text: str) -> set[int]:
    blocked: set[int] = set()
    for match in _NOT_NAMES_PATTERN.finditer(text):
        blocked.update(range(match.start(), match.end()))
    return blocked


_SURNAME_CHAR = re.compile(
    "[" + "".join(sorted(_SINGLE_SURNAMES | {name[0] for name in _COMPOUND_SURNAMES})) + "]"
)
_NOT_NAMES_PATTERN = re.compile("|".join(sorted(_NOT_NAMES, key=len, reverse=True)))
_CUE_PATTERN = re.compile(
    "(?P<cue>"
    + "|".join(sorted(_STRONG_CUES + _WEAK_CUES + _KIN_CUES, key=len, reverse=True))
    + ")"
    "(?:" + "|".join(map(re.escape, _CUE_LINKS)) + ")?" + _CUE_SPACES
)
_TITLE_PATTERN = re.compile("|".join(sorted(_TITLES, key=len, reverse=True)))
_SURNAME_WORD = re.compile("姓")


def _surname_length(text: str, start: int) -> int:
    """2 for a compound surname at ``start``, 1 for a single one, 0 for none."""
    if text[start : start + 2] in _COMPOUND_SURNAMES:
        return 2
    return 1 if start < len(text) and text[start] in _SINGLE_SURNAMES else 0


def _is_given_char(text: str, position: int, blocked: set[int]) -> bool:
    return (
        position < len(text)
        and _HAN_CHAR.match(text[position]) is not None
        and text[position] not in _NOT_GIVEN
        and position not in blocked
        and not _TITLE_PATTERN.match(text, position)
    )


def _ends_name(text: str, position: int, blocked: set[int]) -> bool:
    """A name may end here: end of text, a non-Han character, a particle, a title, or a
    common word ("张伟明天" is 张伟 + 明天)."""
    if position >= len(text) or _HAN_CHAR.match(text[position]) is None:
        return True
    return (
        text[position] in _NOT_GIVEN
        or position in blocked
        or _NAME_END_WORD.match(text, position) is not None
    )


_TIME_WORDS = _words(
    "今天 明天 昨天 后天 前天 上午 下午 晚上 早上 中午 现在 刚才 已经 一直 "
    "一下 今年 去年 明年 上周 下周 上次 之前"
)


def _name_at(
    text: str, start: int, blocked: set[int], strict: bool, cued: bool = False, common: bool = False
) -> int:
    """End of a surname + one or two given characters starting at ``start``, or 0.

    With ``common``, given characters must be ones common in given names (_COMMON_GIVEN), so
    "我是路人" and "客户林业局" are not names.

    After a naming cue a three-character name may run through a common word ("我叫黄金凤，"),
    if it ends at a clear boundary; two characters never do ("姓名余额，" stays).
    """
    end = _plain_name_at(text, start, blocked, strict, common)
    if end or not cued:
        return end
    end = _plain_name_at(text, start, set(), strict=True, common=common)
    surname = _surname_length(text, start)
    if end - start - surname == 2 and _ends_name(text, end, blocked):
        return end
    return 0


def _plain_name_at(text: str, start: int, blocked: set[int], strict: bool, common: bool) -> int:
    surname = _surname_length(text, start)
    if not surname or any(p in blocked for p in range(start, start + surname)):
        return 0
    given_start = start + surname
    given = 0
    while given < 2 and _is_given_char(text, given_start + given, blocked):
        if common and text[given_start + given] not in _COMMON_GIVEN:
            break
        given += 1
    if given == 0:
        return 0
    if given == 2 and not _ends_name(text, given_start + 2, blocked):
        if _ends_name(text, given_start + 1, blocked):
            given = 1
        elif strict:
            return 0
    end = given_start + given
    if strict and not _ends_name(text, end, blocked):
        return 0
    return end


def _after_cues(text: str, blocked: set[int]) -> list[tuple[int, int]]:
    spans = []
    for cue in _CUE_PATTERN.finditer(text):
        word = cue.group("cue")
        strict = word not in _STRONG_CUES
        naming = word in _NAMING_CUES
        end = _name_at(text, cue.end(), blocked, strict, cued=naming, common=not naming)
        if word in _KIN_CUES and end - cue.end() - _surname_length(text, cue.end()) != 2:
            continue
        if end:
            spans.append((cue.end(), end))
    return spans


def _before_titles(text: str, blocked: set[int]) -> list[tuple[int, int]]:
    """王先生, 张伟女士, 欧阳娜娜经理, 詹国强 敬上: the title fixes where the name ends.

    Of the surname + 0-2 given characters that fit before the title, take the longest one
    with a boundary before it, else the shortest with a given name ("联系张伟先生" gives 张伟,
    not 系张伟; "联系张华先生" gives 张华, not 华, a surname too: found by mutation testing,
    the surname was left readable), else the surname alone."""
    spans = []
    for title in _TITLE_PATTERN.finditer(text):
        end = title.start()
        if title.group() == "收" and text[title.end() : title.end() + 1].strip(_SEPARATORS):
            continue  # 张伟收 on an envelope, not 高收入
        if title.group() in _SIGN_OFF_MARKERS and end > 0 and text[end - 1] in " \u3000":
            end -= 1
        if end in blocked or title.start() in blocked:
            continue
        candidates = [
            start
            for start in range(max(0, end - 4), end)
            if _fits_before_title(text, start, end, blocked)
        ]
        # 司马俊先生: 马俊 also fits, but 马 here is the second half of a compound surname.
        candidates = [
            start
            for start in candidates
            if not (start - 1 in candidates and text[start - 1 : start + 1] in _COMPOUND_SURNAMES)
        ]
        if not candidates:
            continue
        bounded = [start for start in candidates if _starts_after_boundary(text, start, blocked)]
        if title.group() == "收" and not bounded:
            continue  # "，张伟收" but not "按漫游收"
        named = [start for start in candidates if end - start > _surname_length(text, start)]
        spans.append((min(bounded) if bounded else max(named or candidates), end))
    return spans


def _fits_before_title(text: str, start: int, end: int, blocked: set[int]) -> bool:
    surname = _surname_length(text, start)
    if not surname or any(p in blocked for p in range(start, end)):
        return False
    given = end - start - surname
    return 0 <= given <= 2 and all(
        _is_given_char(text, position, blocked) for position in range(start + surname, end)
    )


def _starts_after_boundary(text: str, start: int, blocked: set[int]) -> bool:
    if start == 0:
        return True
    before = text[start - 1]
    if _HAN_CHAR.match(before) is None or before in _NOT_GIVEN or (start - 1) in blocked:
        return True
    return any(text.endswith(cue, 0, start) for cue in _STRONG_CUES + _WEAK_CUES + _CUE_LINKS)


def _after_surname_word(text: str, blocked: set[int]) -> list[tuple[int, int]]:
    """我姓王, 免贵姓欧阳: only the surname is said, and it is still personal."""
    spans = []
    for match in _SURNAME_WORD.finditer(text):
        start = match.end()
        surname = _surname_length(text, start)
        if surname and start not in blocked and _ends_name(text, start + surname, blocked):
            spans.append((start, start + surname))
    return spans


def _standalone_clauses(text: str, blocked: set[int]) -> list[tuple[int, int]]:
    """A clause that is only a name, next to other PII ("张伟，138...", "嗯张伟 身份证...")
    or closing a message ("谢谢！张伟"). Spoken fillers (嗯, 那个, 就是) do not count."""
    spans = []
    for clause in _CLAUSE.finditer(text):
        if clause.end() - clause.start() > _LONGEST_NAME_CLAUSE:
            continue
        start, end = _strip_fillers(text, *clause.span())
        if end - start < 2 or not _SURNAME_CHAR.match(text, start):
            continue
        if _name_at(text, start, blocked, strict=True, common=True) != end:
            continue
        if _next_to_pii(text, start, end) or _is_sign_off(text, start, end):
            spans.append((start, end))
    return spans


_SEPARATORS = " \u3000,，、:：;；.。!！?？\n\t"
# Fillers an ASR transcript keeps around a spoken name; longest first.
_FILLERS = _words("那个什么 这个什么 就是说 然后 那个 这个 就是 嗯 啊 呃 额 哦 噢 唉 哎 呐")
# A compound surname and two given characters, with fillers around them.
_LONGEST_NAME_CLAUSE = 4 + 2 * max(len(filler) for filler in _FILLERS)
_NAME_END_WORD = re.compile("|".join(_TITLES + _FIELD_WORDS + _TIME_WORDS + _FILLERS))
_FIELD_WORD = re.compile("|".join(_FIELD_WORDS))
_FILLER_FIRST = frozenset(filler[0] for filler in _FILLERS)
_FILLER_LAST = frozenset(filler[-1] for filler in _FILLERS)


def _strip_fillers(text: str, start: int, end: int) -> tuple[int, int]:
    if text[start] not in _FILLER_FIRST and text[end - 1] not in _FILLER_LAST:
        return start, end
    changed = True
    while changed:
        changed = False
        for filler in _FILLERS:
            if text.startswith(filler, start) and start + len(filler) < end:
                start, changed = start + len(filler), True
            if text.endswith(filler, start, end) and end - len(filler) > start:
                end, changed = end - len(filler), True
    return start, end


def _skip_forward(text: str, position: int) -> int:
    """Past separators and fillers."""
    while position < len(text):
        if text[position] in _SEPARATORS:
            position += 1
            continue
        filler = next((f for f in _FILLERS if text.startswith(f, position)), None)
        if filler is None:
            return position
        position += len(filler)
    return position


def _skip_backward(text: str, position: int) -> int:
    while position > 0:
        if text[position - 1] in _SEPARATORS:
            position -= 1
            continue
        filler = next((f for f in _FILLERS if text.endswith(f, 0, position)), None)
        if filler is None:
            return position
        position -= len(filler)
    return position


def _next_to_pii(text: str, start: int, end: int) -> bool:
    after = _skip_forward(text, end)
    if after < len(text) and (text[after] == PII_MASK or _FIELD_WORD.match(text, after)):
        return True
    before = _skip_backward(text, start)
    return before > 0 and text[before - 1] == PII_MASK


def _is_sign_off(text: str, start: int, end: int) -> bool:
    if text[end:].strip(_SEPARATORS):
        return False
    before = text[:start].rstrip(_SEPARATORS)
    return before != text[:start] and before.endswith(_SIGN_OFF_BEFORE)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
