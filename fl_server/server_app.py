"""fedintent ServerApp: what the ML team runs.

It owns the run's label set (the company's intent taxonomy), the initial model, the strategy,
the run record (``metrics.json``), the audit log (``audit.jsonl``), the checkpoints and the
final model. It never sees site data: each site replies with its trained parameters and a few
numbers, and privacy is accounted at the sites.

Each round trains on every connected site (waiting for at least ``min-sites``), checks every
reply and aggregates the accepted ones, evaluates on every site, then records the round in
``metrics.json`` and the audit log and checkpoints it. A site that fails, declines, does not
reply in time or sends an update the server rejects is recorded, and the round goes on without
it. With ``resume = true`` the run in ``out-dir`` continues after its last checkpoint. With
``secure-aggregation = true`` each round's training goes through SecAgg+ and the server gets
only the mean of the sites' updates (``secure_aggregation.py``).
"""

from collections.abc import Callable
from logging import WARNING
from pathlib import Path

import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy

from fl_protocol.durable_files import json_safe
from fl_protocol.label_file import read_labels
from fl_server.audit_log import append_entry, check_extendable
from fl_server.checkpoints import CheckpointError, latest_checkpoint, save_checkpoint
from fl_server.model_store import save_model
from fl_server.resume import read_metrics, resumed_run_config
from fl_server.run_config import RunConfigError
from fl_server.run_record import RunRecord, final_summary
from fl_server.secure_aggregation import incompatibility, secure_train_round
from fl_server.strategy import build_strategy, restore_strategy_state, strategy_state
from fl_server.tensor_digest import arrays_sha256
from fl_server.update_validation import ArraySpec, array_spec
from models import get_model_family

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    out_dir = Path(str(cfg["out-dir"]) or Path.home() / "fedintent-runs" / f"run-{context.run_id}")
    previous = read_metrics(out_dir / "metrics.json") if cfg["resume"] else None
    if previous:
        cfg = resumed_run_config(cfg, previous)
    num_rounds = int(cfg["num-rounds"])
    if problem := incompatibility(cfg):
        raise RunConfigError(problem)
    data_dir = _simulation_data_dir(cfg, grid, out_dir)
    labels = read_labels(Path(str(cfg["labels-file"]) or Path(data_dir) / "labels.txt"))
    if previous and previous["labels"] != labels:
        raise RunConfigError("cannot resume: the label file changed since the run started")

    family = get_model_family(str(cfg["model"]))
    torch.manual_seed(int(cfg["seed"]))
    initial = ArrayRecord(family.initial_model(labels).state_dict())
    spec = array_spec(initial)

    run_name = str(cfg["run-name"]) or f"flwr-{context.run_id}"
    config = json_safe(cfg | {"data-dir": data_dir, "out-dir": str(out_dir), "run-name": run_name})
    audit_path = out_dir / "audit.jsonl"

    def audit(event: str, **fields) -> None:
        append_entry(audit_path, event, {"run_id": context.run_id, "run_name": run_name} | fields)

    if previous:
        record, arrays, state, done = _resume(
            out_dir, context.run_id, config, previous["config"], initial, audit
        )
    else:
        record = RunRecord.start(out_dir / "metrics.json", context.run_id, config, labels)
        arrays, state, done = initial, {}, 0
        audit("run-started", config=config, labels=labels, model_sha256=_sha256(initial))
    strategy = build_strategy(
        str(cfg["strategy"]),
        record,
        spec=spec,
        min_sites=int(cfg["min-sites"]),
        server_learning_rate=float(cfg["server-learning-rate"]),
        max_update_norm=float(cfg["max-update-norm"]),
        reply_timeout=float(cfg["reply-timeout"]),
    )
    restore_strategy_state(strategy, state)
    site_config = ConfigRecord(
        {
            "labels": labels,
            "num-rounds": num_rounds,
            "run-name": run_name,
            "sim-data-dir": str(data_dir),
        }
    )
    stop_after = int(cfg["stop-after-round"])
    try:
        for server_round in range(done + 1, num_rounds + 1):
            arrays = _run_round(strategy, grid, context, server_round, arrays, site_config,
                                float(cfg["reply-timeout"]),
                                spec if cfg["secure-aggregation"] else None)
            model = {key: array.numpy() for key, array in arrays.items()}
            audit("round", **record.doc["rounds"][-1], model_sha256=arrays_sha256(model))
            save_checkpoint(out_dir / "checkpoints", server_round, str(cfg["strategy"]),
                            run_name, model, strategy_state(strategy))
            if server_round == stop_after and server_round < num_rounds:
                reason = (f"stopped after round {server_round} as asked (stop-after-round); "
                          f"continue with: fedintent train --resume {out_dir}")
                record.finish("stopped", error=reason)
                audit("run-stopped", reason=reason)
                return
        if not any(r.get("sites_trained") for r in record.doc["rounds"]):
            reasons = {f["reason"] for r in record.doc["rounds"] for f in r.get("failures", [])}
            raise RuntimeError(f"no site trained in any round; site errors: {sorted(reasons)}")
        model_dir = save_model(
            out_dir / "model",
            arrays.to_torch_state_dict(),
            family=family.name,
            labels=labels,
            run_doc=record.doc | {"final": final_summary(record.doc)},
        )
    except Exception as err:
        record.finish("failed", error=str(err))
        audit("run-failed", error=str(err))
        raise
    final = final_summary(record.doc) | {"model_dir": str(model_dir)}
    record.finish("completed", final=final)
    audit("run-completed", final=final, model_sha256=_sha256(arrays))


