"""Every way a site can fail, driven through real Flower processes: no failure detail leaves it.

Real loopback deployments (no simulation, so the sites log apart from the server): one
SuperLink, and one SuperNode per site reaching it only through a recording TCP proxy (the sites'
network egress). Each site but the healthy one hits a different error path, with canary strings
(``CANARY-<hex>``) and PII (card and phone numbers, an e-mail address) planted where an error
message would quote them: in the rows, in the labels, in the ledger, in the node config and in
the paths of the site's data and state folders.

=======================  ==================================================  ====================
site                     how it fails, for real                              recorded reason
=======================  ==================================================  ====================
no-header                ``train.csv`` whose first row (canary + PII) is      DATA_UNUSABLE
                         read as the header
missing                  ``data-path`` names a folder that does not exist    DATA_UNUSABLE
bad-rows                 every row invalid or labelled with a canary label   DATA_UNUSABLE
corrupt-ledger           ``privacy-ledger.json`` with a release whose field  LEDGER_UNREADABLE
                         names are canary + PII (the error quotes them)
deleted-ledger           ledger gone, ``privacy-ledger.head`` left behind    LEDGER_UNREADABLE
bad-budget               ``max-epsilon='CANARY... card'`` in node config     SITE_CONFIG_INVALID
bad-cache                a feature-cache entry of the wrong width: the       INTERNAL
                         exception is raised inside DP training
healthy                  trains (so the run goes on)
timeout (own run)        ``site-secret`` is a FIFO nobody writes: the site   no reply
                         blocks reading it, and never answers
=======================  ==================================================  ====================

No site here reaches the egress guard's block: it stops only what the site's own code should
never produce (a NaN feature cache, which once did, is now dropped as damaged and computed
again; an overflowing unit adds the zero vector). ``tests/test_egress_guard.py`` drives the real
ClientApp into it instead.

The timeout site has a run of its own: in a shared run the reply timeout would have to be both
shorter than the blocked site's wait (the run's length) and longer than every other site's
reply on a loaded machine. Alone, it cannot answer at all, so any timeout works and nothing
depends on the clock. The other run's timeout is only an upper bound.

After each run, every byte the server side holds is searched: what the sites sent (the proxy),
``metrics.json``, ``audit.jsonl`` and the rest of the run's folder, the SuperLink's output, the
run's log as ``flwr log`` returns it (the ServerApp's output) and the server's ``FLWR_HOME``.
None may hold a canary or a PII string, and every failing site must be recorded with its fixed
reason. The canaries must also be in the site's own log: the details are kept at the site, not
lost.
"""

import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from test_site_dropout import read_metrics, start, wait_for
from test_wire import RecordingProxy

import models.encoder_head
from fedintent.launch.flower_cli import flower_env, toml_value, write_app
from fedintent.launch.processes import free_port, stop_process_trees
from fedintent.launch.simulation import (
    CONNECTION,
    last_local_run,
    wait_local_superlink,
    write_local_connection,
)
from fl_client.egress_guard import EGRESS_LOG
from fl_client.privacy_ledger import FORMAT as LEDGER_FORMAT
from fl_client.privacy_ledger import HEAD_FILE, LEDGER_FILE
from fl_client.site_data import load_site
from fl_client.site_secret import SECRET_FILE, create_site_secret
from fl_protocol.wire import Reason
from models import get_model_family

REPLY_TIMEOUT_S = 600.0
"""The error-paths run's timeout: an upper bound only; each site answers or fails at once."""
TIMEOUT_RUN_REPLY_TIMEOUT_S = 20.0
"""The timeout run's: any value works, since its site can never answer; a few SuperNode polls
(every 3 s) long, so the site gets the message before the run is over."""
RUN_TIMEOUT_S = 900
"""Only an upper bound for a hung run; every wait ends on a condition."""
LABELS = ["card_lost", "check_balance", "transfer_money", "refund_request", "change_address"]
PHRASES = {
    "card_lost": ["I lost my card", "my card was stolen", "I can't find my debit card"],
    "check_balance": ["what is my balance", "how much money do I have", "show my balance"],
    "transfer_money": ["send money to my sister", "transfer 50 dollars", "wire funds abroad"],
    "refund_request": ["I want a refund", "refund my last order", "give my money back"],
    "change_address": ["I moved house", "update my address", "change my postal address"],
}
CARD, CARD_DIGITS = "4111 1111 1111 1111", "4111111111111111"
PHONE, PHONE_DIGITS, CN_PHONE = "+1 415 555 0199", "4155550199", "13912345678"
EMAIL = "jane.canary@example.org"
PII = [CARD, CARD_DIGITS, PHONE, PHONE_DIGITS, CN_PHONE, EMAIL]
HEALTHY = "healthy"
TIMEOUT = "timeout"


