"""The run's record: ``metrics.json``, rewritten atomically after every round.

Per round it holds the sites that trained, and those that failed, declined, did not reply or
whose update the server rejected (with the reason), each accepted update's norm, the example-
weighted evaluation accuracy, loss and macro-F1, each site's own evaluation (accuracy, macro-F1)
and the worst site's accuracy, each site's cumulative epsilon and delta as the site reported
them, and the size of each site's reply as serialized (its upload). A site evaluating under DP
sends noisy estimates of accuracy and loss with their ``epsilon`` and no macro-F1
(``sites_evaluated_with_dp`` counts them). The example-weighted accuracy is dominated by the
largest sites; a model that fails a small site shows only in the per-site and worst-site
figures. A round outside the run's ``evaluate-every`` holds no evaluation (``evaluated``
false). ``fedintent train`` follows this file to print progress, so a
round is only visible once it is complete on disk. A resumed run continues the same file.
``provenance`` says which code made the record (package versions, the git commit from a
checkout); the data stays at the sites and is not described here.
"""

import fcntl
import json
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from flwr.app import Message, MetricRecord
from flwr.common.constant import ErrorCode
from flwr.common.serde import recorddict_to_proto

from fl_protocol.durable_files import json_safe, write_json_atomic
from fl_protocol.file_owner import os_error_line
from fl_protocol.wire import (
    ARRAYS_KEY,
    EVALUATE_METRICS,
    FAILURE_KINDS,
    METRICS_KEY,
    NO_REPLY,
    REJECTED,
    TRAIN_METRICS,
    Reason,
    is_site_reason,
    mask_languages,
)
from fl_server.provenance import software_provenance

FORMAT = "fedintent-metrics/1"
STATUSES = ("running", "stopped", "interrupted", "failed", "completed")
"""A run's ``status``: ``interrupted`` when a signal (Ctrl-C, SIGTERM) stopped it; every status
but ``completed`` can be resumed."""
METRICS_FILE = "metrics.json"
"""The run's record (``RunRecord``): its status, settings, rounds and final summary."""
AUDIT_LOG = "audit.jsonl"
"""The run's hash-chained audit log (``fl_protocol/hash_chain.py``), with its head beside it."""
DEPLOYMENT_FILE = "deployment.json"
"""Written by ``fedintent deploy-run`` beside the run's record once it has submitted the run
(so not one of ``RUN_FILES``, which the ServerApp refuses to start beside), with the Flower run
of each of its resumes added: the run trained deployed sites, so it goes on with ``fedintent
deploy-run --resume`` on the same sites, never with ``fedintent train --resume``, which would
simulate them."""
RUN_LOCK = ".run.lock"
"""Locked by a ServerApp for as long as it writes the folder (``run_folder_lock``)."""
STAGE_FILE = "stage.json"
"""The round the ServerApp is in and what it waits for, rewritten as each stage starts: a
launcher's line for a round still going says whether the sites train or evaluate (found in
review: a deployed run's line said the first round embeds every utterance while its sites were
already evaluating)."""
RUN_FILES = (METRICS_FILE, AUDIT_LOG, f"{AUDIT_LOG}.head", "checkpoints", "model",
             STAGE_FILE)
"""What a run writes in its output folder: a new run refuses a folder holding any of them (found
in review: a second run there replaced the first's record and model, chained onto its audit
log, so neither could be resumed, and mixed their checkpoints)."""
INTERRUPTED = "interrupted by a signal (Ctrl-C or SIGTERM); it can be resumed"
"""The ``error`` of an interrupted run."""
KEPT_REASON_CODES = (
    REJECTED, NO_REPLY, ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
    ErrorCode.NODE_UNAVAILABLE, ErrorCode.INVALID_FAB,
)
"""Errors whose reason the server or Flower wrote (not the site's code): kept as they are."""
SITE_METRICS = {m.name: m.recorded_as for m in TRAIN_METRICS if m.recorded_as is not None}
"""A training reply's metric -> its field in the round's per-site entry."""
SITE_EVALUATION = {m.name: m.recorded_as for m in EVALUATE_METRICS if m.recorded_as is not None}
"""An evaluation reply's metric -> its field in the round's per-site ``evaluation`` entry."""
EVALUATION_SUMMARY = ("accuracy", "loss", "macro_f1", "worst_site_accuracy", "worst_site",
                      "evaluation", "sites_evaluated_with_dp")
