"""fedintent ServerApp: what the ML team runs.

It owns the run's label set (the company's intent taxonomy), the initial model, the strategy,
the run record (``metrics.json``), the audit log (``audit.jsonl``), the checkpoints and the
final model. It never sees site data: each site replies with its trained parameters and a few
numbers, and privacy is accounted at the sites.

Each round trains on every connected site (waiting for at least ``min-sites``), checks every
reply and aggregates the accepted ones, evaluates on every site (in every ``evaluate-every``-th
round and the last), then records the round in
``metrics.json`` and the audit log and checkpoints it. A site that fails, declines, does not
reply in time or sends an update the server rejects is recorded, and the round goes on without
it. With ``resume = true`` the run in ``out-dir`` continues after its last checkpoint. With
``secure-aggregation = true`` each round's training goes through SecAgg+ and the server gets
only the mean of the sites' updates (``secure_aggregation.py``).

It logs its output folder, one line per round (``progress.py``, the lines ``fedintent train``
prints) and how the run ended. A run that cannot start or go on for a reason its operator can
fix (a bad run configuration, data folder or label file; no site trained) ends with ``status:
failed`` and the reason in ``metrics.json``, and one log line, not a traceback.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from logging import ERROR, INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fl_protocol.durable_files import json_safe
from fl_protocol.file_owner import os_error_line
from fl_protocol.hash_chain import ChainError
from fl_protocol.label_file import LabelFileError, read_labels
from fl_protocol.wire import evaluation_number
from fl_server.audit_log import append_audit
from fl_server.checkpoints import CheckpointError, save_checkpoint, state_sha256
from fl_server.model_store import save_model
from fl_server.progress import format_accuracy, round_lines
from fl_server.resume import (
    check_audited_start,
    read_metrics,
    resume_run,
    resumed_run_config,
)
from fl_server.run_config import RunConfigError, check_run_config
from fl_server.run_record import (
    INTERRUPTED,
    METRICS_FILE,
    RunFolderRefused,
    RunRecord,
    final_summary,
    run_files_in,
    run_folder_lock,
    way_on,
    write_stage,
)
from fl_server.secure_aggregation import secure_train_round
from fl_server.strategy import (
    CheckedRounds,
    build_strategy,
    restore_strategy_state,
    strategy_state,
)
from fl_server.tensor_digest import arrays_sha256
from fl_server.update_validation import ArraySpec, RunPlan, array_spec
from models import ModelFamily, get_model_family

app = ServerApp()


class RunFailed(RuntimeError):
    """The run cannot go on, for a reason its operator can act on (not a bug)."""


class OutDirHoldsRun(RunFailed):
    """A new run's folder holds another run's files: nothing is written there."""


OPERATOR_ERRORS = (RunFailed, RunConfigError, LabelFileError, CheckpointError, ChainError)
"""Failures recorded in ``metrics.json`` and logged in one line, without a traceback: the run
then ends on purpose (Flower lists it as completed, as it does a stopped run), and
``metrics.json`` says it failed and why. Any other exception is recorded the same way, then
raised: it is a bug, and its traceback is wanted."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    out_dir = Path(str(cfg["out-dir"]) or Path.home() / "fedintent-runs" / f"run-{context.run_id}")
    log(INFO, "fedintent run %s: output folder %s", context.run_id, out_dir)
    try:
        with run_folder_lock(out_dir):
            _run(grid, context, cfg, out_dir)
    except RunFolderRefused as err:  # nothing of this run is written
        log(ERROR, "fedintent run failed before round 1: %s", err)


@dataclass
class Run:
    """A run started or resumed in its folder: what its rounds and its ending work with."""

    cfg: dict
    """The checked run configuration (``check_run_config``)."""
    out_dir: Path
    run_name: str
    data_dir: str
    labels: list[str]
    family: ModelFamily
    spec: ArraySpec
    """The model's array names, shapes and dtypes, that every site's update is held to."""
    record: RunRecord
    audit: Callable[..., None]
    """Appends an event of this run to its audit log (``audit_log.append_audit``)."""
    arrays: ArrayRecord
    """The global model: the initial or resumed one, then each round's."""
    state: dict
    """The strategy state the rounds continue from (``strategy_state``); empty for a new run."""
    done: int
    """Rounds done before this run started: 0 but for a resumed run."""

    @property
    def num_rounds(self) -> int:
        return int(self.cfg["num-rounds"])


