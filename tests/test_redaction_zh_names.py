"""Chinese names and addresses (fl_client/redaction_zh.py): found cases, words that must stay,
idempotency, and three hand-written sets whose precision and recall docs/REDACTION.md quotes:

    python benchmarks/redaction_on_synthetic.py --held-out

No sentence comes from data_synth (nothing here imports it); names and places were chosen by
hand. {N:...} marks a name, {A:...} an address; every other character must survive. The sets
were written one after another, each before the rules were last changed:

- HELD_OUT_*: written before the rules; the rules were then corrected for bugs it exposed.
- FRESH_*: written after that; the rules were corrected again for gaps it exposed.
- UNSEEN_*: written after the second correction. Its first score is the honest one; two
  address bugs it exposed were fixed afterwards (docs/REDACTION.md gives both scores).
- ADVERSARIAL_CLEAN: ordinary words that start with a surname, right after a cue or next to
  a phone number, written to break the rules; it led to the common-given-name filter.
"""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from fl_client.redaction import find_pii, redact
from fl_client.redaction_zh import simplified

SIX_DIGITS = re.compile(r"\d{6}")
MARK = re.compile(r"\{([NA]):([^}]*)\}")
MARK_KINDS = {"N": "NAME", "A": "ADDRESS"}

# Written before the rules (see the module docstring for what each set was used for).
HELD_OUT_PII = (
    "你好，我叫{N:邱志远}，想查一下我的话费。",
    "我是{N:覃晓燕}，上周办的宽带一直没装。",
    "我姓{N:欧阳}，卡被锁了。",
    "免贵姓{N:诸葛}。",
    "麻烦转告{N:司马俊}先生，合同已经寄出。",
    "{N:上官婉清}女士的账户需要解冻。",
    "联系人是{N:褚文博}，电话等会儿发你。",
    "收件人：{N:蔺红梅}，放门卫就行。",
    "请帮我找一下{N:卢}经理。",
    "我是持卡人{N:苗凤英}本人。",
    "客户{N:蒋家明}反映网速很慢。",
    "我老婆叫{N:范丽君}，她的卡也要挂失。",
    "开户人姓名是{N:葛永春}。",
    "谢谢{N:钟}女士的耐心。",
    "这是{N:魏长青}的订单吗？",
    "我儿子{N:韦子轩}今年刚满十八岁。",
    "本人{N:龚雪}，申请注销账户。",
    "帐户名是{N:闫海涛}。",
    "{N:阮志刚}，手机13912345678。",
    "您好，我这边是{N:沈佳怡}，预约了明天上门。",
    "我叫{N:杜若}，就两个字。",
    "请{N:贺}先生明天带上身份证到营业厅。",
    "快递员{N:邢}师傅说放在门卫了。",
    "之前接电话的是{N:方}小姐，她说可以退款。",
    "我要投诉你们的{N:汪}经理。",
    "落款写{N:孔令辉}就行。",
    "我是{N:莫}女士，昨天来过电话。",
    "我爸叫{N:俞国栋}，卡在他名下。",
    "户主{N:包建华}已经去世了，想办过户。",
    "此致 敬礼！{N:柏小雨}",
    "她的名字是{N:戚美玲}。",
    "名字叫{N:谭思远}，思考的思，远方的远。",
    "受益人是我女儿{N:庞诗涵}。",
    "{N:聂}老师您好，我想咨询一下课程。",
    "我找{N:曾}总。",
    "麻烦帮我查一下{N:滕飞}名下的保单。",
    "我是{N:甄}先生的助理。",
    "订单上的收货人写的是{N:喻晨}。",
    "申请人{N:邝嘉欣}，手机13687654321。",
    "我朋友{N:温建军}推荐我来办卡的。",
    "我叫{N:皇甫明轩}。",
    "我叫{N:令狐安}，有个快递没收到。",
    "我叫{N:万小芳}，想开通国际漫游。",
    "我是{N:高明}，上午打过电话。",
    "持卡人是{N:白静}。",
    "我叫{N:马骏}，马上要出国了。",
    "我是{N:周凯}，周末能上门安装吗？",
    "客户{N:余婷}的余额不足。",
    "我叫{N:黄金凤}，卡丢了。",
    "联系人{N:安然}，电话13512340000。",
    "我叫{N:金鑫}。",
    "我是{N:李子明}，找一下售后。",
    "{N:岑卓然}，身份证号码11010519491231002X。",
    "谢谢！{N:殷秀兰}",
    "{N:詹国强} 敬上",
    "你好{N:骆}先生，我是上次那个客户。",
    "我家在{A:杭州市拱墅区湖墅南路218号}，麻烦上门看一下。",
    "地址是{A:成都市武侯区科华北路62号3栋2单元801室}。",
    "寄到{A:广东省佛山市顺德区大良街道凤山东路33号}吧。",
    "请把发票寄到{A:南京市鼓楼区中山北路105号}。",
    "我住{A:长沙市岳麓区麓山南路}附近。",
    "新地址：{A:天津市河西区友谊路41号A座1205}。",
    "帮我改成{A:西安市雁塔区小寨东路126号百隆广场}。",
    "装机地址是{A:昆明市五华区青年路389号}。",
    "我在{A:重庆市渝中区解放碑八一路177号}上班。",
    "收货地址{A:苏州工业园区星湖街328号}。",
    "快递放在{A:阳光花园小区5栋1单元}门口。",
    "我是{A:海淀区学院路30号}的住户。",
    "老家是{A:河南省周口市鹿邑县}的。",
    "送到{A:福州市鼓楼区五四路158号环球广场17楼}。",
    "我的账单地址是{A:大连市沙河口区西安路98号}。",
    "麻烦寄{A:哈尔滨市南岗区红军街15号}。",
    "在{A:浦东新区张江镇祖冲之路887弄}。",
    "{A:南宁市青秀区民族大道136号}，收件人{N:黎国华}。",
    "地址改为{A:贵阳市观山湖区林城西路95号}。",
    "我住在{A:翠湖小区12栋3单元602室}。",
    "师傅，{A:7栋2单元1102}，电梯坏了。",
    "{A:上海市徐汇区漕溪北路88号}，{N:顾文涛}收。",
    "{A:沈阳市和平区南京北街206号}，谢谢。",
    "我在{A:深圳市南山区科技园科苑路15号}。",
    "去年搬到了{A:青岛市崂山区香港东路195号}。",
    "地址是{A:湖北省黄冈市蕲春县漕河镇李家村}。",
    "{A:建设路12号}那个营业厅还开吗？",
    "请送到{A:光明新村23幢402室}。",
    "帮我寄到{A:厦门市思明区莲前西路2号莲富大厦}。",
    "{A:和平里东街11号院}，找{N:焦}阿姨。",
    "我叫{N:符海燕}，住{A:海口市美兰区海府路}。",
    "收件人{N:冼志明}，{A:江门市蓬江区白沙大道西18号}。",
    "我住{A:石家庄市长安区中山东路}上，信号很差。",
    "宽带装在{A:呼和浩特市赛罕区大学西街}。",
)

