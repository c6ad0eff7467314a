"""Which run configuration a resumed run uses: the one recorded in ``metrics.json``.

A resumed run must train exactly as the interrupted one would have: same data, model, seeds,
privacy settings, and the same ``run-name``, so that each site's privacy ledger charges the new
rounds to the same run and keeps planning its noise for ``num-rounds`` rounds in total. Only
keys that change how the server waits, not what is trained, may differ (and ``out-dir``: a run
folder may have been moved; a ``data-dir`` or ``labels-file`` inside it, the synthetic sites a
run wrote there, moves with it).

A resumed run continues from the newest checkpoint its audit log vouches for (``resume_run``).
"""

import json
import math
from collections.abc import Callable
from logging import WARNING
from pathlib import Path

from flwr.app import Array, ArrayRecord
from flwr.common.logger import log

from fl_protocol.file_owner import permission_denied
from fl_protocol.wire import RUN_CONFIG_DEFAULTS
from fl_server.audit_log import started_run, vouched_models
from fl_server.checkpoints import Checkpoint, CheckpointError, latest_checkpoint
from fl_server.run_config import RunConfigError, check_run_config
from fl_server.run_record import AUDIT_LOG, FORMAT, METRICS_FILE, STATUSES, RunRecord
from fl_server.update_validation import array_spec

MAY_CHANGE_ON_RESUME = frozenset(
    {"resume", "stop-after-round", "reply-timeout", "min-sites", "out-dir"}
)
"""How long to wait, for how many sites, and where the (possibly moved) run folder is."""
FILLED_FROM_RECORD = ("run-name", "data-dir")
"""Keys whose empty value means "as recorded" on resume (they default to per-run values)."""
MOVED_WITH_THE_RUN = ("data-dir", "labels-file", "state-dir")
"""Paths a run may keep inside its ``out-dir`` (the synthetic sites it wrote, their labels,
their state)."""
RECORDED_BEFORE_THEY_EXISTED = {"evaluate-every": 1}
"""Keys newer than some run records, with the value a run recorded without them ran with: a
resume must keep it (a DP-evaluating site planned its evaluations for it)."""