"""The fields of a round's evaluation that the final summary repeats from the last round."""


class RunRecord:
    """Collects per-round results from the strategy and keeps ``metrics.json`` current."""

    def __init__(self, path: Path, doc: dict) -> None:
        self.path = Path(path)
        self.doc = doc
        self._pending: dict[int, dict] = {}
        self.write()

    @classmethod
    def start(cls, path: Path, run_id: int, config: dict, labels: list[str]) -> "RunRecord":
        """The record of a new run."""
        doc = {
            "format": FORMAT,
            "run_id": run_id,
            "status": "running",
            "started": _now(),
            "config": config,
            "labels": labels,
            "provenance": software_provenance(),
            "rounds": [],
        }
        return cls(path, doc)

    @classmethod
    def resume(
        cls, path: Path, run_id: int, after_round: int, config: dict, details: dict
    ) -> "RunRecord":
        """Continue the record of an interrupted run after its last checkpointed round.

        Rounds recorded after ``after_round`` were not checkpointed: they are dropped and
        trained again. ``details`` (checkpoint, warnings, config changes) and the resuming code's
        provenance go into ``resumes``.
        """
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
        dropped = sum(1 for r in doc["rounds"] if r["round"] > after_round)
        doc["rounds"] = [r for r in doc["rounds"] if r["round"] <= after_round]
        for key in ("finished", "final", "error"):
            doc.pop(key, None)
        doc["status"] = "running"
        doc["config"] = config
        resumed = ({"run_id": run_id, "time": _now(), "after_round": after_round,
                    "rounds_dropped": dropped} | details
                   | {"provenance": software_provenance()})
        doc.setdefault("resumes", []).append(resumed)
        return cls(path, doc)

    def retrained_rounds(self) -> int:
        """The most rounds this run's resumes train again, and so its sites charge twice: the
        rounds each resume dropped, and the one a crash may have cut off before it was
        recorded."""
        return sum(entry.get("rounds_dropped", 0) + 1 for entry in self.doc.get("resumes", []))

    def record_train(
        self, server_round: int, replies: list[Message], update_norms: dict[int, float]
    ) -> dict:
        """Note which sites trained (privacy spend, update norm) and which did not, and why."""
        sites, failures = {}, []
        for reply in replies:
            node = str(reply.metadata.src_node_id)
            if reply.has_error():
                failures.append(_failure(reply))
                continue
            metrics = reply.content[METRICS_KEY]
            claimed = site_pseudonym(int(metrics["site-key"])) if "site-key" in metrics else None
            if claimed is not None and claimed not in sites:  # stable across restarts
                node = claimed
            sites[node] = {
                name: json_safe(metrics[key])
                for key, name in SITE_METRICS.items()
                if key in metrics
            }
            sites[node]["node_id"] = str(reply.metadata.src_node_id)
            if claimed is not None and node != claimed:
                # two replies claimed one site's key: each is kept, the second by its node id
                # (found in review: it overwrote the first, hiding one update from the record)
                sites[node]["duplicate_site_key"] = claimed
            languages = mask_languages(metrics["languages"]) if "languages" in metrics else None
            if languages is not None:
                sites[node]["languages"] = languages
            if ARRAYS_KEY in reply.content:  # with SecAgg+ the masked vectors come in stages
                sites[node]["upload_bytes"] = recorddict_to_proto(reply.content).ByteSize()
            if reply.metadata.src_node_id in update_norms:
                sites[node]["update_norm"] = update_norms[reply.metadata.src_node_id]
        entry = {"round": server_round, "sites_trained": len(sites), "sites_failed": len(failures),
                 "failures": _named(failures, self._pseudonyms({"sites": sites})),
                 "sites": sites}
        trained = [s for s in sites.values() if "num_examples" in s]
        if trained:
            entry["max_epsilon"] = _max_epsilon(trained)
            entry["max_epsilon_alone"] = _max_epsilon(trained, "epsilon_alone")
        uploads = [s["upload_bytes"] for s in sites.values() if "upload_bytes" in s]
        if uploads:
            entry["upload_bytes_per_site"] = sum(uploads) / len(uploads)
        self._pending[server_round] = entry
        return entry

    def record_evaluate(
        self, server_round: int, replies: list[Message], aggregated: MetricRecord | None
    ) -> None:
        """Complete the round with the example-weighted evaluation and write it out."""
        entry = self._pending.pop(server_round, {"round": server_round})
        entry["sites_evaluated"] = sum(1 for r in replies if not r.has_error())
        pseudonyms = self._pseudonyms(entry)
        entry["evaluation_failures"] = _named([_failure(r) for r in replies if r.has_error()],
                                              pseudonyms)
        if aggregated is not None:
            entry |= {name.replace("-", "_"): float(value) for name, value in aggregated.items()}
        dp = sum(1 for r in replies if not r.has_error() and "epsilon" in r.content[METRICS_KEY])
        if dp:
            entry["sites_evaluated_with_dp"] = dp
        entry |= _site_evaluations(replies, pseudonyms)
        self.doc["rounds"].append(entry)
        self.write()

    def record_unevaluated(self, server_round: int) -> None:
        """Complete a round in which no site was asked to evaluate (the run's
        ``evaluate-every``) and write it out: ``evaluated`` false, no evaluation figures."""
        entry = self._pending.pop(server_round, {"round": server_round})
        self.doc["rounds"].append(entry | {"evaluated": False})
        self.write()

    def _pseudonyms(self, entry: dict) -> dict[str, str]:
        """Node id -> the site's pseudonym, from every training reply recorded so far: an
        evaluation reply carries no ``site-key``, and node ids change across restarts."""
        names = {}
        for recorded in [*self.doc["rounds"], entry]:
            for key, site in recorded.get("sites", {}).items():
                names[site.get("node_id")] = key
        return names

    def finish(self, status: str, final: dict | None = None, error: str | None = None) -> None:
        self.doc["status"] = status
        self.doc["finished"] = _now()
        if final is not None:
            self.doc["final"] = final
        if error is not None:
            self.doc["error"] = error
        self.write()

    def write(self) -> None:
        write_json_atomic(self.path, self.doc)