HELD_OUT_CLEAN = (
    "我很高兴你们能帮我解决。",
    "这个月的金额不对。",
    "我白天不在家，晚上再打吧。",
    "黄金会员有什么优惠？",
    "快递员说张开包装就能看到。",
    "周末营业厅开门吗？",
    "这样安全吗？",
    "什么时候方便上门？",
    "余额还剩多少？",
    "马上帮我处理一下。",
    "万一卡丢了怎么办？",
    "我买的李子坏了，要退货。",
    "我想去王府井那家店。",
    "王府井店几点关门？",
    "我是新用户，怎么开通？",
    "我是来办理业务的。",
    "我是想问一下流量的事。",
    "客户服务电话是多少？",
    "你们客户经理什么时候回电话？",
    "我叫了好几次客服都没人接。",
    "我叫车去营业厅。",
    "我是高中生，能办学生卡吗？",
    "我是江西人。",
    "我是武汉的。",
    "周一到周五都可以。",
    "我马上到。",
    "温馨提示是什么意思？",
    "我想把套餐改成包月的。",
    "关于退款的问题。",
    "常用的那张卡。",
    "我是程序员，经常加班。",
    "石头砸坏了我的车窗。",
    "我是从江苏过来的。",
    "这个费用怎么算？",
    "我叫你们经理来。",
    "麻烦找一下客服经理。",
    "我想找你们的项目经理。",
    "这位先生刚才来过。",
    "女士们先生们，欢迎光临。",
    "我的同学也想办卡。",
    "学校的老师让我来办的。",
    "你们的安装师傅什么时候来？",
    "华为手机能用吗？",
    "我是华为的用户。",
    "路上堵车了，晚点到。",
    "我在路上。",
    "小区门口有个营业厅吗？",
    "这个地区信号不好。",
    "市区里哪个营业厅最近？",
    "我在超市3楼的营业厅。",
    "地铁2号线附近有网点吗？",
    "我3月5号交的费。",
    "1号2号都打过电话。",
    "营业厅在2楼3号窗口。",
    "我是老客户了。",
    "联系人那一栏写什么？",
    "收件人填错了。",
    "姓名那里要写全名吗？",
    "我的名字是不是输错了？",
    "我是在网上办的。",
    "万元以上要审批吗？",
    "这张卡是金卡还是银卡？",
    "客户余额不足。",
    "我是马上要出国的人。",
    "我叫外卖的时候用的这张卡。",
    "我是东北人。",
    "我是江苏南京的。",
    "他叫什么名字？",
    "谢谢你们，太方便了。",
    "你好，方便说话吗？",
    "请问安全中心在哪里？",
    "我们公司是做黄金首饰的。",
    "明天白天有人在家。",
    "周末，电话一直打不通。",
    "你们营业厅在人民路吗？",
    "建国路那个店还开吗？",
    "我要去北京市朝阳区办事。",
    "在上海市区开车不方便。",
    "谢谢，辛苦了！",
    "好的，13812345678，谢谢。",
    "康师傅的方便面算不算？",
    "我是用户本人。",
    "高铁上信号不好。",
    "万达广场那边有网点吗？",
    "我姓名写错了。",
    "金额13800元对不上。",
    "白金卡的年费多少？",
    "我一路上都没信号。",
)

