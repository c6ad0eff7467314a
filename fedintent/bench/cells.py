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

FEDERATED = "federated"
CENTRAL = "central"
CENTRAL_DP = "central-dp"
LOCAL_ONLY = "local-only"
TFIDF = "tfidf"
METHODS = (FEDERATED, CENTRAL_DP, LOCAL_ONLY, CENTRAL, TFIDF)
"""federated: the Flower simulation with DP-SGD at every site; central-dp: the same model
trained with DP-SGD on all sites' data pooled; local-only: every site trains alone (mean over
sites); central: the same model, pooled and non-private; tfidf: TF-IDF + logistic regression,
pooled and non-private."""


@dataclass(frozen=True)
class Cell:
    method: str
    epsilon: float
    seed: int

    @property
    def id(self) -> str:
        return f"{self.method}-eps{epsilon_label(self.epsilon)}-seed{self.seed}"


def sweep_cells(epsilons: list[float], seeds: int) -> list[Cell]:
    """Every cell of a sweep, federated runs first so the headline numbers arrive early.

    The non-private pooled baselines do not depend on epsilon and appear once per seed (at
    epsilon inf); central DP at epsilon inf would be the non-private central model again.
    """
    cells = [Cell(FEDERATED, eps, seed) for seed in range(seeds) for eps in epsilons]
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