def _run(grid: Grid, context: Context, cfg: dict, out_dir: Path) -> None:
    """The run ``main`` starts, with its folder's lock held: started or resumed, its rounds,
    its model saved. A failure before round 1 is recorded by ``_record_failed_start``, one
    after it by ``_record_failure`` (a signal as interrupted). An operator's failure
    (``OPERATOR_ERRORS``; after round 1, a file that cannot be written too) ends the run
    here; anything else is raised on."""
    previous = None
    try:
        previous = read_metrics(out_dir / METRICS_FILE) if cfg["resume"] else None
        cfg = check_run_config(resumed_run_config(cfg, previous) if previous else cfg)
        run = _start(grid, context.run_id, cfg, out_dir, previous)
    except Exception as err:
        _record_failed_start(out_dir / METRICS_FILE, context.run_id, cfg, previous,
                             _one_line(err))
        if isinstance(err, OPERATOR_ERRORS):
            return
        raise
    strategy = _strategy(run)
    try:
        if not _run_rounds(run, strategy, grid, context):
            return
        model_dir = _save_final_model(run)
    except (KeyboardInterrupt, SystemExit):
        _record_interrupted(run)
        raise
    except OSError as err:  # a full disk, a file where a folder goes: the operator's to fix
        if isinstance(err, ConnectionError | TimeoutError):
            _record_failure(run, _one_line(err))
            raise
        _record_failure(run, f"cannot write the run's files: {os_error_line(err)}; fix that; "
                             f"{way_on(out_dir)}")
        return
    except Exception as err:
        _record_failure(run, _one_line(err))
        if isinstance(err, OPERATOR_ERRORS):
            return
        raise
    _record_completed(run, model_dir)


def _start(grid: Grid, run_id: int, cfg: dict, out_dir: Path, previous: dict | None) -> Run:
    """The run of ``cfg`` (checked) in ``out_dir``, new or, with ``previous`` (its
    ``metrics.json``), resumed; its start is in the audit log and its record."""
    if not previous and (held := run_files_in(out_dir)):  # before any file is written
        raise OutDirHoldsRun(f"{out_dir} already holds a run ({', '.join(held)}); "
                             "resume it (resume=true) or choose another out-dir")
    data_dir = _simulation_data_dir(cfg, grid, out_dir)
    labels = read_labels(Path(str(cfg["labels-file"]) or Path(data_dir) / "labels.txt"))
    if previous and previous["labels"] != labels:
        raise RunConfigError("cannot resume: the label file changed since the run started")

    family = get_model_family(str(cfg["model"]))
    torch.manual_seed(int(cfg["seed"]))
    initial = ArrayRecord(family.initial_model(labels).state_dict())
    spec = array_spec(initial)

    run_name = str(cfg["run-name"]) or f"flwr-{run_id}"
    config = json_safe(cfg | {"data-dir": data_dir, "out-dir": str(out_dir), "run-name": run_name})
    audit = partial(append_audit, out_dir, run_id, run_name)
    if previous:
        check_audited_start(out_dir, config, labels)
        record, arrays, state, done = resume_run(
            out_dir, run_id, config, previous["config"], initial, audit
        )
    else:  # audited first: a log that cannot be extended fails the run before its record
        audit("run-started", config=config, labels=labels, model_sha256=_sha256(initial))
        record = RunRecord.start(out_dir / METRICS_FILE, run_id, config, labels)
        arrays, state, done = initial, {}, 0
    return Run(cfg, out_dir, run_name, data_dir, labels, family, spec, record, audit, arrays,
               state, done)


def _strategy(run: Run) -> CheckedRounds:
    """The run's strategy, holding the sites to its settings, with the state it continues
    from."""
    cfg = run.cfg
    strategy = build_strategy(
        str(cfg["strategy"]),
        run.record,
        spec=run.spec,
        min_sites=int(cfg["min-sites"]),
        server_learning_rate=float(cfg["server-learning-rate"]),
        max_update_norm=float(cfg["max-update-norm"]),
        reply_timeout=float(cfg["reply-timeout"]),
        server_momentum=float(cfg["server-momentum"]),
        plan=RunPlan.from_run_config(cfg, run.record.retrained_rounds()),
    )
    restore_strategy_state(strategy, run.state)
    return strategy