# Written after the first correction of the rules; its misses led to the second.
FRESH_PII = (
    "喂，你好，我叫{N:郝振东}，我的宽带又断了。",
    "我是{N:易欣然}，刚才那个电话断了。",
    "机主是我妈，叫{N:鲍桂芝}。",
    "麻烦让{N:谷}经理给我回个电话。",
    "{N:宫志伟}先生您好，这边是客服中心。",
    "我姓{N:慕容}，慕容复的慕容。",
    "账户持有人是{N:薛婧}。",
    "收件人{N:牛宝山}，电话13767891234。",
    "我是业主{N:娄红霞}，物业费怎么交？",
    "嗯那个{N:武文杰} 嗯身份证号11010519491231002X",
    "{N:邵丹丹}，卡号6222021234567890123。",
    "您好，{N:柴}女士在吗？",
    "我跟{N:严}主任约好了今天办。",
    "找一下{N:翁}老师，她在不在？",
    "此致，{N:苏晓峰}",
    "我外婆{N:陶秀珍}的手机停机了。",
    "我叫{N:叶}，叶子的叶。",
    "代办人{N:蒙志强}，是我哥。",
    "用户{N:梁晓东}申请退订。",
    "我是{N:蓝天宇}，上次投诉的那个。",
    "请寄到{A:兰州市城关区张掖路87号}。",
    "我住{A:合肥市蜀山区长江西路}这边。",
    "新家在{A:济南市历下区泉城路188号}。",
    "地址：{A:郑州市金水区花园路39号6号楼2单元}",
    "寄到{A:南昌市东湖区八一大道}... 不对，是{A:红谷滩区赣江中大道1218号}。",
    "我家在{A:桂林市七星区漓江路}，信号特别差。",
    "{A:滨江花园3栋1602室}，快递到了打电话。",
    "麻烦改成{A:温州市鹿城区人民东路}那个地址。",
    "收货地址是{A:江苏省无锡市梁溪区中山路333号}。",
    "我们在{A:太原市小店区长风街}上。",
    "宽带地址{A:乌鲁木齐市天山区解放南路56号}。",
    "送到{A:金地格林小镇12幢}。",
    "我老家{A:四川省南充市仪陇县马鞍镇}的。",
    "寄给{N:胡}先生，{A:银川市兴庆区北京东路}。",
    "{A:长春市朝阳区人民大街2688号}，收件人{N:柳如月}。",
)