def _run_round(
    strategy: Strategy,
    grid: Grid,
    context: Context,
    server_round: int,
    arrays: ArrayRecord,
    site_config: ConfigRecord,
    reply_timeout: float,
    secure_spec: ArraySpec | None,
) -> ArrayRecord:
    """One round as Flower's ``Strategy.start`` runs it, for any round number (a resumed run
    continues at its next round); returns the new global model. With ``secure_spec`` (the
    model's spec) training goes through SecAgg+."""
    asked = list(strategy.configure_train(server_round, arrays, site_config, grid))
    if secure_spec is not None:
        secure = secure_train_round(grid, context, server_round, asked, secure_spec,
                                    reply_timeout)
        aggregated, _ = strategy.aggregate_secure_train(server_round, secure)
    else:
        replies = grid.send_and_receive(asked, timeout=reply_timeout)
        aggregated, _ = strategy.aggregate_train(server_round, replies)
    if aggregated is not None:
        arrays = aggregated
    replies = grid.send_and_receive(
        strategy.configure_evaluate(server_round, arrays, site_config, grid),
        timeout=reply_timeout,
    )
    strategy.aggregate_evaluate(server_round, replies)
    return arrays


def _resume(
    out_dir: Path,
    run_id: int,
    config: dict,
    recorded_config: dict,
    initial: ArrayRecord,
    audit: Callable[..., None],
) -> tuple[RunRecord, ArrayRecord, dict, int]:
    """(record, global model, strategy state, rounds done) of the interrupted run in out_dir.

    Without any checkpoint (the run stopped during round 1) it starts again from the initial
    model, under the same run name.
    """
    checkpoint, warnings = latest_checkpoint(out_dir / "checkpoints")
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
    check_extendable(out_dir / "audit.jsonl")
    details = {
        "checkpoint": str(checkpoint.path) if checkpoint else None,
        "warnings": warnings,
        "config_changes": {key: [recorded_config.get(key), value]
                           for key, value in config.items()
                           if recorded_config.get(key) != value},
    }
    record = RunRecord.resume(out_dir / "metrics.json", run_id, done, config, details)
    audit("run-resumed", after_round=done, **details)
    return record, arrays, state, done


def _simulation_data_dir(cfg: dict, grid: Grid, out_dir: Path) -> str:
    """The folder of site folders simulated sites read; synthetic sites when none is given.

    Deployed sites ignore it: they read the ``data-path`` of their own node config.
    """
    if str(cfg["data-dir"]):
        return str(cfg["data-dir"])
    from data_synth import write_run_sites

    num_sites = max(len(list(grid.get_node_ids())), int(cfg["min-sites"]))
    data_dir = out_dir / "data"
    write_run_sites(data_dir, n_sites=num_sites, seed=int(cfg["seed"]))
    return str(data_dir)


def _sha256(arrays: ArrayRecord) -> str:
    return arrays_sha256({key: array.numpy() for key, array in arrays.items()})