class RunFolderRefused(RuntimeError):
    """The run folder cannot be taken: another ServerApp holds its lock, or the folder or its
    lock file cannot be made."""


@contextmanager
def run_folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir``'s lock (``RUN_LOCK``, made with the folder where missing) while a
    ServerApp writes there; ``RunFolderRefused`` when another holds it. Found in review: a resume
    started beside the ServerApp it continued (``flwr stop`` marks a run finished at once, its
    ServerApp sees it at its next heartbeat, seconds later), or two resumes at once, had two
    ServerApps write one record, audit log and checkpoints, and every site train each round
    twice."""
    path = Path(out_dir) / RUN_LOCK
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the block
    except OSError as err:
        raise RunFolderRefused(f"cannot take the run folder: {os_error_line(err)}; nothing "
                               "written") from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunFolderRefused(f"another fedintent ServerApp is writing {out_dir} (a run "
                                   "that was stopped or resumed and has not ended yet); nothing "
                                   "written. Wait for it to end, then resume") from None
        except OSError as err:  # a file system without locks
            raise RunFolderRefused(f"cannot lock {path}: {err.strerror or err}; nothing "
                                   "written") from None
        yield


def run_folder_busy(out_dir: Path) -> bool:
    """Whether a ServerApp holds ``out_dir``'s lock now (``run_folder_lock``). Asked with a
    shared lock, which two askers may hold at once (a ServerApp starting at that instant is
    refused and writes nothing); a missing lock file, or a folder in its place, no ServerApp
    holds. ``RunFolderRefused`` when it cannot be asked (no permission, no lock service)."""
    path = Path(out_dir) / RUN_LOCK
    try:
        with open(path, "rb") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except (FileNotFoundError, IsADirectoryError):
        return False
    except OSError as err:
        raise RunFolderRefused(f"cannot check {path}: {err.strerror or err}") from None
    return False


def way_on(out_dir: Path) -> str:
    """How a run in ``out_dir`` that stopped goes on: ``fedintent train --resume``, or for a
    deployed run (``DEPLOYMENT_FILE``) ``fedintent deploy-run --resume``, which continues it on
    the deployed sites and charges their own ledgers (found in review: the way on printed for a
    deployed run simulated its sites on the operator's machine, with fresh ledgers)."""
    if (Path(out_dir) / DEPLOYMENT_FILE).exists():
        return (f"continue with: fedintent deploy-run --resume {shlex.quote(str(out_dir))} and "
                "the run's --superlink, --release, --release-port and --ca-cert")
    return f"continue with: fedintent train --resume {shlex.quote(str(out_dir))}"


def record_interrupted(path: Path, error: str = INTERRUPTED) -> None:
    """Mark the run recorded in ``path`` ``interrupted`` (atomically) with ``error`` if it still
    says ``running``: the ServerApp was stopped by a signal before it could say so itself. Call
    it only once the ServerApp is gone (its folder's lock free, ``run_folder_busy``), or it may
    write ``running`` again. A missing or unreadable record is left as it is."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if isinstance(doc, dict) and doc.get("status") == "running":
        RunRecord(path, doc).finish("interrupted", error=error)


STAGES = ("waiting", "training", "evaluating")
"""What a round may be doing (``write_stage``): waiting for sites to connect, then waiting for
its sites to train, then to evaluate."""


def write_stage(out_dir: Path, server_round: int, stage: str, sites: int) -> None:
    """Record that round ``server_round`` now waits for ``sites`` sites: to connect
    (``waiting``, the run's ``min-sites``), or to finish ``training`` or ``evaluating``."""
    write_json_atomic(Path(out_dir) / STAGE_FILE,
                      {"round": server_round, "stage": stage, "sites": sites})


def read_stage(out_dir: Path, since: float = 0.0) -> dict | None:
    """The stage ``write_stage`` recorded last, at ``since`` (a ``time.time()``) or later;
    ``None`` when there is none or it does not read as one (a launcher then prints its line
    without it). Found in review: a resume's launcher read the stage its run's last server had
    recorded before the resume began."""
    path = Path(out_dir) / STAGE_FILE
    try:
        if path.stat().st_mtime < since:
            return None
        stage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(stage, dict) and type(stage.get("round")) is int
            and stage.get("stage") in STAGES
            and type(stage.get("sites")) is int):
        return None
    return stage


def run_files_in(out_dir: Path) -> list[str]:
    """The ``RUN_FILES`` that ``out_dir`` holds: another run's, to a new run."""
    return [name for name in RUN_FILES if (Path(out_dir) / name).exists()]


def site_pseudonym(site_key: int) -> str:
    """How the record names a site: by the key it sends (``fl_client.site_secret.site_key``),
    which says nothing about where its data lives."""
    return f"site-{site_key:012x}"


def final_summary(doc: dict) -> dict:
    """Final accuracy and each site's privacy guarantee, from the recorded rounds.

    A site's figures are those of its last accepted reply, in ``epsilon_all_runs_round``.
    ``declined_for_budget_round``: the first later round it declined for its budget, as far as
    the record ties the decline's node id to the site. Its lifetime spend may then be higher
    than its last reply said, up to its budget: a round it trained whose reply the server never
    recorded (an interrupted run) is charged too (found in review: a resumed run reported
    lifetime 6.801 of 8 for sites whose ledgers held 8.0 and declined every round)."""
    evaluated = [r for r in doc["rounds"] if "accuracy" in r]
    last = evaluated[-1] if evaluated else {}
    unit = doc["config"].get("privacy-unit", "utterance")
    sites: dict[str, dict] = {}
    for entry in doc["rounds"]:
        for key, site in entry.get("sites", {}).items():
            sites[key] = {
                "epsilon": site.get("epsilon"),
                "epsilon_all_runs": site.get("epsilon_all_runs"),
                "epsilon_all_runs_round": entry["round"],
                "declined_for_budget_round": None,
                "epsilon_alone": site.get("epsilon_alone", site.get("epsilon")),
                "epsilon_alone_all_runs": site.get("epsilon_alone_all_runs",
                                                   site.get("epsilon_all_runs")),
                "delta": site.get("delta"),
                "delta_all_runs": site.get("delta_all_runs"),
                "privacy_unit": unit if site.get("epsilon") is not None else None,
                "privacy_units": site.get("privacy_units"),
                "max_epsilon_budget": site.get("max_epsilon_budget"),
                "noise_multiplier": site.get("noise_multiplier"),
                "sample_rate": site.get("sample_rate"),
                "clip_norm": site.get("clip_norm"),
                "rounds_trained": sites.get(key, {}).get("rounds_trained", 0) + 1,
                "num_examples": site.get("num_examples"),
                "languages": site.get("languages"),
            }
    _note_budget_declines(doc["rounds"], sites)
    return {
        **{key: last.get(key) for key in EVALUATION_SUMMARY},
        "rounds_completed": len(doc["rounds"]),
        # the model is the last trained round's: a round where no site trained left it as it was
        "rounds_without_training": [r["round"] for r in doc["rounds"]
                                    if not r.get("sites_trained")],
        "sites": sites,
        "max_epsilon": _max_epsilon(list(sites.values())),
        "max_epsilon_alone": _max_epsilon(list(sites.values()), "epsilon_alone"),
        "privacy_model": doc["config"].get("privacy-model", "local"),
    }


def _note_budget_declines(rounds: list[dict], sites: dict[str, dict]) -> None:
    """Set each site's ``declined_for_budget_round``: the first round after its last accepted
    reply in which a node id that the record saw send that site's replies declined for its
    budget (a restarted site's new node id is not known to be it)."""
    nodes = {site["node_id"]: key for entry in rounds
             for key, site in entry.get("sites", {}).items() if "node_id" in site}
    for entry in rounds:
        for failure in entry.get("failures", []):
            site = sites.get(nodes.get(failure.get("node_id"), ""))
            if (site is not None and site["declined_for_budget_round"] is None
                    and failure.get("reason") == Reason.BUDGET_EXHAUSTED.value
                    and entry["round"] > site["epsilon_all_runs_round"]):
                site["declined_for_budget_round"] = entry["round"]


def _site_evaluations(replies: list[Message], pseudonyms: dict[str, str]) -> dict:
    """Each site's evaluation (by pseudonym where known) and the worst site's accuracy, from the
    replies that evaluated."""
    sites = {}
    for reply in replies:
        if reply.has_error():
            continue
        node = str(reply.metadata.src_node_id)
        metrics = reply.content[METRICS_KEY]
        sites[pseudonyms.get(node, node)] = {
            name: json_safe(metrics[key]) for key, name in SITE_EVALUATION.items()
            if key in metrics} | {"node_id": node}
    if not sites:
        return {}
    worst = min(sites, key=lambda key: sites[key]["accuracy"])
    return {
        "worst_site_accuracy": sites[worst]["accuracy"],
        "worst_site": worst,
        "evaluation": sites,
    }


def _named(failures: list[dict], pseudonyms: dict[str, str]) -> list[dict]:
    """Each failure with the ``site`` pseudonym its node id replied under earlier in the run,
    where one did: a decline carries no ``site-key`` (found in review: progress named a site
    by its node id in one line and by its pseudonym in the next)."""
    return [failure | ({"site": pseudonyms[failure["node_id"]]}
                       if failure["node_id"] in pseudonyms else {}) for failure in failures]


def _failure(reply: Message) -> dict:
    """A failed reply as recorded. A site's reason is kept only if it is one of fedintent's fixed
    reasons: anything else (a foreign app, a Flower error quoting an exception) could carry site
    data, and the record is kept, shared and audited."""
    reason = reply.error.reason or ""
    if reply.error.code not in KEPT_REASON_CODES and not is_site_reason(reply.error.code, reason):
        reason = (f"({_error_code_name(reply.error.code)}: a reason outside fedintent's "
                  f"vocabulary, {len(reason)} characters, not kept; the site's own log holds "
                  "it)")
    return {
        "node_id": str(reply.metadata.src_node_id),
        "kind": FAILURE_KINDS.get(reply.error.code, "failed"),
        "reason": reason,
    }


def _error_code_name(code: int) -> str:
    """Flower's name for an error code (``CLIENT_APP_RAISED_EXCEPTION``: the site's app raised,
    ``CLIENT_APP_CRASHED``: its process died): a fixed word that tells an operator a crash from
    a refusal and carries nothing of the site's; a code Flower does not define as a number."""
    names = {value: name for name, value in vars(ErrorCode).items()
             if not name.startswith("_") and isinstance(value, int)}
    return names.get(code, f"error code {code}") if isinstance(code, int) else "error code ?"


def _max_epsilon(sites: list[dict], key: str = "epsilon") -> float | None:
    values = [s.get(key, s.get("epsilon")) for s in sites]
    if not values:
        return None
    if any(v is None for v in values):
        return None  # a site without DP: no finite bound
    return max(values)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
