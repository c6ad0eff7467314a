"""Compare the model families: accuracy at one epsilon, training time, upload per round.

Usage:

    python benchmarks/model_families.py banking77 ../shared/datasets/banking77 --out fam-b77
    python benchmarks/model_families.py banking77 ../shared/datasets/banking77 --out fam-b77-10 \
        --models minilm-head,minilm-finetune --rounds 10
    python benchmarks/model_families.py chinese --out fam-zh [--size 2000] \
        [--models ngram,use-multilingual] [--epsilons 8,inf] [--chinese-label-names] \
        [--privacy-model distributed]
    python benchmarks/model_families.py speed --out fam-speed [--sentences 1000]
    python benchmarks/model_families.py mixed --out fam-mixed [--epsilons 8] [--size 600]

``banking77``: partitions the dataset as ``fedintent bench`` does (10 sites, Dirichlet alpha 0.5,
partition seed 0) and runs ``fedintent train --model M --epsilon 8`` for each family (a real
Flower simulation; settings as ``fedintent train`` chooses them). ``chinese``: generates
synthetic Chinese call-center sites (``fedintent synth --lang zh``), trains each family that
reads Chinese at each epsilon (inf: no DP), and scores the centralized non-private TF-IDF +
logistic-regression baseline on the same train/test splits; with ``--chinese-label-names`` the
same sites carry Chinese intent names (``CHINESE_LABELS``), so the label-name prior is built
from Chinese text instead of English; with ``--privacy-model distributed`` the DP runs use
distributed DP over SecAgg+ (``fedintent train --privacy-model distributed``). ``speed``:
featurizes the intent utterances of synthetic English and Chinese sites with each family in
this process (the encoder loaded first, no feature cache) and reports sentences per second and
the load average.
``mixed``: generates sites that hold both English and Chinese conversations (``fedintent synth
--lang en,zh``), trains one federation over all of them, then each language apart (the same
sites keeping only that language's conversations), and scores every model on each language's
test rows. The utterances are embedded once, into a cache every run's sites start from (hard
links, as ``fedintent bench`` does), so the runs differ only in what they train on.
Each finished run is kept in OUT and not redone; ``results.md`` is rewritten at the end.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from models import get_model_family

FAMILIES = {"banking77": ["minilm-head", "ngram", "minilm-finetune"],
            "chinese": ["ngram", "use-multilingual"],
            "speed": ["minilm-head", "use-multilingual", "ngram"],
            "mixed": ["use-multilingual"]}
"""Each suite's families: MiniLM cannot read Chinese (most characters are [UNK] to it)."""
LANGUAGES = ("en", "zh")
CHINESE_LABELS = {
    "banking.account_closure": "银行.销户", "banking.account_opening": "银行.开户",
    "banking.balance_inquiry": "银行.查询余额", "banking.card_activation": "银行.激活银行卡",
    "banking.card_blocked": "银行.银行卡被冻结", "banking.card_lost": "银行.银行卡丢失",
    "banking.card_stolen": "银行.银行卡被盗", "banking.credit_limit_increase": "银行.提高信用额度",
    "banking.exchange_rate": "银行.汇率", "banking.loan_inquiry": "银行.贷款咨询",
    "banking.pin_reset": "银行.重置密码", "banking.statement_request": "银行.申请对账单",
    "banking.transfer_failed": "银行.转账失败", "banking.transfer_limit": "银行.转账限额",
    "banking.unrecognized_transaction": "银行.不明交易",
    "ecommerce.account_login": "电商.账号登录", "ecommerce.cancel_order": "电商.取消订单",
    "ecommerce.change_address": "电商.修改收货地址", "ecommerce.coupon_issue": "电商.优惠券问题",
    "ecommerce.damaged_item": "电商.商品损坏", "ecommerce.delivery_delayed": "电商.配送延误",
    "ecommerce.exchange_item": "电商.换货", "ecommerce.invoice_request": "电商.开发票",
    "ecommerce.missing_item": "电商.少件漏发", "ecommerce.order_status": "电商.订单状态",
    "ecommerce.payment_failed": "电商.支付失败", "ecommerce.refund_request": "电商.申请退款",
    "ecommerce.refund_status": "电商.退款进度", "ecommerce.return_item": "电商.退货",
    "ecommerce.wrong_item": "电商.发错商品", "telecom.bill_dispute": "电信.账单争议",
    "telecom.bill_inquiry": "电信.账单查询", "telecom.broadband_installation": "电信.宽带安装",
    "telecom.contract_cancellation": "电信.解约", "telecom.data_addon_purchase": "电信.购买流量包",
    "telecom.data_plan_change": "电信.更改套餐", "telecom.international_calling": "电信.国际通话",
    "telecom.network_outage": "电信.网络中断", "telecom.number_porting": "电信.携号转网",
    "telecom.phone_upgrade": "电信.换购手机", "telecom.roaming_activation": "电信.开通漫游",
    "telecom.roaming_charges": "电信.漫游费用", "telecom.sim_replacement": "电信.补换SIM卡",
    "telecom.slow_internet": "电信.网速慢", "telecom.top_up": "电信.充值",
}
"""The synthetic taxonomy's intents in Chinese (``--chinese-label-names``), written for this
measurement: what a Chinese call center's own taxonomy would call them."""


