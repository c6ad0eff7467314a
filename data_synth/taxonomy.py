"""The shared intent taxonomy and the ways customers phrase each intent, in English and Chinese.

Templates are written per language (the Chinese ones are how Chinese customers talk, not
translations). ``{slot}`` markers are filled by ``conversations.py``: PII slots (``name``,
``phone``, ``id``, ``card``, ``email``, ``address``, ``order``, ``account``) with generated
personal data, the others with the vocabularies in ``SLOT_VALUES`` or generated amounts/dates.

``CONFUSABLE_GROUPS`` holds vague phrasings that fit several related intents equally well
("something's wrong with my card"). Real traffic has them, and they keep a bag-of-words
classifier from scoring near 100% on synthetic data.
"""


def _lines(block: str) -> tuple[str, ...]:
    """One template per line; long lines are continued with a trailing backslash."""
    return tuple(" ".join(line.split()) for line in block.strip().splitlines() if line.strip())


_TEMPLATES: dict[str, dict[str, str]] = {
    # ------------------------------------------------------------------ banking
    "banking.card_lost": {
        "en": """
            I think I lost my {card_kind} somewhere {place}
            I can't find my {card_kind} anywhere, I must have dropped it {date}
            I lost my wallet {date} and my {card_kind} was in it
            I've misplaced my card and need to report it lost
            my card is lost, can you cancel it and send me a new one
            I left my {card_kind} {place} and when I went back it was gone
            Need to report a lost card. It's the one ending in {last4}
            lost my debit card, what do I do now
            I've looked everywhere for my {card_kind} and it's just gone. Can you put a hold on it?
            I dropped my card {place} I think, the number is {card}, please cancel it
            My card's gone missing. I had it {date} but now I can't find it.
            how do I report a lost card and get a replacement
            So I went to pay for groceries {date} and realised my {card_kind} wasn't in my \
            wallet, I have no idea where it is
            I had my card {place} and now it's not in my pocket, can you cancel it before someone \
            finds it
        """,
        "zh": """
            我的{card_kind}丢了，麻烦帮我挂失一下
            {date}在{place}把卡弄丢了，现在怎么办
            钱包丢了，里面有张{card_kind}，我要挂失
            我卡找不到了，应该是掉了，能先帮我挂失吗
            卡丢了，卡号是{card}，帮我办一下挂失
            我想挂失一张{card_kind}，尾号{last4}
            {date}出门把{card_kind}落在{place}了，回去找已经没了
            银行卡不见了，家里翻遍了都没有，挂失要怎么弄
            卡丢了想补办一张，要多久能拿到
            我的卡好像丢了，先帮我把卡停掉吧
            请问{card_kind}丢失了是打这个电话挂失吗
            刚才在{place}付钱才发现{card_kind}不见了，也不知道掉哪了，先挂失吧
            我那张尾号{last4}的卡找不着了，能不能先临时挂失，找到了再解
        """,
    },
    "banking.card_stolen": {
        "en": """
            My wallet was stolen {date} and my {card_kind} was in it
            someone stole my card {place}
            I got pickpocketed {place} and they took my cards
            My bag was snatched {date}, I need to cancel my {card_kind} before they use it
            I think someone stole my card, there's a charge for {amount} I didn't make
            my car was broken into and my wallet with my {card_kind} is gone
            I need to report a stolen card. The number is {card}
            A guy grabbed my purse {place}, please stop my card immediately
            My house got burgled {date} and they took my bank cards
            report stolen card ending {last4}
            my card was stolen and I already filed a police report, what else do you need
            Someone broke into my locker {place} and took my wallet, I need to cancel my cards
            I'm pretty sure my card was stolen, I got alerts for purchases at {merchant} while I \
            was asleep
        """,
        "zh": """
            我钱包{date}被偷了，里面有{card_kind}
            卡被人偷了，赶紧帮我冻结
            我在{place}被小偷扒了，银行卡也没了
            包被抢了，里面的{card_kind}得马上停掉
            我卡好像被盗了，刚收到一条{amount}的消费短信不是我刷的
            家里{date}进贼了，几张银行卡都被偷了
            我要报卡被盗，卡号{card}
            手机和钱包一起被偷了，卡里还有钱，怎么办
            {card_kind}被偷了，尾号{last4}，已经报警了
            刚在{place}钱包被人摸走了，卡要怎么处理
            有人偷了我的卡还在用，赶紧帮我止付
            我在{place}包被划了，钱包连卡一起没了，已经报警了
            我卡被偷了，半夜收到好几条{merchant}的消费短信，我人在睡觉呢
        """,
    },
    "banking.card_blocked": {
        "en": """
            my card got blocked and I don't know why
            My {card_kind} keeps getting declined even though I have money
            why is my card frozen
            I tried to pay {amount} at {merchant} and my card was declined
            Can you unblock my card? It stopped working {date}
            my card was locked after I entered the wrong PIN a few times
            I got a text saying my {card_kind} has been suspended, is that real?
            My card doesn't work anymore, it says transaction not allowed
            you guys blocked my card for suspicious activity but it was me
            card ending {last4} is blocked, I need it unblocked today
            I'm abroad in {city} and my card got blocked
            I was trying to buy something online and the payment kept failing, then I got a \
            message that my card is restricted
            my {card_kind} was working fine until {date}, now every transaction gets declined at \
            the terminal
        """,
        "zh": """
            我的卡被冻结了，不知道什么原因
            {card_kind}刷不了，一直提示交易失败
            卡怎么突然被锁了
            我在{merchant}付{amount}的时候卡被拒了
            能不能帮我把卡解冻一下，{date}开始就用不了了
            密码输错了几次卡就被锁了，怎么解锁
            收到短信说我的{card_kind}被止付了，是真的吗
            我的卡{date}突然不能用了，显示状态异常
            你们说我的卡有风险交易给冻结了，但那笔是我自己刷的
            尾号{last4}的卡被冻结了，今天急用
            我人在{city}，卡突然被锁了刷不了
            网上买东西一直付不了，然后收到短信说我的卡被限制交易了
            {card_kind}{date}还好好的，现在刷哪都说交易受限
        """,
    },
    "banking.card_activation": {
        "en": """
            I just got my new card in the mail, how do I activate it
            I need to activate my {card_kind}
            my replacement card arrived {date}, can you activate it for me
            how do I turn on my new card
            The new card won't work, I think it's not activated yet
            I want to activate the card ending in {last4}
            received my {card_kind} but the activation in the app isn't working
            can I activate my card over the phone? The number is {card}
            What do I need to activate a new debit card
            got a new card, is it active already or do I have to do something
            the letter with my new {card_kind} says to call to activate, so here I am
            I tried activating my new card at the ATM but it didn't work, can you do it from your \
            side
        """,
        "zh": """
            新卡寄到了，怎么激活
            我要激活一下{card_kind}
            补办的卡{date}收到了，能帮我开通一下吗
            新卡收到了还不能用，是不是没激活
            我想开通尾号{last4}的这张卡
            {card_kind}收到了，但是APP上激活一直失败
            电话里能直接激活吗，卡号{card}
            激活新卡需要带什么
            新卡拿到了，要先设密码才能用吗
            刚办的卡怎么开卡啊
            新卡附的信上说要打电话激活，所以打过来了
            我在ATM上激活新卡没成功，你们后台能帮我开通吗
        """,
    },
    "banking.pin_reset": {
        "en": """
            I forgot my PIN
            I need to reset my card PIN
            how do I change my PIN number
            I can't remember the PIN for my {card_kind}
            I've typed the wrong PIN so many times, can I set a new one
            can you help me reset my PIN? My card is {card}
            I never got the PIN for my new card
            I want to change my PIN to something easier to remember
            what's the process to get a new PIN, I'm at the ATM right now
            forgot my pin again lol, need a reset
            I changed my PIN last week and now I can't remember what I changed it to
            I want to set a new PIN but the app keeps asking for the old one which I don't know
        """,
        "zh": """
            我忘记银行卡密码了
            我要重置一下{card_kind}的密码
            怎么修改卡密码
            {card_kind}的取款密码想不起来了
            密码输错好几次了，能重新设一个吗
            帮我重置一下密码，卡号是{card}
            新卡的初始密码一直没收到
            我想把密码改一下，原来的太难记了
            我现在在ATM机前面，密码忘了怎么办
            交易密码忘了，要去网点重置吗
            上礼拜刚改的密码，现在自己都想不起来改成啥了
            APP上改密码要输原密码，原密码我忘了怎么改
        """,
    },
    "banking.unrecognized_transaction": {
        "en": """
            There's a charge of {amount} on my account that I don't recognize
            I see a transaction from {merchant} {date} that wasn't me
            someone used my card for {amount}, I never made that purchase
            what is this {amount} payment to {merchant}? I didn't authorize it
            I have a weird charge on my statement from {date}
            there are three payments I didn't make on my {card_kind}
            I want to dispute a transaction, {amount} at {merchant}
            I got charged twice for the same thing at {merchant}
            money left my account {date} and I have no idea where it went
            there's a {amount} withdrawal I don't remember making
            my account {account} shows a payment I didn't make
            I was checking my statement and there's a payment to {merchant} for {amount}, I've \
            never even used them
            My banking app shows {amount} spent in {city} {date} but I've never been there
        """,
        "zh": """
            我账户里有一笔{amount}的扣款，我不认识
            {date}有一笔{merchant}的消费，不是我本人操作的
            有人用我的卡刷了{amount}，我根本没买过东西
            这笔付给{merchant}的{amount}是什么钱，我没授权过
            账单上{date}有笔奇怪的交易
            {card_kind}上有好几笔不是我消费的
            我要对一笔交易提出异议，{merchant}的{amount}
            同一笔{merchant}的钱扣了我两次
            {date}账上莫名其妙少了钱
            有一笔{amount}的取现不是我取的
            账户{account}有一笔陌生的扣款
            我看账单发现有笔{amount}付给{merchant}的，我从来没在那买过东西
            手机银行显示{date}在{city}消费了{amount}，我根本没去过那里
        """,
    },
    "banking.transfer_failed": {
        "en": """
            My transfer didn't go through
            I sent {amount} to my landlord {date} and it never arrived
            the transfer failed but the money was taken out of my account
            why did my bank transfer get rejected
            I tried to wire {amount} and got an error
            I made a transfer {date} and it's still stuck on pending
            I transferred {amount} to the wrong account, can I get it back
            my payment to another bank bounced back
            the app says transfer unsuccessful, what's going on
            I sent money to my mom in {city} and she still hasn't received it
            transfer from account {account} failed twice
            I'm trying to pay my rent and the transfer keeps bouncing back with an error code
            the money left my account {date} but the person I sent it to says nothing arrived
        """,
        "zh": """
            我转账没转过去
            {date}给房东转了{amount}，对方一直没收到
            转账失败了，但钱已经扣了
            为什么我的跨行转账被退回了
            转{amount}的时候提示交易失败
            {date}转的账一直显示处理中
            钱转错账户了，{amount}，能追回来吗
            给别的银行转账，钱又退回来了
            APP上显示转账不成功，怎么回事
            给在{city}的家里人汇了钱，到现在还没到
            从{account}这个账户转出去两次都失败
            交房租转账一直被退回来，还提示一个错误代码
            钱{date}就从我卡里扣了，对方说一分都没收到
        """,
    },
    "banking.transfer_limit": {
        "en": """
            What's the maximum I can transfer in one day
            I need to send {big_amount} but it says I've exceeded my limit
            can you raise my daily transfer limit
            how much can I send abroad per transaction
            is there a limit on online transfers
            I want to increase my transfer limit to {big_amount}
            The app won't let me transfer more than {amount}, why
            how do I change my daily limit for payments
            I need to move a large amount for a house deposit, can the limit be lifted
            what are the transfer limits on my account {account}
            I'm buying a car and need to transfer {big_amount} to the dealer, but the app says \
            the amount is over my limit
            is it possible to temporarily raise how much I can send in a day
        """,
        "zh": """
            一天最多能转多少钱
            我要转{big_amount}，提示超过限额了
            能帮我把单日转账额度调高吗
            境外汇款单笔限额是多少
            手机银行转账有上限吗
            我想把转账限额提到{big_amount}
            APP上最多只能转{amount}，为什么
            怎么修改每日支付限额
            要付房子首付，转账额度不够，能临时提额吗
            我这个账户{account}的转账限额是多少
            买车要给4S店转{big_amount}，APP提示超过单日限额了
            能不能临时把每天能转的金额调高一点
        """,
    },
    "banking.balance_inquiry": {
        "en": """
            What's my current balance
            can you tell me how much money I have in my account
            I want to check my balance
            how much is left on my checking account
            has my salary come in yet? I want to see my balance
            what's the available balance on account {account}
            can you check my savings balance please
            I need to know my balance before I pay rent
            is there enough in my account to cover {amount}
            my balance in the app looks wrong, can you confirm it
            I don't have the app on this phone, can you just tell me how much is in my account
            quick one, how much do I have in checking right now
        """,
        "zh": """
            帮我查一下余额
            我卡里还有多少钱
            我想查询一下账户余额
            活期账户还剩多少
            工资到账了没有，帮我看看余额
            账号{account}的可用余额是多少
            麻烦查下我储蓄账户的余额
            交房租之前想确认一下卡里的钱够不够
            卡里够不够扣{amount}
            APP上显示的余额好像不对，帮我核实一下
            我这手机没装APP，你直接告诉我卡里还有多少钱就行
            问一下，我现在活期里还剩多少
        """,
    },
    "banking.statement_request": {
        "en": """
            I need a copy of my bank statement for last month
            can you send me my statements for the last three months
            how do I download my account statement
            I need an official statement for a visa application
            please email my statement to {email}
            can I get a paper statement mailed to {address}
            I need all of last year's statements for my taxes
            where do I find my monthly statement in the app
            my landlord wants to see bank statements, can you send me a stamped one
            I'd like a statement for account {account}
            my accountant needs my bank statements for the past six months, how do I get them
            I need proof of my transactions for a mortgage application, can you send official \
            statements
        """,
        "zh": """
            我要打印一下上个月的银行流水
            能把最近三个月的对账单发给我吗
            账户流水在哪里下载
            办签证需要银行流水，要盖章的那种
            麻烦把对账单发到我邮箱{email}
            能把纸质对账单寄到{address}吗
            报税要去年一整年的流水
            APP里月结单在哪看
            租房要提供流水证明，怎么开
            帮我开一下账户{account}的流水
            会计要我最近半年的银行流水，怎么弄
            办房贷要交易流水证明，能给我开一份正式的吗
        """,
    },
    "banking.credit_limit_increase": {
        "en": """
            I'd like to increase my credit limit
            can you raise the limit on my {card_kind}
            my credit limit is too low, can I get it raised to {big_amount}
            how do I request a higher limit
            I'm going on a trip to {city} and need a bigger limit on my card
            can I get a temporary limit increase
            why was my credit limit increase denied
            I've had the card for years, I think I qualify for a higher limit
            can you bump my limit up a bit, I keep maxing it out
            I need more credit on my card, the limit is only {amount}
            my {card_kind} limit is tiny compared to my income, I'd like it reviewed
            I have a big purchase coming up and want a higher limit on my card, can you look into it
        """,
        "zh": """
            我想提高信用卡额度
            能帮我把{card_kind}的额度调高一点吗
            额度太低了，能提到{big_amount}吗
            怎么申请提额
            下个月要去{city}旅游，能临时提额吗
            申请临时额度怎么弄
            我提额申请为什么被拒了
            卡用了好几年了，应该可以提额了吧
            额度老是刷爆，能不能给我加点
            我信用卡额度只有{amount}，不够用
            我收入挺稳定的，这个{card_kind}额度太低了，能重新评估一下吗
            最近要买个大件，想把卡的额度提一提
        """,
    },
    "banking.loan_inquiry": {
        "en": """
            I'd like some information about personal loans
            what's the interest rate on a car loan right now
            can I borrow {big_amount}
            how do I apply for a mortgage with you
            I'm interested in a loan to renovate my house
            do I qualify for a personal loan
            what are the repayment terms for a {big_amount} loan
            I want to pay off my loan early, are there fees
            what documents do I need for a home loan
            can you tell me about your student loan options
            we're thinking about buying a flat and want to know how much we could borrow
            how much would the monthly payments be if I took out {big_amount} over five years
        """,
        "zh": """
            我想了解一下个人贷款
            现在车贷利率是多少
            我能贷{big_amount}吗
            房贷怎么申请
            家里要装修，想贷一笔款
            我这种情况能办消费贷吗
            贷{big_amount}的话每个月还多少
            我想提前还贷款，有违约金吗
            办房贷需要准备哪些材料
            你们有没有经营贷，利息多少
            我们打算买房，想问问最多能贷多少
            贷{big_amount}分五年还，一个月要还多少
        """,
    },
    "banking.account_opening": {
        "en": """
            I want to open a new account
            how do I open a savings account
            can I open a checking account online
            I'd like to open an account for my daughter
            what do I need to bring to open an account
            I'm new to the country, can I open a bank account here
            is there a minimum deposit to open an account
            I want to open a joint account with my wife
            can I open a business account, my company is registered in {city}
            how long does it take to open an account
            I just started a new job and they need a bank account for my salary, can I open one \
            with you
            what's the easiest way to open an account if I don't live near a branch
        """,
        "zh": """
            我想开个户
            怎么开储蓄账户
            能在网上开户吗
            想给孩子开个账户
            开户要带什么证件
            我身份证号是{id}，能直接开户吗
            开户有最低存款要求吗
            想跟家里人开个联名账户
            公司在{city}注册的，能开对公账户吗
            开户大概要多长时间
            我想办一张新的{card_kind}
            新单位发工资要办一张卡，能在你们这开户吗
            我家附近没有网点，怎么开户最方便
        """,
    },
    "banking.account_closure": {
        "en": """
            I want to close my account
            how do I close my savings account
            please close account {account}
            I'm moving abroad and need to shut down my accounts
            I'd like to cancel my {card_kind} and close the account
            what's the process to close a joint account
            can I close my account over the phone
            I'm switching banks, please close everything
            my father passed away, how do we close his account
            are there any fees for closing my account
            I don't use this account anymore and I'd like to close it and move the balance to my \
            other bank
            how do I shut down my account without going to a branch
        """,
        "zh": """
            我要销户
            储蓄账户怎么注销
            帮我把{account}这个账户销掉
            要出国了，想把账户都注销了
            我想把{card_kind}注销，账户也关掉
            联名账户怎么销户
            电话里可以直接销户吗
            换银行了，这边的账户都不要了
            家里老人去世了，他的账户怎么销
            销户要收手续费吗
            这个账户一直没用，想销掉，钱转到我别的银行卡上
            不去网点能办销户吗
        """,
    },
    "banking.exchange_rate": {
        "en": """
            What's the exchange rate for euros today
            how much is {amount} in yen
            what rate do you give for dollars to pounds
            I need to buy some foreign currency for my trip to {city}
            what's your fee for currency exchange
            is the exchange rate better in the app or at the branch
            how much would I get if I convert {amount}
            can I order travel money for pickup
            what's today's USD to RMB rate
            why was the exchange rate on my overseas payment so bad
            I'm sending money to family in {city} and want to know what rate I'll get
            before I pay with my card in {city}, what conversion rate do you use
        """,
        "zh": """
            今天美元汇率多少
            {amount}能换多少日元
            你们英镑的现汇卖出价是多少
            要去{city}旅游，想换点外币
            换汇手续费怎么收
            APP上换汇和柜台换汇率一样吗
            {amount}换成港币是多少
            外币现钞能提前预约吗
            今天人民币兑美元什么价
            我境外刷卡的汇率怎么这么差
            给在{city}的家人汇款，汇率是按多少算的
            我在{city}刷卡消费的话，你们按什么汇率换算
        """,
    },
    # ------------------------------------------------------------------ telecom
    "telecom.data_plan_change": {
        "en": """
            I want to change my plan to {plan}
            can I switch to a plan with more data
            I'd like to downgrade my plan, I don't use that much data
            how do I upgrade to {plan}
            I want to move from my current plan to {plan}
            is there a cheaper plan with unlimited data
            my plan doesn't have enough data, I want a bigger one every month
            can I change my monthly plan starting next billing cycle
            please switch my line {phone} to {plan}
            what plans do you have with more than {data}
            I've been going over my data every month, I think I need a different plan altogether
            my kids are streaming everything so I want to move the whole family to {plan}
        """,
        "zh": """
            我想把套餐换成{plan}
            能不能换个流量多一点的套餐
            我要降套餐，流量根本用不完
            怎么升级到{plan}
            现在的套餐想改成{plan}
            有没有便宜点的不限量套餐
            每个月流量都不够，想换个大点的套餐
            下个月开始帮我变更一下套餐
            帮我把{phone}这个号的套餐改成{plan}
            有没有每月超过{data}的套餐
            我每个月流量都超，感觉得换个套餐了
            家里孩子天天刷视频，想把全家都换成{plan}
        """,
    },
    "telecom.data_addon_purchase": {
        "en": """
            I ran out of data, can I buy an extra {data}
            how do I add more data just for this month
            I need a data top up, I've used my whole allowance
            can I get a one-time data pack
            what data add-ons do you have
            please add {data} to my line {phone}
            my data ran out halfway through the month, is there a booster
            I just need a little extra data until my plan renews
            how much is an extra {data}
            buy a data bundle for me please, I'm out
            I'm on holiday and just got a text that my data is finished, can I buy a bit more
            I don't want to change my plan, I just need an extra {data} this month
        """,
        "zh": """
            流量用完了，能加个{data}的流量包吗
            这个月想临时加点流量
            流量超了，怎么买流量包
            有没有当月有效的流量包
            你们流量加油包都有哪些
            帮我给{phone}加一个{data}的流量包
            才月中流量就没了，有没有叠加包
            就想先加点流量撑到下个月
            加{data}流量多少钱
            帮我订一个流量包，流量没了
            刚收到短信说流量用完了，能先买点应急吗
            套餐不想改，就这个月多加个{data}
        """,
    },
    "telecom.roaming_activation": {
        "en": """
            I'm going to {city} {future}, how do I turn on roaming
            can you activate international roaming on my phone
            I need roaming enabled before my flight {future}
            will my phone work in {city}
            how do I set up roaming for my trip
            I just landed in {city} and my phone has no service
            please enable data roaming on {phone}
            is there a travel pass for using my phone abroad
            I'm traveling to {city}, what do I need to do so my phone works there
            roaming isn't working, I'm in {city} right now
            I'm flying to {city} {future} for work, can you make sure my phone will work when I land
            my daughter is studying in {city}, can you switch on roaming for her line {phone}
        """,
        "zh": """
            下周要去{city}，怎么开通国际漫游
            帮我开一下国际漫游
            {future}的飞机，走之前要把漫游开了
            我的手机在{city}能用吗
            出国旅游手机要怎么设置
            刚落地{city}手机没信号
            帮{phone}开通一下数据漫游
            有没有出境流量包
            我要去{city}出差，手机要办什么业务才能用
            我现在在{city}，漫游用不了
            我{future}去{city}出差，能不能确保我下飞机手机就能用
            女儿在{city}读书，帮她的号{phone}开一下漫游
        """,
    },
    "telecom.roaming_charges": {
        "en": """
            I got charged {amount} for roaming, that's crazy
            why is there a roaming charge on my bill, I didn't use data abroad
            how much does roaming cost in {city}
            I came back from {city} and my bill is huge because of roaming
            I was told the travel pass covered everything but I got roaming fees
            what are the roaming rates for calls and texts
            can you waive the roaming charges from my trip
            I had roaming turned off and still got charged
            is roaming included in {plan}
            the roaming fee of {amount} on my account {account} is wrong
            I just got back from {city} and there's {amount} in roaming charges on my bill, that \
            can't be right
            I bought the travel pass but was still charged for data abroad
        """,
        "zh": """
            我被扣了{amount}的漫游费，太离谱了
            我在国外没用流量，为什么账单上有漫游费
            在{city}漫游怎么收费
            从{city}回来话费扣了好多，都是漫游费
            说好出境流量包全包的，还收了漫游费
            国际漫游打电话发短信怎么收费
            这次出国的漫游费能减免吗
            漫游明明关了，还是扣钱了
            {plan}包不包含漫游
            账户{account}上那笔{amount}的漫游费不对
            从{city}回来一看，漫游费扣了{amount}，这不对吧
            我买了出境包的，怎么还按漫游收流量费
        """,
    },
    "telecom.bill_inquiry": {
        "en": """
            can you explain my bill this month
            how much do I owe this month
            when is my bill due
            I'd like a breakdown of my latest bill
            what is this {amount} item on my invoice
            why is my bill different from last month
            can I get my bill sent to {email}
            when will my next bill come out
            I want to know what I'm paying for on my phone bill
            what's the total on account {account}
            I'm looking at my bill and I don't understand some of the items, can you go through \
            it with me
            I just want to know the amount due and the due date for this month
        """,
        "zh": """
            帮我看看这个月话费怎么算的
            这个月要交多少钱
            话费什么时候到期
            想要一份最近一期账单明细
            账单上{amount}这一项是什么费用
            为什么这个月话费和上个月不一样
            账单能发到我邮箱{email}吗
            下期账单什么时候出
            我想知道话费都扣在哪了
            账户{account}一共欠费多少
            账单上有几项看不懂，能给我讲一下吗
            就想问下这个月要交多少，最晚哪天交
        """,
    },
    "telecom.bill_dispute": {
        "en": """
            I was overcharged on my bill by {amount}
            my bill is way too high, I want to dispute it
            you charged me for a service I never signed up for
            there's a {amount} fee I never agreed to
            I got billed twice this month
            I cancelled that add-on {date} but I'm still paying for it
            this charge is wrong, I want a refund to my account
            my promo discount wasn't applied, I'm paying full price
            I want to file a complaint about my bill
            why am I being charged for {plan} when I'm on a cheaper plan
            I've been charged {amount} for premium text services I never signed up for, I want it \
            removed
            my bill went up by {amount} with no explanation, I want this corrected
        """,
        "zh": """
            话费多扣了我{amount}
            这个月话费高得离谱，我要投诉
            我没订过的业务你们也扣钱
            账单上有一笔{amount}，我从来没同意过
            这个月被重复扣费了
            {date}就退订了，还在扣钱
            这笔扣费不对，把钱退给我
            说好的优惠没给我算，还是按原价扣的
            我要投诉乱扣费
            我用的是便宜的套餐，为什么按{plan}收费
            扣了我{amount}的增值业务费，我根本没订过，给我退了
            这个月话费莫名其妙多了{amount}，必须给我个说法
        """,
    },
    "telecom.network_outage": {
        "en": """
            there's no signal in my area
            is there an outage in {city}? my phone has no service
            I can't make calls, it says no network
            my mobile service has been down {duration}
            nobody in my building has signal today
            the whole neighborhood lost service, what's going on
            my phone keeps saying emergency calls only
            is the network down? I can't call or text
            I haven't had any service {duration}, is there maintenance
            calls keep dropping and now there's no signal at all
            since the storm {date} my phone shows no bars at all and my neighbors have the same \
            problem
            I'm in {city} and haven't been able to make a single call today
        """,
        "zh": """
            我这边一点信号都没有
            {city}这边是不是断网了，手机没服务
            打不了电话，显示无网络
            手机信号{duration}都没有了
            我们整栋楼今天都没信号
            整个小区都没信号，怎么回事
            手机一直显示只能拨打紧急电话
            网络是不是故障了，电话短信都用不了
            {duration}一点信号都没有，是在维修吗
            电话老是断，现在干脆没信号了
            {date}那场暴雨之后我手机就一格信号都没有了，邻居也一样
            我在{city}，今天一个电话都打不出去
        """,
    },
    "telecom.slow_internet": {
        "en": """
            my internet is really slow
            my home wifi keeps dropping {duration}
            the 5G speed is terrible, pages take forever to load
            I'm paying for {plan} but getting like 2 megabits
            my broadband speed is way lower than advertised
            videos keep buffering, is something wrong with my connection
            my mobile data is super slow even with full bars
            internet speed drops every evening
            the connection is so laggy I can't do video calls for work
            my fiber is slow {duration}, can you check the line
            I work from home and the internet has been crawling {duration}, it's affecting my job
            speed test shows like 3 Mbps on a 500 Mbps plan, something is wrong
        """,
        "zh": """
            网速太慢了
            家里的WiFi{duration}老是掉线
            5G网速特别差，网页半天打不开
            我办的是{plan}，网速才几兆
            宽带网速比你们宣传的差远了
            看视频一直卡，是不是线路有问题
            信号满格但是流量网速很慢
            一到晚上网速就特别慢
            网太卡了，开视频会议都开不了
            光纤{duration}网速都很慢，帮我查下线路
            我在家办公，网{duration}都慢得要死，工作都耽误了
            测速才3兆，我办的可是500兆的宽带
        """,
    },
    "telecom.sim_replacement": {
        "en": """
            I need a new SIM card
            my SIM card is damaged, phone says no SIM
            I lost my phone and need a replacement SIM with the same number
            can I switch to an eSIM
            I need a nano SIM for my new phone
            how do I get a replacement SIM for {phone}
            my SIM stopped working {date}
            the SIM card won't fit my new {phone_model}
            can you send a new SIM to {address}
            I want to change my physical SIM to eSIM on my {phone_model}
            my phone was stolen {date}, I need a new SIM so I can get my number back
            my SIM card got bent when I changed phones and now it won't read
        """,
        "zh": """
            我要补办SIM卡
            手机卡坏了，一直显示无SIM卡
            手机丢了，想补一张原号码的卡
            能换成eSIM吗
            新手机要用nano卡，帮我换一张
            {phone}这个号码怎么补卡
            手机卡{date}突然读不出来了
            旧卡放不进新买的{phone_model}
            新卡能寄到{address}吗
            想把实体卡换成eSIM，手机是{phone_model}
            手机{date}被偷了，要补张卡把号码找回来
            换手机的时候把卡弄弯了，现在读不出来
        """,
    },
    "telecom.number_porting": {
        "en": """
            I want to transfer my number to another carrier
            how do I port my number from my old provider
            can I keep my number {phone} if I switch to you
            I need my PAC code to move my number
            what's my port out number
            I'm switching networks, how do I bring my number with me
            my number transfer has been pending {duration}
            can you help me move my number to a new provider
            I want to port in my number from another company
            the port of {phone} failed, what happened
            I've signed up with another network and they need my port out code, how do I get it
            I'm joining you from another carrier and want to bring my old number {phone}
        """,
        "zh": """
            我想携号转网
            怎么把号码从别的运营商转过来
            转到你们这边，{phone}这个号能保留吗
            携号转网的授权码怎么获取
            我要办携号转出
            换运营商的话号码能带走吗
            携号转网申请了{duration}还没好
            帮我把号码转到别的运营商
            想把别家的号码转进来
            {phone}携转失败了，什么原因
            我在别家办好了，他们要我的携号转网授权码，去哪弄
            我从别的运营商转过来，想把原来的号{phone}带过来
        """,
    },
    "telecom.contract_cancellation": {
        "en": """
            I want to cancel my contract
            how do I end my phone contract early
            what's the early termination fee
            I'd like to cancel my service with you
            please cancel my line {phone}
            I'm moving to {city} and want to cancel my broadband contract
            my contract ends {future}, I don't want it to auto renew
            I want to close my account {account}, I'm unhappy with the service
            can I cancel without paying the remaining months
            I'm leaving, cancel everything please
            I'm moving abroad {future} so I need to terminate my contract
            I've been with you for years but the service keeps getting worse, I'd like to cancel
        """,
        "zh": """
            我要解约
            合约还没到期，能提前解约吗
            提前解约要交多少违约金
            我要销号
            帮我把{phone}这个号注销了
            要搬到{city}了，宽带想退掉
            合约{future}到期，不想自动续约
            服务太差了，账户{account}我不用了
            剩下几个月的月租能不交直接解约吗
            我要把所有业务都取消了
            我{future}要出国了，合约得提前解除
            用了你们好多年了，服务越来越差，我要解约
        """,
    },
    "telecom.top_up": {
        "en": """
            I want to top up my prepaid phone
            how do I add credit to my account
            can I recharge {top_up} on {phone}
            my top up didn't go through
            I paid {top_up} to top up but my balance didn't change
            can I set up auto top up
            how do I top up for my kid's phone
            I need to put some money on my pay as you go SIM
            I recharged the wrong number, can I get it back
            what's the minimum top up amount
            I topped up with my card but the credit never showed up on my phone
            I need to add some credit to my pay as you go phone but the website isn't working
        """,
        "zh": """
            我要充话费
            怎么给手机充值
            帮{phone}充{top_up}话费
            话费充值没成功
            充了{top_up}话费，余额没变
            能设置自动充值吗
            怎么给孩子的手机充话费
            预付费卡要充点钱
            话费充错号码了，能退吗
            最少充多少
            我用银行卡充了话费，但是手机上一直没到账
            想给我的预付费号码充点钱，网站一直打不开
        """,
    },
    "telecom.phone_upgrade": {
        "en": """
            am I eligible for a phone upgrade
            I want to upgrade to the new {phone_model}
            when can I get a new phone on my contract
            do you have any upgrade deals on the {phone_model}
            I'd like to trade in my old phone for a {phone_model}
            can I upgrade my phone early
            how much would the {phone_model} cost on {plan}
            my phone is dying, can I get a new one before my contract ends
            is the {phone_model} in stock for upgrade
            I want a new handset but keep my current plan
            my contract is almost up and I'd like to get the {phone_model}, what would that cost me
            my current phone is three years old, what upgrade options do I have
        """,
        "zh": """
            我能换新手机了吗
            想换{phone_model}，有什么优惠
            合约机什么时候可以换新
            {phone_model}有没有合约价
            旧手机能抵扣换{phone_model}吗
            合约没到期能提前换机吗
            {phone_model}配{plan}一个月多少钱
            手机快不行了，能提前换一台吗
            {phone_model}现在有货吗
            想换个手机，套餐不变
            合约快到期了，想换{phone_model}，要加多少钱
            我手机用了三年了，现在换机有什么方案
        """,
    },
    "telecom.broadband_installation": {
        "en": """
            I want to get broadband installed at my new place
            when can a technician come to install my internet
            I'm moving to {address}, can you set up fiber there
            my installation appointment was {date} but nobody showed up
            is fiber available at {address}
            I need to book an engineer to install my router
            how long does it take to get home internet installed
            I signed up for broadband but haven't heard about installation
            can you reschedule my internet installation
            I want to move my broadband to my new address in {city}
            I'm moving into a new flat {future} and need internet set up from day one
            the engineer came to install the fiber but said the cable wasn't ready, when will \
            someone come back
        """,
        "zh": """
            新家想装宽带
            师傅什么时候能上门装宽带
            我搬到{address}了，那边能装光纤吗
            约了{date}上门安装，结果没人来
            {address}这个地址能装宽带吗
            想预约师傅来装一下路由器
            装宽带一般要等几天
            宽带办了好几天了，还没人联系我安装
            安装时间能不能改一下
            搬家了，宽带要移到{city}的新家
            我{future}搬新家，想一搬进去就有网用
            师傅来装光纤说线没到位，什么时候再来
        """,
    },
    "telecom.international_calling": {
        "en": """
            how much does it cost to call {city} from here
            I want to add international calling to my plan
            I can't make calls to numbers abroad
            is there an international calling package
            my calls to {city} keep failing
            do you have a cheaper rate for calling overseas
            I want to call my family in {city}, what's the best option
            why can't I dial international numbers
            what's the per minute rate to call the UK
            please enable international dialing on {phone}
            my mum lives in {city} and I call her every week, is there a bundle for international \
            minutes
            every time I try to call {city} I get a message that the call can't be connected
        """,
        "zh": """
            从国内打电话到{city}怎么收费
            想在套餐里加个国际长途
            打不了国外的电话
            有没有国际长途优惠包
            打到{city}的电话老是打不通
            打国际长途有没有便宜点的资费
            家里人在{city}，怎么打电话最划算
            为什么拨不了国际号码
            打到英国一分钟多少钱
            帮{phone}开通国际长途
            我妈在{city}，我每周都要打电话，有没有国际长途的包
            每次往{city}打电话都提示无法接通
        """,
    },
    # ------------------------------------------------------------------ ecommerce
    "ecommerce.order_status": {
        "en": """
            where is my order
            can you check the status of order {order}
            I ordered {product} {date}, when will it ship
            has my order shipped yet
            I want to track my package
            what's the tracking number for my order
            my order says processing, what does that mean
            when will my {product} arrive
            can you tell me where order {order} is right now
            I haven't received a shipping confirmation for my order
            I placed an order {date} for a {product} and haven't heard anything since
            the website just says order received, has it actually been sent out yet
        """,
        "zh": """
            我的订单到哪了
            帮我查一下订单{order}的状态
            {date}买的{product}什么时候发货
            我的订单发货了吗
            快递单号是多少
            想查一下物流信息
            订单一直显示处理中是什么意思
            {product}大概什么时候能到
            订单{order}现在到哪里了
            下单好几天了还没收到发货通知
            {date}下单买了个{product}，到现在一点消息都没有
            网站上就显示已下单，到底发没发货
        """,
    },
    "ecommerce.delivery_delayed": {
        "en": """
            my package is late
            my order was supposed to arrive {date} and it still hasn't come
            the delivery has been delayed {duration}
            tracking hasn't updated {duration}
            it says out for delivery but nothing came
            my {product} is a week late, I needed it for a birthday
            why is my delivery taking so long
            the courier keeps pushing back the delivery date
            order {order} is way overdue
            it's been stuck at the warehouse in {city} {duration}
            the estimated delivery was {date} and now it says it'll be another week, that's not \
            acceptable
            I took the day off to wait for the delivery and nobody came
        """,
        "zh": """
            快递怎么还没到
            说好{date}送到的，到现在都没收到
            物流{duration}都没更新了
            显示派送中，但一直没人送
            {product}晚了一个星期，买来送生日礼物的都耽误了
            这次送货怎么这么慢
            快递一直在延迟配送时间
            订单{order}早就该到了
            包裹在{city}的仓库卡了{duration}
            物流停在一个地方不动了
            预计{date}送达的，现在又说要再等一个星期，这也太离谱了
            专门请了假在家等快递，结果一天都没人来
        """,
    },
    "ecommerce.refund_status": {
        "en": """
            where is my refund
            I returned {product} {date} and still haven't got my money back
            when will I get my refund
            my refund was approved but it's not in my account
            how long does a refund take to show up
            can you check the status of my refund for order {order}
            you said the refund was processed but I don't see {amount} on my card
            it's been two weeks and no refund yet
            is my refund on the way
            the refund for my cancelled order hasn't come through
            your team confirmed my refund {date} but my bank says nothing has come in
            I returned the {product} weeks ago, the tracking shows you received it, so where is \
            my money
        """,
        "zh": """
            我的退款到哪了
            {date}就把{product}退回去了，钱还没退给我
            退款什么时候到账
            退款审核通过了，但是钱没到
            退款一般几天到账
            帮我查下订单{order}的退款进度
            说已经退款了，但卡上没看到那{amount}
            都两个星期了还没退款
            退款在路上了吗
            取消的订单钱一直没退回来
            你们{date}就说退款了，银行那边说没收到
            {product}几个星期前就寄回去了，物流显示你们签收了，钱呢
        """,
    },
    "ecommerce.refund_request": {
        "en": """
            I want a refund
            can I get my money back for order {order}
            I'd like a refund for the {product}, it's not what I expected
            please refund me, the item never arrived
            I want to request a refund for {amount}
            how do I ask for a refund
            the {product} is useless, I want my money back
            I was charged {amount} for something I cancelled, refund please
            can I get a partial refund since it came late
            I paid for express shipping and it came late, I want that refunded
            the {product} stopped working after two days and I'd rather have my money back than a \
            replacement
            I was charged for an order that got cancelled, I want the {amount} back
        """,
        "zh": """
            我要退款
            订单{order}能退款吗
            {product}和描述的不一样，我要退钱
            东西一直没收到，给我退款
            申请退款{amount}
            怎么申请退款
            {product}根本没法用，把钱退给我
            订单取消了还扣了我{amount}，给我退了
            送这么晚，能退一部分钱吗
            加钱买的加急配送结果还是晚了，运费退给我
            {product}用了两天就坏了，不要换新的了，直接退钱吧
            订单都取消了还扣了我{amount}，把钱退回来
        """,
    },
    "ecommerce.return_item": {
        "en": """
            I want to return the {product} I bought
            how do I send back an item
            can I return something I bought {date}
            I need a return label for order {order}
            what's your return policy
            the {clothing} doesn't fit, I want to return it
            can I drop off a return at a store
            I changed my mind about the {product}, can I send it back
            is it too late to return my order
            please arrange a pickup for my return at {address}
            the {clothing} doesn't fit at all, how do I send it back to you
            I bought a {product} as a gift but they already have one, can I return it unopened
        """,
        "zh": """
            我买的{product}想退货
            怎么退货
            {date}买的东西现在还能退吗
            订单{order}退货要怎么寄回
            你们的退货政策是什么
            {clothing}尺码不合适，我要退
            能到门店退货吗
            {product}不想要了，七天无理由能退吗
            现在退货还来得及吗
            退货能上门取件吗，地址是{address}
            {clothing}穿着完全不合身，怎么寄回去
            买了个{product}送人，结果人家已经有了，没拆封能退吗
        """,
    },
    "ecommerce.exchange_item": {
        "en": """
            can I exchange the {clothing} for a different size
            I want to swap my order for another color
            the {clothing} is too small, can I get a bigger one instead
            how do I exchange an item
            I'd like to exchange, not return, the {product}
            can I exchange it for a different model
            I ordered the wrong size, I want to exchange it
            is it possible to exchange order {order}
            I want to trade the {product} for the newer version and pay the difference
            exchange the shoes for a size 9 please
            I love the {clothing} but it's a size too small, can you swap it for the next size up
            the {product} works but I ordered the wrong color, can I swap it
        """,
        "zh": """
            {clothing}能换个尺码吗
            想换个颜色
            {clothing}小了，能换大一号的吗
            怎么换货
            {product}我不退，想换一个
            能换成别的型号吗
            尺码买错了，想换一下
            订单{order}能换货吗
            想把{product}换成新款，差价我补
            鞋子帮我换成42码的
            {clothing}挺喜欢的，就是小了一码，能换大一码吗
            {product}没问题，就是颜色选错了，能换一个吗
        """,
    },
    "ecommerce.cancel_order": {
        "en": """
            I want to cancel my order
            please cancel order {order}
            I ordered {product} by mistake, can I cancel
            can I still cancel if it hasn't shipped
            how do I cancel an order I just placed
            I changed my mind, cancel the {product} please
            I placed a duplicate order, cancel one of them
            cancel my order before it ships please
            is it too late to cancel order {order}
            I found it cheaper elsewhere, I'd like to cancel
            I just placed an order for a {product} and realised I picked the wrong one, please \
            cancel it before it ships
            my order hasn't been dispatched yet so I'd like to cancel it and get my money back
        """,
        "zh": """
            我要取消订单
            帮我把订单{order}取消了
            {product}拍错了，能取消吗
            还没发货的话能取消吗
            刚下的单怎么取消
            {product}不要了，帮我取消
            重复下单了，取消一个
            趁还没发货赶紧帮我取消
            订单{order}现在还能取消吗
            别家更便宜，这单我不要了
            刚拍了个{product}，发现选错了，没发货的话帮我取消一下
            订单还没发出来，我想取消，钱退回原账户
        """,
    },
    "ecommerce.change_address": {
        "en": """
            I need to change the delivery address on my order
            can you ship order {order} to {address} instead
            I put the wrong address, can I update it
            I moved, please send my {product} to {address}
            can I change where my package is going
            please update my shipping address to {address}
            my order is going to my old address
            can the courier deliver to my work address instead
            I typed my address wrong, it should be {address}
            how do I edit the address on an order that's already placed
            I'm not going to be home this week, can you redirect my parcel to my office at {address}
            the order is going to my parents' place by mistake, please change it to {address}
        """,
        "zh": """
            我想改一下订单的收货地址
            订单{order}能改寄到{address}吗
            地址填错了，能改吗
            搬家了，{product}帮我寄到{address}
            包裹能改地址吗
            收货地址改成{address}
            订单寄到旧地址去了
            能不能让快递送到我公司
            地址写错了，应该是{address}
            已经下单了怎么修改地址
            这周我不在家，快递能改送到我公司吗，地址{address}
            收货地址默认成我爸妈家了，帮我改成{address}
        """,
    },
    "ecommerce.damaged_item": {
        "en": """
            my {product} arrived broken
            the item was damaged when I opened the box
            the package was crushed and the {product} inside is cracked
            I received a damaged {product}
            the screen on the {product} is shattered out of the box
            the box was soaking wet and the item is ruined
            the {product} has a big dent in it
            my order {order} came damaged, what do I do
            the glass was smashed when it arrived
            it's scratched all over, clearly damaged in shipping
            I just opened the box and the {product} is broken in two places, the packaging was \
            terrible
            the {product} arrived with a cracked case and it won't turn on
        """,
        "zh": """
            收到的{product}是坏的
            打开箱子东西就是坏的
            快递箱都压扁了，里面的{product}也裂了
            我收到的{product}有破损
            {product}屏幕一打开就是碎的
            箱子湿透了，东西都泡坏了
            {product}有个大凹痕
            订单{order}收到是坏的，怎么办
            玻璃杯到的时候已经碎了
            东西全是划痕，肯定是运输弄坏的
            刚拆开箱子{product}就有两处摔坏了，包装太差了
            {product}到的时候外壳就裂了，开都开不了机
        """,
    },
    "ecommerce.wrong_item": {
        "en": """
            I received the wrong item
            I ordered {product} but got something completely different
            you sent me the wrong size
            this isn't what I ordered
            the color is wrong, I ordered black and got pink
            I got someone else's order
            the box had a {product} in it but I never ordered that
            order {order} has the wrong product in it
            wrong model was delivered
            I opened the package and it's not my stuff
            I ordered a {product} and opened the box to find a {clothing}, can you sort this out
            the label on the box is right but the item inside isn't what I bought
        """,
        "zh": """
            发错货了
            我买的是{product}，收到的完全是别的东西
            尺码发错了
            这根本不是我下单的东西
            颜色发错了，我要黑色的结果来的是粉色
            收到的是别人的快递
            箱子里是{product}，我没买过这个
            订单{order}发的商品不对
            型号发错了
            拆开一看不是我买的
            我买的是{product}，打开一看是件{clothing}，怎么回事
            快递单是对的，里面的东西不是我买的
        """,
    },
    "ecommerce.missing_item": {
        "en": """
            part of my order is missing
            I only got two of the three items I ordered
            the package arrived but the {product} wasn't in it
            the box was empty
            my order {order} is missing an item
            it says delivered but I never got it
            one of the items from my order never showed up
            the accessories that come with the {product} are missing
            half my order didn't arrive
            tracking says delivered {date} but there's nothing at my door
            I ordered a {product} and a {clothing} but only the {clothing} came
            the app says my parcel was left at the door {date} but there was nothing there when I \
            got home
        """,
        "zh": """
            我的订单少了东西
            买了三件只到了两件
            包裹到了，但是里面没有{product}
            箱子是空的
            订单{order}少发了一件
            显示已签收，但我根本没收到
            订单里有个商品一直没到
            {product}的配件没给
            买的东西只到了一半
            物流显示{date}签收了，门口什么都没有
            我买了{product}和{clothing}，结果只到了{clothing}
            APP上说{date}放门口了，我回家门口啥都没有
        """,
    },
    "ecommerce.payment_failed": {
        "en": """
            my payment keeps failing at checkout
            I can't pay for my order, the card gets declined
            payment error when I try to buy {product}
            I was charged but the order didn't go through
            why won't my {card_kind} work on your site
            checkout keeps saying payment unsuccessful
            the payment page just spins and then times out
            I tried three different cards and none of them work
            money was taken {amount} but I got no order confirmation
            paying with card {card} fails every time
            I've been trying to check out for an hour and it keeps saying my payment was \
            declined, my bank says everything is fine
            the payment went through on my banking app but your site says the order failed
        """,
        "zh": """
            结账的时候一直支付失败
            付不了款，银行卡被拒了
            买{product}的时候支付报错
            钱扣了但是订单没下成功
            为什么我的{card_kind}在你们这付不了
            付款一直提示支付不成功
            支付页面一直转圈然后就超时了
            换了三张卡都付不了
            扣了{amount}但没收到订单确认
            用{card}这张卡付款每次都失败
            结账结了一个小时都说支付被拒，银行那边说卡没问题
            手机银行显示扣款成功了，你们网站说下单失败
        """,
    },
    "ecommerce.coupon_issue": {
        "en": """
            my coupon code isn't working
            the discount didn't apply at checkout
            it says my promo code is invalid
            I have a voucher for {amount} off but it won't let me use it
            I forgot to use my coupon, can you apply it now
            the sale price wasn't applied to my {product}
            the coupon expired but I got it just {date}
            why can't I use two discount codes
            I was promised a {amount} credit and it's not there
            my first order discount didn't work
            I got an email with a {amount} off code but it says not eligible when I enter it
            the promo said 20% off everything but my total didn't change
        """,
        "zh": """
            优惠券用不了
            结账的时候优惠没减
            提示优惠码无效
            有张满减{amount}的券，就是用不上
            下单忘了用优惠券，还能补吗
            {product}的活动价没给我算
            优惠券{date}才领的，怎么就过期了
            为什么两张券不能一起用
            说好返{amount}的，没到账
            新人优惠没生效
            邮件里给了个减{amount}的码，输进去说不符合条件
            活动说全场八折，结账金额一点没变
        """,
    },
    "ecommerce.invoice_request": {
        "en": """
            I need an invoice for my order
            can you send me a receipt for order {order}
            I need a VAT invoice for my company
            where can I download my invoice
            please email the invoice to {email}
            the invoice has the wrong company name
            I need a receipt for the {product} for a warranty claim
            can I get an invoice with my business address {address}
            I never got a receipt for my purchase {date}
            can you reissue the invoice, I lost it
            my company needs an invoice with our tax number on it for the {product} I bought
            I need an itemised receipt for my expense report, how do I get one
        """,
        "zh": """
            我要开发票
            订单{order}能开个发票吗
            公司报销要增值税专用发票
            电子发票在哪下载
            发票发到我邮箱{email}
            发票抬头开错了
            {product}保修要发票，能补开吗
            发票寄到{address}
            {date}买的东西一直没给我发票
            发票丢了，能重开一张吗
            公司报销要开带税号的发票，买的是{product}
            报销要一份带明细的发票，怎么开
        """,
    },
    "ecommerce.account_login": {
        "en": """
            I can't log into my account
            I forgot my password
            the password reset email never comes
            my account is locked after too many login attempts
            it says my email {email} isn't registered but I've ordered before
            I'm not getting the verification code to sign in
            how do I reset my password
            I can't sign in on the app
            my login stopped working {date}
            someone changed my password, I can't get in
            I changed my phone and now I can't get the login code to my new number
            every time I try to reset my password the link says it's expired
        """,
        "zh": """
            账号登不上去了
            密码忘了
            重置密码的邮件一直收不到
            登录失败次数太多，账号被锁了
            提示邮箱{email}没注册，可我之前买过东西
            登录收不到验证码
            密码怎么找回
            APP登不上
            {date}开始就登录不了了
            密码被人改了，进不去了
            换了手机号，登录验证码收不到了
            每次重置密码，链接都提示已过期
        """,
    },
}

