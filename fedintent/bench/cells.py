"""The sweep's unit of work, a *cell*, and the folder that makes the sweep resumable.

A cell is one (method, epsilon, seed) result. Each finished cell is written to
``OUT/cells/<id>.json`` by a temporary-file-and-rename, so an interrupted sweep keeps every cell
it finished and a re-run computes only the missing ones.
"""

import json
import math
from dataclasses import dataclass
from pathlib import Path

from fedintent.report_files import epsilon_label
from fl_protocol.durable_files import json_safe, write_bytes_atomic

LOCAL_DP = "local"
DISTRIBUTED_DP = "distributed"
"""The privacy models of the federated runs (``fl_protocol.wire.PRIVACY_MODELS``)."""

FEDERATED = "federated"
FEDERATED_DISTRIBUTED = "federated-distributed"
CENTRAL = "central"
CENTRAL_DP = "central-dp"
LOCAL_ONLY = "local-only"
TFIDF = "tfidf"
METHODS = (FEDERATED, FEDERATED_DISTRIBUTED, CENTRAL_DP, LOCAL_ONLY, CENTRAL, TFIDF)
"""federated: the Flower simulation with DP-SGD at every site (local DP: each site adds all the
noise for its own update, so averaging K sites leaves sqrt(K) times the noise of one pooled
release); federated-distributed: the same simulation under distributed DP, where each site adds
only a share of the noise and SecAgg+ reveals only the sum, which removes that penalty (finite
epsilons only: the shares are the noise); central-dp: the same model trained with DP-SGD on all
sites' data pooled; local-only: every site trains alone (mean over sites); central: the same
model, pooled and non-private; tfidf: TF-IDF + logistic regression, pooled and non-private."""


CELL_BUDGET_FACTOR = 1.25
"""A cell's sites get a lifetime budget this many times the cell's epsilon (at least 10)."""


def cell_lifetime_budget(target_epsilon: float) -> dict:
    """The ``site-max-epsilon`` of a cell's fresh, once-used sites: room above the target, so
    their lifetime filter (Rényi DP, looser than the run's PRV plan) never sets the noise and
    the cell runs at exactly its target epsilon. 10 (what every recorded sweep ran with) did
    not bind at epsilon 1, 3 or 8, for per-site or distributed DP (docs/BENCHMARKS.md). A
    finite budget, not inf: a site's Rényi order, and with it the epsilon-alone it reports
    under distributed DP, is fixed by its budget. Nothing for a no-DP cell (inf already).
    Here, not with the federated runs, so that the privacy audit's sites (also fresh and used
    once) take the same budget without importing the Flower launcher."""
    if math.isinf(target_epsilon):
        return {}
    return {"site-max-epsilon": max(10.0, CELL_BUDGET_FACTOR * target_epsilon)}


@dataclass(frozen=True)
class Cell:
    method: str
    epsilon: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}-eps{epsilon_label(self.epsilon)}-seed{self.seed}"


def sweep_cells(
    epsilons: list[float], seeds: int, privacy_models: tuple[str, ...] = (LOCAL_DP,)
) -> list[Cell]:
    """Every cell of a sweep, federated runs first so the headline numbers arrive early.

    ``privacy_models`` picks the federated runs: local DP, distributed DP, or both. The
    non-private pooled baselines do not depend on epsilon and appear once per seed (at epsilon
    inf); central DP and distributed DP at epsilon inf would be non-private runs again.
    """
    cells = []
    if LOCAL_DP in privacy_models:
        cells += [Cell(FEDERATED, eps, seed) for seed in range(seeds) for eps in epsilons]
    if DISTRIBUTED_DP in privacy_models:
        cells += [Cell(FEDERATED_DISTRIBUTED, eps, seed) for seed in range(seeds)
                  for eps in epsilons if math.isfinite(eps)]
    cells += [Cell(CENTRAL_DP, eps, seed) for seed in range(seeds) for eps in epsilons
              if math.isfinite(eps)]
    cells += [Cell(LOCAL_ONLY, eps, seed) for seed in range(seeds) for eps in epsilons]
    cells += [Cell(CENTRAL, math.inf, seed) for seed in range(seeds)]
    cells += [Cell(TFIDF, math.inf, seed) for seed in range(seeds)]
    return cells


def cell_path(out_dir: Path, cell: Cell) -> Path:
    return Path(out_dir) / "cells" / f"{cell.id}.json"


def load_cell(out_dir: Path, cell: Cell) -> dict | None:
    """A finished cell's result, or None; a corrupt file is an error naming it."""
    path = cell_path(out_dir, cell)
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable cell result ({err}); delete it to recompute") from err
    if not isinstance(result, dict) or "accuracy" not in result:
        raise ValueError(f"{path}: not a cell result (no accuracy); delete it to recompute")
    return result


def save_cell(out_dir: Path, cell: Cell, result: dict) -> None:
    record = {"method": cell.method, "epsilon": json_safe(cell.epsilon, infinity="inf"),
              "seed": cell.seed}
    path = cell_path(out_dir, cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, (json.dumps(record | result, indent=2) + "\n").encode())