FRESH_CLEAN = (
    "周二下午能办吗？",
    "马上就好，稍等。",
    "我高兴得太早了。",
    "余额宝能绑定吗？",
    "金额已经退回了吗？",
    "安全验证一直失败。",
    "方便的话明天上午来。",
    "白天信号挺好的，晚上就不行。",
    "我想问问黄金价格。",
    "万一又扣费怎么办？",
    "张开嘴说话信号就断了，真奇怪。",
    "李子柒的视频打不开。",
    "我在王府井附近。",
    "我是第一次打这个电话。",
    "我是外地的，能办吗？",
    "客户端闪退了。",
    "用户协议在哪里看？",
    "联系人能加几个？",
    "收件人电话写错了。",
    "你们的经理在吗？",
    "谢谢您，再见！",
    "这个路由器要放在哪里？",
    "地铁3号线上没信号。",
    "我住的小区没信号。",
    "区号是多少？",
    "周边有没有营业厅？",
    "高速上信号很差。",
    "常州有网点吗？",
    "我是杭州的用户。",
    "向左滑就能看到。",
    "我要关闭自动续费。",
    "包月套餐多少钱？",
    "江湖救急，快帮我看看。",
    "这是怎么回事？",
    "我叫不出那个套餐的名字。",
)

# Written after the second correction; first scored as is, then two address bugs were fixed.
UNSEEN_PII = (
    "你好，我叫{N:孟庆华}，我的流量怎么用这么快？",
    "我是{N:倪娟}，昨天在网上下的单。",
    "我妈叫{N:单淑珍}，她的卡是我办的。",
    "找一下{N:傅}主任，我们约了下午。",
    "{N:程浩然}先生，您的快递到了。",
    "我姓{N:司徒}，司徒雷登的司徒。",
    "姓名{N:芦佳琪}，身份证后四位1234。",
    "联系人：{N:贾宏伟}，电话18912345678。",
    "我爸爸{N:饶国庆}去年就过世了。",
    "呃，{N:段晓鹏} 呃，手机号15011112222",
    "{N:童佳慧}，13611112222，麻烦回电。",
    "我是户主{N:苟建国}，要改一下套餐。",
    "请问是{N:丛}女士吗？",
    "帮我转给{N:戴}经理，谢谢。",
    "我叫{N:欧阳子健}，手机丢了要挂失。",
    "受理人是{N:毕雪梅}。",
    "多谢！{N:伍思琪}",
    "我同事{N:姬海燕}让我打这个电话。",
    "我叫{N:仲}，仲夏的仲，名字就一个字。",
    "{N:祁}师傅说明天来修。",
    "请寄到{A:合肥市包河区徽州大道1000号}。",
    "我住{A:杭州市余杭区五常街道文一西路}那边。",
    "收货地址：{A:广州市天河区天河路385号太古汇}",
    "{A:东莞市南城区鸿福路200号}，下午送。",
    "地址写的是{A:北京市西城区金融大街15号}。",
    "装在{A:锦绣家园7号楼2单元301}。",
    "我家住{A:宁波市海曙区中山西路}，离营业厅很远。",
    "送到{A:上海市静安区南京西路1266号恒隆广场}吧。",
    "{A:拉萨市城关区北京中路}有没有营业厅？",
    "老地址是{A:陕西省汉中市城固县}，现在搬走了。",
    "麻烦寄{A:珠海市香洲区情侣中路}...{A:39号}",
    "{A:幸福小区8栋502}，门铃坏了直接敲门。",
    "我在{A:济南市市中区经四路}这边上班。",
    "寄给{N:佟}先生，{A:大连市中山区人民路50号}。",
    "{A:海口市龙华区滨海大道105号}，{N:符家豪}收",
)