def _run_rounds(run: Run, strategy: CheckedRounds, grid: Grid, context: Context) -> bool:
    """The rounds after ``run.done``, each audited, checkpointed and logged once it is
    recorded; False when the run stopped after one as asked (``stop-after-round``)."""
    cfg, num_rounds = run.cfg, run.num_rounds
    site_config = ConfigRecord(
        {
            "labels": run.labels,
            "num-rounds": num_rounds,
            "run-name": run.run_name,
            "sim-data-dir": run.data_dir,
        }
    )
    stop_after = int(cfg["stop-after-round"])
    for server_round in range(run.done + 1, num_rounds + 1):
        run.arrays = _run_round(strategy, grid, context, run.out_dir, server_round, run.arrays,
                                site_config, float(cfg["reply-timeout"]),
                                run.spec if cfg["secure-aggregation"] else None,
                                evaluate=evaluation_number(server_round, num_rounds,
                                                           int(cfg["evaluate-every"])) is not None)
        model = {key: array.numpy() for key, array in run.arrays.items()}
        state = strategy_state(strategy)
        run.audit("round", **run.record.doc["rounds"][-1], model_sha256=arrays_sha256(model),
                  state_sha256=state_sha256(state))
        save_checkpoint(run.out_dir / "checkpoints", server_round, str(cfg["strategy"]),
                        run.run_name, model, state)
        for line in round_lines(run.record.doc["rounds"][-1], num_rounds):
            log(INFO, "%s", line)
        if server_round == stop_after and server_round < num_rounds:
            _record_stopped(run, server_round)
            return False
    return True


def _run_round(
    strategy: Strategy,
    grid: Grid,
    context: Context,
    out_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    site_config: ConfigRecord,
    reply_timeout: float,
    secure_spec: ArraySpec | None,
    evaluate: bool,
) -> ArrayRecord:
    """One round as Flower's ``Strategy.start`` runs it, for any round number (a resumed run
    continues at its next round); returns the new global model. With ``secure_spec`` (the
    model's spec) training goes through SecAgg+; without ``evaluate`` (not one of the run's
    evaluation rounds, ``evaluation_number``) no site is asked to evaluate. Each stage is
    recorded in ``out_dir`` as it starts (``write_stage``), for the launcher's progress line,
    and before each, while fewer than ``min-sites`` sites are connected, that the round waits
    for them (``_record_a_wait``)."""
    _record_a_wait(grid, context, out_dir, server_round)
    asked = list(strategy.configure_train(server_round, arrays, site_config, grid))
    write_stage(out_dir, server_round, "training", len(asked))
    if secure_spec is not None:
        secure = secure_train_round(grid, context, server_round, asked, secure_spec,
                                    reply_timeout)
        aggregated, _ = strategy.aggregate_secure_train(server_round, secure)
    else:
        replies = grid.send_and_receive(asked, timeout=reply_timeout)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
    if aggregated is not None:
        arrays = aggregated
    if not evaluate:
        strategy.skip_evaluate(server_round)
        return arrays
    _record_a_wait(grid, context, out_dir, server_round)
    asked = list(strategy.configure_evaluate(server_round, arrays, site_config, grid))
    write_stage(out_dir, server_round, "evaluating", len(asked))
    replies = grid.send_and_receive(asked, timeout=reply_timeout)
    strategy.aggregate_evaluate(server_round, replies)
    return arrays


def _record_a_wait(grid: Grid, context: Context, out_dir: Path, server_round: int) -> None:
    """Record that the round waits for sites to connect, where fewer than ``min-sites`` are:
    Flower's strategy waits for them before it asks any (found in review: a run no site had
    joined said for 13 minutes that round 1 embeds every utterance)."""
    min_sites = int(context.run_config["min-sites"])
    if len(list(grid.get_node_ids())) < min_sites:
        write_stage(out_dir, server_round, "waiting", min_sites)


def _save_final_model(run: Run) -> Path:
    """The trained model, saved in ``OUT/model`` with its card; ``RunFailed`` when no site
    trained in any round, since there is no trained model to save."""
    rounds = run.record.doc["rounds"]
    if not any(r.get("sites_trained") for r in rounds):
        reasons = {f["reason"] for r in rounds for f in r.get("failures", [])}
        raise RunFailed("no site trained in any round; the sites said: "
                        f"{'; '.join(sorted(reasons)) or 'nothing'}")
    return save_model(
        run.out_dir / "model",
        run.arrays.to_torch_state_dict(),
        family=run.family.name,
        labels=run.labels,
        run_doc=run.record.doc | {"final": final_summary(run.record.doc)},
    )