def fedintent(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "fedintent.cli", *args], check=True)


def train(data: Path, out: Path, model: str, epsilon: str, extra: list[str],
          features: Path | None = None) -> dict:
    """Run (or reuse) one training run; its accuracy, time and upload from metrics.json. With
    ``features``, every site's feature store starts as hard links to that cache."""
    metrics_path = out / "metrics.json"
    if not (metrics_path.is_file() and json.loads(metrics_path.read_text())["status"]
            == "completed"):
        if out.exists():
            raise SystemExit(f"{out} holds an unfinished run: remove it and start again")
        started = time.monotonic()
        # Each run gets fresh site ledgers: sharing them, a later run would find the sites'
        # lifetime budget partly spent and train with more noise.
        state = out.with_name(out.name + "-state")
        shutil.rmtree(state, ignore_errors=True)
        for site in sorted(data.glob("site-*")) if features else []:
            # A site prunes its own store to its rows and never rewrites a file in place.
            shutil.copytree(features, state / site.name / "features", copy_function=os.link)
        fedintent("train", "--data", str(data), "--model", model, "--epsilon", epsilon,
                  "--out", str(out), "--state-dir", str(state), *extra)
        (out / "wall_seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    metrics = json.loads(metrics_path.read_text())
    rounds = metrics["rounds"]
    uploads = [r["upload_bytes_per_site"] for r in rounds if "upload_bytes_per_site" in r]
    return {
        "model": model,
        "accuracy": metrics["final"]["accuracy"],
        "max_epsilon": metrics["final"]["max_epsilon"],
        "rounds": len(rounds),
        "wall_seconds": float((out / "wall_seconds.txt").read_text()),
        # None under SecAgg+: the masked vectors are in the sites' egress logs instead
        "upload_bytes_per_site_round": sum(uploads) / len(uploads) if uploads else None,
    }


def banking77(args: argparse.Namespace) -> list[str]:
    data = args.out / "sites"
    if not data.exists():
        fedintent("partition", str(args.data), "--sites", "10", "--alpha", "0.5", "--out",
                  str(data))
    rows = ["| model | test accuracy | max site epsilon | rounds | training time | upload per "
            "site per round |", "| --- | --- | --- | --- | --- | --- |"]
    for model in args.models:
        extra = ["--rounds", str(args.rounds)] if args.rounds else []
        r = train(data, args.out / model, model, "8", extra)
        rows.append(f"| `{model}` | {r['accuracy']:.4f} | {r['max_epsilon']:.3f} | {r['rounds']} "
                    f"| {r['wall_seconds']:.0f} s | {r['upload_bytes_per_site_round'] / 1e3:,.1f}"
                    " kB |")
    return rows


def chinese(args: argparse.Namespace) -> list[str]:
    from data_synth.baseline import tfidf_baseline_accuracy

    data = args.out / "sites"
    if not data.exists():
        fedintent("synth", "--lang", "zh", "--sites", "10", "--seed", "1", "--size",
                  str(args.size), "--out", str(data))
    if args.chinese_label_names:
        data = relabelled(data, CHINESE_LABELS, args.out / "sites-chinese-labels")
    rows = ["| method | test accuracy | training time |", "| --- | --- | --- |"]
    extra = ["--rounds", str(args.rounds)] if args.rounds else []
    for model in args.models:
        for epsilon in args.epsilons.split(","):
            name = f"{model}-inf" if epsilon == "inf" else f"{model}-eps{epsilon}"
            privacy = "no DP" if epsilon == "inf" else f"epsilon {epsilon} per site"
            run_extra = extra
            if args.privacy_model == "distributed" and epsilon != "inf":
                name, privacy = f"{name}-distributed", f"distributed DP, {privacy}"
                run_extra = [*extra, "--privacy-model", "distributed"]
            runs = [train(data, args.out / (name if seed == 0 else f"{name}-seed{seed}"),
                          model, epsilon, [*run_extra, "--seed", str(seed)])
                    for seed in args.seeds]
            rows.append(f"| federated `{model}`, {privacy} | {seeds_cell(runs)} | "
                        f"{sum(r['wall_seconds'] for r in runs) / len(runs):.0f} s |")
        if get_model_family(model).base_model is not None:
            prior, probe = pooled_scores(data, model, args.out / "features")
            rows += [f"| `{model}`'s label-name prior alone (zero-shot, no training) | "
                     f"{prior:.4f} | |",
                     f"| centralized logistic regression on `{model}`'s features, no DP | "
                     f"{probe:.4f} | |"]
    tfidf = tfidf_baseline_accuracy(data, "zh")
    return rows + [f"| centralized TF-IDF (char 1-3 grams) + logistic regression, no DP | "
                   f"{tfidf:.4f} | |"]


def seeds_cell(runs: list[dict]) -> str:
    """One run's accuracy, or the mean of several seeds' with each seed's in brackets."""
    accuracies = [r["accuracy"] for r in runs]
    mean = sum(accuracies) / len(accuracies)
    if len(runs) == 1:
        return f"{mean:.4f}"
    return f"{mean:.4f} ({' / '.join(f'{a:.4f}' for a in accuracies)})"


def relabelled(data: Path, names: dict[str, str], out: Path) -> Path:
    """A copy of ``data`` whose labels, in ``labels.txt`` and every conversation's ``intent``,
    are renamed by ``names``."""
    return derived_sites(data, out, names.__getitem__,
                         lambda row: row | {"intent": names[row["intent"]]})


def derived_sites(data: Path, out: Path, label: Callable[[str], str],
                  row: Callable[[dict], dict | None]) -> Path:
    """A copy of ``data`` (written once, then reused) with every label renamed by ``label`` and
    every conversation replaced by ``row``'s (None: left out); a site left with no training or
    no test rows is dropped."""
    if out.exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    labels = (data / "labels.txt").read_text(encoding="utf-8").split()
    (tmp / "labels.txt").write_text("".join(f"{label(name)}\n" for name in labels),
                                    encoding="utf-8")
    for site in sorted(data.glob("site-*")):
        kept = {split: [new for line in (site / split).read_text(encoding="utf-8").splitlines()
                        if line.strip() and (new := row(json.loads(line))) is not None]
                for split in ("train.jsonl", "test.jsonl")}
        if all(kept.values()):
            (tmp / site.name).mkdir()
            for split, rows in kept.items():
                (tmp / site.name / split).write_text(
                    "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    tmp.rename(out)
    return out


def pooled_scores(data: Path, model: str, cache: Path) -> tuple[float, float]:
    """Test accuracy of the family's initial model (the label-name prior) and of a non-private
    logistic regression on its features of every site's training rows pooled: what the frozen
    encoder allows before federation and DP take their share."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from fl_client.data_files import list_site_dirs
    from fl_client.site_data import load_site
    from fl_protocol.label_file import read_labels

    family, labels = get_model_family(model), read_labels(data / "labels.txt")
    sites = [load_site(site, labels) for site in list_site_dirs(data)]  # redacted, as at a site
    splits = {split: [getattr(site, split) for site in sites] for split in ("train", "test")}
    x = {split: family.featurize([text for part in parts for text in part.texts], cache)
         for split, parts in splits.items()}
    y = {split: [label for part in parts for label in part.labels]
         for split, parts in splits.items()}
    with torch.no_grad():
        guesses = family.initial_model(labels)(x["test"]).argmax(dim=1).tolist()
    prior = sum(g == t for g, t in zip(guesses, y["test"], strict=True)) / len(guesses)
    probe = LogisticRegression(max_iter=2000).fit(x["train"].numpy(), y["train"])
    return prior, probe.score(x["test"].numpy(), y["test"])


def mixed(args: argparse.Namespace) -> list[str]:
    """One federation of English and Chinese conversations against each language trained apart,
    each model scored on each language's test rows."""
    data = args.out / "sites"
    if not data.exists():
        fedintent("synth", "--lang", ",".join(LANGUAGES), "--sites", "10", "--seed", "1",
                  "--size", str(args.size), "--out", str(data))
    apart = {lang: one_language(data, lang, args.out / f"sites-{lang}") for lang in LANGUAGES}
    extra = ["--rounds", str(args.rounds)] if args.rounds else []
    rows = ["| model | epsilon per site | trained on | sites | English test | Chinese test | "
            "training time |", "| --- | --- | --- | --- | --- | --- | --- |"]
    tests = {lang: test_rows(folder) for lang, folder in apart.items()}
    for model in args.models:
        cache = args.out / f"features-{model}"
        embed_all(data, model, cache)
        for epsilon in args.epsilons.split(","):
            runs = {"both languages": data} | {f"{lang} only": apart[lang] for lang in LANGUAGES}
            for name, folder in runs.items():
                out = args.out / f"{model}-eps{epsilon}-{name.replace(' ', '-')}"
                r = train(folder, out, model, epsilon, extra, features=cache / "store")
                scores = {lang: score(out / "model", model, *tests[lang], cache / "store")
                          for lang in LANGUAGES if lang in name or name == "both languages"}
                cells = [f"{scores[lang]:.4f}" if lang in scores else "" for lang in LANGUAGES]
                sites = len(list(folder.glob("site-*")))
                rows.append(f"| `{model}` | {epsilon} | {name} | {sites} | {' | '.join(cells)} | "
                            f"{r['wall_seconds']:.0f} s |")
    return rows


def one_language(data: Path, lang: str, out: Path) -> Path:
    """A copy of ``data`` whose sites keep only ``lang``'s conversations (sites left with no
    training or no test rows are dropped)."""
    return derived_sites(data, out, str, lambda row: row if row.get("language") == lang else None)


def embed_all(data: Path, model: str, cache: Path) -> None:
    """Every site's redacted training and test utterances, embedded once into ``cache``."""
    from fl_client.data_files import list_site_dirs
    from fl_client.site_data import load_site
    from fl_protocol.label_file import read_labels

    labels = read_labels(data / "labels.txt")
    texts = [text for site in list_site_dirs(data) for part in ("train", "test")
             for text in getattr(load_site(site, labels), part).texts]
    get_model_family(model).featurize(texts, cache / "store")


def test_rows(data: Path) -> tuple[list[str], list[int]]:
    """All sites' test utterances, redacted as a site redacts them, and their label indices."""
    from fl_client.data_files import list_site_dirs
    from fl_client.site_data import load_site
    from fl_protocol.label_file import read_labels

    labels = read_labels(data / "labels.txt")
    sites = [load_site(site, labels).test for site in list_site_dirs(data)]
    return ([text for split in sites for text in split.texts],
            [label for split in sites for label in split.labels])


def score(model_dir: Path, model: str, texts: list[str], labels: list[int], cache: Path) -> float:
    """Accuracy of the run's exported model on ``texts``, over the cached features."""
    import torch

    from fl_server.model_store import load_model

    module, _, _ = load_model(model_dir)
    with torch.no_grad():
        guesses = module(get_model_family(model).featurize(texts, cache)).argmax(dim=1)
    return (guesses == torch.tensor(labels)).float().mean().item()


def speed(args: argparse.Namespace) -> list[str]:
    """Featurization throughput: what a site spends once per new utterance."""
    from fl_client.data_files import list_site_dirs
    from fl_client.site_data import load_site
    from fl_protocol.label_file import read_labels

    texts = {}
    for lang in ("en", "zh"):
        data = args.out / f"sites-{lang}"
        if not data.exists():
            fedintent("synth", "--lang", lang, "--sites", "2", "--seed", "1", "--out", str(data))
        labels = read_labels(data / "labels.txt")
        sites = [load_site(site, labels) for site in list_site_dirs(data)]
        texts[lang] = [text for site in sites for text in site.train.texts][: args.sentences]
    rows = [f"load average (1, 5, 15 min) before: {os.getloadavg()}, {os.cpu_count()} CPUs", "",
            "| family | language | sentences | sentences/s |", "| --- | --- | --- | --- |"]
    for model in args.models:
        family = get_model_family(model)
        family.featurize(texts["en"][:8], None)  # loads the encoder: not timed
        for lang, batch in texts.items():
            started = time.perf_counter()
            family.featurize(batch, None)
            rate = len(batch) / (time.perf_counter() - started)
            rows.append(f"| `{model}` | {lang} | {len(batch)} | {rate:,.0f} |")
    return rows + ["", f"load average after: {os.getloadavg()}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", choices=list(FAMILIES))
    parser.add_argument("data", type=Path, nargs="?", help="BANKING77 folder (banking77 only)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", help="comma-separated families (default: "
                        + "; ".join(f"{suite}: {','.join(names)}"
                                    for suite, names in FAMILIES.items()) + ")")
    parser.add_argument("--epsilons", help="comma-separated per-site epsilons, inf = no DP "
                        "(chinese, default 8,inf; mixed, default 8)")
    parser.add_argument("--rounds", type=int, help="rounds for every model (default: the "
                        "tuned number, 40 at epsilon 8)")
    parser.add_argument("--size", type=int, default=600,
                        help="mean conversations per synthetic site (chinese and mixed)")
    parser.add_argument("--chinese-label-names", action="store_true",
                        help="chinese only: the sites' intents renamed to Chinese names, so the "
                        "label-name prior reads Chinese")
    parser.add_argument("--privacy-model", choices=("local", "distributed"), default="local",
                        help="chinese only: how the DP runs add noise (distributed: over "
                        "SecAgg+, the run's tolerated sites as fedintent train sets them)")
    parser.add_argument("--seeds", default="0",
                        help="chinese only: comma-separated training seeds (noise and sampling; "
                        "the sites stay seed 1's); the table gives their mean (default: 0)")
    parser.add_argument("--sentences", type=int, default=1000,
                        help="utterances per language to featurize (speed only)")
    args = parser.parse_args()
    if args.suite == "banking77" and args.data is None:
        parser.error("banking77 needs the dataset folder")
    args.models = args.models.split(",") if args.models else FAMILIES[args.suite]
    args.seeds = [int(seed) for seed in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    args.epsilons = args.epsilons or ("8" if args.suite == "mixed" else "8,inf")
    suites = {"banking77": banking77, "chinese": chinese, "speed": speed, "mixed": mixed}
    rows = suites[args.suite](args)
    (args.out / "results.md").write_text("\n".join(rows) + "\n", encoding="utf-8")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