UNSEEN_CLEAN = (
    "我爸付钱了，怎么还显示欠费？",
    "我妈管钱，这个要问她。",
    "我女儿高考完想换个手机。",
    "我老公安排的套餐，我不清楚。",
    "周四能不能到？",
    "马上给我退回来。",
    "这个余额怎么算的？",
    "金卡会员有什么权益？",
    "白天打不通，晚上又没人接。",
    "我高兴还来不及呢。",
    "安全码在卡背面吗？",
    "方便告诉我怎么操作吗？",
    "黄色的那个按钮吗？",
    "万一你们扣错了呢？",
    "我在王府井逛街的时候丢的手机。",
    "我是第一次用这个APP。",
    "我是学生，有优惠吗？",
    "我叫了快递上门取件。",
    "联系人列表怎么导出？",
    "收件人那一栏能改吗？",
    "姓名和身份证不一致怎么办？",
    "客户经理电话多少？",
    "那个先生说下周再来。",
    "有没有女士专用的套餐？",
    "我的同学推荐的。",
    "师傅什么时候上门？",
    "这个路口信号特别差。",
    "我在去超市的路上。",
    "营业厅在3楼还是4楼？",
    "5号之前要交费吗？",
    "区号填0571对吗？",
    "北京市区哪里能办？",
    "我是广东人，在上海工作。",
    "周边的营业厅几点关门？",
    "江湖救急，马上帮我开机。",
)

# Adversarial: a cue, title or phone number next to an ordinary word that starts with a
# surname, written to find the rules' weak spot. Scored first without the common-given-name
# filter (16 of 36 flagged), then with it; every finding here is a false positive.
ADVERSARIAL_CLEAN = (
    "我是包工头，想办个副卡。",
    "我是路人，随便问问。",
    "我是向导，经常出差。",
    "我是孔子学院的老师。",
    "我是石油工人。",
    "我是全职妈妈。",
    "我是常客了。",
    "我是夏令营的领队。",
    "我是宋体字看不清。",
    "我是严重超支了吗？",
    "我是华侨，在国外。",
    "他叫黎明前打电话。",
    "客户林业局的账户。",
    "客户黄页上查不到。",
    "用户常去的那家店。",
    "用户韩剧会员到期了。",
    "联系人梁上那个格子填什么？",
    "收件人江湖快递员。",
    "我叫车的时候扣了钱。",
    "我叫滴滴打车。",
    "叫程序员来看看。",
    "他叫高铁站接我。",
    "黄色经理那个按钮。",
    "毛衣，13812345678号订单的。",
    "周三，电话打不通。",
    "好吧，金牌会员13812345678。",
    "钟表，身份证丢了。",
    "温泉，手机没信号。",
    "此致，敬礼！",
    "谢谢！祝好",
    "谢谢！常联系",
    "我姓什么不重要。",
    "我姓名写错了。",
    "我妈高兴坏了。",
    "我爸管理员权限没了。",
    "我朋友圈看到的广告。",
)


def parse_marked(marked: str) -> tuple[str, list[tuple[int, int, str]]]:
    """The plain text and its gold (start, end, kind) spans."""
    text, spans, position = "", [], 0
    for match in MARK.finditer(marked):
        text += marked[position : match.start()]
        spans.append((len(text), len(text) + len(match.group(2)), MARK_KINDS[match.group(1)]))
        text += match.group(2)
        position = match.end()
    return text + marked[position:], spans


