"""benchmarks/forget_mia.py: the retrain after an erasure trains on exactly the kept members, and
the attack's bookkeeping tells forgotten from never-seen (a model that memorises shows it before
the erasure, not after it, and still shows the members it kept)."""

import math
from dataclasses import replace
from functools import partial

import numpy as np
import pytest
import torch

from fedintent.audit.game import CANARY, Game, forgotten, make_audit_set, membership, run_models

LABELS, DIM, MODELS = 5, 384, 6
OVERFIT = {"num-rounds": 2, "local-epochs": 6, "batch-size": 32, "learning-rate": 4.0,
           "clip-norm": 1.0}
"""Non-private and far past convergence: random-label canaries get memorised."""


def _game(seed: int = 0) -> Game:
    """Four small sites of clustered 384-d "embeddings", 40 canaries and 40 natural examples."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(LABELS, DIM, generator=gen), dim=1)

    def rows(n: int):
        y = torch.randint(0, LABELS, (n,), generator=gen)
        x = centres[y] + 0.06 * torch.randn(n, DIM, generator=gen)
        return torch.nn.functional.normalize(x, dim=1), y

    audit, holdout = make_audit_set([rows(25) for _ in range(4)], LABELS, 40, 40, seed)
    torch.manual_seed(seed)
    return Game([rows(60) for _ in range(4)], audit, holdout,
                torch.nn.Linear(DIM, LABELS).state_dict(), partial(torch.nn.Linear, DIM, LABELS),
                seed)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    game = _game()  # one torch thread (conftest): tiny models, several times faster
    before = run_models(game, math.inf, OVERFIT, MODELS, tmp_path_factory.mktemp("before"),
                        progress=lambda _: None)
    after = run_models(replace(game, after_erasure=True), math.inf, OVERFIT, MODELS,
                       tmp_path_factory.mktemp("after"), progress=lambda _: None)
    return game, before, after


def test_the_retrain_trains_on_the_members_minus_the_forgotten(trained):
    game, before, after = trained
    for j, (b, a) in enumerate(zip(before, after, strict=True)):
        member = membership(game.seed, j, len(game.audit))
        gone = forgotten(game.seed, j, member)
        np.testing.assert_array_equal(b["member"], member)
        np.testing.assert_array_equal(a["member"], member & ~gone)
        assert 0 < gone.sum() < member.sum()
        assert not np.array_equal(b["phi"], a["phi"])


def test_memorised_canaries_are_found_before_the_erasure_not_after(trained, benchmark_script):
    game, before, after = trained
    forget_mia = benchmark_script("forget_mia")
    rows = {(r["kind"], r["attack"], r["phase"]): r
            for r in forget_mia.forget_rows(before, after, game.audit.kind, game.seed)}
    lira = {phase: rows[CANARY, "lira", phase] for phase in ("before", "after", "after, kept")}
    assert lira["before"]["auc"] > 0.8 and lira["after, kept"]["auc"] > 0.8
    assert 0.35 < lira["after"]["auc"] < 0.65
    assert lira["after"]["limit_advantage"] == 0 and lira["before"]["limit_advantage"] == 1
    for row in rows.values():
        assert row["positives"] > 0 and row["negatives"] > 0
        assert 0.5 <= row["chance_auc"] < 0.75
