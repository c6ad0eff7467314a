"""fedintent ServerApp: what the ML team runs.

It owns the run's label set (the company's intent taxonomy), the initial model, the strategy,
the run record (``metrics.json``) and the final model. It never sees site data: each site
replies with its trained parameters and a few numbers, and privacy is accounted at the sites.
"""

import math
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fl_client.site_data import read_labels
from fl_server.model_store import save_model
from fl_server.run_config import SYNTHETIC_SITE_SIZE
from fl_server.run_record import RunRecord, final_summary
from fl_server.strategy import build_strategy
from models import get_model_family

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = dict(context.run_config)
    out_dir = Path(str(cfg["out-dir"]) or Path.home() / "fedintent-runs" / f"run-{context.run_id}")
    num_rounds = int(cfg["num-rounds"])
    data_dir = _simulation_data_dir(cfg, grid, out_dir)
    labels = read_labels(Path(str(cfg["labels-file"]) or Path(data_dir) / "labels.txt"))

    family = get_model_family(str(cfg["model"]))
    torch.manual_seed(int(cfg["seed"]))
    model = family.build_model(len(labels))

    run_name = str(cfg["run-name"]) or f"flwr-{context.run_id}"
    record = RunRecord(
        out_dir / "metrics.json",
        context.run_id,
        _jsonable(cfg | {"data-dir": data_dir, "out-dir": str(out_dir), "run-name": run_name}),
        labels,
    )
    strategy = build_strategy(
        str(cfg["strategy"]),
        record,
        min_sites=int(cfg["min-sites"]),
        server_learning_rate=float(cfg["server-learning-rate"]),
    )
    site_config = ConfigRecord(
        {
            "labels": labels,
            "num-rounds": num_rounds,
            "run-name": run_name,
            "sim-data-dir": str(data_dir),
        }
    )
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(model.state_dict()),
            num_rounds=num_rounds,
            train_config=site_config,
            evaluate_config=site_config,
        )
        if not any(r.get("sites_trained") for r in record.doc["rounds"]):
            reasons = {f["reason"] for r in record.doc["rounds"] for f in r.get("failures", [])}
            raise RuntimeError(f"no site trained in any round; site errors: {sorted(reasons)}")
        model_dir = save_model(
            out_dir / "model",
            result.arrays.to_torch_state_dict(),
            family=family.name,
            labels=labels,
            metadata={"run_id": context.run_id, "rounds": num_rounds},
        )
    except Exception as err:
        record.finish("failed", error=str(err))
        raise
    final = final_summary(record.doc) | {"model_dir": str(model_dir)}
    record.finish("completed", final=final)


def _simulation_data_dir(cfg: dict, grid: Grid, out_dir: Path) -> str:
    """The folder of site folders simulated sites read; synthetic sites when none is given.

    Deployed sites ignore it: they read the ``data-path`` of their own node config.
    """
    if str(cfg["data-dir"]):
        return str(cfg["data-dir"])
    from data_synth import write_sites

    num_sites = max(len(list(grid.get_node_ids())), int(cfg["min-sites"]))
    data_dir = out_dir / "data"
    write_sites(data_dir, n_sites=num_sites, seed=int(cfg["seed"]), size=SYNTHETIC_SITE_SIZE)
    return str(data_dir)


def _jsonable(cfg: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in cfg.items()}