def _record_stopped(run: Run, server_round: int) -> None:
    """The run stopped after ``server_round`` as asked, in its record, audit log and log."""
    reason = (f"stopped after round {server_round} as asked (stop-after-round); "
              f"{way_on(run.out_dir)}")
    run.record.finish("stopped", error=reason)
    run.audit("run-stopped", reason=reason)
    log(INFO, "%s", reason)


def _record_interrupted(run: Run) -> None:
    """A signal (Ctrl-C, SIGTERM) stopped the run: recorded so that it can be resumed."""
    reason = f"{INTERRUPTED}; {way_on(run.out_dir)}"
    run.record.finish("interrupted", error=reason)
    run.audit("run-interrupted", reason=reason)
    log(WARNING, "fedintent run interrupted; %s", way_on(run.out_dir))


def _record_failure(run: Run, reason: str) -> None:
    """The run's failure in its record and audit log, as far as they can still be written (a
    full disk may refuse them too), and in the log in any case."""
    log(ERROR, "fedintent run failed: %s (recorded in %s)", reason, run.record.path)
    try:
        run.record.finish("failed", error=reason)
        run.audit("run-failed", error=reason)
    except OSError as err:
        log(ERROR, "fedintent: the failure could not be recorded: %s", os_error_line(err))


def _record_completed(run: Run, model_dir: Path) -> None:
    """The completed run's summary in its record, audit log and log, naming the rounds in
    which no site trained (the model is the last trained round's)."""
    final = final_summary(run.record.doc) | {"model_dir": str(model_dir)}
    run.record.finish("completed", final=final)
    run.audit("run-completed", final=final, model_sha256=_sha256(run.arrays))
    log(INFO, "fedintent run completed: final accuracy %s; metrics %s, model %s",
        format_accuracy(final["accuracy"]), run.record.path, model_dir)
    if idle := final["rounds_without_training"]:
        log(WARNING, "no site trained in %d of the %d rounds (%s): the model is the last "
            "trained round's", len(idle), run.num_rounds, ", ".join(map(str, idle)))


def _simulation_data_dir(cfg: dict, grid: Grid, out_dir: Path) -> str:
    """The folder of site folders simulated sites read; synthetic sites when none is given.

    Deployed sites ignore it: they read the ``data-path`` of their own node config.
    """
    if str(cfg["data-dir"]):
        if not Path(str(cfg["data-dir"])).is_dir():
            raise RunConfigError(f"data-dir {cfg['data-dir']} is not a folder (the folder of "
                                 "site folders, for simulation; empty = synthetic sites)")
        return str(cfg["data-dir"])
    from data_synth import write_run_sites

    num_sites = max(len(list(grid.get_node_ids())), int(cfg["min-sites"]))
    data_dir = out_dir / "data"
    write_run_sites(data_dir, n_sites=num_sites, seed=int(cfg["seed"]))
    return str(data_dir)


def _record_failed_start(
    path: Path, run_id: int, cfg: dict, previous: dict | None, reason: str
) -> None:
    """``metrics.json`` of a run that failed before its first round: ``status: failed`` and
    ``reason``, logged in one line. The record of the run that ``resume`` asked for is marked
    failed, and stays resumable; a completed run's record, or a file that is not a record, is
    never replaced, and nothing is written in a folder that holds another run's files."""
    log(ERROR, "fedintent run failed before round 1: %s", reason)
    if previous is None and run_files_in(path.parent):
        log(ERROR, "fedintent: %s left as it was", path.parent)
    elif previous is not None and previous.get("status") != "completed":
        # which run failed, so that its launcher tells this failure from another's record
        RunRecord(path, previous | {"failed_start_run_id": run_id}).finish("failed",
                                                                           error=reason)
    elif previous is None and not path.exists():
        RunRecord.start(path, run_id, json_safe(cfg), labels=[]).finish("failed", error=reason)
    else:
        log(ERROR, "fedintent: %s left as it was", path)


def _one_line(err: Exception) -> str:
    """An exception as the run record's ``error``: one line, never empty."""
    text = " ".join(str(err).split())
    return text if isinstance(err, OPERATOR_ERRORS) else f"{type(err).__name__}: {text}"


def _sha256(arrays: ArrayRecord) -> str:
    return arrays_sha256({key: array.numpy() for key, array in arrays.items()})