def read_metrics(path: Path) -> dict:
    """The ``metrics.json`` of an earlier run, checked down to the run configuration it records
    (``check_run_config``), or ``RunConfigError`` saying why it cannot be resumed. A folder
    that is not there is named as such, and no file error quotes Python's errno text (found in
    review: "metrics.json is missing or unreadable ([Errno 2] ...)" of a folder never made)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise RunConfigError(f"cannot resume: {path.parent} is a file, not a run folder"
                             if path.parent.exists()
                             else f"cannot resume: run folder not found: {path.parent}")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunConfigError(f"cannot resume: {path.parent} holds no run record (no "
                             f"{path.name})") from None
    except IsADirectoryError:
        raise RunConfigError(f"cannot resume: {path} is a folder, not a run record") from None
    except PermissionError:
        raise RunConfigError(f"cannot resume: {permission_denied(path, site=False)}") from None
    except OSError as err:
        raise RunConfigError(f"cannot resume: {path} is unreadable ({err.strerror or err})"
                             ) from None
    except ValueError as err:
        raise RunConfigError(f"cannot resume: {path} is unreadable ({err})") from err
    if isinstance(doc, dict) and doc.get("status") == "completed":
        raise RunConfigError("cannot resume: the run completed all its rounds already")
    if problem := _record_problem(doc):
        raise RunConfigError(f"cannot resume: {path} is not the record of a fedintent run: "
                             f"{problem}")
    try:
        check_run_config(recorded_run_config(doc))
    except RunConfigError as err:
        raise RunConfigError(f"cannot resume: {path} records a run configuration that is not "
                             f"valid: {err}") from None
    return doc


def _record_problem(doc: object) -> str:
    """What makes ``doc`` not a run record that can be resumed; empty if nothing."""
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return f"format is not {FORMAT}"
    if doc.get("status") not in STATUSES:
        return f"status {doc.get('status')!r} is not one of {', '.join(STATUSES)}"
    labels, config, rounds = doc.get("labels"), doc.get("config"), doc.get("rounds")
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        return "it records no labels (the run never started)"
    if not isinstance(config, dict):
        return "it records no run configuration"
    for key in FILLED_FROM_RECORD:
        if not (isinstance(config.get(key), str) and config[key]):
            return f"its run configuration has no {key}"
    if not (isinstance(rounds, list)
            and all(isinstance(r, dict) and isinstance(r.get("round"), int) for r in rounds)):
        return "its rounds are not a list of numbered rounds"
    return ""


def resume_point(out_dir: Path, run_name: str) -> tuple[Checkpoint | None, list[str]]:
    """The checkpoint a resumed run of ``run_name`` in ``out_dir`` continues from (``None``:
    from the initial model), and warnings about the newer ones it skipped.

    Only a checkpoint the audit log vouches for is taken (``audit_log.vouched_models``). Raises
    ``ChainError`` when the log is missing or broken, ``CheckpointError`` when there are
    checkpoints but none is vouched for, or there is none though the log records a round after
    the first. Round 1 audited without its checkpoint (the server stopped, or its disk failed,
    between the two writes) is trained again from the initial model (found in review: the run
    could never be resumed); a later round falls back to the one before, kept beside it.
    """
    vouched = vouched_models(out_dir / AUDIT_LOG, run_name)
    checkpoint, warnings = latest_checkpoint(out_dir / "checkpoints", vouched)
    last = max(vouched, default=0)
    if checkpoint is None and last > 1:
        raise CheckpointError(f"cannot resume: the audit log records round {last} but "
                              f"{out_dir / 'checkpoints'} holds no checkpoint")
    done = 0 if checkpoint is None else checkpoint.server_round
    if last > done and not warnings:  # else the warnings say why the newer ones were skipped
        warnings = [f"the audit log records round {last} but {out_dir / 'checkpoints'} holds "
                    "no checkpoint of it (the server stopped between the two); " + (
                        "round 1 is trained again from the initial model" if done == 0 else
                        f"falling back to round {done}, the rounds after it are trained again")]
    return checkpoint, warnings


def check_audited_start(out_dir: Path, config: dict, labels: list[str]) -> None:
    """``RunConfigError`` unless the run resumed with ``config`` (JSON-safe, as recorded) and
    ``labels`` is the one its audit log's ``run-started`` entry records, but for the keys that
    may change on resume. ``metrics.json``, which the resume reads its settings from, is not
    protected; the audit log is (found in review: a record edited to target-epsilon 50 and 9
    rounds was resumed without a word)."""
    started = started_run(out_dir / AUDIT_LOG, str(config["run-name"]))
    audited = started.get("config")
    if not isinstance(audited, dict):
        raise RunConfigError(f"cannot resume: the audit log's run-started entry in {out_dir} "
                             "records no run configuration")
    audited = moved_with_the_run(audited, str(config.get("out-dir", "")))
    differing = sorted(key for key, value in audited.items()
                       if key not in MAY_CHANGE_ON_RESUME and key in config
                       and config[key] != value)
    if differing:
        changes = ", ".join(f"{key}={_shown(config[key])} (the audit log: "
                            f"{_shown(audited[key])})" for key in differing)
        raise RunConfigError(f"cannot resume: metrics.json's run configuration differs from "
                             f"the one the audit log recorded when the run started: {changes}")
    if started.get("labels") != labels:
        raise RunConfigError("cannot resume: the labels differ from those the audit log "
                             "recorded when the run started")


def resume_run(
    out_dir: Path,
    run_id: int,
    config: dict,
    recorded_config: dict,
    initial: ArrayRecord,
    audit: Callable[..., None],
) -> tuple[RunRecord, ArrayRecord, dict, int]:
    """(record, global model, strategy state, rounds done) of the interrupted run in out_dir.

    Without any checkpoint (the run stopped during round 1) it starts again from the initial
    model, under the same run name. Only a checkpoint the audit log vouches for is loaded
    (``resume_point``), and nothing is written before it is chosen.
    """
    checkpoint, warnings = resume_point(out_dir, str(config["run-name"]))
    for warning in warnings:
        log(WARNING, "resume: %s", warning)
    arrays, state, done = initial, {}, 0
    if checkpoint is not None:
        arrays = ArrayRecord({key: Array(value) for key, value in checkpoint.arrays.items()})
        problems = [
            f"{name} {found!r}, this run {expected!r}"
            for name, found, expected in (
                ("strategy", checkpoint.strategy, config["strategy"]),
                ("run-name", checkpoint.run_name, config["run-name"]),
            )
            if found != expected
        ]
        if array_spec(arrays) != array_spec(initial):
            problems.append("its model's parameters do not match this run's model")
        if problems:
            raise CheckpointError(f"checkpoint {checkpoint.path} is not from this run: "
                                  + "; ".join(problems))
        state, done = checkpoint.state, checkpoint.server_round
    details = {
        "checkpoint": str(checkpoint.path) if checkpoint else None,
        "warnings": warnings,
        "config_changes": {key: [recorded_config.get(key), value]
                           for key, value in config.items()
                           if recorded_config.get(key) != value},
    }
    record = RunRecord.resume(out_dir / METRICS_FILE, run_id, done, config, details)
    audit("run-resumed", after_round=done, **details)
    return record, arrays, state, done


def _shown(value: object) -> str:
    """A recorded run-config value as the operator wrote it: null is an infinite float."""
    return "inf" if value is None else repr(value)


def recorded_run_config(doc: dict) -> dict:
    """The run configuration recorded in ``metrics.json`` (null floats were infinite; a key the
    record predates, as the run ran without it)."""
    config = dict(RECORDED_BEFORE_THEY_EXISTED)
    for key, value in doc["config"].items():
        if key not in RUN_CONFIG_DEFAULTS:
            continue
        if value is None and isinstance(RUN_CONFIG_DEFAULTS[key], float):
            value = math.inf
        config[key] = value
    return config


def moved_with_the_run(recorded: dict, out_dir: str) -> dict:
    """``recorded`` (a run configuration as recorded) with each folder of ``MOVED_WITH_THE_RUN``
    that lay inside its ``out-dir`` moved into ``out_dir`` alike: a run folder moved with the
    sites it wrote is resumed on them, and on their ledgers (found in review: the old path was
    looked for, and the resume refused). A path with a ``..`` in it never moves: through a
    link, ``run/link/..`` is not inside ``run``, and the old folder is gone to resolve it."""
    old_out = Path(str(recorded.get("out-dir") or ""))
    if not (recorded.get("out-dir") and out_dir) or ".." in old_out.parts \
            or old_out == Path(out_dir):
        return recorded
    moved = dict(recorded)
    for key in (key for key in MOVED_WITH_THE_RUN if recorded.get(key)):
        path = Path(str(recorded[key]))
        if ".." not in path.parts and path.is_relative_to(old_out):
            moved[key] = str(Path(out_dir) / path.relative_to(old_out))
    return moved


def resumed_run_config(run_config: dict, doc: dict) -> dict:
    """``run_config`` completed from the record; ``RunConfigError`` naming any key that differs."""
    original = recorded_run_config(doc)
    recorded = moved_with_the_run(original, str(run_config.get("out-dir", "")))
    config = dict(run_config)
    for key in MOVED_WITH_THE_RUN:
        if key in original and config.get(key) == original[key]:
            config[key] = recorded.get(key)  # the record's own, moved with the run
    for key in FILLED_FROM_RECORD:
        if not str(config.get(key, "")):
            config[key] = recorded.get(key, "")
    differing = sorted(
        key for key, value in recorded.items()
        if key not in MAY_CHANGE_ON_RESUME and config.get(key) != value
    )
    if differing:
        changes = ", ".join(f"{k}={config.get(k)!r} (recorded {recorded[k]!r})" for k in differing)
        raise RunConfigError(f"cannot resume with a different configuration: {changes}")
    return config