@dataclass
class Site:
    """One site: its folders (canary in both paths), node config, and what it should record."""

    name: str
    canary: str
    data: Path
    state: Path
    expected: Reason | None  # the reason the server should record; None: trains or times out
    node_config: dict[str, str] = field(default_factory=dict)
    logged: list[str] = field(default_factory=list)  # must be in the site's own log
    not_logged: list[str] = field(default_factory=list)  # must not be, even there


def pii_sentence(canary: str) -> str:
    """A customer utterance in which every PII value sits next to the site's canary."""
    return (f"{canary} my card {CARD} was stolen, call me on {PHONE} or {CN_PHONE}, "
            f"mail {EMAIL}")


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON object per line, as a site's ``train.jsonl`` holds them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def write_usable_data(site: Site) -> None:
    """A small valid site (a few rows per label), with canary + PII sentences among the rows."""
    def rows(split: str, copies: int) -> list[dict]:
        # Test texts differ from training texts: a poisoned training feature (a text's features
        # are stored once per text) must not reach evaluation.
        out = [{"id": f"{split}-{label}-{i}-{k}", "text": f"{phrase} ({split} ticket {k})",
                "label": label}
               for label in LABELS for i, phrase in enumerate(PHRASES[label])
               for k in range(copies)]
        out.append({"id": f"{split}-canary", "text": f"{pii_sentence(site.canary)} ({split})",
                    "label": "card_lost"})
        return out

    write_jsonl(site.data / "train.jsonl", rows("train", 3))
    write_jsonl(site.data / "test.jsonl", rows("test", 1))