# Vague requests that fit every intent of the group about equally well.
CONFUSABLE_GROUPS: tuple[tuple[tuple[str, ...], dict[str, tuple[str, ...]]], ...] = (
    (
        ("banking.card_lost", "banking.card_stolen", "banking.card_blocked"),
        {
            "en": _lines("""
                I need to freeze my card right now
                something happened with my {card_kind} and I need it stopped
                please block my card immediately
                I don't have my card anymore, what should I do
                I need a new card, the old one's a problem
            """),
            "zh": _lines("""
                赶紧帮我把卡冻结
                我的{card_kind}出问题了，先帮我停掉
                马上把我的卡锁了
                卡不在我手上了，怎么办
                我要重新办张卡，原来那张用不了
            """),
        },
    ),
    (
        ("banking.card_activation", "banking.pin_reset", "banking.card_blocked"),
        {
            "en": _lines("""
                my new card isn't working
                I can't use my card at the ATM
                the card doesn't work when I try to pay
            """),
            "zh": _lines("""
                新卡用不了
                在ATM上用不了卡
                卡付款的时候用不了
            """),
        },
    ),
    (
        ("banking.unrecognized_transaction", "banking.transfer_failed", "banking.balance_inquiry"),
        {
            "en": _lines("""
                there's money missing from my account
                my balance doesn't look right
                {amount} went out of my account {date}, what is it
            """),
            "zh": _lines("""
                我账户里的钱少了
                余额对不上
                {date}账户里出去了{amount}，怎么回事
            """),
        },
    ),
    (
        ("banking.transfer_failed", "banking.transfer_limit"),
        {
            "en": _lines("""
                I can't send the money
                the transfer won't go through
                it won't let me transfer {amount}
            """),
            "zh": _lines("""
                钱转不出去
                转账一直不成功
                转{amount}转不了
            """),
        },
    ),
    (
        ("banking.credit_limit_increase", "banking.loan_inquiry"),
        {
            "en": _lines("""
                I need to borrow a bit more money
                can I get more credit
            """),
            "zh": _lines("""
                想多借点钱
                能给我多点额度吗
            """),
        },
    ),
    (
        ("banking.account_opening", "banking.account_closure", "banking.statement_request"),
        {
            "en": _lines("""
                I have a question about my account
                I need some paperwork for my account
            """),
            "zh": _lines("""
                咨询一下账户的事
                账户的手续要怎么办
            """),
        },
    ),
    (
        ("telecom.data_plan_change", "telecom.data_addon_purchase", "telecom.top_up"),
        {
            "en": _lines("""
                I keep running out of data, what can I do
                I need more data
                I want to get more data on {phone}
            """),
            "zh": _lines("""
                流量老是不够用，怎么办
                我需要多点流量
                {phone}想多弄点流量
            """),
        },
    ),
    (
        ("telecom.roaming_activation", "telecom.roaming_charges", "telecom.international_calling"),
        {
            "en": _lines("""
                I'm traveling to {city}, how does my phone work there
                question about using my phone abroad
                what happens with my phone when I'm in {city}
            """),
            "zh": _lines("""
                要去{city}了，手机在那边怎么用
                咨询一下手机出国的问题
                我在{city}的话手机怎么收费
            """),
        },
    ),
    (
        ("telecom.bill_inquiry", "telecom.bill_dispute", "telecom.roaming_charges"),
        {
            "en": _lines("""
                my bill is higher than usual
                I have a question about a charge on my bill
                why is my bill {amount} this month
            """),
            "zh": _lines("""
                这个月话费比平时高
                账单上有笔费用想问一下
                这个月怎么扣了{amount}
            """),
        },
    ),
    (
        ("telecom.network_outage", "telecom.slow_internet", "telecom.broadband_installation"),
        {
            "en": _lines("""
                my internet isn't working properly
                I'm having problems with my connection
                the internet at home is a mess {duration}
            """),
            "zh": _lines("""
                网络用不了
                网有问题
                家里的网{duration}都不正常
            """),
        },
    ),
    (
        ("telecom.contract_cancellation", "telecom.number_porting"),
        {
            "en": _lines("""
                I want to switch to another provider
                I'm leaving for a different network
            """),
            "zh": _lines("""
                我想换到别的运营商
                不想用你们家了，要换一家
            """),
        },
    ),
    (
        ("telecom.sim_replacement", "telecom.phone_upgrade"),
        {
            "en": _lines("""
                I got a new phone and need to get it working
                my phone doesn't work anymore, what are my options
            """),
            "zh": _lines("""
                换了新手机，要怎么弄才能用
                手机用不了了，该怎么办
            """),
        },
    ),
    (
        ("ecommerce.refund_status", "ecommerce.refund_request", "ecommerce.return_item"),
        {
            "en": _lines("""
                I have a question about my refund
                I want my money back for order {order}
                what's happening with the {product} I sent back
            """),
            "zh": _lines("""
                问一下退款的事
                订单{order}的钱我要拿回来
                退回去的{product}怎么样了
            """),
        },
    ),
    (
        ("ecommerce.order_status", "ecommerce.delivery_delayed", "ecommerce.missing_item"),
        {
            "en": _lines("""
                I still don't have my package
                where's my {product}
                I haven't got order {order}
            """),
            "zh": _lines("""
                包裹还没收到
                我的{product}呢
                订单{order}的东西我没收到
            """),
        },
    ),
    (
        ("ecommerce.damaged_item", "ecommerce.wrong_item", "ecommerce.exchange_item"),
        {
            "en": _lines("""
                there's a problem with the {product} I received
                what I got isn't right
                the {product} I received isn't OK, I want a replacement
            """),
            "zh": _lines("""
                收到的{product}有问题
                收到的东西不对劲
                {product}有问题，给我换一个
            """),
        },
    ),
    (
        ("ecommerce.cancel_order", "ecommerce.change_address"),
        {
            "en": _lines("""
                I need to change my order
                I made a mistake on order {order}
            """),
            "zh": _lines("""
                订单要改一下
                订单{order}下错了
            """),
        },
    ),
    (
        ("ecommerce.payment_failed", "ecommerce.coupon_issue"),
        {
            "en": _lines("""
                I had a problem at checkout
                the price at checkout was wrong
            """),
            "zh": _lines("""
                结账的时候出问题了
                付款金额不对
            """),
        },
    ),
    (
        ("ecommerce.account_login", "banking.pin_reset"),
        {
            "en": _lines("""
                I can't remember my password
                I'm locked out
            """),
            "zh": _lines("""
                密码记不住了
                被锁住了进不去
            """),
        },
    ),
    (
        ("ecommerce.invoice_request", "banking.statement_request", "telecom.bill_inquiry"),
        {
            "en": _lines("""
                can you email me a copy of the document for last month
                I need paperwork for my expenses
            """),
            "zh": _lines("""
                上个月的单子能发我一份吗
                报销要用的单据怎么弄
            """),
        },
    ),
)

TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    label: {language: _lines(block) for language, block in by_language.items()}
    for label, by_language in _TEMPLATES.items()
}
LABELS: tuple[str, ...] = tuple(sorted(TEMPLATES))
LANGUAGES: tuple[str, ...] = ("en", "zh")


def domain_of(label: str) -> str:
    """The business domain (``banking``, ``telecom``, ``ecommerce``) an intent belongs to."""
    return label.split(".", 1)[0]


def vague_templates(label: str, language: str) -> tuple[str, ...]:
    """Vague phrasings shared between ``label`` and the intents it is easily confused with."""
    return tuple(
        template
        for labels, by_language in CONFUSABLE_GROUPS
        if label in labels
        for template in by_language[language]
    )


SLOT_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "en": {
        "card_kind": ("card", "credit card", "debit card", "Visa", "Mastercard", "bank card"),
        "place": (
            "at the mall", "on the bus", "at the gym", "in a taxi", "at a restaurant",
            "on the train", "at the airport", "at work", "at the supermarket", "downtown",
        ),
        "merchant": (
            "Amazon", "Uber", "a gas station", "Walmart", "some online store", "Netflix",
            "Apple.com", "a restaurant I've never been to", "PayPal", "Steam", "Tesco",
        ),
        "city": (
            "Paris", "Tokyo", "New York", "Bangkok", "London", "Singapore", "Dubai",
            "Barcelona", "Hong Kong", "Mexico City", "Toronto", "Seoul", "Sydney", "Rome",
        ),
        "plan": (
            "Unlimited Plus", "the 20GB plan", "Family Share", "5G Max", "the basic plan",
            "the $35 prepaid plan", "Unlimited Premium", "the student plan", "the 50 gig plan",
        ),
        "data": ("5GB", "10 gigs", "2GB", "20 GB", "a few gigs", "1 gig", "15GB"),
        "product": (
            "wireless earbuds", "coffee maker", "running shoes", "hoodie", "phone case",
            "air fryer", "TV", "backpack", "laptop", "blender", "winter jacket", "desk lamp",
            "vacuum cleaner", "smartwatch", "yoga mat", "gaming headset", "office chair",
        ),
        "clothing": (
            "jeans", "hoodie", "running shoes", "winter jacket", "dress", "sneakers", "t-shirt",
            "boots",
        ),
        "phone_model": (
            "iPhone 16", "iPhone 16 Pro", "Galaxy S25", "Pixel 9", "Galaxy A55", "iPhone 15",
        ),
        "duration": (
            "since yesterday", "for three days", "all week", "since Monday",
            "for the past two hours", "on and off for a week", "since this morning",
            "for like ten days",
        ),
    },
    "zh": {
        "card_kind": ("信用卡", "储蓄卡", "银行卡", "借记卡", "卡", "工资卡"),
        "place": (
            "商场", "地铁上", "出租车上", "饭店", "健身房", "机场", "公交车上", "公司",
            "超市", "火车站",
        ),
        "merchant": (
            "淘宝", "美团", "拼多多", "京东", "一个不认识的商户", "滴滴", "某个游戏平台",
            "境外网站", "抖音", "加油站",
        ),
        "city": (
            "东京", "曼谷", "香港", "新加坡", "巴黎", "首尔", "伦敦", "悉尼", "澳门",
            "大阪", "纽约", "吉隆坡", "迪拜",
        ),
        "plan": (
            "59元套餐", "无限流量套餐", "5G畅享套餐", "家庭融合套餐", "129元的套餐",
            "30G套餐", "校园卡套餐", "199元的5G套餐",
        ),
        "data": ("10G", "5个G", "20G", "2G", "几个G", "1G", "15G"),
        "product": (
            "蓝牙耳机", "空气炸锅", "运动鞋", "羽绒服", "手机壳", "电饭煲", "扫地机器人",
            "奶粉", "笔记本电脑", "榨汁机", "行李箱", "台灯", "智能手表", "瑜伽垫",
            "洗面奶", "电动牙刷", "连衣裙",
        ),
        "clothing": ("运动鞋", "羽绒服", "连衣裙", "牛仔裤", "卫衣", "T恤", "靴子", "外套"),
        "phone_model": (
            "iPhone 16", "iPhone 16 Pro", "华为Mate 70", "小米15", "荣耀Magic7", "vivo X200",
        ),
        "duration": (
            "从昨天开始", "三天了", "一整个星期", "从周一到现在", "两个多小时了",
            "断断续续一个星期", "从早上开始", "快十天了",
        ),
    },
}