def score(sentences: tuple[str, ...]) -> dict[str, dict[str, int]]:
    """Per kind: gold spans, gold spans whose text is gone (covered by a finding of that kind),
    gold spans found exactly, findings, and findings that overlap no gold span of that kind."""
    counts: dict[str, Counter[str]] = {"NAME": Counter(), "ADDRESS": Counter()}
    for marked in sentences:
        text, gold = parse_marked(marked)
        found = [span for span in find_pii(text) if span.kind in counts]
        for start, end, kind in gold:
            counts[kind]["gold"] += 1
            counts[kind]["gone"] += any(
                s.kind == kind and s.start <= start and end <= s.end for s in found
            )
            counts[kind]["exact"] += any(
                (s.start, s.end, s.kind) == (start, end, kind) for s in found
            )
        for span in found:
            counts[span.kind]["found"] += 1
            counts[span.kind]["false"] += not any(
                kind == span.kind and span.start < end and start < span.end
                for start, end, kind in gold
            )
    return {kind: dict(counter) for kind, counter in counts.items()}


def found(text: str) -> list[tuple[str, str]]:
    """Name and address findings only."""
    kinds = MARK_KINDS.values()
    return [(text[s.start : s.end], s.kind) for s in find_pii(text) if s.kind in kinds]


# --- Found cases: one per rule ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a cue before the name
        ("我叫张伟，想查话费", "我叫[NAME]，想查话费"),
        ("我是刘洋。", "我是[NAME]。"),
        ("姓名：陈静", "姓名：[NAME]"),
        ("联系人是欧阳娜娜，谢谢", "联系人是[NAME]，谢谢"),
        ("我叫张伟明天去营业厅", "我叫[NAME]明天去营业厅"),
        ("客户杨帆的余额不足", "客户[NAME]的余额不足"),
        ("我叫黄金凤，卡丢了", "我叫[NAME]，卡丢了"),  # a common word inside a cued 3-char name
        # a title after the name
        ("王先生你好", "[NAME]先生你好"),
        ("谢谢王先生", "谢谢[NAME]先生"),
        ("麻烦转告司马俊先生", "麻烦转告[NAME]先生"),
        ("联系张伟经理", "联系[NAME]经理"),
        ("滕飞名下的保单", "[NAME]名下的保单"),
        # only the surname
        ("我姓王，卡被锁了", "我姓[NAME]，卡被锁了"),
        ("免贵姓诸葛。", "免贵姓[NAME]。"),
        # a clause that is only a name, next to other PII or closing a message
        ("张伟，13812345678", "[NAME]，[PHONE]"),
        ("嗯那个王芳 身份证号11010519491231002X", "嗯那个[NAME] 身份证号[ID]"),
        ("谢谢！李娜", "谢谢！[NAME]"),
        ("赵磊 敬上", "[NAME] 敬上"),
        # addresses
        ("地址是北京市朝阳区建国路88号", "地址是[ADDRESS]"),
        ("寄到成都市武侯区科华北路62号3栋2单元801室吧", "寄到[ADDRESS]吧"),
        ("新地址：天津市河西区友谊路41号A座1205。", "新地址：[ADDRESS]。"),
        ("我住在翠湖小区12栋3单元602室。", "我住在[ADDRESS]。"),
        ("师傅，7栋2单元1102，电梯坏了", "师傅，[ADDRESS]，电梯坏了"),
        ("建设路12号那个营业厅还开吗", "[ADDRESS]那个营业厅还开吗"),
        ("老家是河南省周口市鹿邑县的", "老家是[ADDRESS]的"),
        ("南宁市青秀区民族大道136号，收件人黎国华。", "[ADDRESS]，收件人[NAME]。"),
        # a numbered road section and a 甲 house number (found in review: 四段27号, 甲8号 were left)
        ("成都市武侯区人民南路四段27号", "[ADDRESS]"),
        ("寄到朝阳区建国门外大街甲8号。", "寄到[ADDRESS]。"),
        # Traditional Chinese, read through OpenCC's table; the rest stays as written
        ("請聯繫陳先生", "請聯繫[NAME]先生"),
        ("我叫陳志明，卡不見了", "我叫[NAME]，卡不見了"),
        ("姓名：黃美玲", "姓名：[NAME]"),
        ("寄到台北市大安區忠孝東路四段100號5樓謝謝", "寄到[ADDRESS]謝謝"),
    ],
)
def test_names_and_addresses_are_redacted(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("姓名: 张伟", "姓名: [NAME]"),
        ("姓名： 张伟", "姓名： [NAME]"),
        ("姓名:  张伟", "姓名:  [NAME]"),
        ("姓名：\u3000张伟", "姓名：\u3000[NAME]"),
        ("户名: 李娜", "户名: [NAME]"),
        ("联系人： 王芳，13812345678", "联系人： [NAME]，[PHONE]"),
    ],
)
def test_a_space_after_a_cue_and_its_colon_still_finds_the_name(text: str, expected: str) -> None:
    """Form-like chat and CRM notes write "姓名: 张伟"; the colon alone was the whole link."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("收款人：王芳", "收款人：[NAME]"),
        ("付款人王芳", "付款人[NAME]"),
        ("付款人是张伟，钱没到", "付款人是[NAME]，钱没到"),
        ("转账给王芳100元", "转账给[NAME]100元"),
        ("转账给他了", "转账给他了"),
        ("转账给支付宝", "转账给支付宝"),
        ("转账给余额宝", "转账给余额宝"),
    ],
)
def test_banking_role_cues(text: str, expected: str) -> None:
    assert redact(text) == expected


# Known over-reach: 家 is allowed inside place names (李家村), so 老家 lends its 家.
KNOWN_OVERREACH = ("我老家{A:四川省南充市仪陇县马鞍镇}的。",)


@pytest.mark.parametrize(
    "marked",
    [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason="known over-reach"))
        if m in KNOWN_OVERREACH
        else m
        for m in HELD_OUT_PII + FRESH_PII + UNSEEN_PII
    ],
)
def test_held_out_text_outside_gold_spans_survives(marked: str) -> None:
    """No finding touches a character outside the gold names and addresses (digits aside)."""
    text, gold = parse_marked(marked)
    for span in find_pii(text):
        if span.kind in MARK_KINDS.values():
            assert any(s <= span.start and span.end <= e for s, e, _ in gold), (text, span)


# --- Words that must stay ----------------------------------------------------------------


@pytest.mark.parametrize("text", HELD_OUT_CLEAN + FRESH_CLEAN + UNSEEN_CLEAN)
def test_ordinary_words_starting_with_a_surname_are_not_names(text: str) -> None:
    assert found(text) == []


@pytest.mark.parametrize(
    "text",
    [
        "周末",
        "马上",
        "高兴",
        "余额",
        "金额",
        "白天",
        "黄金",
        "张开",
        "安全",
        "方便",
        "万一",
        "李子",
        "我是周末来的",
        "谢谢，辛苦了",
        "我在北京市朝阳区",
        "你们营业厅在人民路吗",
        "第四段路程很长",
        "我的卡不見了，請幫我凍結",
        "乾淨的房間",
        "乙方3号条款",
        "甲等奖8个",
        "营业厅在2楼3号窗口",
        "地铁2号线",
        "My name is John Smith and I live at 221B Baker Street",
    ],
)
def test_words_and_coarse_places_stay(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    "text", ["客户余额，13812345678", "周末，13812345678", "好的，13812345678"]
)
def test_a_common_word_next_to_a_phone_number_is_not_a_name(text: str) -> None:
    assert found(text) == []
    assert redact(text).endswith("，[PHONE]")


# --- Canaries: the whole value goes, inside longer utterances -------------------------------


@pytest.mark.parametrize(
    ("prefix", "suffix"),
    [
        ("您好，我叫", "，住"),
        ("喂喂，你好啊，我是", "，我住在"),
        ("嗯，那个，联系人是", "，地址是"),
    ],
)
def test_canary_name_and_address_vanish_entirely(prefix: str, suffix: str) -> None:
    name, address = "蒋欣悦", "昆明市盘龙区北京路1099号5栋602室"
    text = f"{prefix}{name}{suffix}{address}，上个月的账单多扣了80元，麻烦查一下，谢谢。"
    redacted = redact(text)
    for value in (name, address):
        assert not any(value[i : i + 2] in redacted for i in range(len(value) - 1)), redacted
    assert "[NAME]" in redacted and "[ADDRESS]" in redacted
    assert redacted.endswith("，上个月的账单多扣了80元，麻烦查一下，谢谢。")


# --- Guarantees -----------------------------------------------------------------------------

SOUP = (
    *re.findall(
        r"\S+",
        "王 张 欧阳 司马 马 高 周 李 伟 明 小 丽 子 金 兴 末 上 我叫 我是 叫 "
        "姓 客户 联系人 收件人 先生 女士 小姐 经理 收 敬上 本人 名下 谢谢 此致 ， "
        "。 ！ 嗯 那个 就是 身份证 电话 市 区 路 街 号 栋 单元 室 小区 花园 省 "
        "县 镇 村 北京 朝阳 建国 人民 阳光 1 2 3 8 0 A - [NAME] "
        "[ADDRESS] [PHONE] [ID] [NUMBER] 13812345678 "
        "11010519491231002X 的 是 在 了",
    ),
    " 敬上",
    " ",
)


def test_idempotent_sorted_and_no_six_digits_on_chinese_token_soup() -> None:
    """Context a first redaction creates (a placeholder next to a surname, a cue or a street)
    must not make a second one find more."""
    rng = random.Random(17)
    for _ in range(4000):
        text = "".join(rng.choice(SOUP) for _ in range(rng.randint(0, 14)))
        spans = find_pii(text)
        assert spans == sorted(spans)
        assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False)), text
        redacted = redact(text)
        assert not SIX_DIGITS.search(redacted), (text, redacted)
        assert redact(redacted) == redacted, text


@pytest.mark.parametrize("marked", HELD_OUT_PII + FRESH_PII + UNSEEN_PII)
def test_redacting_twice_changes_nothing_on_held_out(marked: str) -> None:
    once = redact(parse_marked(marked)[0])
    assert redact(once) == once


# --- Held-out precision and recall (docs/REDACTION.md quotes them) -------------------------


@pytest.mark.parametrize(
    ("sentences", "floors"),
    [
        (HELD_OUT_PII + HELD_OUT_CLEAN, {"NAME": (51, 0), "ADDRESS": (34, 0)}),
        (FRESH_PII + FRESH_CLEAN, {"NAME": (20, 0), "ADDRESS": (15, 0)}),
        (UNSEEN_PII + UNSEEN_CLEAN, {"NAME": (19, 0), "ADDRESS": (13, 0)}),
        (ADVERSARIAL_CLEAN, {"NAME": (0, 1), "ADDRESS": (0, 0)}),
    ],
)
def test_held_out_recall_and_precision_do_not_regress(sentences, floors) -> None:
    """Floors are the measured numbers: at least this many gold values gone, at most this
    many findings that touch no gold value."""
    scores = score(sentences)
    for kind, (min_gone, max_false) in floors.items():
        assert scores[kind].get("gone", 0) >= min_gone, (kind, scores[kind])
        assert scores[kind].get("false", 0) <= max_false, (kind, scores[kind])


def test_traditional_text_is_read_character_for_character():
    """Offsets found in the Simplified reading must point into the text as written."""
    han = "".join(chr(code) for code in range(0x3400, 0xA000, 7))
    assert len(simplified(han)) == len(han)
    assert simplified("陳黃區號樓縣鎮") == "陈黄区号楼县镇"
    assert simplified("abc [PHONE] 123") == "abc [PHONE] 123"