def poison_feature_cache(
    site: Site, make: Callable[[int], torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Put ``make(rows)`` in the site's cache as the encoding of its training texts.

    The entry is written by the site's own featurizer (its cache key and file format), with
    the encoder replaced in this process only: the site itself runs unpatched and finds it.
    """
    texts = load_site(site.data, LABELS).train.texts
    features = make(len(texts))
    with monkeypatch.context() as patch:
        patch.setattr(models.encoder_head, "embed", lambda batch, folder: features)
        cached = get_model_family("minilm-head").featurize(texts, site.state / "features")
    assert cached.shape == features.shape


def new_site(root: Path, name: str, expected: Reason | None) -> Site:
    """A site with a fresh canary in the names of its data and state folders (not created)."""
    canary = f"CANARY-{secrets.token_hex(6)}"
    return Site(name, canary, root / "sites" / f"{name}-{canary}",
                root / "state" / f"{name}-{canary}", expected)


def build_sites(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Site]:
    """The healthy site and one site per error path, each failing as the table above says."""
    sites: dict[str, Site] = {}

    def site(name: str, expected: Reason | None) -> Site:
        sites[name] = new_site(root, name, expected)
        return sites[name]

    write_usable_data(site(HEALTHY, None))

    s = site("no-header", Reason.DATA_UNUSABLE)  # its first row is taken for the header
    s.data.mkdir(parents=True)
    (s.data / "train.csv").write_text(
        f'"{pii_sentence(s.canary)}",card_lost\n"what is my balance",check_balance\n',
        encoding="utf-8")
    s.logged = [s.canary]  # in the folder's path; the header is described, never quoted

    s = site("missing", Reason.DATA_UNUSABLE)  # data-path names a folder never created
    s.logged = [s.canary]

    s = site("bad-rows", Reason.DATA_UNUSABLE)
    write_jsonl(s.data / "train.jsonl", [
        {"text": pii_sentence(s.canary), "label": f"{s.canary} {CARD}"},  # unknown label
        {"text": f"refund {PHONE}", "label": "refund_later"},  # unknown label
        {"text": "", "label": "card_lost"},  # empty text
        {"text": ["not", "a", "string", s.canary], "label": "card_lost"},
        {"turns": [{"speaker": "agent", "text": pii_sentence(s.canary)}], "intent": "card_lost"},
    ])
    with open(s.data / "train.jsonl", "a", encoding="utf-8") as f:
        f.write(f'{{"text": "{pii_sentence(s.canary)}", "label": \n')  # truncated JSON
    # a label-shaped unknown label is named; one holding a customer's words only described
    s.logged = ["skipped 1 rows with unknown label 'refund_later'",
                "skipped 1 rows with unknown label <a "]
    s.not_logged = [CARD, CARD_DIGITS]

    s = site("corrupt-ledger", Reason.LEDGER_UNREADABLE)
    write_usable_data(s)
    create_site_secret(s.state)  # the secret that signed it is there; the ledger is damaged
    (s.state / LEDGER_FILE).write_text(json.dumps({
        "format": LEDGER_FORMAT, "privacy_unit": "utterance", "order": 8.0, "delta": 1e-5,
        "releases": [{f"{s.canary} {CARD}": f"{PHONE} {EMAIL}"}],  # quoted by the error
        "spend": {}, "mac": s.canary,
    }), encoding="utf-8")
    s.logged = [f"{s.canary} {CARD}"]

    s = site("deleted-ledger", Reason.LEDGER_UNREADABLE)
    write_usable_data(s)
    create_site_secret(s.state)
    (s.state / HEAD_FILE).write_text(json.dumps({"releases": 3, "mac": "0" * 64}))
    s.logged = [f"{s.state / LEDGER_FILE} is missing"]

    s = site("bad-budget", Reason.SITE_CONFIG_INVALID)
    write_usable_data(s)
    s.node_config = {"max-epsilon": f"'{s.canary} {CARD}'"}
    s.logged = [f"{s.canary} {CARD}"]

    s = site("bad-cache", Reason.INTERNAL)  # 7 features where the head expects 384
    write_usable_data(s)
    poison_feature_cache(s, lambda rows: torch.ones(rows, 7), monkeypatch)
    s.logged = ["site error, not sent to the server", "Traceback"]

    return sites


def node_ids(logs: Path, sites: dict[str, Site]) -> dict[str, str]:
    """Site name -> the node id its SuperNode got, read from the site's own log."""
    ids = {}
    for name in sites:
        found = re.search(r"SuperNode ID: (\d+)", (logs / f"site-{name}.log").read_text())
        assert found, f"no node id in {name}'s log"
        ids[name] = found.group(1)
    return ids


def egress_entries(site: Site, message: str) -> list[dict]:
    """The site's egress-log entries for ``message`` (train, evaluate): what left, or why not."""
    path = site.state / EGRESS_LOG
    lines = path.read_text().splitlines() if path.exists() else []
    return [e for e in map(json.loads, lines) if e["message"].startswith(message)]


def server_side_bytes(paths: list[Path]) -> dict[str, bytes]:
    """Every file under ``paths`` (folders walked), by path."""
    held = {}
    for path in paths:
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for file in files:
            held[str(file)] = file.read_bytes()
    return held


@dataclass
class Outcome:
    """What a finished run left: the server's record, every byte the server side holds (by
    where it was found), each site's node id, and the folder of logs."""

    metrics: dict
    held: dict[str, bytes]
    node_ids: dict[str, str]
    logs: Path


def run_deployment(
    root: Path,
    sites: dict[str, Site],
    run_config: dict,
    also_wait_for: Callable[[], bool] = lambda: True,
) -> Outcome:
    """Start a SuperLink and one SuperNode per site (behind the recording proxy), run the app
    over all of them to its end (and ``also_wait_for``), read the run's log, stop every process,
    and collect what the server side holds. Server and sites have separate ``FLWR_HOME``
    folders and logs."""
    server_home, site_home = root / "server-home", root / "site-home"
    server_data, out, logs = root / "server-data", root / "out", root / "logs"
    for folder in (server_home, site_home, server_data, logs):
        folder.mkdir()
    (server_data / "labels.txt").write_text("\n".join(LABELS) + "\n")
    server_env, site_env = flower_env(server_home), flower_env(site_home)
    port = free_port()
    write_local_connection(server_home, port)
    app_dir = write_app(server_home / "app")
    proxy = RecordingProxy(port)
    processes: list[subprocess.Popen] = []
    try:
        superlink = start(
            ["flower-superlink", "--insecure", "--disable-runtime-dependency-installation",
             "--host", "127.0.0.1", "--port", str(port)],
            server_env, logs / "superlink.log", processes,
        )
        wait_local_superlink(port, superlink)
        for site in sites.values():
            create_site_secret(site.state)  # as ``fedintent init-site``; kept where it is
            node_config = {"data-path": f"'{site.data}'", "state-dir": f"'{site.state}'",
                           "max-epsilon": "10.0", "retention-days": "inf"} | site.node_config
            start(
                ["flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{proxy.port}",
                 "--port", str(free_port()), "--node-config",
                 " ".join(f"{k}={v}" for k, v in node_config.items())],
                site_env, logs / f"site-{site.name}.log", processes,
            )
        run_config = {"data-dir": str(server_data), "out-dir": str(out), "num-rounds": 1,
                      "min-sites": len(sites), "target-epsilon": 8.0,
                      "run-name": "error-paths"} | run_config
        command = ["flwr", "run", str(app_dir), CONNECTION]  # returns once submitted
        for key, value in run_config.items():
            command += ["-c", f"{key}={toml_value(value)}"]
        with open(logs / "flwr-run.log", "wb") as run_log:
            submitted = subprocess.run(command, env=server_env, cwd=server_home, stdout=run_log,
                                       stderr=subprocess.STDOUT, timeout=120)
        assert submitted.returncode == 0, (logs / "flwr-run.log").read_text()
        polls = 0

        def run_ended() -> bool:
            nonlocal polls
            assert superlink.poll() is None, "the SuperLink stopped"
            if read_metrics(out / "metrics.json")["status"] not in ("running", "not started"):
                return True
            polls += 1  # now and then ask the SuperLink, in case the ServerApp died early
            return polls % 60 == 0 and str(last_local_run(server_env, server_home).get(
                "status")).startswith("finished")

        wait_for(run_ended, RUN_TIMEOUT_S, "the run to end")
        wait_for(also_wait_for, RUN_TIMEOUT_S, "the sites")
        metrics = read_metrics(out / "metrics.json")
        with open(logs / "flwr-log.log", "wb") as run_log:  # the ServerApp's own output
            subprocess.run(["flwr", "log", str(metrics.get("run_id", 0)), CONNECTION, "--show"],
                           env=server_env, cwd=server_home, stdout=run_log,
                           stderr=subprocess.STDOUT, timeout=120)
    finally:
        stop_process_trees(processes)
        proxy.close()
    held = server_side_bytes([out, server_home, logs / "superlink.log", logs / "flwr-run.log",
                              logs / "flwr-log.log"])
    held["proxy: every byte the sites sent"] = bytes(proxy.upstream)
    assert b"configure_train" in held[str(logs / "flwr-log.log")]  # the run's log was read
    return Outcome(metrics, held, node_ids(logs, sites), logs)


def assert_nothing_leaked(held: dict[str, bytes], sites: dict[str, Site]) -> None:
    """No canary (nor the word), no PII value, anywhere on the server side."""
    needles = [b"CANARY", *(s.canary.encode() for s in sites.values()),
               *(p.encode() for p in PII)]
    leaks = [(where, n.decode()) for where, data in held.items() for n in needles if n in data]
    assert not leaks, leaks


def test_no_failure_detail_reaches_the_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Seven error paths in one run: each is recorded by its fixed reason, its details stay at
    the site."""
    sites = build_sites(tmp_path, monkeypatch)
    outcome = run_deployment(tmp_path, sites, {"reply-timeout": REPLY_TIMEOUT_S})
    metrics, ids = outcome.metrics, outcome.node_ids

    # Nothing the server side holds carries a canary or PII, though the sites' replies, errors
    # included, did cross the proxy.
    assert_nothing_leaked(outcome.held, sites)
    sent = outcome.held["proxy: every byte the sites sent"]
    assert b"num-examples" in sent
    for site in sites.values():
        if site.expected is not None:
            assert site.expected.value.encode() in sent

    assert metrics["status"] == "completed", metrics.get("error")
    (entry,) = metrics["rounds"]
    failures = {f["node_id"]: f for f in entry["failures"]}

    # The server recorded every failing site, with its fixed reason and nothing else.
    assert [s["node_id"] for s in entry["sites"].values()] == [ids[HEALTHY]]
    assert set(failures) == {ids[name] for name in sites if name != HEALTHY}
    for name, site in sites.items():
        if site.expected is not None:
            assert failures[ids[name]] == {"node_id": ids[name], "kind": "failed",
                                           "reason": site.expected.value}, name
    # Evaluation is under DP (a deployed site's default), so it needs the ledger and the policy
    # too: the sites that cannot read their data, ledger or node config cannot evaluate either.
    cannot_evaluate = {ids[name]: site.expected.value for name, site in sites.items()
                       if site.expected is not None and name != "bad-cache"}
    assert {f["node_id"]: f["reason"] for f in entry["evaluation_failures"]} == cannot_evaluate
    audit = [json.loads(line) for line in (tmp_path / "out" / "audit.jsonl").read_text()
             .splitlines()]
    assert [e for e in audit if e["event"] == "round"][0]["failures"] == entry["failures"]

    # The sites kept the details: in their own logs; their egress logs say what left.
    for name, site in sites.items():
        log = (outcome.logs / f"site-{name}.log").read_text(errors="replace")
        for text in site.logged:
            assert text in log, (name, text)
        for text in site.not_logged:
            assert text not in log, (name, text)
        train = egress_entries(site, "train")
        if site.expected is not None:
            assert [e["error"]["reason"] for e in train] == [site.expected.value], name
    assert [e["verdict"] for e in egress_entries(sites[HEALTHY], "train")] == ["sent"]


def test_a_site_that_never_answers_is_recorded_as_no_reply(tmp_path: Path):
    """A site still at work when the server stops waiting: recorded as "no reply", and the
    server holds nothing of it."""
    site = new_site(tmp_path, TIMEOUT, None)
    write_usable_data(site)
    site.state.mkdir(parents=True)
    os.mkfifo(site.state / SECRET_FILE)  # reading it blocks until someone writes: nobody does
    sites = {TIMEOUT: site}

    def blocked() -> bool:
        """Given the message, the site's first step is to read its secret: it is blocked."""
        log = tmp_path / "logs" / f"site-{TIMEOUT}.log"
        return log.exists() and "Receiving: train message" in log.read_text(errors="replace")

    outcome = run_deployment(tmp_path, sites, {"reply-timeout": TIMEOUT_RUN_REPLY_TIMEOUT_S},
                             also_wait_for=blocked)

    assert_nothing_leaked(outcome.held, sites)
    metrics = outcome.metrics
    assert metrics["status"] == "failed"  # no site trained: a run record all the same
    assert "no site trained" in metrics["error"]
    (entry,) = metrics["rounds"]
    no_reply = {"node_id": outcome.node_ids[TIMEOUT], "kind": "no reply",
                "reason": f"no reply within {TIMEOUT_RUN_REPLY_TIMEOUT_S:g}s"}
    assert entry["failures"] == [no_reply]
    assert entry["evaluation_failures"] == [no_reply]  # its SuperNode is still on the train
    assert b"num-examples" not in outcome.held["proxy: every byte the sites sent"]
    log = (outcome.logs / f"site-{TIMEOUT}.log").read_text(errors="replace")
    assert "Receiving: train message" in log  # it had the message, and sent nothing back
    assert egress_entries(site, "train") == []
